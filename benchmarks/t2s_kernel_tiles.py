"""One captured T2S decode step (GPT-SoVITS's 24 layers, 512-d, 16 heads, fp16, batch 1, K/V at column 260 of a
1024-column cache): Triton tile choices against the same step in torch ops (cuBLAS, SDPA), and the time of each
kind of launch (24 of one kind captured in a graph). Random weights; logits compared with the torch step.
Usage (repo root, GPU machine): python benchmarks/t2s_kernel_tiles.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

from tts_compile.kernels import t2s_triton as kt
from tts_compile.kernels.t2s_decode import decode_step_reference

log = logging.getLogger("t2s_kernel_tiles")
LAYERS, DIM, HEADS, FFN, VOCAB, CAPACITY, POS = 24, 512, 16, 2048, 1025, 1024, 260
TILE = ("ELEMENTS", "NUM_WARPS", "BLOCK_T", "ATTENTION_WARPS")  # the module constants swept
TILES = [(4096, 4, 512, 4), (4096, 4, 512, 8), (4096, 4, 128, 4), (2048, 4, 128, 4), (8192, 4, 128, 4),
         (16384, 8, 128, 4), (2048, 2, 128, 4), (8192, 8, 128, 4), (4096, 4, 64, 4), (4096, 4, 256, 4),
         (4096, 4, 256, 8)]  # the first: the module's defaults
# several rows (--rows >= DOT_ROWS): the tensor-core form's tiles
DOT_TILE = ("DOT_BLOCK_N", "DOT_BLOCK_K", "NUM_WARPS", "BLOCK_T", "ATTENTION_WARPS")
DOT_TILES = [(16, 2048, 4, 512, 4), (16, 2048, 4, 512, 8), (16, 256, 4, 512, 8), (16, 512, 4, 512, 8),
             (32, 512, 4, 512, 8), (32, 256, 4, 512, 8), (16, 512, 2, 512, 8), (16, 128, 2, 512, 8),
             (64, 128, 4, 512, 8), (32, 512, 8, 512, 8), (16, 512, 4, 256, 4), (16, 512, 4, 128, 4),
             (16, 512, 4, 512, 4)]


def model(rows: int = 1):
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, device="cuda") / shape[-1] ** 0.5).half()

    layers = [(rand(3 * DIM, DIM), rand(3 * DIM), rand(DIM, DIM), rand(DIM), 1 + rand(DIM), rand(DIM), 1e-5,
               rand(FFN, DIM), rand(FFN), rand(DIM, FFN), rand(DIM), 1 + rand(DIM), rand(DIM), 1e-5)
              for _ in range(LAYERS)]
    k = torch.randn(LAYERS, rows, HEADS, CAPACITY, DIM // HEADS, generator=gen, device="cuda").half()
    start = torch.zeros(rows, dtype=torch.long, device="cuda")
    return layers, k, k.clone(), 8 * rand(VOCAB, DIM), rand(rows, DIM), torch.tensor([POS], device="cuda"), start


def _set(tile) -> None:
    for name, value in zip(DOT_TILE if len(tile) == len(DOT_TILE) else TILE, tile):
        setattr(kt, name, value)


def per_step_us(fn, replays: int = 300) -> float:
    """Capture fn once (after two warm-up calls) and time its replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(), fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(20):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


def launch_kinds(layers, k, v, x, pos, start) -> dict[str, float]:
    """Microseconds per launch of each kind (24 launches of one kind per graph, the current tiles)."""
    rows = x.shape[0]
    qkv, attn, s, h, xn = (x.new_zeros(rows, n) for n in (3 * DIM, DIM, DIM, DIM, DIM))
    f = x.new_zeros(rows, FFN)
    kinds = {
        "qkv (+LN2, cache write)": lambda i, w: kt._linear(s, w[0], w[1], qkv, norm=(w[11], w[12], w[13]),
                                                           normed=xn, qkv=(k[i], v[i], pos)),
        "attend": lambda i, w: kt._attend(qkv, k[i], v[i], pos, start, attn),
        "out (+residual)": lambda i, w: kt._linear(attn, w[2], w[3], s, res=xn),
        "ffn1 (+LN1, relu)": lambda i, w: kt._linear(s, w[7], w[8], f, norm=(w[4], w[5], w[6]), normed=h, relu=True),
        "ffn2 (+residual)": lambda i, w: kt._linear(f, w[9], w[10], s, res=h),
    }
    return {name: per_step_us(lambda fn=fn: [fn(i, w) for i, w in enumerate(layers)]) / LAYERS
            for name, fn in kinds.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="t2s_tiles.json")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--no-pdl", action="store_true", help="plain launches instead of programmatic dependent ones")
    parser.add_argument("--tiles", type=int, default=0, help="only the first N tiles of the sweep (0: all)")
    args = parser.parse_args()
    kt.PDL = not args.no_pdl
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    layers, k, v, predict, x, pos, start = model(args.rows)
    with torch.inference_mode():
        expected = decode_step_reference(x, k.clone(), v.clone(), pos, start, layers, predict, None)
        torch_us = per_step_us(lambda: decode_step_reference(x, k, v, pos, start, layers, predict, None))
        rows = []
        sweep = DOT_TILES if args.rows >= kt.DOT_ROWS else TILES
        for tile in sweep[: args.tiles or len(sweep)]:
            _set(tile)
            got = kt.decode_step_triton(x, k, v, pos, start, layers, predict, None)
            us = per_step_us(lambda: kt.decode_step_triton(x, k, v, pos, start, layers, predict, None))
            rows.append({"tile": tile, "us_per_step": us, "max_abs_diff": float((got - expected).abs().max())})
            log.info("tile %s: %.1f us/step (torch ops %.1f), max |diff| %.2e", tile, us, torch_us,
                     rows[-1]["max_abs_diff"])
        best = min(rows, key=lambda r: r["us_per_step"])
        _set(best["tile"])
        kinds = launch_kinds(layers, k, v, x, pos, start)
    log.info("torch ops: %.1f us/step; best tile %s: %.1f us/step (%.2fx)", torch_us, best["tile"],
             best["us_per_step"], torch_us / best["us_per_step"])
    for name, us in kinds.items():
        log.info("  %-26s %6.2f us/launch, %6.1f us/step", name, us, us * LAYERS)
    with open(args.json, "w") as out:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": args.rows, "pdl": kt.PDL,
                   "tile": DOT_TILE if args.rows >= kt.DOT_ROWS else TILE,
                   "torch_ops_us_per_step": torch_us, "tiles": rows, "best": best, "launch_kinds_us": kinds},
                  out, indent=1)


if __name__ == "__main__":
    main()
