"""The server for tests: uvicorn on 127.0.0.1 (a free port) over the stand-in models, in a thread of this process so
a test can hold the engine's steps or renders; `tests/serve/test_command.py` starts the real command instead."""

from __future__ import annotations

import contextlib
import io
import math
import socket
import struct
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import uvicorn

from tts_compile.engine import EngineConfig
from tts_compile.serve import Settings, StandIns, create_app

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference(seconds: float = 4.0, rate: int = 32000, pitch: float = 0.05) -> bytes:
    """A mono 16-bit WAV of a tone, `seconds` long."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(b"".join(struct.pack("<h", int(3000 * math.sin(i * pitch))) for i in range(int(seconds * rate))))
    return buffer.getvalue()


@contextlib.contextmanager
def running(voices_dir: Path, backend=None, **settings) -> Iterator[SimpleNamespace]:
    """A live server over `backend` (default: fresh stand-ins); yields its url, backend and server state."""
    queue_size = settings.pop("queue_size", 64)
    backend = backend or StandIns("v2ProPlus", EngineConfig(compile_mode="eager", max_rows=8, queue_size=queue_size))
    app = create_app(Settings(voices_dir, **{"api_key": KEY, **settings}), backend)
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", backend=backend, state=app.state.server)
    finally:
        web.should_exit = True
        thread.join(30)
        backend.close()


def hold_steps(engine) -> threading.Event:
    """Hold the engine's decode steps until the returned event is set."""
    gate, steps = threading.Event(), engine.t2s.steps
    engine.t2s.steps = lambda count, nucleus: gate.wait() and steps(count, nucleus)
    return gate
