"""The compiled runner: one compiled, warmed-up callable per bucket, and on CUDA one captured graph per bucket.

Why the runner captures CUDA graphs itself instead of using torch.compile's `mode="reduce-overhead"`: torch's
cudagraph trees keep one tree manager per thread (`threading.local`), so a server answering from a thread pool
would re-record every bucket in every worker thread (memory times threads, a slow first request per thread).
Here the callable is compiled once by inductor with a dynamic time axis, every bucket is captured once into one
shared memory pool, and replays go through one lock and one stream, whichever thread calls.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Sequence

import torch

logger = logging.getLogger(__name__)

WARMUP_CALLS = 2  # eager-mode calls before a capture: compile, cuDNN/cuBLAS handles and algorithm choice
GRAPH_MODES = ("reduce-overhead", "max-autotune", "cudagraphs")
INDUCTOR_MODES = {"reduce-overhead": "default", "default": "default", "max-autotune": "max-autotune-no-cudagraphs"}
RECOMPILE_LIMIT = 64  # one compile per conditioning signature and batch class; torch's default (8) is too low

Call = Callable[..., torch.Tensor]


@dataclass
class _Capture:
    call: Call
    graph: torch.cuda.CUDAGraph | None
    inputs: tuple[torch.Tensor, ...]  # static buffers the graph reads (window batch first)
    output: torch.Tensor  # static buffer the graph writes


class Runner:
    """Runs `call(x, *cond)` per bucket key: compiled by inductor, replayed as a CUDA graph where possible.

    `prepare(key, call, inputs)` compiles and captures one bucket; `run(key, inputs)` replays it and returns an output
    the caller owns; `direct(inputs)` runs the compiled callable at any shape (no graph). Thread-safe.
    """

    def __init__(self, mode: str, device: torch.device, cudnn_benchmark: bool = False,
                 benchmark_direct: bool = False) -> None:
        self.mode = mode
        self.device = device
        self.cudnn_benchmark = cudnn_benchmark
        self.benchmark_direct = benchmark_direct  # time cuDNN's algorithms on the direct path too
        self.graphs = device.type == "cuda" and mode in GRAPH_MODES
        self.counters: Counter[str] = Counter(dict.fromkeys(("captures", "replays", "runs", "direct"), 0))
        self._lock = threading.RLock()
        self._captures: dict[Hashable, _Capture] = {}
        self._compiled: dict[Hashable, Call] = {}
        self._stream = torch.cuda.Stream(device) if self.graphs else None
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None

    def has(self, key: Hashable) -> bool:
        return key in self._captures

    def discard(self, drop: Callable[[Hashable], bool]) -> int:
        """Forget the captures whose key `drop` names (their memory goes back to the pool); returns how many."""
        with self._lock:
            keys = [key for key in self._captures if drop(key)]
            for key in keys:
                del self._captures[key]
            return len(keys)

    def compiled(self, signature: Hashable, call: Call) -> Call:
        """`call` for one conditioning signature, compiled by inductor (on first use) in the inductor modes."""
        if signature not in self._compiled:
            if self.mode in INDUCTOR_MODES:
                call = torch.compile(call, mode=INDUCTOR_MODES[self.mode], dynamic=None)
            self._compiled[signature] = call
        return self._compiled[signature]

    def prepare(self, key: Hashable, call: Call, inputs: Sequence[torch.Tensor]) -> float:
        """Compile (first time) and capture the bucket `key` from example `inputs`; returns seconds taken."""
        start = time.perf_counter()
        with self._lock, _scoped_compile_settings(self.cudnn_benchmark):
            static = tuple(t.clone() for t in inputs)
            if self.graphs:
                self._captures[key] = self._capture(call, static)
            else:
                self._captures[key] = _Capture(call, None, static, self._call(call, static))
            self.counters["captures"] += 1
        return time.perf_counter() - start

    def run(self, key: Hashable, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Output of bucket `key` on `inputs`, in a fresh tensor that no later replay can overwrite."""
        capture = self._captures[key]
        if capture.graph is None:
            with self._lock:
                self.counters["runs"] += 1
                return self._call(capture.call, inputs)
        caller = torch.cuda.current_stream(self.device)
        out = torch.empty_like(capture.output)  # allocated on the caller's stream, which waits for the copy
        with self._lock:
            self._stream.wait_stream(caller)
            with torch.cuda.stream(self._stream):
                for static, value in zip(capture.inputs, inputs):
                    static.copy_(value)
                capture.graph.replay()
                out.copy_(capture.output)
            caller.wait_stream(self._stream)
            self.counters["replays"] += 1
        return out

    def direct(self, call: Call, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Run the compiled callable at the inputs' own shape, without a graph (inputs shorter than a window).

        No cuDNN algorithm timing here unless `benchmark_direct`: every new short length would pay it inside a
        request."""
        with self._lock, _scoped_compile_settings(cudnn_benchmark=self.benchmark_direct):
            self.counters["direct"] += 1
            return self._call(call, inputs)

    def _call(self, call: Call, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        for t in inputs:
            torch._dynamo.maybe_mark_dynamic(t, 0)
        torch._dynamo.maybe_mark_dynamic(inputs[0], inputs[0].ndim - 1)
        with torch.inference_mode():
            return call(*inputs)

    def _capture(self, call: Call, static: tuple[torch.Tensor, ...]) -> _Capture:
        caller = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(caller)
        with torch.cuda.stream(self._stream):
            for _ in range(WARMUP_CALLS):
                self._call(call, static)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"):
            output = self._call(call, static)
        caller.wait_stream(self._stream)
        return _Capture(call, graph, static, output)


@contextlib.contextmanager
def _scoped_compile_settings(cudnn_benchmark: bool) -> Iterator[None]:
    """Settings that matter only while compiling and capturing: a recompile limit high enough for one compile per
    conditioning signature and batch class, and optionally cuDNN's per-shape algorithm timing (a captured graph
    keeps the algorithm chosen; the process's own setting is restored afterwards)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or cudnn_benchmark
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            yield
    finally:
        torch.backends.cudnn.benchmark = previous


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal (warm-up of many buckets)."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.done = total, label, 0
        self.enabled = enabled and sys.stderr.isatty()

    def advance(self, note: str) -> None:
        self.done += 1
        if self.enabled:
            filled = int(30 * self.done / max(self.total, 1))
            end = "\n" if self.done >= self.total else ""
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {note}"
                             f"\033[K{end}")
            sys.stderr.flush()
