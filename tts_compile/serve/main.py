"""Running the server: uvicorn answers at once (`/health`), the models are built and warmed up beside it, and
`/ready` and the other routes serve once they are. `/control?command=restart` stops it as `exit` does, then starts
the same command again in the same process (as api_v2 does)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Callable

import uvicorn

from .app import Settings, create_app
from .backend import Backend

logger = logging.getLogger(__name__)
GRACE_S = 30  # seconds the requests in flight get to finish once the server is told to stop


def serve(settings: Settings, build: Callable[[], Backend], host: str = "127.0.0.1", port: int = 9880) -> None:
    """Serve until stopped (Ctrl-C, SIGTERM or `/control?command=exit|restart`); the backend from `build()`."""
    app = create_app(settings)
    server = app.state.server
    web = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                        timeout_graceful_shutdown=GRACE_S))
    stop: list[str] = []

    def shutdown(command: str) -> None:
        stop.append(command)
        web.should_exit = True

    server.shutdown = shutdown
    failed: list[BaseException] = []

    def warm_up() -> None:
        try:
            backend = build()
        except BaseException as exc:  # noqa: BLE001 - reported, and the server stops
            logger.exception("serve: the models could not be built; stopping")
            failed.append(exc)
            web.should_exit = True
            return
        server.ready(backend)
        logger.info("serve: ready on http://%s:%d with %s", host, port, backend.description)

    threading.Thread(target=warm_up, name="tts_compile-warm-up", daemon=True).start()
    logger.info("serve: listening on http://%s:%d; building the models", host, port)
    try:
        web.run()
    finally:
        if server.backend is not None:
            server.backend.close()
    if failed:
        raise SystemExit(f"serve: the models could not be built: {failed[0]}")
    if stop[:1] == ["restart"]:
        logger.info("serve: restarting")
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
