"""Tile sweep for the fused activation kernel on the GPU: BigVGAN-24k's layer shapes (1000-frame mel), fp16.

Times `_anti_aliased_snake_kernel` directly for several (BLOCK_C, BLOCK_T, warps), NCL and channels-last input,
so the launcher's `tile()` can be set from measurement. Usage (repo root, GPU machine):
    python benchmarks/kernel_tiles.py --json $OUT/tiles.json
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
import triton
import triton.testing

from tts_compile.kernels import antialias_triton as kt
from tts_compile.kernels import downsampler_band
from tts_compile.models.bigvgan import AntiAliasedSnakeBeta

STAGES = [(768, 4000), (384, 16000), (192, 32000), (96, 64000), (48, 128000), (24, 256000)]
TILES = [(16, 64, 4), (32, 64, 4), (32, 64, 8), (64, 64, 4), (64, 64, 8)]  # BLOCK_T is the band's 64
log = logging.getLogger("kernel_tiles")


def launch(x, act, fir, band, block_c, block_t, warps):
    left, right = kt.halo(fir.numel())
    out = torch.empty_like(x)
    grid = (triton.cdiv(x.shape[-1], block_t - left - right), triton.cdiv(x.shape[1], block_c), x.shape[0])
    kt._anti_aliased_snake_kernel[grid](
        x, out, act.log_alpha, act.log_beta, fir, fir, band, x,  # x stands for the absent bias (HAS_BIAS off)
        x.shape[1], x.shape[2], *x.stride(), *out.stride(), TAPS=fir.numel(), LOG_SCALE=True, BLOCK_C=block_c,
        BLOCK_T=block_t, HALO_LEFT=left, HALO=left + right, HALF=x.dtype == torch.float16, HAS_BIAS=False,
        num_warps=warps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="tiles.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for channels, samples in STAGES:
        act = AntiAliasedSnakeBeta(channels).cuda().half()
        x = torch.randn(1, channels, samples, device="cuda", dtype=torch.float16)
        fir, band = act.fir.float(), downsampler_band(act.fir)
        for layout, data in (("ncl", x), ("cl", x.transpose(1, 2).contiguous().transpose(1, 2))):
            reference = launch(data, act, fir, band, 32, 64, 4).float()
            for block_c, block_t, warps in TILES:
                out = launch(data, act, fir, band, block_c, block_t, warps)
                ms = triton.testing.do_bench(lambda a=(data, act, fir, band, block_c, block_t, warps): launch(*a),
                                             return_mode="median")
                rows.append({"channels": channels, "samples": samples, "layout": layout,
                             "tile": f"{block_c}x{block_t}", "warps": warps, "ms": ms,
                             "max_diff": float((out.float() - reference).abs().max())})
                log.info("%4d %6d %-3s %6s w%d %.4f ms diff %.1e", channels, samples, layout, rows[-1]["tile"],
                         warps, ms, rows[-1]["max_diff"])
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
