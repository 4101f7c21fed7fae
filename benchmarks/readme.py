"""The README's performance table, regenerated on a GPU in one process (about 8 minutes on an H200).

Runs each stage benchmark at its README sizes, upstream (or eager) and tts_compile side by side, then prints the
table and writes it with the raw numbers: `<out>.json` and `<out>.md`. Rows: a whole request (v2ProPlus, v4; the
client's short / medium / long texts), the T2S decode (steady tok/s, 1 and 8 rows), the SoVITS decode, a CFM
window, and the two vocoders (BigVGAN-24k with the fused activation kernel, the v4 vocoder).

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/readme.py --out benchmarks/results/DATE-h200-readme
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import cfm
import pipeline
import sovits
import t2s
import torch
from common import device_name, write

from tts_compile.tools import bench

log = logging.getLogger("benchmarks.readme")
VOCODERS = {"bigvgan-24k": "cudagraphs", "hifigan-v4": "reduce-overhead"}  # each one's measured best mode
FRAMES = (100, 1000, 4000)


def vocoders(smoke: bool) -> list[dict]:
    models = {"bigvgan-tiny": "eager", "hifigan-tiny": "eager"} if smoke else VOCODERS
    device, dtype = ("cpu", "float32") if smoke else ("cuda", "float16")
    return [dataclasses.asdict(bench.run(name, device=device, dtype=dtype, lengths=FRAMES, repeats=5,
                                         compile_mode=mode, progress=False)) for name, mode in models.items()]


def requests(versions: list[str], smoke: bool) -> list[dict]:
    args = SimpleNamespace(smoke=smoke, steps=32, repeats=3, concurrency=[], mode="reduce-overhead")
    return [pipeline.run_version(version, args) for version in versions]


def table(results: dict) -> str:
    """The README's table in Markdown."""
    lines = ["| what (metric) | upstream | tts_compile | speed-up |", "|---|---:|---:|---:|"]
    for r in results["requests"]:
        texts = list(r["before"]["texts"])
        before = [r["before"]["texts"][t]["latency"] for t in texts]
        after = [r["after"]["texts"][t]["latency"] for t in texts]
        lines.append(f"| {r['version']} request, {' / '.join(texts)} text (median latency) | "
                     f"{_join(before, '.2f')} s | **{_join(after, '.3f')} s** | "
                     f"{_join([a / b for a, b in zip(before, after)], '.1f')}x |")
    for r in results["t2s"]:
        label = "1 row" if r["rows"] == 1 else f"{r['rows']} rows, aggregate"
        lines.append(f"| T2S decode, {label} (steady tok/s) | {r['upstream']['steady_tok_s']:.0f} | "
                     f"**{r['optimized']['steady_tok_s']:.0f}** | {r['speedup']:.1f}x at 250 tokens |")
    for version in sorted({r["version"] for r in results["sovits"]}):
        rows = [r for r in results["sovits"] if r["version"] == version]
        lines.append(f"| SoVITS `decode` {version}, {' / '.join(str(r['tokens']) for r in rows)} tokens (ms) | "
                     f"{_join([r['eager_ms'] for r in rows], '.1f')} | **{_join([r['optimized_ms'] for r in rows], '.1f')}**"
                     f" | {_join([r['speedup'] for r in rows], '.1f')}x |")
    for r in results["cfm"]:
        lines.append(f"| CFM {r['case']} window, {r['steps']} steps (ms) | {r['eager_ms']:.0f} | "
                     f"**{r['optimized_ms']:.0f}** | {r['speedup']:.1f}x |")
    for r in results["vocoders"]:
        rows = r["rows"]
        lines.append(f"| {r['model']} vocoder, {' / '.join(str(x['frames']) for x in rows)} frames (ms, eager) | "
                     f"{_join([x['eager_ms'] for x in rows], '.1f')} | **{_join([x['optimized_ms'] for x in rows], '.1f')}**"
                     f" | {_join([x['speedup'] for x in rows], '.2f')}x |")
    return "\n".join(lines)


def _join(values: list[float], spec: str) -> str:
    return " / ".join(format(v, spec) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="readme", help="path without extension: writes OUT.json and OUT.md")
    parser.add_argument("--versions", default="v2ProPlus,v4", help="whole requests of these versions")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the entry only")
    args = parser.parse_args()
    start = time.perf_counter()
    results = {"requests": requests(args.versions.split(","), args.smoke),
               "t2s": t2s.run([1, 8], args.smoke, repeats=5),
               "sovits": sovits.run(["v2ProPlus"], [25, 250], args.smoke, repeats=20),
               "cfm": cfm.run(["v4"], args.smoke, repeats=10),
               "vocoders": vocoders(args.smoke)}
    device = torch.device("cpu" if args.smoke else "cuda")
    markdown = table(results)
    log.info("%s\n(%s, %.0f s)", markdown, device_name(device), time.perf_counter() - start)
    write(f"{args.out}.json", results, device)
    Path(f"{args.out}.md").write_text(markdown + "\n")


if __name__ == "__main__":
    main()
