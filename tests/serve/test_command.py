"""`python -m tts_compile serve` as a user runs it: a subprocess on 127.0.0.1 over the stand-in models; it serves,
stops on `/control?command=exit`, and holds its memory under a bounded load."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import AUTH, KEY, free_port, reference

BODY = {"ref_audio_path": "ref.wav", "prompt_lang": "zh", "prompt_text": "你好。", "text_lang": "zh"}
TEXTS = ("你好。", "今天天气很好！", "一二三，四五六。")


@contextlib.contextmanager
def command(voices: Path, *flags: str):
    """The serve command running until the block ends (then stopped); yields (process, url) once it is ready."""
    port = free_port()
    (voices / "ref.wav").write_bytes(reference())
    log = voices.parent / f"{voices.name}-server.log"  # a file: a pipe nobody reads would block the server's log
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "tts_compile", "serve", "--port", str(port),
                                    "--voices-dir", str(voices), "--api-key", KEY, *flags], stdout=sink, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the server was not ready within 120 s")
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(30)


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_the_command_serves_restarts_and_stops_on_control(tmp_path) -> None:
    with command(tmp_path) as (process, url):
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/health").json() == {"status": "alive"}
            answer = client.post("/tts", json={**BODY, "text": "你好，世界。"})
            assert answer.status_code == 200 and answer.content[:4] == b"RIFF"
            assert client.get("/control", params={"command": "exit"}).status_code == 401
            restart = client.get("/control", params={"command": "restart"}, headers=AUTH)
            assert restart.json() == {"message": "restarting"}
            deadline = time.monotonic() + 120  # the same process started again: a new engine, nothing served yet
            while time.monotonic() < deadline:
                assert process.poll() is None
                with contextlib.suppress(httpx.TransportError):
                    if "tts_engine_submitted_total 0.0" in client.get("/metrics").text:
                        break
                time.sleep(0.2)
            else:
                pytest.fail("the server did not come back within 120 s")
            again = client.post("/tts", json={**BODY, "text": "再见。"})
            assert again.status_code == 200 and again.headers["X-TTS-Request-Id"] == "1"
            assert client.get("/control", params={"command": "exit"}, headers=AUTH).json() == {"message": "stopping"}
        assert process.wait(30) == 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc")
def test_two_thousand_requests_at_32_callers_are_all_answered_in_flat_memory(tmp_path) -> None:
    """Every request answered (200, or 503 were the queue full); the server's resident memory after the first 200
    requests and at the end within 10% (measured here: +2% from 200 to 2000 requests)."""
    with command(tmp_path, "--queue-size", "64") as (process, url):
        statuses: Counter[int] = Counter()
        memory = {}
        with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=32)) as client:
            def call(i: int) -> None:
                answer = client.post("/tts", json={**BODY, "text": TEXTS[i % 3], "seed": i})
                assert answer.status_code in (200, 503), answer.text
                assert answer.status_code == 503 or answer.content[:4] == b"RIFF"
                statuses[answer.status_code] += 1
                if sum(statuses.values()) == 200:
                    memory["after 200"] = resident_bytes(process.pid)

            with ThreadPoolExecutor(32) as pool:
                list(pool.map(call, range(2000)))
        memory["end"] = resident_bytes(process.pid)
    assert sum(statuses.values()) == 2000 and statuses[200] > 0, statuses
    assert memory["end"] <= 1.1 * memory["after 200"], memory


def test_the_command_refuses_bad_flags_in_one_line() -> None:
    answer = subprocess.run([sys.executable, "-m", "tts_compile", "serve", "--port", "0"], capture_output=True,
                            text=True, timeout=60)
    assert answer.returncode == 2 and answer.stderr.splitlines()[-1].endswith("argument --port: 0 is not >= 1")


def test_the_plugin_alone_never_imports_the_servers_dependencies() -> None:
    code = ("import sys, tts_compile, tts_compile.engine, tts_compile.gpt_sovits, tts_compile.vocoder; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'prometheus_client') if m in sys.modules))")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0 and answer.stdout.strip() == "[]", answer.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-replicas", "3"], "--max-replicas needs --replicas"),
    (["--request-timeout", "0"], "--request-timeout 0.0: expected seconds > 0"),
])
def test_bad_serve_flags_stop_with_one_line_naming_them(flags, message) -> None:
    done = subprocess.run([sys.executable, "-m", "tts_compile", "serve", *flags], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and message in done.stderr
