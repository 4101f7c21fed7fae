"""Upstream GPT-SoVITS v3/v4 `CFM.inference` before and after `optimize_cfm`, on the GPU (issue 6), random weights.

Windows as upstream's TTS.py sends them: v3 934 frames, v4 1000 frames, half of each the reference prompt;
`x_lens = LongTensor([T])`. Per case: upstream eager median, optimized median (graph replays after the capture),
max abs difference from the same seeded noise. fp16 unless the case says fp32.
Usage (repo root, GPU machine): GPT_SOVITS_HOME=upstream python benchmarks/cfm_gpu.py --json out.json
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

from tts_compile.bench import timed
from tts_compile.gpt_sovits.cfm import optimize_cfm, restore_cfm

log = logging.getLogger("cfm_gpu")
CASES = [  # (label, batch, frames, steps, dtype)
    ("v3 window", 1, 934, 32, torch.float16),
    ("v4 window", 1, 1000, 32, torch.float16),
    ("v4 window, 8 steps", 1, 1000, 8, torch.float16),
    ("v4 4 windows batched", 4, 1000, 32, torch.float16),
    ("v4 window fp32, 8 steps", 1, 1000, 8, torch.float32),
]


def build(models, dit_module, device, smoke):
    torch.manual_seed(0)
    size = dict(dim=64, depth=2, heads=4) if smoke else dict(dim=1024, depth=22, heads=16)
    dit = dit_module.DiT(**size, ff_mult=2, text_dim=512, conv_layers=4)
    return models.CFM(100, dit).to(device).eval()


def case_inputs(batch, frames, dtype, device):
    gen = torch.Generator().manual_seed(frames + batch)
    mu = torch.randn(batch, frames, 512, generator=gen).to(device, dtype)
    prompt = torch.randn(batch, 100, frames // 2, generator=gen).to(device, dtype)
    return mu, torch.LongTensor([frames]).to(device), prompt


def run_case(cfm, label, batch, frames, steps, dtype, mode, repeats):
    device = next(cfm.parameters()).device
    cfm.to(dtype)
    mu, lens, prompt = case_inputs(batch, frames, dtype, device)

    def call():
        torch.manual_seed(7)
        return cfm.inference(mu, lens, prompt, steps, inference_cfg_rate=0)

    restore_cfm(cfm)
    ref, eager_ms, _ = timed(call, device, max(3, repeats // 2))
    optimize_cfm(cfm, compile_mode=mode)
    start = time.perf_counter()
    call(), call()  # first call: compile (once per model) and run without a graph; second: capture
    first = time.perf_counter() - start
    out, opt_ms, peak = timed(call, device, repeats)
    stats = cfm.tts_compile.optimization_stats()
    restore_cfm(cfm)
    if device.type == "cuda" and stats["graph"] < repeats + 1:
        raise RuntimeError(f"{label}: the timed calls did not all replay a captured graph: {stats}")
    return {"case": label, "batch": batch, "frames": frames, "steps": steps, "dtype": str(dtype), "mode": mode,
            "eager_ms": eager_ms, "optimized_ms": opt_ms, "speedup": eager_ms / opt_ms,
            "ms_per_step": opt_ms / steps, "max_abs_diff": float((out - ref).abs().max()),
            "ref_max_abs": float(ref.abs().max()), "first_two_calls_s": first, "peak_mib": peak, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="cfm.json")
    parser.add_argument("--modes", default="reduce-overhead,cudagraphs")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny DiT, CPU, float32 cases only: checks the script")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(os.environ["GPT_SOVITS_HOME"]).resolve()
    sys.path[:0] = [str(root), str(root / "GPT_SoVITS")]
    os.chdir(root)
    from f5_tts.model.backbones import dit as dit_module
    from module import models

    cfm = build(models, dit_module, "cpu" if args.smoke else "cuda", args.smoke)
    cases = [(label, b, f // 10, s, torch.float32) for label, b, f, s, _ in CASES] if args.smoke else CASES
    rows = []
    for mode in args.modes.split(","):
        for label, batch, frames, steps, dtype in cases:
            row = run_case(cfm, label, batch, frames, steps, dtype, mode, args.repeats)
            rows.append(row)
            log.info("%-26s %-15s eager %8.1f ms  optimized %7.1f ms (%5.2f ms/step)  %5.1fx  max|diff| %.1e "
                     "(|ref| %.1f)  first two calls %.1f s", label, mode, row["eager_ms"], row["optimized_ms"],
                     row["ms_per_step"], row["speedup"], row["max_abs_diff"], row["ref_max_abs"],
                     row["first_two_calls_s"])
    with open(args.json, "w") as f:
        json.dump({"device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
