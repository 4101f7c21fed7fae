"""The service client against a real HTTP server on loopback: good WAVs, error statuses, timeouts, truncation."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.parse
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tts_compile.tools import cli
from tts_compile.tools.client import ClientConfig, WavError, run, send, wav_duration


def _wav(seconds: float, rate: int = 32000, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * channels * int(seconds * rate))
    return buffer.getvalue()


class _Service(BaseHTTPRequestHandler):
    """Answers by text: 'fail' -> 500, 'slow' -> sleeps, 'cut' -> truncated WAV, 'stream' -> streamed header,
    'badline' -> not HTTP, 'short' -> a body shorter than its Content-Length, 'empty' -> a WAV without samples,
    anything else -> a WAV of len(text) / 10 seconds. Records what it received."""

    received: list[tuple[str, str, dict]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        self._answer("GET", url.path, {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._answer("POST", self.path, body)

    def _answer(self, method: str, path: str, params: dict) -> None:
        self.received.append((method, path, params))
        text = params.get("text", "")
        if text == "fail":
            return self._send(500, b'{"message": "tts failed"}', "application/json")
        if text == "slow":
            time.sleep(1.5)
        if text == "badline":
            self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
            self.close_connection = True
            return None
        if text == "short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(_wav(0.1)[:100])
            self.close_connection = True
            return None
        if text == "empty":
            return self._send(200, _wav(0), "audio/wav")
        data = _wav(len(text) / 10)
        if text == "cut":
            data = data[: len(data) // 2]
        if text == "stream":
            data = data[:40] + b"\0\0\0\0" + data[44:]  # api_v2's streamed header: data size 0
        self._send(200, data, "audio/wav")

    def _send(self, status: int, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture()
def service():
    _Service.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_good_error_slow_and_truncated_requests_are_counted_not_raised(service) -> None:
    config = ClientConfig(url=service, texts={"ok": "x" * 20, "fail": "fail", "slow": "slow", "cut": "cut"},
                          requests=2, concurrency=4, timeout_s=0.5)
    report = run(config, progress=False)
    summary = report["summary"]
    assert summary["requests"] == 8 and summary["ok"] == 2
    assert summary["errors"] == {"HTTP 500": 2, "timeout": 2, "bad wav": 2}
    assert summary["per_text"]["ok"]["audio_s"] == pytest.approx(2.0)
    assert summary["per_text"]["ok"]["p50_s"] < 0.5 and summary["per_text"]["fail"]["p50_s"] is None
    assert summary["requests_per_s"] > 0 and summary["audio_s_per_s"] > 0
    statuses = {r["text"]: r["status"] for r in report["results"]}
    assert statuses["fail"] == 500 and statuses["slow"] is None and statuses["cut"] == 200


def test_api_v2_parameters_and_the_cached_voice_endpoint(service) -> None:
    send(ClientConfig(url=service, params={"ref_audio_path": "/srv/ref.wav", "top_k": 15}), "short", "你好")
    send(ClientConfig(url=service, endpoint="tts_with_cached_voice", method="get",
                      params={"voice_name": "alice"}), "short", "你好")
    (m1, p1, tts), (m2, p2, cached) = _Service.received
    assert (m1, p1) == ("POST", "/tts") and (m2, p2) == ("GET", "/tts_with_cached_voice")
    assert tts["text"] == "你好" and tts["text_lang"] == "zh" and tts["ref_audio_path"] == "/srv/ref.wav"
    assert tts["top_k"] == 15 and tts["media_type"] == "wav"
    assert cached["voice_name"] == "alice" and cached["speed_factor"] == "1.0" and "media_type" not in cached


def test_streamed_wav_header_counts_the_bytes_present(service) -> None:
    result = send(ClientConfig(url=service), "s", "stream")
    assert result.error is None and result.audio_s == pytest.approx(0.6)


def test_cli_prints_the_table_and_writes_json(service, tmp_path, capsys) -> None:
    out = tmp_path / "client.json"
    rc = cli.main(["client", "--url", service, "--text", "a=" + "y" * 30, "--requests", "2", "--param",
                   "top_k=5", "--json", str(out)])
    assert rc == 0
    assert "2/2 ok" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["summary"]["per_text"]["a"]["audio_s"] == pytest.approx(3.0)
    assert _Service.received[0][2]["top_k"] == 5


def test_warmup_requests_are_sent_first_and_kept_out_of_the_summary(service) -> None:
    report = run(ClientConfig(url=service, texts={"a": "x" * 10, "f": "fail"}, requests=1, warmup=2), progress=False)
    assert [p["text"] for _, _, p in _Service.received[:4]] == ["x" * 10, "fail"] * 2  # before any timed request
    assert len(_Service.received) == 6 and report["summary"]["requests"] == 2
    assert [w["error"] for w in report["warmup"]] == [None, "HTTP 500"] * 2


def test_bad_options_name_the_option() -> None:
    with pytest.raises(ValueError, match="concurrency=0"):
        ClientConfig(concurrency=0)
    with pytest.raises(ValueError, match="warmup=-1: expected an integer >= 0"):
        ClientConfig(warmup=-1)
    with pytest.raises(ValueError, match="endpoint='voices'"):
        ClientConfig(endpoint="voices")
    with pytest.raises(SystemExit, match="--param 'oops'"):
        cli.main(["client", "--param", "oops"])


@given(seconds=st.floats(0, 3), rate=st.sampled_from([16000, 24000, 32000, 48000]), channels=st.integers(1, 2))
def test_wav_duration_of_any_pcm_wav(seconds, rate, channels) -> None:
    data = _wav(seconds, rate, channels)
    assert wav_duration(data) == pytest.approx(int(seconds * rate) / rate)


@pytest.mark.parametrize("data,message", [(b"", "not a WAV"), (b"RIFF\0\0\0\0WAVEdata\4\0\0\0", "before a valid fmt"),
                                          (_wav(1.0)[:-100], "truncated"), (_wav(1.0)[:36], "no data chunk")])
def test_bad_wavs_are_named(data, message) -> None:
    with pytest.raises(WavError, match=message):
        wav_duration(data)


def test_protocol_errors_and_empty_audio_are_counted_not_raised(service) -> None:
    config = ClientConfig(url=service, texts={"badline": "badline", "short": "short", "empty": "empty",
                                              "ok": "hello"}, requests=1, concurrency=2)
    report = run(config, progress=False)
    errors = {r["text"]: r["error"] for r in report["results"]}
    assert errors["badline"].startswith("protocol: BadStatusLine")
    assert errors["short"].startswith("protocol: IncompleteRead")
    assert errors["empty"] == "bad wav: no audio" and errors["ok"] is None
    assert report["summary"]["ok"] == 1
