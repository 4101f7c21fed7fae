"""`python -m tts_compile client`: load a running GPT-SoVITS service and report latency and throughput.

Endpoints: `tts` (upstream api_v2's parameters), `tts_with_cached_voice` (a cached-voice endpoint: `voice_name`,
`text`, `text_lang`, `temperature`, `speed_factor`) or `v1/audio/speech` (OpenAI's: `input`, `voice`). Every request
is timed to its first audio bytes and to its end (the same unless the answer streams), its status kept and its WAV
parsed for the audio duration; failures (HTTP errors, timeouts, refused connections, bad or truncated WAVs) are counted,
never raised. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import statistics
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.progress import ProgressBar

ENDPOINTS = ("tts", "tts_with_cached_voice", "v1/audio/speech")
WAV_HEADER = 44  # bytes before a (streamed) WAV's first sample
TEXTS = {  # our own short / medium / long Chinese texts (about 2, 7 and 20 s of speech)
    "short": "你好，欢迎使用语音合成服务。",
    "medium": "今天天气很好，我们一起去公园散步吧。路边的花都开了，空气里有淡淡的香味，孩子们在草地上追逐嬉戏。",
    "long": ("人工智能正在改变我们的生活方式。从清晨的智能闹钟，到通勤路上的语音导航，再到晚上陪伴孩子入睡的故事"
             "机器人，语音合成技术已经悄悄地走进了千家万户。一个好的语音合成系统，不仅要读得准确，还要读得自然，"
             "能够根据上下文调整语气和停顿，让听的人感到亲切。为了做到这一点，研究人员需要大量的数据和计算资源，"
             "也需要在速度和质量之间找到合适的平衡。"),
}


class WavError(ValueError):
    """The response body is not a complete PCM WAV file."""


def wav_duration(data: bytes) -> float:
    """Seconds of audio in a PCM WAV. A data size of 0 or 0xFFFFFFFF (a streamed header) means 'to the end'."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(f"not a WAV file ({len(data)} bytes, starts {data[:4]!r})")
    position, byte_rate = 12, None
    while position + 8 <= len(data):
        chunk, size = data[position : position + 4], struct.unpack("<I", data[position + 4 : position + 8])[0]
        body = position + 8
        if chunk == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise WavError("truncated fmt chunk")
            byte_rate = struct.unpack("<I", data[body + 8 : body + 12])[0]
        elif chunk == b"data":
            if byte_rate is None or byte_rate == 0:
                raise WavError("data chunk before a valid fmt chunk")
            available = len(data) - body
            if size in (0, 0xFFFFFFFF):
                size = available
            elif size > available:
                raise WavError(f"truncated: data chunk declares {size} bytes, {available} present")
            return size / byte_rate
        position = body + size + (size & 1)
    raise WavError("no data chunk")


@dataclass
class Result:
    """One request: which text, HTTP status (None: no response), latency, audio seconds, error kind, seconds to the
    first audio bytes."""

    text: str
    status: int | None
    latency_s: float
    audio_s: float | None = None
    error: str | None = None
    first_audio_s: float | None = None


@dataclass
class ClientConfig:
    """What to send where: the service, the endpoint and its parameters, the load."""

    url: str = "http://127.0.0.1:9880"
    endpoint: str = "tts"
    texts: dict[str, str] = field(default_factory=lambda: dict(TEXTS))
    requests: int = 3
    warmup: int = 0  # untimed requests per text first, one at a time (a service captures its graphs on first sight)
    concurrency: int = 1
    timeout_s: float = 300.0
    method: str = "post"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint={self.endpoint!r}: expected one of {', '.join(ENDPOINTS)}")
        if self.method not in ("get", "post"):
            raise ValueError(f"method={self.method!r}: expected get or post")
        for name, least in (("requests", 1), ("concurrency", 1), ("warmup", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= {least}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s={self.timeout_s!r}: expected seconds > 0")
        if not self.texts:
            raise ValueError("texts: expected at least one text")

    def body(self, text: str) -> dict[str, Any]:
        """The request parameters: the text, the endpoint's defaults, then the user's `params`."""
        if self.endpoint == "v1/audio/speech":
            return {"model": "tts_compile", "input": text, "voice": "default", "response_format": "wav",
                    **self.params}
        base = {"text": text, "text_lang": "zh"}
        if self.endpoint == "tts":
            base.update(prompt_lang="zh", media_type="wav", streaming_mode=False)
        else:
            base.update(voice_name="default", temperature=1.0, speed_factor=1.0)
        return {**base, **self.params}


def send(config: ClientConfig, label: str, text: str) -> Result:
    """One request; never raises for a failed request."""
    url = config.url.rstrip("/") + "/" + config.endpoint
    body = config.body(text)
    if config.method == "get":
        request = urllib.request.Request(url + "?" + urllib.parse.urlencode(body))
    else:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
            status, parts, size, first = response.status, [], 0, None
            while piece := response.read1(65536):
                parts.append(piece)
                size += len(piece)
                if first is None and size > WAV_HEADER:
                    first = time.perf_counter() - start
            data = b"".join(parts)
            if response.length:  # the connection closed before the declared Content-Length
                raise http.client.IncompleteRead(data, response.length)
    except urllib.error.HTTPError as exc:
        return Result(label, exc.code, time.perf_counter() - start, error=f"HTTP {exc.code}")
    except (TimeoutError, OSError) as exc:  # URLError, refused, reset, socket timeout
        reason = getattr(exc, "reason", exc)
        kind = "timeout" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else "connection"
        return Result(label, None, time.perf_counter() - start, error=f"{kind}: {reason}")
    except http.client.HTTPException as exc:  # not HTTP (BadStatusLine), a body cut short (IncompleteRead)
        return Result(label, None, time.perf_counter() - start, error=f"protocol: {type(exc).__name__}: {exc}")
    latency = time.perf_counter() - start
    try:
        seconds = wav_duration(data)
    except WavError as exc:
        return Result(label, status, latency, error=f"bad wav: {exc}")
    return Result(label, status, latency, audio_s=seconds, error=None if seconds > 0 else "bad wav: no audio",
                  first_audio_s=first)


def run(config: ClientConfig, progress: bool = True) -> dict[str, Any]:
    """Send `warmup` untimed requests per text, then `requests` per text with `concurrency` callers; per-request
    results and a summary of the timed ones (warm-up results are kept apart)."""
    warmups = [send(config, label, text) for _ in range(config.warmup) for label, text in config.texts.items()]
    jobs = [(label, text) for _ in range(config.requests) for label, text in config.texts.items()]
    results: list[Result] = []
    start = time.perf_counter()
    with ProgressBar(len(jobs), "requests", progress) as bar, ThreadPoolExecutor(config.concurrency) as pool:
        for future in as_completed([pool.submit(send, config, label, text) for label, text in jobs]):
            results.append(future.result())  # collected in this thread only
            bar.advance(results[-1].error or f"{results[-1].latency_s:.2f} s")
    wall = time.perf_counter() - start
    return {"config": asdict(config), "wall_s": wall, "summary": summarize(results, wall, config.texts),
            "results": [asdict(r) for r in results], "warmup": [asdict(r) for r in warmups]}


def summarize(results: list[Result], wall_s: float, texts: dict[str, str]) -> dict[str, Any]:
    """p50/p95 latency per text (successful requests), requests/s, audio seconds per second, errors by kind."""
    ok = [r for r in results if r.error is None]
    per_text = {}
    for label in texts:
        latencies = sorted(r.latency_s for r in ok if r.text == label)
        firsts = sorted(r.first_audio_s for r in ok if r.text == label)
        per_text[label] = {
            "ok": len(latencies), "errors": sum(r.text == label and r.error is not None for r in results),
            "p50_s": statistics.median(latencies) if latencies else None,
            "p95_s": _percentile(latencies, 0.95) if latencies else None,
            "first_p50_s": statistics.median(firsts) if firsts else None,
            "first_p95_s": _percentile(firsts, 0.95) if firsts else None,
            "audio_s": statistics.mean(r.audio_s for r in ok if r.text == label) if latencies else None,
        }
    errors = Counter(r.error.split(":")[0] for r in results if r.error)
    return {"requests": len(results), "ok": len(ok), "errors": dict(errors), "wall_s": wall_s,
            "requests_per_s": len(ok) / wall_s if wall_s > 0 else None,
            "audio_s_per_s": sum(r.audio_s for r in ok) / wall_s if wall_s > 0 else None, "per_text": per_text}


def table(report: dict[str, Any]) -> str:
    """The summary as text lines."""
    s = report["summary"]
    lines = [f"{report['config']['url']}/{report['config']['endpoint']}: {s['ok']}/{s['requests']} ok in "
             f"{s['wall_s']:.1f} s, concurrency {report['config']['concurrency']}, "
             f"{_fmt(s['requests_per_s'])} req/s, {_fmt(s['audio_s_per_s'])} audio s/s"
             + (f", errors {s['errors']}" if s["errors"] else ""),
             f"  {'text':8} {'ok':>4} {'err':>4} {'p50 s':>8} {'p95 s':>8} {'first p50':>9} {'first p95':>9} "
             f"{'audio s':>8}"]
    for label, t in s["per_text"].items():
        lines.append(f"  {label:8} {t['ok']:4d} {t['errors']:4d} {_fmt(t['p50_s']):>8} {_fmt(t['p95_s']):>8} "
                     f"{_fmt(t['first_p50_s']):>9} {_fmt(t['first_p95_s']):>9} {_fmt(t['audio_s']):>8}")
    return "\n".join(lines)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks."""
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
