"""Issue 6: GPT-SoVITS v2ProPlus's HiFi-GAN decoder alone, fp16, one process, at the latents of 25-500 tokens:
upstream's module eager; `optimize_vocoder`'s windows (graphs of the eager windows, the path before the padded
decoder); `PaddedDecoder` captured at the frame bucket. Max |diff| against upstream's module at the exact length;
then, at 250 tokens, a kernel profile of the padded decoder, every convolution of it timed alone at its input, and
each upsampling as cuDNN's transposed convolution vs the polyphase one.
cuDNN keeps the algorithm it first chose for a convolution's shape for the whole process, whatever
`torch.backends.cudnn.benchmark` says later, so its heuristics (the default) and its timing (`--cudnn-benchmark`)
are compared in two processes.
Usage (repo root, GPU machine):
GPT_SOVITS_HOME=upstream python benchmarks/decoder_gpu.py [--cudnn-benchmark] --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from tts_compile import optimize_vocoder
from tts_compile.bench import timed
from tts_compile.gpt_sovits.decoder import PaddedDecoder
from tts_compile.gpt_sovits.sovits import SMALLEST, bucket
from tts_compile.passes.layout import ChannelsLastConv1d, PolyphaseConvTranspose1d
from tts_compile.runner import Runner

sys.path.insert(0, str(Path(__file__).parent))
from sovits_gpu import synthesizer

log = logging.getLogger("decoder_gpu")
CUDA = torch.device("cuda")


def padded_runner(decoder: PaddedDecoder, z: torch.Tensor, g: torch.Tensor):
    """A call of the padded decoder through a graph captured at z's frame bucket."""
    frames = z.size(-1)
    size = bucket(frames, SMALLEST["frames"])
    sizes = decoder.lengths(frames)
    inputs = (F.pad(z, (0, size - frames)), torch.tensor(sizes, device=CUDA), g)
    runner = Runner("cudagraphs", CUDA, torch.backends.cudnn.benchmark)
    runner.prepare("decode", decoder, inputs)
    return lambda: runner.run("decode", inputs)[..., :sizes[-1]]


def kernel_profile(fn) -> list[dict]:
    """Kernel time per kernel name over 5 calls, largest first (us per call)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name][0] += event.device_time / 5
            totals[event.name][1] += 1 / 5
    rows = [{"kernel": name[:110], "us": us, "launches": n} for name, (us, n) in totals.items()]
    return sorted(rows, key=lambda r: -r["us"])


def convolutions_ms(decoder: PaddedDecoder, call, repeats: int) -> list[dict]:
    """Every convolution of the padded decoder alone, at the input it gets in `call` (median ms), slowest first; each
    upsampling also as cuDNN's transposed convolution (channels-last) at the same input."""
    inputs: dict[str, torch.Tensor] = {}
    convs = {name: m for name, m in decoder.module.named_modules()
             if isinstance(m, (ChannelsLastConv1d, PolyphaseConvTranspose1d))}
    for name, conv in convs.items():  # the decoder calls each one's without_bias (forward adds the bias after it)
        conv.without_bias = functools.partial(_recorded, type(conv).without_bias.__get__(conv), inputs, name)
    call()
    for conv in convs.values():
        del conv.without_bias
    rows = []
    for name, conv in convs.items():
        x = inputs[name]
        row = {"conv": name, "kind": type(conv).__name__, "input": list(x.shape),
               "weight": list(conv.conv.weight.shape), "ms": timed(functools.partial(conv.without_bias, x), CUDA, repeats)[1]}
        if isinstance(conv, PolyphaseConvTranspose1d):
            transposed = ChannelsLastConv1d(conv.conv).without_bias
            row["transposed_ms"] = timed(functools.partial(transposed, x), CUDA, repeats)[1]
        rows.append(row)
    return sorted(rows, key=lambda r: -r["ms"])


def _recorded(without_bias, inputs: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    inputs.setdefault(name, x.clone(memory_format=torch.preserve_format))
    return without_bias(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="decoder.json")
    parser.add_argument("--tokens", default="25,100,250,500")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN times its algorithms per shape")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(os.environ["GPT_SOVITS_HOME"]).resolve()
    sys.path[:0] = [str(root), str(root / "GPT_SoVITS")]
    vits = synthesizer(root, "v2ProPlus", torch.float16)
    dec = vits.dec
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(1, dec.cond.in_channels, 1, generator=gen).to(CUDA, torch.float16)
    rows = []
    with torch.inference_mode():
        windowed = optimize_vocoder(dec, compile_mode="cudagraphs", example_kwargs={"g": g})
        decoder = PaddedDecoder(dec, channels_last=True)
        for tokens in [int(t) for t in args.tokens.split(",")]:
            z = (torch.randn(1, dec.conv_pre.in_channels, 2 * tokens, generator=gen) * 0.5).to(CUDA, torch.float16)
            expected, eager_ms, _ = timed(functools.partial(dec, z, g=g), CUDA, args.repeats)
            row = {"tokens": tokens, "frames": 2 * tokens, "bucket": bucket(2 * tokens, SMALLEST["frames"]),
                   "eager_ms": eager_ms}
            out, row["windowed_ms"], _ = timed(functools.partial(windowed, z, g=g), CUDA, args.repeats)
            row["windowed_diff"] = float((out - expected).abs().max())
            out, row["padded_ms"], _ = timed(padded_runner(decoder, z, g), CUDA, args.repeats)
            row["padded_diff"], row["peak"] = float((out - expected).abs().max()), float(expected.abs().max())
            rows.append(row)
            log.info("%4d tokens (bucket %4d frames): eager %6.2f  windowed %6.2f (%.1e)  padded %6.2f (%.1e) ms",
                     tokens, row["bucket"], eager_ms, row["windowed_ms"], row["windowed_diff"], row["padded_ms"],
                     row["padded_diff"])
        z = (torch.randn(1, dec.conv_pre.in_channels, 500, generator=gen) * 0.5).to(CUDA, torch.float16)
        run = padded_runner(decoder, z, g)
        profile = kernel_profile(run)
        sizes = decoder.lengths(500)
        padded = F.pad(z, (0, bucket(500, SMALLEST["frames"]) - 500))
        convs = convolutions_ms(decoder, lambda: decoder(padded, torch.tensor(sizes, device=CUDA), g),
                                args.repeats)
    mode = "cuDNN benchmark" if args.cudnn_benchmark else "cuDNN heuristics"
    log.info("padded decoder, 250 tokens, %s: %.0f us of kernels per call; top kernels:", mode,
             sum(r["us"] for r in profile))
    for r in profile[:10]:
        log.info("%8.1f us %5.1f x  %s", r["us"], r["launches"], r["kernel"])
    log.info("convolutions alone: %.2f ms in all; slowest:", sum(r["ms"] for r in convs))
    for r in convs[:6] + [r for r in convs[6:] if "transposed_ms" in r]:
        log.info("%7.3f ms %-24s %-26s in %-18s w %s%s", r["ms"], r["conv"], r["kind"], r["input"], r["weight"],
                 f"  (transposed {r['transposed_ms']:.3f} ms)" if "transposed_ms" in r else "")
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn_benchmark": mode,
                   "rows": rows, "profile_250_tokens": profile, "convolutions_250_tokens": convs}, f, indent=1)


if __name__ == "__main__":
    main()
