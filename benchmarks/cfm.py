"""CFM: upstream's v3/v4 `CFM.inference` before and after `optimize_cfm`, one process.

Windows as upstream's TTS.py sends them: v3 934 frames, v4 1000 frames, half of each the reference prompt,
`x_lens = [T]`, fp16, seed 7. Per case: upstream's median, the optimized median (graph replays once the bucket is
captured on its second call), max |diff| with the same noise.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/cfm.py --json cfm.json
"""

from __future__ import annotations

import argparse
import logging

import torch
from common import setup, synthesizer, timed, write

from tts_compile.gpt_sovits import optimize_cfm, restore_cfm

log = logging.getLogger("benchmarks.cfm")
CASES = {"v3": (1, 934, 32), "v4": (1, 1000, 32), "v4 8 steps": (1, 1000, 8), "v4 4 windows": (4, 1000, 32)}


def compare(label: str, cfm: torch.nn.Module, device: torch.device, dtype: torch.dtype, smoke: bool,
            repeats: int) -> dict:
    batch, frames, steps = CASES[label]
    frames = frames // 10 if smoke else frames
    gen = torch.Generator().manual_seed(frames + batch)
    mu = torch.randn(batch, frames, 512, generator=gen).to(device, dtype)
    prompt = torch.randn(batch, 100, frames // 2, generator=gen).to(device, dtype)
    lens = torch.LongTensor([frames]).to(device)

    def call() -> torch.Tensor:
        torch.manual_seed(7)
        return cfm.inference(mu, lens, prompt, steps, inference_cfg_rate=0)

    with torch.inference_mode():
        reference, eager_ms, _ = timed(call, device, max(3, repeats // 2))
        optimize_cfm(cfm, compile_mode="eager" if smoke else "reduce-overhead")
        call(), call()  # compile (once per model), then the capture
        out, ms, _ = timed(call, device, repeats)
        stats = cfm.tts_compile.optimization_stats()
        restore_cfm(cfm)
    row = {"case": label, "batch": batch, "frames": frames, "steps": steps, "eager_ms": eager_ms,
           "optimized_ms": ms, "speedup": eager_ms / ms, "max_abs_diff": float((out - reference).abs().max()),
           "stats": stats}
    log.info("%-13s upstream %7.1f ms, optimize_cfm %6.1f ms, %.1fx, max|diff| %.1e", label, eager_ms, ms,
             row["speedup"], row["max_abs_diff"])
    return row


def run(cases: list[str], smoke: bool, repeats: int) -> list[dict]:
    root, device, dtype = setup(smoke)
    cfm = synthesizer(root, "v4", device, dtype, smoke).cfm
    return [compare(label, cfm, device, dtype, smoke, repeats) for label in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per case (median)")
    parser.add_argument("--json", default="cfm.json")
    parser.add_argument("--smoke", action="store_true", help="a tiny DiT on the CPU: checks the script")
    args = parser.parse_args()
    write(args.json, {"results": run(args.cases.split(","), args.smoke, args.repeats)},
          torch.device("cpu" if args.smoke else "cuda"))


if __name__ == "__main__":
    main()
