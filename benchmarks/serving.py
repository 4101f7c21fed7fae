"""Serving many callers: upstream and `optimize_pipeline` serialized as api_v2 runs them, and the engine, one process.

The same upstream modules (random weights, fp16), voice and request mix (the client's short / medium / long texts,
round robin; token counts fixed as in `pipeline.py`, each segment of a request capped at the request's mean so that
every path decodes the same tokens). Serialized servers run requests one at a time on one worker thread (api_v2's
one event loop); the engine batches them. Loads: closed-loop callers (each submits, waits, submits again) and
open-loop Poisson arrivals, each for `--seconds`, after warm-up requests. Per point: requests/s, seconds of audio
per second, p50 / p95 / p99 latency (submission to audio on the host), and per text p50 / p95.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/serving.py --version v2ProPlus --json serving.json
"""

from __future__ import annotations

import argparse
import logging
import queue
import random
import statistics
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Callable

import torch
from common import setup, write
from pipeline import PROMPT_PHONES, Pipeline, build, make_request

from tts_compile.engine import Engine, EngineConfig, Params, Segment, TokenChunks, Voice
from tts_compile.engine.engine import COUNTERS
from tts_compile.engine.request import MARKS
from tts_compile.gpt_sovits import VERSIONS, optimize_pipeline
from tts_compile.tools.client import TEXTS

log = logging.getLogger("benchmarks.serving")
Submit = Callable[[str], Future]  # text label -> a future of the audio (samples)


class Serialized:
    """A server that runs one request at a time on one worker thread, as api_v2 does."""

    def __init__(self, pipeline: Pipeline, requests: dict) -> None:
        self.pipeline, self.requests = pipeline, requests
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, daemon=True).start()

    def submit(self, label: str) -> Future:
        future: Future = Future()
        self.jobs.put((label, future))
        return future

    def _work(self) -> None:
        while True:
            label, future = self.jobs.get()
            try:
                future.set_result(self.pipeline(self.requests[label], {}).shape[-1])
            except Exception as exc:  # noqa: BLE001 - counted as a failure by the load
                future.set_exception(exc)


def engine_submit(engine: Engine, voice: Voice, segments: dict, caps: dict, mode: int = 0,
                  min_chunk: int = 16, timings: list | None = None) -> Submit:
    """Requests to the engine; streamed with api_v2's `streaming_mode` `mode` (1: segments, 2 and 3: token chunks of
    at least `min_chunk` tokens), the result then (samples, seconds to the first audio). Each finished request's
    `Handle.timings()` goes to `timings`, when given."""
    chunks = TokenChunks(min_chunk, 2, mode == 2) if mode in (2, 3) else None

    def submit(label: str) -> Future:
        future: Future = Future()
        started = time.perf_counter()
        stream = mode > 0
        handle = engine.submit(voice, segments[label], Params(max_tokens=caps[label], fragment_interval=0.0),
                               stream=stream, chunks=chunks)

        def wait() -> None:
            try:
                if stream:
                    first = None
                    for _ in handle.chunks():
                        first = first or time.perf_counter() - started
                    future.set_result((handle.result()[0].shape[-1], first))
                else:
                    future.set_result(handle.result()[0].shape[-1])
                if timings is not None:
                    timings.append(handle.timings())
            except Exception as exc:  # noqa: BLE001 - counted as a failure by the load
                future.set_exception(exc)

        threading.Thread(target=wait, daemon=True).start()
        return future
    return submit


def stream_difference(engine: Engine, voice: Voice, segments: dict, caps: dict, min_chunk: int) -> dict:
    """Per text, one request whole and as a streaming_mode-3 stream (same seed, so the same tokens): the mean
    |log-magnitude| distance of their spectrograms, and the stream's largest jump between two samples at a seam
    between its pieces against the 99th percentile of its jumps elsewhere."""
    out = {}
    for label in segments:
        params = Params(max_tokens=caps[label], fragment_interval=0.0, seed=1)
        whole = engine.submit(voice, segments[label], params).result()[0]
        handle = engine.submit(voice, segments[label], params, chunks=TokenChunks(min_chunk, 2))
        pieces = [p for p in handle.chunks() if p.numel()]
        streamed = torch.cat(pieces)
        n = min(len(whole), len(streamed))
        window = torch.hann_window(1024)
        spectra = [torch.stft(x[:n], 1024, 256, window=window, return_complex=True).abs() for x in (whole, streamed)]
        jumps = (streamed[1:] - streamed[:-1]).abs()
        seams = torch.tensor([sum(len(p) for p in pieces[:i + 1]) - 1 for i in range(len(pieces) - 1)])
        out[label] = {"log_spectral_distance": float((torch.log(spectra[0] + 1e-5) - torch.log(spectra[1] + 1e-5))
                                                     .abs().mean()),
                      "samples_whole": len(whole), "samples_streamed": len(streamed), "pieces": len(pieces),
                      "seam_jump_max": float(jumps[seams].max()) if len(seams) else None,
                      "jump_p99": float(jumps.quantile(0.99))}
        log.info("%-6s stream vs whole: log-spectral distance %.3f, %d pieces, seam jump max %s vs p99 jump %.4f",
                 label, out[label]["log_spectral_distance"], len(pieces), out[label]["seam_jump_max"],
                 out[label]["jump_p99"])
    return out


def closed_loop(submit: Submit, labels: list[str], callers: int, seconds: float) -> list[dict]:
    """`callers` threads, each submitting the next text as soon as its last one returns, for `seconds`."""
    records, lock, stop = [], threading.Lock(), time.perf_counter() + seconds

    def caller(index: int) -> None:
        i = index
        while time.perf_counter() < stop:
            label = labels[i % len(labels)]
            i += callers
            records_one(submit, label, records, lock)

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return records


def open_loop(submit: Submit, labels: list[str], rate: float, seconds: float) -> list[dict]:
    """Poisson arrivals at `rate` per second for `seconds`, texts round robin; waits for every request."""
    records, lock, threads = [], threading.Lock(), []
    gen, start, i = random.Random(0), time.perf_counter(), 0
    while (now := time.perf_counter()) - start < seconds:
        threads.append(threading.Thread(target=records_one, args=(submit, labels[i % len(labels)], records, lock)))
        threads[-1].start()
        i += 1
        time.sleep(max(0.0, gen.expovariate(rate) - (time.perf_counter() - now)))
    [t.join() for t in threads]
    return records


def records_one(submit: Submit, label: str, records: list, lock: threading.Lock) -> None:
    started = time.perf_counter()
    first = None
    try:
        samples, error = submit(label).result(), None
        if isinstance(samples, tuple):  # a stream's
            samples, first = samples
    except Exception as exc:  # noqa: BLE001
        samples, error = 0, f"{type(exc).__name__}: {exc}"
    with lock:
        records.append({"text": label, "start": started, "end": time.perf_counter(), "samples": samples,
                        "error": error, "first": first})


def memory_over(submit: Submit, label: str, count: int, callers: int, device: torch.device) -> list[dict]:
    """`count` requests of one text from `callers` threads; GPU memory allocated and reserved after each tenth."""
    done, lock, marks = [0], threading.Lock(), []

    def caller() -> None:
        while True:
            with lock:
                if done[0] >= count:
                    return
                done[0] += 1
            submit(label).result()
            with lock:
                finished = len(marks)
                if done[0] * 10 // count > finished:
                    marks.append({"requests": done[0], "allocated_mib": torch.cuda.memory_allocated(device) / 2**20,
                                  "reserved_mib": torch.cuda.memory_reserved(device) / 2**20})

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    log.info("memory over %d requests: %s", count, [(m["requests"], round(m["allocated_mib"]), round(m["reserved_mib"]))
                                                   for m in marks])
    return marks


def pct(values: list[float], q: float) -> float | None:
    """The `q` quantile of sorted `values` (None when empty)."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def summarize(records: list[dict], rate: int) -> dict:
    ok = [r for r in records if r["error"] is None]
    wall = max(r["end"] for r in records) - min(r["start"] for r in records) if records else 0.0
    latency = sorted(r["end"] - r["start"] for r in ok)
    per_text = {t: sorted(r["end"] - r["start"] for r in ok if r["text"] == t) for t in {r["text"] for r in ok}}
    first = sorted(r["first"] for r in ok if r.get("first") is not None)
    return {"first_audio": {"p50": pct(first, 0.5), "p95": pct(first, 0.95), "p99": pct(first, 0.99)} if first
            else None,"requests": len(records), "failures": len(records) - len(ok), "wall_s": wall,
            "req_s": len(ok) / wall if wall else 0.0, "audio_s_per_s": sum(r["samples"] for r in ok) / rate / wall
            if wall else 0.0, "p50": pct(latency, 0.5), "p95": pct(latency, 0.95), "p99": pct(latency, 0.99),
            "per_text": {t: {"p50": pct(v, 0.5), "p95": pct(v, 0.95), "n": len(v)} for t, v in per_text.items()},
            "errors": sorted({r["error"] for r in records if r["error"]})[:5]}


def measure(name: str, submit: Submit, labels: list[str], loads: list[tuple[str, float]], seconds: float,
            rate: int, stats: Callable[[], dict] | None = None) -> dict:
    """Each load in turn after a warm-up; with `stats` (the engine's), each point also gets what its counters
    gained over the point (busy seconds of the loop and the renders, tokens, prefills, steps)."""
    for label in labels:  # warm-up: every text once, alone
        submit(label).result()
    points = {}
    for kind, value in loads:
        before = stats() if stats else {}
        records = (closed_loop(submit, labels, int(value), seconds) if kind == "callers"
                   else open_loop(submit, labels, value, seconds))
        points[f"{kind}={value:g}"] = summary = summarize(records, rate)
        if stats:
            after = stats()
            summary["counters"] = gained = {k: after[k] - before[k] for k in COUNTERS}
            log.info("%-18s counters over %.1f s: %s", "", summary["wall_s"],
                     {k: round(v, 2) if isinstance(v, float) else v for k, v in gained.items()})
        log.info("%-18s %-13s %6.2f req/s %7.2f audio-s/s  p50 %6.3f  p95 %6.3f  p99 %6.3f s  failures %d", name,
                 f"{kind}={value:g}", summary["req_s"], summary["audio_s_per_s"], summary["p50"] or 0,
                 summary["p95"] or 0, summary["p99"] or 0, summary["failures"])
        if summary["first_audio"]:
            log.info("%-18s %-13s first audio p50 %6.3f  p95 %6.3f  p99 %6.3f s", name, f"{kind}={value:g}",
                     *summary["first_audio"].values())
    return points


def steps(timings: list[dict]) -> dict:
    """p50 / p95 seconds of each step of a request's way (`MARKS`: from submission, then from the step before)."""
    out, timings = {}, [{"submitted": 0.0, **t} for t in timings]
    for before, after in zip(("submitted", *MARKS), MARKS):
        gaps = sorted(t[after] - t[before] for t in timings if before in t and after in t)
        if gaps:
            out[f"{before}->{after}"] = {"p50": pct(gaps, 0.5), "p95": pct(gaps, 0.95)}
    return out


def after_ready(submit: Submit, labels: list[str], repeats: int) -> dict:
    """Each text alone, `repeats` times in turn, from the moment the engine is ready: the first request's latency
    against the median of the others (what a first-sight capture or verification would cost a request)."""
    times: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(repeats):
        for label in labels:
            started = time.perf_counter()
            submit(label).result()
            times[label].append(time.perf_counter() - started)
    result = {label: {"first_s": t[0], "steady_s": statistics.median(t[1:]), "ratio": t[0] / statistics.median(t[1:]),
                      "all_s": t} for label, t in times.items()}
    log.info("after ready: %s", {label: f"{r['first_s']:.3f} s vs {r['steady_s']:.3f} ({r['ratio']:.2f}x)"
                                 for label, r in result.items()})
    return result


def workload(tts, version: str, device: torch.device, dtype: torch.dtype, smoke: bool):
    """The load's pieces: the serialized driver, requests per text (token counts capped at the text's mean
    segment), the engine's voice and segments per text, and the caps."""
    shape = VERSIONS[version]
    driver = Pipeline(tts, device, dtype, 2 if smoke else 32)
    requests = {label: make_request(text, device, dtype, seed=i) for i, (label, text) in enumerate(TEXTS.items())}
    caps = {label: max(2, round(sum(s.tokens for s in r) / len(r))) for label, r in requests.items()}
    requests = {label: [replace(s, tokens=caps[label]) for s in r] for label, r in requests.items()}
    gen = torch.Generator().manual_seed(9)
    voice = Voice(prompt_tokens=driver.prompt[0], prompt_phones=driver.prompt_phones[0],
                  prompt_bert=(0.1 * torch.randn(1024, PROMPT_PHONES, generator=gen)).to(device, dtype),
                  refer=(driver.refer,), sv_emb=(driver.sv_emb,) if "Pro" in version else None,
                  mel=driver.mel2 if shape.renderer == "cfm" else None)
    segments = {label: [Segment(s.phones[0, PROMPT_PHONES:], s.bert[0, :, PROMPT_PHONES:]) for s in r]
                for label, r in requests.items()}
    return driver, requests, voice, segments, caps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="v2ProPlus", choices=sorted(VERSIONS))
    parser.add_argument("--callers", default="1,4,16,64", help="closed-loop caller counts for the engine")
    parser.add_argument("--rates", default="5,15,30", help="Poisson arrival rates (req/s) for the engine")
    parser.add_argument("--serialized-callers", default="1,16", help="closed-loop caller counts, serialized paths")
    parser.add_argument("--upstream-callers", default="1", help="closed-loop caller counts for upstream as is")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each load point")
    parser.add_argument("--paths", default="upstream,optimize_pipeline,engine", help="which servers to measure")
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--kv-budget-gib", type=float, default=8.0)
    parser.add_argument("--render-workers", type=int, default=EngineConfig.render_workers)
    parser.add_argument("--warm-tokens", type=int, default=EngineConfig.warm_tokens,
                        help="render buckets prepared before the engine is ready (Engine.prepare); 0: none")
    parser.add_argument("--after-ready", type=int, default=5,
                        help="each text this many times alone once ready, before the loads: first vs steady latency")
    parser.add_argument("--memory-requests", type=int, default=0,
                        help="after the loads, this many short requests from 64 callers, GPU memory read meanwhile")
    parser.add_argument("--stream-modes", default="0",
                        help="the engine's loads once per api_v2 streaming_mode listed (0: whole, 1: segment by "
                             "segment, 2 and 3: token chunks, cut at mute-like tokens or fixed): first audio too")
    parser.add_argument("--min-chunk", type=int, default=16, help="api_v2's min_chunk_length, modes 2 and 3")
    parser.add_argument("--json", default="serving.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script")
    args = parser.parse_args()
    root, device, dtype = setup(args.smoke)
    shape = VERSIONS[args.version]
    tts = build(root, args.version, device, dtype, args.smoke)
    driver, requests, voice, segments, caps = workload(tts, args.version, device, dtype, args.smoke)
    labels = list(requests)
    numbers = lambda text: [float(v) for v in text.split(",") if v]  # noqa: E731
    results = {}
    paths = args.paths.split(",")
    with torch.inference_mode():
        if "upstream" in paths:
            results["upstream"] = measure("upstream", Serialized(driver, requests).submit, labels,
                                          [("callers", c) for c in numbers(args.upstream_callers)], args.seconds,
                                          shape.sample_rate)
        handle = optimize_pipeline(tts, compile_mode="eager" if args.smoke else "reduce-overhead")
        if "optimize_pipeline" in paths:
            results["optimize_pipeline"] = measure("optimize_pipeline", Serialized(driver, requests).submit, labels,
                                                   [("callers", c) for c in numbers(args.serialized_callers)],
                                                   args.seconds, shape.sample_rate)
            results["stages"] = handle.stats()  # counters, verification's cost (verifications, verify_ms) among them
            log.info("stages: %s", {name: {k: v for k, v in stats.items() if k.startswith("verif") or
                                           k == "rejected"} for name, stats in results["stages"].items()})
        started = time.perf_counter()
        config = EngineConfig(compile_mode="eager" if args.smoke else "cudagraphs", max_rows=args.max_rows,
                              kv_budget_gib=args.kv_budget_gib, render_workers=args.render_workers,
                              warm_tokens=args.warm_tokens, progress=False)
        engine = Engine.from_models(args.version, tts.t2s_model.model, tts.vits_model, tts.vocoder, config)
        built = time.perf_counter() - started
        renders = engine.prepare(voice) if args.warm_tokens else 0
        ready = time.perf_counter() - started
        log.info("engine built in %.1f s, %d renders prepared, ready in %.1f s: %s", built, renders, ready,
                 engine.stats())
        results["prepared_stages"] = engine.stage_stats()  # where start-up went: captures, verifications, their ms
        log.info("prepared stages: %s", {name: {k: v for k, v in stats.items() if k.startswith(("captur", "verif"))}
                                         for name, stats in results["prepared_stages"].items()})
        if args.after_ready > 1:
            results["after_ready"] = after_ready(engine_submit(engine, voice, segments, caps), labels,
                                                 args.after_ready)
        loads = [("callers", c) for c in numbers(args.callers)] + [("rate", r) for r in numbers(args.rates)]
        for mode in (int(m) for m in args.stream_modes.split(",")):
            name = "engine" if mode == 0 else f"engine, streaming_mode {mode}"
            results[name] = {}
            for load in loads:  # each point with its requests' timings: where their time went
                timings: list[dict] = []
                point = measure(name, engine_submit(engine, voice, segments, caps, mode, args.min_chunk, timings),
                                labels, [load], args.seconds, shape.sample_rate, engine.stats)
                for key, summary in point.items():
                    summary["steps"] = steps(timings)
                    log.info("%-18s %-13s steps p50 / p95 s: %s", name, key, {
                        k: f"{v['p50']:.3f} / {v['p95']:.3f}" for k, v in summary["steps"].items()})
                results[name].update(point)
        if "3" in args.stream_modes.split(","):
            results["stream_vs_whole"] = stream_difference(engine, voice, segments, caps, args.min_chunk)
        if args.memory_requests and device.type == "cuda":
            results["memory"] = memory_over(engine_submit(engine, voice, segments, caps), "short",
                                            args.memory_requests, 64, device)
        results["engine_stats"] = {**engine.stats(), "built_s": built, "prepared_renders": renders, "ready_s": ready}
        engine.close()
    write(args.json, {"version": args.version, "caps": caps, "args": vars(args), "results": results}, device)


if __name__ == "__main__":
    main()
