"""An api_v2-style GPT-SoVITS service for `python -m tts_compile client` to load, as is or optimized.

api_v2's `/tts` endpoint (GET query or POST JSON, api_v2's parameter names; `text` required, the rest accepted)
answering with a 16-bit PCM WAV. Like api_v2, whose handler runs `TTS.run` on its event loop's one thread, every
request runs on one long-lived worker thread, one at a time: a new thread per request would pay torch's per-thread
warm-up each time (H200: upstream's T2S 3.5-4.3 s on a fresh thread, 0.34 s on a warm one). Each request goes through
`pipeline.py`'s driver of upstream's own stages (random weights, fp16; its docstring lists what it leaves out). The
text sets the segments and token counts, the same for the same text. `--optimize` runs `optimize_pipeline` before
the port opens.

Usage (repo root, GPU): GPT_SOVITS_HOME=upstream python benchmarks/service.py --version v2ProPlus --optimize
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
import urllib.parse
import wave
import zlib
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from common import setup
from pipeline import Pipeline, build, make_request

from tts_compile.gpt_sovits import VERSIONS, optimize_pipeline

log = logging.getLogger("benchmarks.service")


def wav(audio: torch.Tensor, rate: int) -> bytes:
    """Mono 16-bit PCM WAV of audio in [-1, 1]."""
    pcm = (audio.float().flatten().clamp(-1, 1) * 32767).to(torch.int16).cpu().numpy().tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buffer.getvalue()


class Service(BaseHTTPRequestHandler):
    """`/tts`: a WAV of the request's text through `pipeline`; 400 without `text`, 404 elsewhere, 500 on failure."""

    pipeline: Pipeline
    dtype: torch.dtype
    rate: int
    worker = ThreadPoolExecutor(1)  # every request on one thread, in turn, as api_v2's event loop runs them

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        self._answer(url.path, {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        try:
            params = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._send(400, {"message": "body is not JSON"})
        self._answer(urllib.parse.urlparse(self.path).path, params)

    def _answer(self, path: str, params: dict) -> None:
        if path != "/tts":
            return self._send(404, {"message": f"no endpoint {path}"})
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            return self._send(400, {"message": "text is required"})
        start = time.perf_counter()
        try:
            audio = self.worker.submit(self._synthesize, text).result()
            log.info("%d characters: %.3f s", len(text), time.perf_counter() - start)
        except Exception as exc:  # the service answers 500 and goes on, as api_v2 does
            log.exception("request failed")
            return self._send(500, {"message": f"tts failed: {exc}"})
        self._send(200, wav(audio, self.rate), "audio/wav")

    def _synthesize(self, text: str) -> torch.Tensor:
        """The text's audio: its segments and token counts (the same for the same text) through the pipeline."""
        request = make_request(text, self.pipeline.device, self.dtype, seed=zlib.crc32(text.encode()))
        return self.pipeline(request, {})

    def _send(self, status: int, body: dict | bytes, kind: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # one line per request from _answer instead
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="v2ProPlus", choices=sorted(VERSIONS))
    parser.add_argument("--optimize", action="store_true", help="optimize_pipeline before serving")
    parser.add_argument("--mode", default="reduce-overhead", help="compile_mode for optimize_pipeline")
    parser.add_argument("--port", type=int, default=9880)
    parser.add_argument("--ready-file", default=None, help="written once the port is open")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the service only")
    args = parser.parse_args()
    root, device, dtype = setup(args.smoke)
    tts = build(root, args.version, device, dtype, args.smoke)
    if args.optimize:
        start = time.perf_counter()
        optimize_pipeline(tts, compile_mode="eager" if args.smoke else args.mode)
        log.info("optimize_pipeline ready in %.1f s", time.perf_counter() - start)
    Service.pipeline = Pipeline(tts, device, dtype, steps=2 if args.smoke else 32)
    Service.dtype, Service.rate = dtype, VERSIONS[args.version].sample_rate
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Service)
    log.info("%s %s serving on port %d", args.version, "optimized" if args.optimize else "as is", args.port)
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
