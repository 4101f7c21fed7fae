"""The runner: the one way tts_compile compiles and captures. One compiled callable per signature, and on CUDA one
captured graph per bucket.

Why the runner captures CUDA graphs itself instead of using torch.compile's `mode="reduce-overhead"`: torch's
cudagraph trees keep one tree manager per thread (`threading.local`), so a server answering from a thread pool
would re-record every bucket in every worker thread (memory times threads, a slow first request per thread).
Here a callable is compiled once by inductor with a dynamic time axis, every bucket is captured once into one
shared memory pool, and replays go through one lock, whichever thread calls.

Two forms of capture: `prepare`/`run` copy inputs into the graph's own buffers and its output out (a stage called
with fresh tensors: a vocoder window, a padded decode); `capture`/`replay` run a step that reads and writes
buffers the caller owns (the T2S decode step over its KV cache), with no copies at all.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Sequence

import torch

from .rng import DRAWS

logger = logging.getLogger(__name__)

WARMUP_CALLS = 2  # eager-mode calls before a capture: compile, cuDNN/cuBLAS handles and algorithm choice
RECOMPILE_LIMIT = 64  # one compile per conditioning signature and batch class; torch's default (8) is too low
_INDUCTOR = {"reduce-overhead": "default", "default": "default", "max-autotune": "max-autotune-no-cudagraphs"}
_GRAPHS = ("reduce-overhead", "max-autotune", "cudagraphs")

Call = Callable[..., torch.Tensor]


def kind(key: Hashable) -> str:
    """A bucket key's kind, for accounting: the first item of a tuple key (a stage's part: "enc", "decode", ...), or
    the key's type."""
    return str(key[0]) if isinstance(key, tuple) and key else type(key).__name__


def uses_inductor(mode: str) -> bool:
    """Whether `compile_mode` compiles with inductor (an inductor failure can then degrade to 'cudagraphs')."""
    return mode in _INDUCTOR


@dataclass(frozen=True)
class Execution:
    """What a `compile_mode` means on one device: whether buckets are captured as CUDA graphs, the inductor mode
    that compiles (None: no inductor), and whether the module is rewritten by passes (every mode but 'eager')."""

    mode: str
    graphs: bool
    inductor: str | None
    rewrite: bool

    @classmethod
    def of(cls, mode: str, device: torch.device) -> "Execution":
        return cls(mode, device.type == "cuda" and mode in _GRAPHS, _INDUCTOR.get(mode), mode != "eager")

    def compile(self, call: Call, **options) -> Call:
        """`call` compiled by inductor in this mode, or as it is."""
        return call if self.inductor is None else torch.compile(call, mode=self.inductor, **options)


@dataclass
class _Capture:
    call: Call | None
    graph: torch.cuda.CUDAGraph | None
    inputs: tuple[torch.Tensor, ...]  # static buffers the graph reads (window batch first)
    output: torch.Tensor | None  # static buffer the graph writes


class Runner:
    """Runs `call(x, *cond)` per bucket key: compiled, replayed as a CUDA graph where `execution.graphs`. Thread-safe:
    captures are made, read and dropped under one lock."""

    def __init__(self, execution: Execution, device: torch.device, cudnn_benchmark: bool = False,
                 benchmark_direct: bool = False) -> None:
        self.execution = execution
        self.device = device
        self.cudnn_benchmark = cudnn_benchmark
        self.benchmark_direct = benchmark_direct  # time cuDNN's algorithms on the direct path too
        self.graphs = execution.graphs
        self.counters: Counter[str] = Counter(dict.fromkeys(("captures", "capture_ms", "replays", "runs", "direct"), 0))
        self.capture_ms_by_kind: Counter[str] = Counter()  # capture_ms per kind of bucket (`kind`): where start-up goes
        self.lock = threading.RLock()
        self._captures: dict[Hashable, _Capture] = {}
        self._compiled: dict[Hashable, Call] = {}
        self._stream = torch.cuda.Stream(device) if self.graphs else None
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None

    def has(self, key: Hashable) -> bool:
        with self.lock:
            return key in self._captures

    def keys(self) -> list[Hashable]:
        with self.lock:
            return list(self._captures)

    def discard(self, drop: Callable[[Hashable], bool]) -> int:
        """Forget the captures whose key `drop` names (their memory goes back to the pool); returns how many."""
        with self.lock:
            keys = [key for key in self._captures if drop(key)]
            for key in keys:
                del self._captures[key]
            return len(keys)

    def compiled(self, signature: Hashable, call: Call) -> Call:
        """`call` for one conditioning signature, compiled by inductor (on first use) in the inductor modes."""
        with self.lock:
            if signature not in self._compiled:
                self._compiled[signature] = self.execution.compile(call, dynamic=None)
            return self._compiled[signature]

    def prepare(self, key: Hashable, call: Call, inputs: Sequence[torch.Tensor]) -> float:
        """Compile (first time) and capture the bucket `key` from example `inputs`; returns seconds taken."""
        start = time.perf_counter()
        with DRAWS, self.lock, _scoped_compile_settings(self.cudnn_benchmark):  # DRAWS: see `_graph`
            static = tuple(t.clone() for t in inputs)
            if self.graphs:
                graph, output = self._graph(lambda: self._call(call, static))
                self._captures[key] = _Capture(call, graph, static, output)
            else:
                self._captures[key] = _Capture(call, None, static, self._call(call, static))
            return self._count_capture(key, start)

    def run(self, key: Hashable, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Output of bucket `key` on `inputs`, in a fresh tensor that no later replay can overwrite. The static
        inputs are written under inference mode: captured in one thread under `torch.inference_mode()` they are
        inference tensors, which a caller's thread outside it could not write."""
        with self.lock:
            capture = self._captures[key]
            if capture.graph is None:
                self.counters["runs"] += 1
                return self._call(capture.call, inputs)
            caller = torch.cuda.current_stream(self.device)
            out = torch.empty_like(capture.output)  # allocated on the caller's stream, which waits for the copy
            self._stream.wait_stream(caller)
            with torch.cuda.stream(self._stream), torch.inference_mode():
                for static, value in zip(capture.inputs, inputs):
                    static.copy_(value)
                capture.graph.replay()
                out.copy_(capture.output)
            caller.wait_stream(self._stream)
            self.counters["replays"] += 1
        return out

    def direct(self, call: Call, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Run the compiled callable at the inputs' own shape, without a graph (inputs outside every bucket).

        No cuDNN algorithm timing here unless `benchmark_direct`: every new length would pay it inside a request."""
        with self.lock, _scoped_compile_settings(cudnn_benchmark=self.benchmark_direct):
            self.counters["direct"] += 1
            return self._call(call, inputs)

    def capture(self, key: Hashable, step: Callable[[], object], restore: Callable[[], None]) -> float:
        """Capture `step()`, which reads and writes buffers its owner keeps (no copies in or out), after warm-up
        runs; `restore()` then undoes what the warm-ups and the capture wrote. Returns seconds taken."""
        start = time.perf_counter()
        with DRAWS, self.lock:  # DRAWS: see `_graph`
            graph, _ = self._graph(step)
            restore()
            self._captures[key] = _Capture(None, graph, (), None)
            return self._count_capture(key, start)

    def replay(self, key: Hashable) -> None:
        """Replay the graph of `key`, made by `capture`, on the caller's stream."""
        with self.lock:
            self._captures[key].graph.replay()
            self.counters["replays"] += 1

    def _count_capture(self, key: Hashable, start: float) -> float:
        """Count the capture of `key` that began at `start`, with its milliseconds, in all and for its kind; its
        seconds."""
        seconds = time.perf_counter() - start
        ms = round(1e3 * seconds)
        self.counters["captures"] += 1
        self.counters["capture_ms"] += ms
        self.capture_ms_by_kind[kind(key)] += ms
        return seconds

    def _graph(self, run: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, object]:
        """`run` warmed up on the side stream, then captured into the shared pool: (graph, what the capture
        returned). The caller holds `DRAWS` (taken before the lock, the order the stages take them in): a capture
        registers the default CUDA generator, and a draw from it on another thread meanwhile (upstream's code in a
        verification or a fallback) would fail there."""
        caller = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(caller)
        with torch.cuda.stream(self._stream):
            for _ in range(WARMUP_CALLS):
                run()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"):
            output = run()
        caller.wait_stream(self._stream)
        return graph, output

    def _call(self, call: Call, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        for t in inputs:
            torch._dynamo.maybe_mark_dynamic(t, 0)
        torch._dynamo.maybe_mark_dynamic(inputs[0], inputs[0].ndim - 1)
        with torch.inference_mode():
            return call(*inputs)


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
