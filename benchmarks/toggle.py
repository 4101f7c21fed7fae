"""An engine switch toggled on one engine and interleaved (off, on, off, on), so both sides see the same process and
GPU state: v2ProPlus, `serving.py`'s workload, closed-loop callers, streamed in token chunks (api_v2's
`streaming_mode` 3) and whole requests. Switches: `own_draws` (renders draw from their threads' own generators, not
the shared ones under a lock) and `first_alone` (the T2S loop and later renders wait while a stream's first render
runs).

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/toggle.py --switch first_alone --json t.json
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from common import setup, write
from pipeline import build
from serving import engine_submit, measure, steps, workload

from tts_compile.engine import Engine, EngineConfig

log = logging.getLogger("benchmarks.toggle")

SWITCHES = {"own_draws": lambda engine, on: setattr(engine.renderer, "own_draws", on),
            "first_alone": lambda engine, on: setattr(engine, "first_alone", on)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switch", choices=sorted(SWITCHES), required=True)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load point")
    parser.add_argument("--stream-callers", default="1,16", help="closed-loop callers of token-chunk streams")
    parser.add_argument("--whole-callers", default="64", help="closed-loop callers of whole requests")
    parser.add_argument("--warm-tokens", type=int, default=EngineConfig.warm_tokens)
    parser.add_argument("--json", default="toggle.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script")
    args = parser.parse_args()
    root, device, dtype = setup(args.smoke)
    tts = build(root, "v2ProPlus", device, dtype, args.smoke)
    _, requests, voice, segments, caps = workload(tts, "v2ProPlus", device, dtype, args.smoke)
    voice, labels, results = voice.to(device, dtype), list(requests), {}
    numbers = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    loads = {3: numbers(args.stream_callers), 0: numbers(args.whole_callers)}
    if args.smoke:
        loads, args.seconds, args.warm_tokens = {3: [2], 0: [2]}, 1.0, 48
    config = EngineConfig(compile_mode="eager" if args.smoke else "cudagraphs", max_rows=64, kv_budget_gib=8.0,
                          warm_tokens=args.warm_tokens, progress=False)
    started = time.perf_counter()
    with torch.inference_mode(), Engine.from_models("v2ProPlus", tts.t2s_model.model, tts.vits_model, None,
                                                    config) as engine:
        engine.prepare(voice)
        results["ready_s"] = time.perf_counter() - started
        results["stages"] = engine.stage_stats()
        log.info("engine ready in %.1f s", results["ready_s"])
        for rep, on in enumerate((False, True) if args.smoke else (False, True, False, True)):
            SWITCHES[args.switch](engine, on)
            for mode, callers in loads.items():
                for count in callers:
                    name = f"mode {mode} {args.switch} {'on' if on else 'off'}, rep {rep // 2}"
                    timings: list[dict] = []
                    point = measure(name, engine_submit(engine, voice, segments, caps, mode, 16, timings), labels,
                                    [("callers", count)], args.seconds, 32000, engine.stats)
                    for summary in point.values():
                        summary["steps"] = steps(timings)
                    results.setdefault(name, {}).update(point)
    write(args.json, {"switch": args.switch, "results": results}, device)


if __name__ == "__main__":
    main()
