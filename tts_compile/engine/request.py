"""What a caller submits to the engine and what it gets back.

A request is a voice (the reference's prompt tokens, phones, BERT features and spectrograms: computed once per
voice), the segments of a text (phones and BERT features each, after the text frontend) and sampling parameters with
a seed. Each segment decodes as one T2S row; the request's audio is its rows' tokens through the version's decode
stages. The `Handle` is the caller's side: the result (blocking or awaited), cancel, status.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import math
import secrets
import threading
import time
from dataclasses import dataclass, field

import torch

from ..core.guard import InputError


class QueueFull(RuntimeError):
    """The engine's queue holds `queue_size` requests: try again later (HTTP 503)."""


class Cancelled(RuntimeError):
    """The request was cancelled, or its deadline passed, before it finished (HTTP 499 / 504)."""


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
    prefix every segment starts from; `refer` the reference spectrograms (1, bins, frames); `sv_emb` v2Pro's speaker
    embeddings, one per reference; `mel` v3/v4's prompt mel (1, 100, frames), normalised as upstream normalises it."""

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
    "max_tokens": (int, 1, 1500, False),
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
    seed: int | None = None
    timeout_s: float | None = None  # from submission; None: no deadline

    def __post_init__(self) -> None:
        for name, (kind, low, high, exclusive) in _RANGES.items():
            value = getattr(self, name)
            number = isinstance(value, kind if kind is int else (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < low or (exclusive and value == low) or \
                    (high is not None and value > high):
                bound = f"{'>' if exclusive else '>='} {low}" + (f" and <= {high}" if high is not None else "")
                raise InputError(f"{name}={value!r} is invalid: expected {'an int' if kind is int else 'a number'} "
                                 f"{bound}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or
                                      not 0 <= self.seed < 2**63):
            raise InputError(f"seed={self.seed!r} is invalid: expected None or an int in [0, 2**63)")
        if self.timeout_s is not None and not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise InputError(f"timeout_s={self.timeout_s!r} is invalid: expected None or seconds > 0")


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
    id: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.monotonic)
    status: Status = Status.QUEUED
    next_segment: int = 0  # segments before it have rows (or are done)
    tokens: dict[int, list[int]] = field(default_factory=dict)  # segment -> its semantic tokens, once done
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def deadline(self) -> float | None:
        return None if self.params.timeout_s is None else self.submitted + self.params.timeout_s

    @property
    def pending(self) -> int:
        """Segments that wait for a row."""
        return len(self.segments) - self.next_segment

    def expired(self, now: float) -> bool:
        return self.cancelled.is_set() or (self.deadline is not None and now > self.deadline)


def new_request(voice: Voice, segments: list[Segment] | tuple[Segment, ...], params: Params) -> Request:
    """A validated request; its seed drawn when `params.seed` is None."""
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
    seed = params.seed if params.seed is not None else secrets.randbits(62)
    return Request(voice, tuple(segments), params, seed)


class Handle:
    """The caller's side of a request: `result()` blocks, `await handle` waits in asyncio, `cancel()` stops it (its
    rows leave the batch at the next step). The result is (audio float32 tensor on the CPU, sample rate)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._done = threading.Event()
        self._result: tuple[torch.Tensor, int] | None = None
        self._error: BaseException | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._lock = threading.Lock()

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

    def __await__(self):
        return self._future().__await__()

    def _future(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if not self._done.is_set():
                self._waiters.append((loop, future))
                return future
        self._settle(future)
        return future

    def _settle(self, future: asyncio.Future) -> None:
        if future.done():
            return
        if self._error is not None:
            future.set_exception(self._error)
        else:
            future.set_result(self._result)

    def finish(self, result: tuple[torch.Tensor, int] | None = None, error: BaseException | None = None) -> None:
        """Called by the engine once: the result or the error, and every waiter woken."""
        with self._lock:
            self._result, self._error = result, error
            self._done.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(self._settle, future)

    def __repr__(self) -> str:
        return f"Handle(id={self.id}, status={self.status.value})"

