"""The engine in-process and behind `python -m tts_compile serve`'s HTTP server, side by side, one process.

One engine over upstream's modules (random weights, fp16) and the serving benchmark's voice, text mix and token caps
(`serving.py`). In-process: closed-loop callers submit to it directly for `--seconds`. Over HTTP: the server's app
(uvicorn on 127.0.0.1, in a thread of this process) over the same engine, loaded by `python -m tts_compile client`
(api_v2's `/tts`, WAV answers) with as many callers and about as many requests. The frontend is left out on both
sides (each text's segments are the workload's; upstream's BERT and G2P need pretrained models): what differs is
the HTTP layer, parsing, WAV encoding and the event loop. Per side: requests/s, p50 / p95 per text.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/server.py --json server.json
"""

from __future__ import annotations

import argparse
import logging
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

    def submit(self, voice, segments, params: Params | None = None, stream: bool = False):
        params = replace(params or Params(), max_tokens=self.caps[id(segments[0])], fragment_interval=0.0)
        return self.engine.submit(voice, segments, params, stream)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="v2ProPlus", choices=sorted(VERSIONS))
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="the in-process load's duration")
    parser.add_argument("--requests", type=int, default=0,
                        help="HTTP requests per text (default: as many as in-process served in its load)")
    parser.add_argument("--json", default="server.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script")
    args = parser.parse_args()
    root, device, dtype = setup(args.smoke)
    shape = VERSIONS[args.version]
    tts = build(root, args.version, device, dtype, args.smoke)
    _, requests, voice, segments, caps = workload(tts, args.version, device, dtype, args.smoke)
    labels = list(requests)
    config = EngineConfig(compile_mode="eager" if args.smoke else "cudagraphs", max_rows=64, kv_budget_gib=8.0,
                          progress=False)
    engine = Engine.from_models(args.version, tts.t2s_model.model, tts.vits_model, tts.vocoder, config)
    results = {}
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
        client = ClientConfig(url="http://127.0.0.1:9897", endpoint="tts", texts=dict(TEXTS), requests=per_text,
                              warmup=1, concurrency=args.callers, timeout_s=300,
                              params={"ref_audio_path": "ref.wav", "prompt_text": "x", "prompt_lang": "zh"})
        report = run(client, progress=False)
        web.should_exit = True
        thread.join(30)
    engine.close()
    results["http"] = http = report["summary"]
    ratio = http["requests_per_s"] / summary["req_s"] if summary["req_s"] else None
    results["http_over_in_process"] = ratio
    log.info("in-process: %.2f req/s, p50 per text %s", summary["req_s"],
             {t: round(v["p50"], 3) for t, v in summary["per_text"].items()})
    log.info("http      : %.2f req/s, p50 per text %s, errors %s", http["requests_per_s"],
             {t: round(v["p50_s"], 3) for t, v in http["per_text"].items() if v["p50_s"]}, http["errors"])
    log.info("http / in-process throughput: %.3f", ratio or 0)
    write(args.json, {"version": args.version, "args": vars(args), "caps": caps, "results": results}, device)


if __name__ == "__main__":
    main()
