"""What a caller submits to the engine and what it gets back.

A request is a voice (the reference's prompt tokens, phones, BERT features and spectrograms: computed once per
voice), the segments of a text (phones and BERT features each, after the text frontend) and sampling parameters with
a seed. Each segment decodes as one T2S row; the request's audio is its rows' tokens through the version's decode
stages. The `Handle` is the caller's side: the result (blocking or awaited), cancel, status.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..core.guard import InputError


class QueueFull(RuntimeError):
    """The engine's queue holds `queue_size` requests: try again later (HTTP 503)."""


class Cancelled(RuntimeError):
    """The request was cancelled before it finished (HTTP 499)."""


class DeadlinePassed(Cancelled):
    """The request's deadline (`timeout_s`) passed before it finished (HTTP 504)."""


class EngineClosed(RuntimeError):
    """The engine was closed; it takes no more requests."""


@dataclass(frozen=True)
class Segment:
    """One text segment after the frontend: phones (L,) int64 and their BERT features (1024, L)."""

    phones: torch.Tensor
    bert: torch.Tensor


@dataclass(frozen=True)
class Voice:
    """A prepared reference voice. `prompt_tokens` (Q,), `prompt_phones` (P,), `prompt_bert` (1024, P): the T2S
    prefix every segment starts from (all empty: upstream's no-prompt mode, v1-v2ProPlus); `refer` the reference
    spectrograms (1, bins, frames); `sv_emb` v2Pro's speaker embeddings, one per reference; `mel` v3/v4's prompt mel
    (1, 100, frames), normalised as upstream normalises it."""

    prompt_tokens: torch.Tensor
    prompt_phones: torch.Tensor
    prompt_bert: torch.Tensor
    refer: tuple[torch.Tensor, ...]
    sv_emb: tuple[torch.Tensor, ...] | None = None
    mel: torch.Tensor | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> "Voice":
        """The voice on `device`, its features in `dtype` (token and phone ids stay integers)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype) if t.is_floating_point() else t.to(device)

        return Voice(move(self.prompt_tokens), move(self.prompt_phones), move(self.prompt_bert),
                     tuple(map(move, self.refer)), None if self.sv_emb is None else tuple(map(move, self.sv_emb)),
                     None if self.mel is None else move(self.mel))


_RANGES = {  # name: (type, lowest, highest, lowest excluded)
    "top_k": (int, 1, None, False), "top_p": (float, 0.0, 1.0, True), "temperature": (float, 0.0, None, False),
    "repetition_penalty": (float, 0.0, None, True), "speed": (float, 0.0, None, True),
    "noise_scale": (float, 0.0, None, False), "sample_steps": (int, 1, 128, False),
    "max_tokens": (int, 1, 1500, False), "fragment_interval": (float, 0.0, 10.0, False),
}


@dataclass(frozen=True)
class Params:
    """Sampling and synthesis parameters of one request, api_v2's defaults; `seed` None draws one (reported back)."""

    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35
    speed: float = 1.0
    noise_scale: float = 0.5  # v1-v2ProPlus: the SoVITS flow's noise
    sample_steps: int = 32  # v3/v4: CFM steps
    max_tokens: int = 1500  # per segment (upstream's cap)
    fragment_interval: float = 0.3  # seconds of silence after each segment's audio (upstream's audio_postprocess)
    seed: int | None = None
    timeout_s: float | None = None  # from submission; None: no deadline

    def __post_init__(self) -> None:
        _check_ranges(self, _RANGES)
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or
                                      not 0 <= self.seed < 2**63):
            raise InputError(f"seed={self.seed!r} is invalid: expected None or an int in [0, 2**63)")
        if self.timeout_s is not None and not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise InputError(f"timeout_s={self.timeout_s!r} is invalid: expected None or seconds > 0")


MAX_CHUNK_TOKENS = 1500  # a segment's cap


@dataclass(frozen=True)
class TokenChunks:
    """How a stream is cut into token chunks (api_v2's `streaming_mode` 2 and 3): chunks of at least `min_tokens`
    tokens (min_chunk_length), `overlap` tokens decoded again in front of each (overlap_length), cut where the
    tokens sound like silence when `mute_cuts` (mode 2) or every `min_tokens` (mode 3)."""

    min_tokens: int = 16
    overlap: int = 2
    mute_cuts: bool = False

    def __post_init__(self) -> None:
        _check_ranges(self, {"min_tokens": (int, 1, MAX_CHUNK_TOKENS, False),
                             "overlap": (int, 0, MAX_CHUNK_TOKENS, False)})
        if not isinstance(self.mute_cuts, bool):
            raise InputError(f"mute_cuts={self.mute_cuts!r} is invalid: expected True or False")


def _check_ranges(values: object, ranges: dict[str, tuple[type, float, float | None, bool]]) -> None:
    """InputError naming the first attribute of `values` outside its range in `ranges`."""
    for name, (kind, low, high, exclusive) in ranges.items():
        value = getattr(values, name)
        number = isinstance(value, kind if kind is int else (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < low or (exclusive and value == low) or \
                (high is not None and value > high):
            bound = f"{'>' if exclusive else '>='} {low}" + (f" and <= {high}" if high is not None else "")
            raise InputError(f"{name}={value!r} is invalid: expected {'an int' if kind is int else 'a number'} "
                             f"{bound}")


class Status(enum.Enum):
    QUEUED = "queued"  # waiting for rows
    DECODING = "decoding"  # some segments decoding tokens
    RENDERING = "rendering"  # every segment's tokens done: the audio stages
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_ids = itertools.count(1)


@dataclass(eq=False)
class Request:
    """The engine's record of one submission (mutated by the engine thread only, read by others)."""

    voice: Voice
    segments: tuple[Segment, ...]
    params: Params
    seed: int
    stream: bool = False  # each segment's audio delivered as soon as it is rendered
    chunks: TokenChunks | None = None  # a stream's audio in token chunks instead of segments
    id: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.monotonic)
    status: Status = Status.QUEUED
    next_segment: int = 0  # segments before it have rows (or are done)
    tokens: dict[int, list[int]] = field(default_factory=dict)  # segment -> its semantic tokens, once done
    cancelled: threading.Event = field(default_factory=threading.Event)
    marks: dict[str, float] = field(default_factory=dict)  # `MARKS` -> when it first happened (monotonic seconds)

    def mark(self, name: str) -> None:
        """Note when `name` (one of `MARKS`) first happened to this request."""
        self.marks.setdefault(name, time.monotonic())

    @property
    def deadline(self) -> float | None:
        return None if self.params.timeout_s is None else self.submitted + self.params.timeout_s

    @property
    def pending(self) -> int:
        """Segments that wait for a row."""
        return len(self.segments) - self.next_segment

    def expired(self, now: float) -> bool:
        """Cancelled, past its deadline, or ended elsewhere (a stream's render failed): it leaves the batch and the
        queue."""
        return self.cancelled.is_set() or (self.deadline is not None and now > self.deadline) or \
            self.status in (Status.FAILED, Status.CANCELLED)

    def stopped(self) -> Cancelled:
        """The error of a request that `expired`: cancelled, or past its deadline."""
        if self.cancelled.is_set():
            return Cancelled(f"request {self.id} was cancelled")
        return DeadlinePassed(f"request {self.id} passed its deadline ({self.params.timeout_s} s)")


MARKS = ("prefilled", "render_queued", "render_started", "first_audio", "finished")  # a request's way, in order


def new_request(voice: Voice, segments: list[Segment] | tuple[Segment, ...], params: Params,
                stream: bool = False, chunks: TokenChunks | None = None) -> Request:
    """A validated request; its seed drawn when `params.seed` is None; `chunks` makes it a stream."""
    if not isinstance(voice, Voice):
        raise InputError(f"voice: expected a tts_compile.engine.Voice, got {type(voice).__name__}")
    if not isinstance(params, Params):
        raise InputError(f"params: expected a tts_compile.engine.Params, got {type(params).__name__}")
    if not segments:
        raise InputError("segments: expected at least one segment (the text produced none)")
    for i, segment in enumerate(segments):
        if not isinstance(segment, Segment) or segment.phones.dim() != 1 or segment.bert.dim() != 2 or \
                segment.bert.shape[1] != segment.phones.shape[0] or segment.phones.numel() == 0:
            raise InputError(f"segments[{i}]: expected a Segment of phones (L,) and BERT features (1024, L), L >= 1")
    if not isinstance(stream, bool):
        raise InputError(f"stream={stream!r} is invalid: expected True or False")
    if chunks is not None and not isinstance(chunks, TokenChunks):
        raise InputError(f"chunks: expected None or a tts_compile.engine.TokenChunks, got {type(chunks).__name__}")
    seed = params.seed if params.seed is not None else secrets.randbits(62)
    return Request(voice, tuple(segments), params, seed, stream or chunks is not None, chunks)


class Handle:
    """The caller's side of a request: `result()` blocks, `await handle` waits in asyncio, `cancel()` stops it (its
    rows leave the batch at the next step). The result is (audio float32 tensor on the CPU, sample rate). `chunks()`
    (or `async for chunk in handle`) gives the audio as it comes: a stream's segments one by one, in order, as soon
    as each is rendered; any other request's whole audio once."""

    def __init__(self, request: Request, sample_rate: int = 0) -> None:
        self.request, self.sample_rate = request, sample_rate
        self._done = threading.Event()
        self._result: tuple[torch.Tensor, int] | None = None
        self._error: BaseException | None = None
        self._chunks: list[torch.Tensor] = []  # delivered, in order
        self._ahead: dict[int, torch.Tensor] = {}  # rendered before an earlier segment
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wakers: list[asyncio.Future] = []

    @property
    def id(self) -> int:
        return self.request.id

    @property
    def seed(self) -> int:
        """The request's seed (given or drawn): the same seed and inputs give the same audio."""
        return self.request.seed

    @property
    def status(self) -> Status:
        return self.request.status

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Ask the engine to stop this request; `result()` then raises `Cancelled`."""
        self.request.cancelled.set()

    def result(self, timeout: float | None = None) -> tuple[torch.Tensor, int]:
        """The audio and its sample rate; raises the request's error (Cancelled, an input error, a model error)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def chunks(self, timeout: float | None = None) -> Iterator[torch.Tensor]:
        """The audio in pieces as they come (each float32 on the CPU, at `sample_rate`); raises the request's error
        after the pieces delivered before it, and TimeoutError when none comes within `timeout` seconds."""
        index = 0
        while True:
            with self._changed:
                if not self._changed.wait_for(lambda: self._ready(index), timeout):
                    raise TimeoutError(f"request {self.id}: no audio within {timeout} s")
            if (chunk := self._piece(index)) is None:
                return
            index += 1
            yield chunk

    def timings(self) -> dict[str, float]:
        """Seconds from submission to each step this request reached, in order: its first segment prefilled, its
        first render queued and started, its first audio out, finished (`MARKS`)."""
        marks = self.request.marks
        return {name: marks[name] - self.request.submitted for name in MARKS if name in marks}

    def delivered(self) -> list[torch.Tensor]:
        """The pieces of audio delivered so far, in order."""
        with self._lock:
            return list(self._chunks)

    def __await__(self):
        return self._awaited().__await__()

    async def _awaited(self) -> tuple[torch.Tensor, int]:
        await self._until(self._done.is_set)
        return self.result(0)

    async def __aiter__(self) -> AsyncIterator[torch.Tensor]:
        index = 0
        while True:
            await self._until(lambda: self._ready(index))
            if (chunk := self._piece(index)) is None:
                return
            index += 1
            yield chunk

    def _ready(self, index: int) -> bool:
        """Piece `index` is delivered, or the request is done (read under the lock)."""
        return len(self._chunks) > index or self._done.is_set()

    def _piece(self, index: int) -> torch.Tensor | None:
        """Piece `index` once `_ready`; None when the request finished without it (its error raised)."""
        with self._lock:
            if len(self._chunks) > index:
                return self._chunks[index]
        self.result(0)
        return None

    async def _until(self, ready: Callable[[], bool]) -> None:
        """Wait in asyncio until `ready()` (read under the lock) holds; the engine's threads wake the loop."""
        while True:
            with self._lock:
                if ready():
                    return
                future = asyncio.get_running_loop().create_future()
                self._wakers.append(future)
            await future

    def deliver(self, index: int, audio: torch.Tensor) -> int:
        """Called by the engine: segment `index`'s audio of a stream (any order; handed out in order). Returns how
        many pieces are out in order now: the one call that completes them sees the whole count."""
        with self._changed:
            self._ahead[index] = audio
            while len(self._chunks) in self._ahead:
                self._chunks.append(self._ahead.pop(len(self._chunks)))
            self._wake()
            return len(self._chunks)

    def finish(self, result: tuple[torch.Tensor, int] | None = None, error: BaseException | None = None) -> None:
        """Called by the engine once: the result or the error, and every waiter woken."""
        with self._changed:
            self._result, self._error = result, error
            if result is not None and not self._chunks:
                self._chunks.append(result[0])
            self._done.set()
            self._wake()

    def _wake(self) -> None:
        """Wake the threads and event loops waiting on this handle (the lock held)."""
        self._changed.notify_all()
        wakers, self._wakers = self._wakers, []
        for future in wakers:
            with contextlib.suppress(RuntimeError):  # its event loop is closed: nobody waits any more
                future.get_loop().call_soon_threadsafe(_wake_future, future)

    def __repr__(self) -> str:
        return f"Handle(id={self.id}, status={self.status.value})"


def _wake_future(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
