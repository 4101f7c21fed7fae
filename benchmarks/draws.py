"""The engine's renders drawing from their threads' own generators (`core.rng.own_draws`, no lock) against holding
the shared generators throughout (the previous path), toggled on one engine and interleaved (shared, own, shared,
own) so both sides see the same process and GPU state. v2ProPlus, `serving.py`'s workload; closed-loop callers,
streamed in token chunks (api_v2's `streaming_mode` 3) and whole requests.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/draws.py --json draws.json
"""

from __future__ import annotations

import argparse
import logging

import torch
from common import setup, write
from pipeline import build
from serving import engine_submit, measure, workload

from tts_compile.engine import Engine, EngineConfig

log = logging.getLogger("benchmarks.draws")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load point")
    parser.add_argument("--render-workers", type=int, default=EngineConfig.render_workers)
    parser.add_argument("--json", default="draws.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script")
    args = parser.parse_args()
    root, device, dtype = setup(args.smoke)
    tts = build(root, "v2ProPlus", device, dtype, args.smoke)
    _, requests, voice, segments, caps = workload(tts, "v2ProPlus", device, dtype, args.smoke)
    voice, labels, results = voice.to(device, dtype), list(requests), {}
    loads = {3: [("callers", 16)], 0: [("callers", 16), ("callers", 64)]}
    if args.smoke:
        loads, args.seconds = {3: [("callers", 2)], 0: [("callers", 2)]}, 1.0
    config = EngineConfig(compile_mode="eager" if args.smoke else "cudagraphs", max_rows=64, kv_budget_gib=8.0,
                          render_workers=args.render_workers, progress=False)
    with torch.inference_mode(), Engine.from_models("v2ProPlus", tts.t2s_model.model, tts.vits_model, None,
                                                    config) as engine:
        for rep, own in enumerate((False, True) if args.smoke else (False, True, False, True)):
            engine.renderer.own_draws = own
            for mode, points in loads.items():
                name = f"mode {mode} {'own' if own else 'shared'} draws, rep {rep // 2}"
                results[name] = measure(name, engine_submit(engine, voice, segments, caps, mode, 16), labels,
                                        points, args.seconds, 32000, engine.stats)
    write(args.json, {"results": results}, device)


if __name__ == "__main__":
    main()
