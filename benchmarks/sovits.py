"""SoVITS decode: upstream's `SynthesizerTrn.decode` (v1-v2ProPlus) before and after `optimize_sovits`, one process.

Per version and token count: the median of upstream's decode and of the optimized one (graphs captured on the first
call), and max |diff| with the same noise (seed 2); a 5 s reference spectrogram, 2 phones per 5 tokens.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/sovits.py --versions v2ProPlus,v2 --json sovits.json
"""

from __future__ import annotations

import argparse
import functools
import logging

import torch
from common import setup, synthesizer, timed, write

from tts_compile.gpt_sovits import optimize_sovits, restore_sovits

log = logging.getLogger("benchmarks.sovits")
REFERENCE_FRAMES = 250  # a 5 s reference at 32 kHz / hop 640


def request(tokens: int, device: torch.device, dtype: torch.dtype, pro: bool) -> dict:
    gen = torch.Generator().manual_seed(tokens)
    return {"codes": torch.randint(0, 1024, (1, 1, tokens), generator=gen).to(device),
            "text": torch.randint(1, 700, (1, max(8, 2 * tokens // 5)), generator=gen).to(device),
            "refer": [torch.rand(1, 1025, REFERENCE_FRAMES, generator=gen).to(device, dtype)],
            "sv_emb": [torch.randn(1, 20480, generator=gen).to(device, dtype)] if pro else None}


def decode(vits: torch.nn.Module, req: dict) -> torch.Tensor:
    torch.manual_seed(2)
    return vits.decode(req["codes"], req["text"], req["refer"], sv_emb=req["sv_emb"])


def compare(version: str, tokens: list[int], smoke: bool, repeats: int) -> list[dict]:
    root, device, dtype = setup(smoke)
    vits = synthesizer(root, version, device, dtype, smoke)
    reqs = {t: request(t, device, dtype, "Pro" in version) for t in tokens}
    rows = []
    with torch.inference_mode():
        eager = {t: timed(functools.partial(decode, vits, reqs[t]), device, repeats)[:2] for t in tokens}
        optimize_sovits(vits, compile_mode="eager" if smoke else "cudagraphs")
        for t in tokens:
            decode(vits, reqs[t])  # the captures
            out, ms, _ = timed(functools.partial(decode, vits, reqs[t]), device, repeats)
            reference, eager_ms = eager[t]
            rows.append({"version": version, "tokens": t, "eager_ms": eager_ms, "optimized_ms": ms,
                         "speedup": eager_ms / ms, "max_abs_diff": float((out - reference).abs().max()),
                         "peak": float(reference.abs().max())})
            log.info("%-10s %4d tokens: upstream %6.1f ms, optimize_sovits %5.1f ms, %.1fx, max|diff| %.1e", version,
                     t, eager_ms, ms, eager_ms / ms, rows[-1]["max_abs_diff"])
        rows[-1]["stats"] = vits.tts_compile.optimization_stats()
        restore_sovits(vits)
    return rows


def run(versions: list[str], tokens: list[int], smoke: bool, repeats: int) -> list[dict]:
    return [row for version in versions for row in compare(version, tokens, smoke, repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", default="v2ProPlus,v2")
    parser.add_argument("--tokens", default="25,250", help="comma-separated token counts")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case (median)")
    parser.add_argument("--json", default="sovits.json")
    parser.add_argument("--smoke", action="store_true", help="the CPU, no graphs: checks the script")
    args = parser.parse_args()
    results = run(args.versions.split(","), [int(t) for t in args.tokens.split(",")], args.smoke, args.repeats)
    write(args.json, {"results": results}, torch.device("cpu" if args.smoke else "cuda"))


if __name__ == "__main__":
    main()
