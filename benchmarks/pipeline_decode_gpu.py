"""Upstream GPT-SoVITS stages with and without tts_compile on the GPU (issue 4), fp16, random weights.

`SynthesizerTrn.decode` (v2ProPlus) at 25 and 250 tokens, and upstream's v4 `Generator` as `using_vocoder_synthesis`
calls it (one call on the whole mel), eager vs optimized in one process; the same noise seed for both decodes.
Usage (repo root, GPU machine): GPT_SOVITS_HOME=upstream python benchmarks/pipeline_decode_gpu.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from tts_compile import optimize_vocoder
from tts_compile.bench import timed
from tts_compile.gpt_sovits import optimize_sovits

log = logging.getLogger("pipeline_decode_gpu")
REPEATS = 10


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="pipeline_decode.json")
    parser.add_argument("--mode", default="cudagraphs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(os.environ["GPT_SOVITS_HOME"]).resolve()
    sys.path[:0] = [str(root), str(root / "GPT_SoVITS")]
    from module import models

    hps = json.loads((root / "GPT_SoVITS/configs/s2v2ProPlus.json").read_text())
    torch.manual_seed(0)
    vits = models.SynthesizerTrn(hps["data"]["filter_length"] // 2 + 1,
                                 hps["train"]["segment_size"] // hps["data"]["hop_length"],
                                 n_speakers=hps["data"]["n_speakers"],
                                 **{**hps["model"], "semantic_frame_rate": "25hz", "version": "v2ProPlus"})
    vits = vits.cuda().half().eval()
    vocoder = models.Generator(initial_channel=100, resblock="1", resblock_kernel_sizes=[3, 7, 11],
                               resblock_dilation_sizes=[[1, 3, 5]] * 3, upsample_rates=[10, 6, 2, 2, 2],
                               upsample_initial_channel=512, upsample_kernel_sizes=[20, 12, 4, 4, 4],
                               gin_channels=0, is_bias=True)
    vocoder.remove_weight_norm()
    vocoder = vocoder.cuda().half().eval()
    gen = torch.Generator().manual_seed(1)
    refer = [torch.rand(1, 1025, 200, generator=gen).cuda().half()]
    sv_emb = [torch.randn(1, 20480, generator=gen).cuda().half()]
    inputs = {tokens: (torch.randint(0, 1024, (1, 1, tokens), generator=gen).cuda(),
                       torch.randint(1, 700, (1, max(8, tokens // 2)), generator=gen).cuda()) for tokens in (25, 250)}
    mels = {frames: torch.randn(1, 100, frames, generator=gen).cuda().half() for frames in (1000, 4000)}

    def decode(tokens):
        codes, text = inputs[tokens]
        torch.manual_seed(2)
        return vits.decode(codes, text, refer, speed=1, sv_emb=sv_emb)

    def measure(fn):  # (output, median ms) after one warm-up call, device synchronized around each call
        out, ms, _ = timed(fn, torch.device("cuda"), REPEATS)
        return out, ms

    def row(stage, size, eager, optimized):
        (ref, ms), (out, opt_ms) = eager, optimized
        return {"stage": stage, "size": size, "eager_ms": ms, "optimized_ms": opt_ms, "speedup": ms / opt_ms,
                "max_abs_diff": float((out - ref).abs().max())}

    with torch.inference_mode():
        eager = {t: measure(lambda t=t: decode(t)) for t in inputs}
        eager_voc = {f: measure(lambda f=f: vocoder(mels[f])) for f in mels}
        start = time.perf_counter()
        optimize_sovits(vits, compile_mode=args.mode)
        optimized_voc = optimize_vocoder(vocoder, compile_mode=args.mode)
        startup = time.perf_counter() - start
        rows = [row("SynthesizerTrn.decode v2ProPlus", f"{t} tokens", eager[t], measure(lambda t=t: decode(t)))
                for t in inputs]
        rows += [row("v4 Generator (using_vocoder_synthesis call)", f"{f} frames", eager_voc[f],
                     measure(lambda f=f: optimized_voc(mels[f]))) for f in mels]
    for row in rows:
        log.info("%-45s %-12s eager %8.2f ms  optimized %8.2f ms  %5.2fx  max|diff| %.1e", row["stage"], row["size"],
                 row["eager_ms"], row["optimized_ms"], row["speedup"], row["max_abs_diff"])
    log.info("start-up (both stages, %s): %.1f s", args.mode, startup)
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "mode": args.mode,
                   "startup_s": startup, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
