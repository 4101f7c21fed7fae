"""Many engines behind one address with Ray Serve: `python -m tts_compile serve --replicas N`.

Each replica is the single-process server's FastAPI application (one definition of the routes), built in the
replica's own process with its own backend (one engine per GPU, `num_gpus: 1`, where there is one); Serve's proxy
routes requests to replicas, streams their answers, replaces a replica that dies and, with `max_replicas`, scales on
ongoing requests per replica. Every answer names its replica in `X-TTS-Replica`. Voices live in the voices
directory, shared by the replicas (a network file system across hosts), and so does the record of weight switches
(`shared`), which every replica follows. Needs the `ray` extra (`pip install tts-compile[ray]`); the single-process
server never imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import ray
from fastapi import FastAPI
from ray import serve
from starlette.requests import Request

from .app import HTTPError, Settings, create_app
from .backend import Backend, builder
from .shared import SharedWeights

logger = logging.getLogger(__name__)

HEADER = "X-TTS-Replica"
ONGOING_TARGET = 16  # autoscaling: ongoing requests per replica it aims at (the engine batches them)
MAX_ONGOING = 256  # requests Serve hands one replica at once (its engine's queue holds them; queue_size's default)


def replica_app(settings: Settings, build: Callable[[], Backend]) -> FastAPI:
    """The application one replica serves (run in the replica's process): the backend built, and switched to the
    deployment's weights, before Serve routes to it; its answers named by `replica:pid`."""
    backend = build()
    shared = SharedWeights(settings.voices_dir, backend)
    with contextlib.suppress(HTTPError):  # weights it cannot load: logged, and its requests answer 503 saying so
        shared.follow()
    app = create_app(settings, backend)
    app.state.server.shared = shared
    name = f"{serve.get_replica_context().replica_tag}:{os.getpid()}"

    @app.middleware("http")
    async def name_the_replica(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers[HEADER] = name
        return response

    return app


def deploy(settings: Settings, build: Callable[[], Backend], replicas: int, max_replicas: int | None = None,
           gpus: float = 0.0) -> Any:
    """The Serve application: `replicas` replicas (autoscaled up to `max_replicas` when larger), each with `gpus`."""
    scaling: dict[str, Any] = {"num_replicas": replicas}
    if max_replicas is not None and max_replicas > replicas:
        scaling = {"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                          "target_ongoing_requests": ONGOING_TARGET}}
    def builder() -> FastAPI:  # a function: Serve calls it in each replica's process
        return replica_app(settings, build)

    ingress = serve.ingress(builder)
    deployment = serve.deployment(name="tts_compile", ray_actor_options={"num_cpus": 0, "num_gpus": gpus},
                                  max_ongoing_requests=MAX_ONGOING, **scaling)(ingress())
    return deployment.bind()


def app(args: dict[str, Any]) -> Any:
    """`serve deploy`'s application builder (`import_path: tts_compile.serve.replicas:app`, see
    configs/ray_serve.yaml). `args`: `config` (upstream's tts_infer.yaml; absent: the stand-in models), `voices_dir`
    (shared by the replicas), `api_key` (default $TTS_COMPILE_API_KEY), `replicas`, `max_replicas`, `gpus` per
    replica (default 1 with a config, 0 without)."""
    unknown = set(args) - {"config", "voices_dir", "api_key", "replicas", "max_replicas", "gpus"}
    if unknown:
        raise ValueError(f"args {sorted(unknown)} are not supported: expected config, voices_dir, api_key, replicas, "
                         "max_replicas, gpus")
    path = args.get("config")
    build = builder(path)
    settings = Settings(Path(args.get("voices_dir", "voices")), exposed=True,
                        api_key=args.get("api_key") or os.environ.get("TTS_COMPILE_API_KEY"))
    return deploy(settings, build, int(args.get("replicas", 1)), args.get("max_replicas"),
                  float(args.get("gpus", 1.0 if path is not None else 0.0)))


def run(settings: Settings, build: Callable[[], Backend], replicas: int, host: str, port: int,
        max_replicas: int | None = None, gpus: float = 0.0) -> None:
    """Start a local Ray instance, serve until SIGINT or SIGTERM, then stop the deployment and Ray."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deploy(settings, build, replicas, max_replicas, gpus), name="tts_compile", route_prefix="/")
        logger.info("serve: %d replicas ready on http://%s:%d (Ray Serve)", replicas, host, port)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
