"""The engine's parts timed alone: what bounds its throughput under load.

Upstream's modules (random weights, fp16) in an `Engine` with the serving benchmark's voice and texts. Timed with
nothing else running (median ms after one warm-up, synced): a T2S step per rows bucket with and without the top-p
pass (all rows decoding from a fresh prefill of the medium text's first segment), the sampling of a step alone per
rows bucket, a prefill per length bucket, and a render (SoVITS decode, or CFM and vocoder) of each text's tokens.
From them: the T2S tokens/s each rows bucket could give, and the share of one GPU-second a request's parts take.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/engine.py --version v2ProPlus --json engine.json
"""

from __future__ import annotations

import argparse
import logging

import torch
from common import setup, timed, write
from pipeline import build
from serving import workload

from tts_compile.core.runner import Execution, Runner
from tts_compile.engine import Engine, EngineConfig, Params
from tts_compile.engine.render import Job
from tts_compile.engine.request import new_request
from tts_compile.engine.sampling import counter_exponential, sample_rows
from tts_compile.engine.t2s import Prefix
from tts_compile.gpt_sovits import VERSIONS

log = logging.getLogger("benchmarks.engine")
STEPS = 16  # steps per timed call (one scheduling round)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="v2ProPlus", choices=sorted(VERSIONS))
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default="engine.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script")
    args = parser.parse_args()
    root, device, dtype = setup(args.smoke)
    tts = build(root, args.version, device, dtype, args.smoke)
    _, requests, voice, segments, caps = workload(tts, args.version, device, dtype, args.smoke)
    mode = "eager" if args.smoke else "cudagraphs"
    engine = Engine.from_models(args.version, tts.t2s_model.model, tts.vits_model, tts.vocoder,
                                EngineConfig(compile_mode=mode, max_rows=args.max_rows, kv_budget_gib=8.0,
                                             progress=False))
    t2s, results = engine.t2s, {"startup_s": engine.startup_s}
    segment = segments["medium"][0]
    phones = torch.cat([voice.prompt_phones, segment.phones])
    bert = torch.cat([voice.prompt_bert, segment.bert], 1)
    with torch.inference_mode():
        results["step_ms"], results["sample_ms"] = {}, {}
        for bucket in t2s.buckets.sizes:
            slots = t2s.prefill([Prefix(phones, bert, voice.prompt_tokens, Params(max_tokens=1500), i)
                                 for i in range(bucket)])
            t2s.arrange(slots)
            for nucleus in (False, True):
                ms = timed(lambda: t2s.steps(STEPS, nucleus), device, args.repeats)[1] / STEPS
                results["step_ms"][f"{bucket}{' top-p' if nucleus else ''}"] = ms
            results["sample_ms"][bucket] = sampling_ms(t2s, bucket, mode, device, args.repeats)
            for slot in slots:
                t2s.release(slot)
            log.info("rows %2d: step %.3f ms (%.3f with top-p), sampling alone %.3f ms: %.0f tok/s", bucket,
                     results["step_ms"][str(bucket)], results["step_ms"][f"{bucket} top-p"],
                     results["sample_ms"][bucket], bucket / results["step_ms"][str(bucket)] * 1e3)
        results["prefill_ms"] = {}
        for length in t2s.lengths.sizes:
            n = length - len(voice.prompt_tokens) - 1  # phones that fill the bucket after the prompt tokens
            if n < 1:
                continue
            prefix = Prefix(torch.randint(1, 300, (n,), device=device), torch.randn(1024, n, device=device,
                            dtype=dtype), voice.prompt_tokens, Params(), 0)
            rows = t2s.inputs[length].rows
            for count in sorted({1, rows}):
                def prefill():
                    for slot in t2s.prefill([prefix] * count):
                        t2s.release(slot)

                results["prefill_ms"][f"{count} x {length}"] = ms = timed(prefill, device, args.repeats)[1]
                log.info("prefill of %d x %4d positions: %.3f ms", count, length, ms)
        results["render_ms"] = {}
        for label, parts in segments.items():
            request = new_request(voice, tuple(parts), Params(seed=1))
            request.tokens.update({i: torch.randint(0, 1024, (caps[label],)).tolist() for i in range(len(parts))})
            job = Job(request, tuple(range(len(parts))), request.seed)
            results["render_ms"][label] = timed(lambda: engine.renderer.render(job), device, args.repeats)[1]
            log.info("render of %-6s (%d segments x %d tokens): %.2f ms", label, len(parts), caps[label],
                     results["render_ms"][label])
    engine.close()
    share(results, requests, caps)
    write(args.json, {"version": args.version, "args": vars(args), "results": results}, device)


def sampling_ms(t2s, bucket: int, mode: str, device: torch.device, repeats: int) -> float:
    """One step's sampling alone for `bucket` rows (captured on CUDA as the step is), in ms."""
    pool, s = t2s.pool, t2s.pool.order[:bucket]
    runner = Runner(Execution.of(mode, device), device)

    def sample():
        q = counter_exponential(pool.seed[s], pool.step[s], pool.logits.shape[1])
        return sample_rows(pool.logits[s], pool.seen[s], q, pool.step[s], pool.top_k[s], pool.top_p[s],
                           pool.temperature[s], pool.penalty[s], t2s.eos, False)

    if not runner.graphs:
        return timed(sample, device, repeats)[1]
    runner.capture("sample", sample, lambda: None)
    return timed(lambda: runner.replay("sample"), device, repeats)[1]


def share(results: dict, requests: dict, caps: dict) -> None:
    """The GPU milliseconds one request of each text takes in the largest rows bucket's steps, its prefills (one
    call each, alone, or its share of a full call) and its render, and what they allow per second if nothing
    overlapped."""
    rows = max(results["sample_ms"])
    step = results["step_ms"][str(rows)]
    calls = [(int(key.split(" x ")[1]), int(key.split(" x ")[0]), ms) for key, ms in results["prefill_ms"].items()]
    for label, parts in requests.items():
        n = parts[0].phones.shape[1] + 75  # prompt phones and the segment's, then the prompt's tokens
        length = min(length for length, _, _ in calls if length > n)
        alone = next(ms for size, count, ms in calls if size == length and count == 1)
        full = max((count, ms) for size, count, ms in calls if size == length)
        decode, render = len(parts) * caps[label] * step / rows, results["render_ms"][label]
        prefill = {"alone": len(parts) * alone, "batched": len(parts) * full[1] / full[0]}
        results.setdefault("per_request_ms", {})[label] = {"decode": decode, "prefill": prefill, "render": render}
        log.info("%-6s per request: decode %.2f + prefills %.2f (%.2f batched) + render %.2f ms = %.1f req/s "
                 "(%.1f batched) if alone on the GPU", label, decode, prefill["alone"], prefill["batched"], render,
                 1e3 / (decode + prefill["alone"] + render), 1e3 / (decode + prefill["batched"] + render))


if __name__ == "__main__":
    main()
