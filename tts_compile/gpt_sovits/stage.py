"""`Stage`: what every GPT-SoVITS accelerator (`optimize_t2s`, `optimize_cfm`, `optimize_sovits`) is made of: a
guard (`core.guard`), a runner (`core.runner`) and the patching of upstream's methods on one module instance, which
keep their signatures and results.

A call the stage cannot serve (an input outside its buckets, a parameter it does not cover) goes to upstream's own
method and the stage stays on; a failure of the optimized path rewinds the random generator, so upstream's method
draws what it would have drawn, and then follows the guard's rule.

Verified before it serves: the first call that uses a bucket (a captured or uncaptured shape) is also answered by
upstream's method on the same inputs and random state, and the two outputs compared (`core.verify`). A mismatch
rejects those buckets (one warning naming the stage, the buckets and the error): calls that need them are served by
upstream from then on, the stage's other buckets keep their speed. Graphs read weights where they were captured,
so a weight that moved or was replaced (`.to()`, `param.data = ...`, `load_state_dict(assign=True)`) drops every
graph and verification, checked at every call; an in-place load needs nothing (the graphs read the new values).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..core import verify
from ..core.caches import use_cache_dir
from ..core.config import OptimizeConfig
from ..core.guard import Guard, Uncovered
from ..core.rng import DRAWS, RngState, own_generator, upstream_draws
from ..core.runner import Execution, Runner, kind
from ..core.weights import storage_fingerprint
from .config import PipelineConfig, pipeline_config

logger = logging.getLogger(__name__)

HANDLE = "tts_compile"  # attribute on the patched upstream module holding its stage
COUNTERS = ("verifications", "verify_ms", "rejected", "rebuilds")  # every stage's, beside the guard's
S = TypeVar("S", bound="Stage")


class Stage:
    """An accelerator patched onto one upstream module: `methods` answered by the stage, a guard, one runner."""

    name = "stage"  # the optimize_* function, for log lines and errors
    argument = "module"  # the optimize_* function's parameter, for errors
    expected = "GPT-SoVITS module"  # what it takes, for errors
    methods: tuple[str, ...] = ()  # upstream's methods the stage answers on the patched instance
    counters: tuple[str, ...] = ()  # the stage's own counters, beside the guard's and the runner's
    max_graphs = 48  # captured buckets per module; later new buckets run uncaptured
    cudnn_benchmark = False  # time cuDNN's algorithms at each capture (config.cudnn_benchmark permitting)
    cudnn_heuristics_unsafe = False  # time them at every capture and uncaptured run, whatever the config says
    capture_after = 1  # a bucket is captured on its n-th call (`due`)
    draws = True  # the methods draw from the shared generators: calls hold `DRAWS`

    def __init__(self, module: Any, config: PipelineConfig) -> None:
        self.original = {name: getattr(type(module), name).__get__(module) for name in self.methods
                         if hasattr(type(module), name)}  # a fork without one of them keeps the others
        self.module = module
        self.weights = self.weights_of(module)
        self.config = config
        self.guard = Guard(self.name, config, (*COUNTERS, *self.counters))
        self.device = next(self.weights.parameters()).device
        self.execution = Execution.of(config.compile_mode, self.device)
        use_cache_dir(config.cache_dir)
        benchmark = self.cudnn_heuristics_unsafe or self.cudnn_benchmark and config.cudnn_benchmark
        self.runner = Runner(self.execution, self.device, benchmark, benchmark_direct=self.cudnn_heuristics_unsafe)
        self._lock = threading.RLock()  # capture decisions and bucket verdicts, even from concurrent callers
        self._seen: Counter[Hashable] = Counter()
        self._storage = storage_fingerprint(self.weights)
        self._verified: set[Hashable] = set()
        self._rejected: dict[Hashable, str] = {}
        self._verify_ms_by_kinds: Counter[str] = Counter()  # verify_ms per set of bucket kinds a verification covered
        self._used = threading.local()  # the buckets the current call of this thread ran

    @classmethod
    def lacks(cls, module: nn.Module) -> list[str]:
        """What `module` lacks of what the stage reads (empty: it fits)."""
        return []

    @classmethod
    def weights_of(cls, module: Any) -> nn.Module:
        """The module whose weights the stage's graphs read (the patched object itself, unless it only holds one)."""
        return module

    @property
    def active(self) -> bool:
        return self.guard.active

    @property
    def failure(self) -> str | None:
        return self.guard.failure

    @property
    def switch(self) -> Callable[[], bool]:
        """A runtime switch read at every call (`optimize_pipeline` ties it to `tts.use_vocoder_optimization`)."""
        return self.guard.switch

    @switch.setter
    def switch(self, value: Callable[[], bool]) -> None:
        self.guard.switch = value

    def optimization_stats(self) -> dict[str, Any]:
        """The guard's counters (calls, optimized, eager, uncovered, fallbacks, failure), verification's
        (verifications, verify_ms, rejected buckets), weight changes followed (rebuilds), the runner's (captures,
        capture_ms, replays, direct), the stage's own, and where start-up went: capture_ms by bucket kind, verify_ms
        by the kinds each verification covered."""
        runner = self.runner.counters
        with self.runner.lock:  # the two locks one after the other: run_graph takes them the other way round
            by_kind = dict(self.runner.capture_ms_by_kind)
        with self._lock:
            by_kinds = dict(self._verify_ms_by_kinds)
        return {**self.guard.counters(), **{k: runner[k] for k in ("captures", "capture_ms", "replays", "direct")},
                "capture_ms_by_kind": by_kind, "verify_ms_by_kinds": by_kinds}

    def serve(self, method: str, args: tuple[Any, ...], problem: str | None, staged: Callable[..., Any],
              grad_mode: Callable[[], Any] = torch.no_grad) -> Any:
        """`staged(*args)` under upstream's `grad_mode`; upstream's `method` for a call with a `problem`, while off,
        or (generator rewound) after a failure. Holds `DRAWS` throughout (the call draws, and may rewind, from the
        shared generators), except inside `own_draws`, where only upstream's own calls need them."""
        def upstream() -> Any:  # the guard's fallback
            with self._upstream_draws():
                return self.original[method](*args)

        own = own_generator(self.device)
        shared = self.draws and own is None
        if problem:
            logger.debug("%s: upstream's %s: %s", self.name, method, problem)
            with DRAWS if shared else contextlib.nullcontext():
                return self.guard.call(method, upstream, upstream, why_not=problem)

        def optimized() -> Any:
            rng = RngState(self.device, own)
            self.follow_weights()
            self._used.keys = []
            try:
                with grad_mode():
                    result = staged(*args)
            except Exception:
                rng.restore()
                raise
            new = [key for key in dict.fromkeys(self._used.keys) if key not in self._verified]
            if new and self.config.verify:
                return self._verify(method, args, result, rng, new, grad_mode)
            return result

        with DRAWS if shared else contextlib.nullcontext():
            return self.guard.call(method, optimized, upstream)

    def _upstream_draws(self) -> contextlib.AbstractContextManager:
        """Around a call of upstream's method: the default generators lent (`upstream_draws`) where it draws."""
        return upstream_draws() if self.draws else contextlib.nullcontext()

    def follow_weights(self) -> None:
        """Drop every graph and verdict when a weight moved or was replaced since they were made."""
        storage = storage_fingerprint(self.weights)
        if storage == self._storage:
            return
        with self._lock:
            dropped = self.runner.discard(lambda key: True)
            self._verified.clear()
            self._rejected.clear()
            self._storage = storage
            self.rebuild()
            self.guard.count("rebuilds")
        logger.info("%s: weights moved or were replaced: %d graphs dropped, buckets verified again", self.name,
                    dropped)

    def rebuild(self) -> None:
        """What a stage derives from its module's weights, made again (`follow_weights`); nothing by default."""

    def _verify(self, method: str, args: tuple[Any, ...], result: Any, rng: RngState, keys: list[Hashable],
                grad_mode: Callable[[], Any]) -> Any:
        """Upstream's `method` on the same inputs and random state as the optimized `result`, which then serves
        (upstream draws what the optimized path drew: the generator ends where upstream leaves it). On a mismatch
        the buckets are rejected and the call is served by upstream, from the same random state."""
        started = time.perf_counter()
        rng.restore()
        with grad_mode(), self._upstream_draws():
            expected = self.original[method](*args)
        try:
            for got, want in zip(_tensors(result), _tensors(expected), strict=True):
                verify.compare(f"{self.name}: {method}", got, want, self.device)
        except (verify.VerificationError, ValueError) as exc:
            with self._lock:
                self._rejected.update(dict.fromkeys(keys, str(exc)))
            self.guard.count("rejected", len(keys))
            logger.warning("%s: %s on %s; upstream's module serves calls that need them", self.name, exc,
                           ", ".join(map(str, keys)))
            rng.restore()
            raise Uncovered(f"{', '.join(map(str, keys))} failed verification") from exc
        finally:
            ms = round(1e3 * (time.perf_counter() - started))
            self.guard.count("verifications")
            self.guard.count("verify_ms", ms)
            with self._lock:
                self._verify_ms_by_kinds["+".join(sorted({kind(key) for key in keys}))] += ms
        with self._lock:
            self._verified.update(keys)
        return result

    def due(self, key: Hashable) -> bool:
        """Count one call of bucket `key`: whether it is seen often enough (`capture_after`) to be captured."""
        with self._lock:
            self._seen[key] += 1
            return self._seen[key] >= self.capture_after

    def run_graph(self, key: Hashable, call: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
                  label: str, capture: bool = True) -> torch.Tensor:
        """`call` on `inputs` through the graph of `key`, capturing it first when `capture` (at most `max_graphs`);
        without a graph when `key` has none. A bucket that failed verification raises `Uncovered`."""
        if key in self._rejected:
            raise Uncovered(f"bucket {key} failed verification: {self._rejected[key]}")
        getattr(self._used, "keys", []).append(key)
        new = capture and self.runner.graphs and not self.runner.has(key)
        # A capture holds DRAWS (`Runner._graph`): taken before this stage's lock, the order calls on the shared
        # generators take them in, so that no two threads take the two the other way round.
        with DRAWS if new else contextlib.nullcontext(), self._lock:
            if new and not self.runner.has(key):
                if self.runner.counters["captures"] < self.max_graphs:
                    seconds = self.runner.prepare(key, call, inputs)
                    logger.info("%s: captured the %s in %.2f s", self.name, label, seconds)
                elif self.runner.counters["direct"] == 0:
                    logger.warning("%s: %d shapes captured (the limit); new ones run uncaptured", self.name,
                                   self.max_graphs)
        try:
            return self.runner.run(key, inputs)
        except KeyError:  # not captured, or dropped since: run without a graph
            return self.runner.direct(call, inputs)


def _tensors(result: Any) -> list[torch.Tensor]:
    """The tensors of a method's result: itself, or the items of a tuple (decode_encp's (features, ge))."""
    return [t for t in (result if isinstance(result, tuple) else (result,)) if isinstance(t, torch.Tensor)]


def attach(stage: type[S], module: nn.Module, config: OptimizeConfig | None, options: dict[str, Any]) -> S:
    """The stage of class `stage` patched onto `module` (the one already there, if any): what every optimize_*
    function does. Raises TypeError naming what `module` lacks."""
    config = pipeline_config(config, options)
    missing = stage.lacks(module)
    if missing:
        raise TypeError(f"{stage.argument}: expected a {stage.expected}; {type(module).__name__} lacks "
                        f"{', '.join(missing)}")
    existing = getattr(module, HANDLE, None)
    if isinstance(existing, stage):
        return existing
    start = time.perf_counter()
    handle = stage(module, config)
    module.__dict__[HANDLE] = handle
    for name in (name for name in handle.methods if name in handle.original):  # upstream's own, none added
        module.__dict__[name] = getattr(handle, name)
    logger.info("%s: %s (%s) ready in %.2f s", stage.name, type(module).__name__, config.compile_mode,
                time.perf_counter() - start)
    return handle


def attach_or_leave(caller: str, label: str, optimize: Callable[..., Any], module: Callable[[], Any],
                    config: PipelineConfig) -> Stage | None:
    """The stage `optimize` patches onto `module()`, or None for a module of another shape: that module stays
    upstream's (one warning) and the caller's other stages still run."""
    try:
        return getattr(optimize(module(), config), HANDLE)
    except (AttributeError, TypeError) as exc:
        logger.warning("%s: %s left eager: %s", caller, label, exc)
        return None


def detach(module: nn.Module, stage: type[Stage] = Stage) -> nn.Module:
    """Undo `attach` of a stage of class `stage` (any stage by default): upstream's own methods again."""
    handle = module.__dict__.get(HANDLE)
    if isinstance(handle, stage):
        for name in (HANDLE, *handle.methods):
            module.__dict__.pop(name, None)
    return module
