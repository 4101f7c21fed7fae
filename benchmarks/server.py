"""The engine in-process and behind `python -m tts_compile serve`'s HTTP server, side by side, one engine.

One engine over upstream's modules (random weights, fp16) and the serving benchmark's voice, text mix and token caps
(`serving.py`). In-process: closed-loop callers submit to it directly for `--seconds`. Over HTTP: the server's app
(uvicorn on 127.0.0.1, in a thread of this process) over the same engine, loaded by `python -m tts_compile client`'s
`run` from a process of its own (api_v2's `/tts`, WAV answers) with as many callers and about as many requests. The
frontend is left out on both sides (each text's segments are the workload's; upstream's BERT and G2P need
pretrained models): what differs is the HTTP layer, parsing, WAV encoding and the event loop. With `--ray N` (the
`ray` extra), a third side: the same app as N Ray Serve replicas (`serve.replicas.deploy`, one GPU each where there
is one), each building its own models and engine in its own process, loaded the same way through Serve's proxy:
what Ray's routing costs. Per side: requests/s, p50 / p95 per text.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/server.py --json server.json [--ray 1]
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
import uvicorn
from common import setup, write
from pipeline import build
from serving import engine_submit, measure, workload

from tts_compile.engine import Engine, EngineConfig, Params
from tts_compile.gpt_sovits import VERSIONS
from tts_compile.serve import Backend, Settings, create_app
from tts_compile.serve.audio import wav_header
from tts_compile.tools.client import TEXTS, ClientConfig, run

log = logging.getLogger("benchmarks.server")


class Capped:
    """The engine, each request's segments capped at its text's token count (random weights never stop)."""

    def __init__(self, engine: Engine, caps: dict[int, int]) -> None:
        self.engine, self.caps = engine, caps

    def submit(self, voice, segments, params: Params | None = None, **options):
        params = replace(params or Params(), max_tokens=self.caps[id(segments[0])], fragment_interval=0.0)
        return self.engine.submit(voice, segments, params, **options)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


class Workload(Backend):
    """The workload's voice for any reference, and its segments for each of the client's texts."""

    def __init__(self, engine: Engine, voice, segments: dict, caps: dict, version: str) -> None:
        super().__init__()
        self.engine = Capped(engine, {id(segments[label][0]): caps[label] for label in segments})
        self.version, self._voice = version, voice
        self._texts = {TEXTS[label]: segments[label] for label in segments}
        self.description = "the serving benchmark's workload"

    def segments(self, text: str, lang: str, split_method: str):
        return self._texts[text]

    def voice(self, ref_audio: bytes, prompt_text: str, prompt_lang: str):
        return self._voice


def engine_config(smoke: bool) -> EngineConfig:
    return EngineConfig(compile_mode="eager" if smoke else "cudagraphs", max_rows=64, kv_budget_gib=8.0,
                        progress=False)


def replica_backend(version: str, smoke: bool) -> Workload:
    """A Ray Serve replica's backend: the workload's models and engine, built in the replica's process."""
    root, device, dtype = setup(smoke)
    tts = build(root, version, device, dtype, smoke)
    _, _, voice, segments, caps = workload(tts, version, device, dtype, smoke)
    engine = Engine.from_models(version, tts.t2s_model.model, tts.vits_model, tts.vocoder, engine_config(smoke))
    return Workload(engine, voice, segments, caps, version)


def load(url: str, per_text: int, callers: int) -> dict:
    """The client's load on a server at `url`: `per_text` requests of each text from `callers` callers, sent from a
    process of its own (as a real client's are), so its threads do not share the server's interpreter lock."""
    client = ClientConfig(url=url, endpoint="tts", texts=dict(TEXTS), requests=per_text, warmup=1,
                          concurrency=callers, timeout_s=300,
                          params={"ref_audio_path": "ref.wav", "prompt_text": "x", "prompt_lang": "zh"})
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run, (client, False))["summary"]


def on_ray(folder: Path, args: argparse.Namespace, per_text: int, gpus: float) -> dict:
    """The load through `args.ray` Ray Serve replicas of the app on a local Ray instance."""
    import ray
    from ray import serve

    from tts_compile.serve.replicas import deploy

    ray.init(include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 9898})
        backend = functools.partial(replica_backend, args.version, args.smoke)
        serve.run(deploy(Settings(folder), backend, args.ray, gpus=gpus), name="benchmark", route_prefix="/")
        return load("http://127.0.0.1:9898", per_text, args.callers)
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="v2ProPlus", choices=sorted(VERSIONS))
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="the in-process load's duration")
    parser.add_argument("--requests", type=int, default=0,
                        help="HTTP requests per text (default: as many as in-process served in its load)")
    parser.add_argument("--warm-tokens", type=int, default=EngineConfig.warm_tokens,
                        help="render buckets prepared before the loads (Engine's `prepare`); 0: none")
    parser.add_argument("--ray", type=int, default=0, help="also through this many Ray Serve replicas (0: not)")
    parser.add_argument("--json", default="server.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.warm_tokens = min(args.warm_tokens, 48)
    root, device, dtype = setup(args.smoke)
    shape = VERSIONS[args.version]
    tts = build(root, args.version, device, dtype, args.smoke)
    _, requests, voice, segments, caps = workload(tts, args.version, device, dtype, args.smoke)
    labels = list(requests)
    started = time.perf_counter()
    engine = Engine.from_models(args.version, tts.t2s_model.model, tts.vits_model, tts.vocoder,
                                engine_config(args.smoke))
    if args.warm_tokens:
        engine.prepare(voice.to(device, dtype), args.warm_tokens)
    results = {"ready_s": time.perf_counter() - started}
    log.info("engine ready in %.1f s", results["ready_s"])
    with torch.inference_mode():
        point = measure("in-process", engine_submit(engine, voice, segments, caps), labels,
                        [("callers", args.callers)], args.seconds, shape.sample_rate)
    results["in_process"] = summary = point[f"callers={args.callers:g}"]
    per_text = args.requests or max(2, round(summary["req_s"] * args.seconds / len(labels)))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "ref.wav").write_bytes(wav_header(32000, 0))
        app = create_app(Settings(Path(folder)), Workload(engine, voice, segments, caps, args.version))
        web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=9897, log_level="warning"))
        thread = threading.Thread(target=web.run, daemon=True)
        thread.start()
        while not web.started:
            time.sleep(0.05)
        results["http"] = http = load("http://127.0.0.1:9897", per_text, args.callers)
        web.should_exit = True
        thread.join(30)
        engine.close()
        if args.ray:
            results["ray"] = on_ray(Path(folder), args, per_text, 1.0 if device.type == "cuda" else 0.0)
    ratio = http["requests_per_s"] / summary["req_s"] if summary["req_s"] else None
    results["http_over_in_process"] = ratio
    log.info("in-process: %.2f req/s, p50 per text %s", summary["req_s"],
             {t: round(v["p50"], 3) for t, v in summary["per_text"].items()})
    log.info("http      : %.2f req/s, p50 per text %s, errors %s", http["requests_per_s"],
             {t: round(v["p50_s"], 3) for t, v in http["per_text"].items() if v["p50_s"]}, http["errors"])
    log.info("http / in-process throughput: %.3f", ratio or 0)
    if args.ray:
        ray_side = results["ray"]
        results["ray_over_http"] = ray_side["requests_per_s"] / http["requests_per_s"] if http["requests_per_s"] \
            else None
        log.info("ray (%d replicas): %.2f req/s, p50 per text %s, errors %s; ray / http throughput: %.3f", args.ray,
                 ray_side["requests_per_s"], {t: round(v["p50_s"], 3) for t, v in ray_side["per_text"].items()
                                              if v["p50_s"]}, ray_side["errors"], results["ray_over_http"] or 0)
    write(args.json, {"version": args.version, "args": vars(args), "caps": caps, "results": results}, device)


if __name__ == "__main__":
    main()
