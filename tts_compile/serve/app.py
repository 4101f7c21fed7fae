"""The FastAPI application: api_v2's routes (drop-in), the cached-voice route, the voice registry, OpenAI's
`/v1/audio/speech`, and `/health`, `/ready`, `/metrics`, over one engine.

Every request is submitted to the engine at once and awaited (the event loop never runs a model); a stream's
segments go out as the engine renders them. Errors answer for their request alone, in api_v2's shape (`{"message":
...}`; OpenAI's shape under `/v1`): 400 bad input, 401 a missing or wrong API key, 403 a reference path outside the
voices directory, 404 an unknown voice, 413 a body over the limit, 503 full (with `Retry-After`) or warming up, 504
past the deadline, 500 for anything else, never with a traceback. A client that disconnects cancels its request.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.guard import InputError
from ..engine import Cancelled, DeadlinePassed, EngineClosed, Handle, QueueFull
from .audio import MEDIA_TYPES, encode, pcm16, wav_header
from .backend import Backend, prepare
from .metrics import Metrics
from .requests import Synthesis, check_speed, parse
from .voices import Forbidden, UnknownVoice, VoiceStore

logger = logging.getLogger(__name__)
access = logging.getLogger("tts_compile.access")

OPENAI_FORMATS = ("wav", "pcm")
CONTROL = ("exit", "restart")
ROUTES = {"/tts", "/tts_with_cached_voice", "/v1/audio/speech", "/voices", "/set_refer_audio", "/set_gpt_weights",
          "/set_sovits_weights", "/control", "/health", "/ready", "/metrics"}


@dataclass(frozen=True)
class Settings:
    """The server's limits and places (the `serve` command's flags)."""

    voices_dir: Path
    api_key: str | None = None
    max_text_chars: int = 5000
    max_body_bytes: int = 16 * 2**20
    request_timeout_s: float = 300.0
    voice_cache_mib: float = 512.0
    exposed: bool = False  # listening beyond the loopback address


class HTTPError(StarletteHTTPException):
    """An answer other than 200, with its status and message (Starlette's kind: FastAPI passes it through its
    body parsing untouched)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)


class Server:
    """The state behind the routes: the backend (None until it is ready), the voices, the metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend: Backend | None = None
        self.voices: VoiceStore | None = None
        self.metrics = Metrics(lambda: self.backend.engine if self.backend else None)
        self.shutdown: Callable[[str], None] | None = None  # set by `serve`: stops uvicorn ("exit" or "restart")
        self.shared: Any = None  # a replica's `shared.SharedWeights`: weight switches that reach every replica

    def ready(self, backend: Backend) -> None:
        """The backend is built: its engine's render buckets prepared with the first registered voice (captured and
        verified before the first request, `Engine.prepare`), then serve."""
        self.voices = VoiceStore(self.settings.voices_dir, backend.voice, int(self.settings.voice_cache_mib * 2**20),
                                 lambda: backend.weights, backend.timbre)
        try:
            backend.warm_voice = next((self.voices.get(info.name) for info in self.voices.infos()[:1]), None)
        except Exception:  # noqa: BLE001 - serving goes on; the first requests prepare the buckets instead
            logger.exception("serve: the first registered voice could not be read to prepare the render buckets")
        if backend.warm_voice is not None:
            prepare(backend.engine, backend.warm_voice)
        self.backend = backend

    def need_backend(self) -> Backend:
        if self.backend is None:
            raise HTTPError(503, "the server is warming up; try again shortly", {"Retry-After": "5"})
        return self.backend

    def check_key(self, request: Request) -> None:
        """Routes that change state need the API key, when one is set, as `Authorization: Bearer KEY`."""
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise HTTPError(401, "this route needs the API key: send the header 'Authorization: Bearer <key>'")

    # ------------------------------------------------------------------------------------------------ synthesis
    async def synthesize(self, request: Request, raw: dict[str, Any], cached_voice: bool = False) -> Response:
        """api_v2's `/tts` (and the cached-voice route): the audio whole, or streamed once its first piece is ready
        (segment by segment, or in token chunks for streaming_mode 2 and 3; an error before it answers with its
        status)."""
        backend = self.need_backend()
        settings = self.settings
        job = parse(raw, backend.languages, backend.split_methods, settings.max_text_chars,
                    settings.request_timeout_s, cached_voice)
        handle = await run_in_threadpool(self.start, backend, job)
        headers = {"X-TTS-Seed": str(handle.seed), "X-TTS-Request-Id": str(handle.id)}
        if job.stream:
            pieces = await self.first_piece(request, handle)
            return StreamingResponse(self.stream(handle, pieces, job.media_type),
                                     media_type=MEDIA_TYPES[job.media_type], headers=headers)
        audio, rate = await until(request, handle, asyncio.ensure_future(handle))
        body = await run_in_threadpool(encode, audio, rate, job.media_type)
        return Response(body, media_type=MEDIA_TYPES[job.media_type], headers=headers)

    def start(self, backend: Backend, job: Synthesis) -> Handle:
        """The request's voice and segments prepared and submitted (in a worker thread), all under the backend's
        current weights (a replica's first the deployment's: `shared`): a weight switch waits for it, and it for a
        switch."""
        if self.shared is not None:
            self.shared.follow()
        with backend.serving():
            if job.voice_name is not None:
                voice = self.voices.get(job.voice_name)
            else:
                voice = self.voices.reference(job.ref_audio_path, job.prompt_text, job.prompt_lang,
                                              job.aux_ref_audio_paths)
            heard = self.metrics.frontend
            segments = backend.cached_segments(job.text, job.text_lang, job.split_method,
                                               lambda part, seconds: heard.labels(part).observe(seconds))
            return backend.engine.submit(voice, segments, job.params, stream=job.stream, chunks=job.chunks)

    async def first_piece(self, request: Request, handle: Handle) -> tuple[torch.Tensor, AsyncIterator]:
        """A stream's first piece of audio (its error raised here, before the answer starts) and the rest."""
        rest = handle.__aiter__()
        first = await until(request, handle, asyncio.ensure_future(rest.__anext__()))
        self.metrics.first_audio.labels(request.url.path).observe(time.monotonic() - request_start(request))
        return first, rest

    async def stream(self, handle: Handle, pieces: tuple[torch.Tensor, AsyncIterator],
                     media_type: str) -> AsyncIterator[bytes]:
        """A stream's bytes: for wav a header first, then each segment's PCM as it comes (raw: the PCM; ogg: an Ogg
        stream per segment; aac: its ADTS frames); the request is cancelled if the client goes away."""
        first, rest = pieces
        try:
            if media_type == "wav":
                yield wav_header(handle.sample_rate)
            yield await self.encoded(first, handle.sample_rate, media_type)
            async for chunk in rest:
                yield await self.encoded(chunk, handle.sample_rate, media_type)
        finally:
            handle.cancel()  # a no-op once it is done; else the client left or the stream failed

    @staticmethod
    async def encoded(chunk: torch.Tensor, rate: int, media_type: str) -> bytes:
        if media_type in ("ogg", "aac"):
            return await run_in_threadpool(encode, chunk, rate, media_type)
        return pcm16(chunk)

    # ------------------------------------------------------------------------------------------------ OpenAI
    async def speech(self, request: Request, body: dict[str, Any]) -> Response:
        """OpenAI's `/v1/audio/speech`: `input` in a registered `voice`, streamed as audio bytes or server-sent
        events."""
        backend = self.need_backend()
        text, voice_name = body.get("input"), body.get("voice")
        for name, value in (("input", text), ("voice", voice_name)):
            if not isinstance(value, str) or not value:
                raise InputError(f"{name} is required: expected a non-empty string")
        response_format = body.get("response_format", "wav")
        if response_format not in OPENAI_FORMATS:
            raise InputError(f"response_format={response_format!r} is not supported: expected one of "
                             f"{', '.join(OPENAI_FORMATS)}")
        stream_format = body.get("stream_format", "audio")
        if stream_format not in ("audio", "sse"):
            raise InputError(f"stream_format={stream_format!r} is not supported: expected audio or sse")
        speed = check_speed("speed", body.get("speed", 1.0))
        job = parse({"text": text, "text_lang": body.get("language", "auto"), "voice_name": voice_name,
                     "speed_factor": speed, "streaming_mode": 1, "seed": body.get("seed", -1)},
                    backend.languages, backend.split_methods, self.settings.max_text_chars,
                    self.settings.request_timeout_s, cached_voice=True)
        handle = await run_in_threadpool(self.start, backend, job)
        headers = {"X-TTS-Seed": str(handle.seed), "X-TTS-Request-Id": str(handle.id)}
        pieces = await self.first_piece(request, handle)
        if stream_format == "sse":
            return StreamingResponse(self.events(handle, pieces), media_type="text/event-stream", headers=headers)
        media = "audio/wav" if response_format == "wav" else "audio/pcm"
        return StreamingResponse(self.stream(handle, pieces, "wav" if response_format == "wav" else "raw"),
                                 media_type=media, headers=headers)

    async def events(self, handle: Handle, pieces: tuple[torch.Tensor, AsyncIterator]) -> AsyncIterator[bytes]:
        """OpenAI's speech events: `speech.audio.delta` with base64 PCM per segment, then `speech.audio.done`."""
        samples = 0
        try:
            async for piece in self.stream(handle, pieces, "raw"):
                samples += len(piece) // 2
                event = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
                yield f"data: {json.dumps(event)}\n\n".encode()
        except Exception as exc:  # noqa: BLE001 - the headers are out: the error goes as an event
            error = {"type": "error", "error": {"message": error_message(exc)[1]}}
            yield f"data: {json.dumps(error)}\n\n".encode()
            return
        done = {"type": "speech.audio.done", "samples": samples, "sample_rate": handle.sample_rate}
        yield f"data: {json.dumps(done)}\n\n".encode()


async def until(request: Request, handle: Handle, task: asyncio.Future) -> Any:
    """`task`'s result (the request's audio, or a stream's next piece); the request is cancelled (and `Cancelled`
    raised) when the client disconnects first, and cancelled too when this handler is."""
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                handle.cancel()
                raise Cancelled(f"request {handle.id}: the client disconnected")
    except BaseException:
        handle.cancel()
        raise
    finally:
        task.cancel()


def request_start(request: Request) -> float:
    return request.scope.get("tts_start", time.monotonic())


def error_message(exc: BaseException) -> tuple[int, str, dict[str, str]]:
    """The status, message and headers an error answers with."""
    if isinstance(exc, HTTPError):
        return exc.status_code, exc.detail, dict(exc.headers or {})
    if isinstance(exc, StarletteHTTPException):  # FastAPI's own: an unknown route, a method not allowed
        return exc.status_code, str(exc.detail), dict(exc.headers or {})
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "the request"
        return 400, f"{where}: {first.get('msg', 'invalid')}", {}
    if isinstance(exc, Forbidden):
        return 403, str(exc), {}
    if isinstance(exc, UnknownVoice):
        return 404, str(exc), {}
    if isinstance(exc, InputError):
        return 400, str(exc), {}
    if isinstance(exc, QueueFull):
        return 503, str(exc), {"Retry-After": "1"}
    if isinstance(exc, EngineClosed):
        return 503, str(exc), {}
    if isinstance(exc, DeadlinePassed):
        return 504, str(exc), {}
    if isinstance(exc, Cancelled):
        return 499, str(exc), {}
    logger.error("server: a request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return 500, "the request failed on the server (see its log)", {}


async def answer_error(request: Request, exc: Exception) -> Response:
    """An error as its request's answer: api_v2's shape, or OpenAI's under `/v1`."""
    status, message, headers = error_message(exc)
    body = {"message": message}
    if request.url.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error"}}
    return JSONResponse(body, status_code=status, headers=headers)


class Observe:
    """ASGI middleware: every request timed, counted and logged (one JSON line), its body held to the limit."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope["tts_start"] = start = time.monotonic()
        limit, seen, status, request_id = self.server.settings.max_body_bytes, 0, [500], [None]
        length = dict(scope["headers"]).get(b"content-length")

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPError(413, f"the request body is over {limit} bytes, the limit")
            return message

        async def observed(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                request_id[0] = dict(message.get("headers", [])).get(b"x-tts-request-id", b"").decode() or None
            await send(message)

        try:
            if length is not None and length.isdigit() and int(length) > limit:
                response = JSONResponse({"message": f"the request body is {int(length)} bytes: at most {limit} are "
                                                    "allowed"}, status_code=413)
                await response(scope, receive, observed)
            else:
                await self.app(scope, limited, observed)
        finally:
            route = route_of(scope["path"])
            seconds = time.monotonic() - start
            self.server.metrics.requests.labels(route, str(status[0])).inc()
            self.server.metrics.latency.labels(route).observe(seconds)
            access.info(json.dumps({"method": scope["method"], "path": scope["path"], "status": status[0],
                                    "seconds": round(seconds, 4), "request_id": request_id[0]}))


def route_of(path: str) -> str:
    """A metrics label: the route a path belongs to (so a flood of unknown paths adds no labels)."""
    if path.startswith("/voices/"):
        return "/voices/{name}"
    return path if path in ROUTES else "other"


def create_app(settings: Settings, backend: Backend | None = None) -> FastAPI:
    """The application; serving once `backend` is given here or later through `app.state.server.ready(backend)`."""
    server = Server(settings)
    if backend is not None:
        server.ready(backend)
    app = FastAPI(title="tts_compile", docs_url="/docs", redoc_url=None)
    app.state.server = server

    for kind in (StarletteHTTPException, InputError, UnknownVoice, Forbidden, QueueFull, EngineClosed, Cancelled,
                 RequestValidationError, Exception):
        app.add_exception_handler(kind, answer_error)
    app.add_middleware(Observe, server=server)

    @app.get("/tts")
    async def tts_get(request: Request) -> Response:
        return await server.synthesize(request, dict(request.query_params))

    @app.post("/tts")
    async def tts_post(request: Request) -> Response:
        return await server.synthesize(request, await json_body(request))

    @app.api_route("/tts_with_cached_voice", methods=["GET", "POST"])
    async def tts_with_cached_voice(request: Request) -> Response:
        """A registered voice: `voice_name` and the `/tts` parameters, in the query or a JSON body."""
        raw = dict(request.query_params)
        if request.method == "POST" and await request.body():
            raw.update(await json_body(request))
        return await server.synthesize(request, raw, cached_voice=True)

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        return await server.speech(request, await json_body(request))

    @app.post("/voices")
    async def register_voice(request: Request, name: str = Form(...), prompt_text: str = Form(""),
                             prompt_lang: str = Form("zh"), ref_audio: UploadFile | None = File(None),
                             ref_audio_path: str | None = Form(None)) -> Response:
        """A voice from an uploaded reference (`ref_audio`) or a file inside the voices directory."""
        server.check_key(request)
        backend = server.need_backend()
        if prompt_lang.lower() not in backend.languages:
            raise InputError(f"prompt_lang={prompt_lang!r} is not supported: expected one of "
                             f"{', '.join(backend.languages)}")
        if (ref_audio is None) == (ref_audio_path is None):
            raise InputError("give the reference as the file field ref_audio or as ref_audio_path, one of them")
        if ref_audio is not None:
            data = await ref_audio.read()
        else:
            data = await run_in_threadpool(server.voices.read, ref_audio_path)
        info = await run_in_threadpool(server.voices.register, name, data, prompt_text, prompt_lang.lower())
        return JSONResponse({"message": "success", "voice": info.__dict__}, status_code=201)

    @app.get("/voices")
    async def list_voices() -> Response:
        server.need_backend()
        infos = await run_in_threadpool(server.voices.infos)
        return JSONResponse({"voices": [info.__dict__ for info in infos]})

    @app.delete("/voices/{name}")
    async def delete_voice(request: Request, name: str) -> Response:
        server.check_key(request)
        server.need_backend()
        await run_in_threadpool(server.voices.delete, name)
        return JSONResponse({"message": "success"})

    @app.get("/set_refer_audio")
    async def set_refer_audio(request: Request, refer_audio_path: str | None = None, prompt_text: str = "",
                              prompt_lang: str = "") -> Response:
        """api_v2's route: here, the reference (with `prompt_text` and `prompt_lang`, as the requests that name it
        will send them; without, upstream's no-prompt voice) is checked, prepared and kept ready."""
        server.check_key(request)
        server.need_backend()
        if not refer_audio_path:
            raise InputError("refer_audio_path is required")
        await run_in_threadpool(server.voices.reference, refer_audio_path, prompt_text, prompt_lang.lower())
        return JSONResponse({"message": "success"})

    @app.get("/set_gpt_weights")
    @app.get("/set_sovits_weights")
    async def set_weights(request: Request, weights_path: str | None = None) -> Response:
        """api_v2's routes: requests in flight finish on the old weights, new ones use the new (prepared voices are
        prepared again under new SoVITS weights); a replica's switch reaches every replica (`shared`)."""
        server.check_key(request)
        backend = server.need_backend()
        if settings.exposed and settings.api_key is None:
            raise HTTPError(403, "weights load as pickles: switching them needs --api-key when the server listens "
                                 "beyond this machine")
        kind = "gpt" if request.url.path == "/set_gpt_weights" else "sovits"
        if not weights_path:
            raise InputError("weights_path is required")
        if not Path(weights_path).is_file():
            raise InputError(f"weights_path={weights_path!r}: no such file")
        await run_in_threadpool(server.shared.switch if server.shared else backend.set_weights, kind, weights_path)
        return JSONResponse({"message": "success"})

    @app.get("/control")
    async def control(request: Request, command: str | None = None) -> Response:
        server.check_key(request)
        if command not in CONTROL:
            raise InputError(f"command={command!r} is not supported: expected one of {', '.join(CONTROL)}")
        if server.shutdown is None:
            raise HTTPError(503, "this server cannot be stopped through /control")
        server.shutdown(command)
        return JSONResponse({"message": "stopping" if command == "exit" else "restarting"})

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "alive"})

    @app.get("/ready")
    async def ready() -> Response:
        backend = server.need_backend()
        return JSONResponse({"status": "ready", "version": backend.version, "models": backend.description,
                             "weights": backend.loaded, "startup_s": round(backend.engine.startup_s, 2)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object of a request's body; InputError when it is not one."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise InputError(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InputError(f"the request body must be a JSON object, not {type(body).__name__}")
    return body
