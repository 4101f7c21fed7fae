"""`Stage`: what every GPT-SoVITS accelerator (`optimize_t2s`, `optimize_cfm`, `optimize_sovits`) is made of: a
guard (`core.guard`), a runner (`core.runner`) and the patching of upstream's methods on one module instance, which
keep their signatures and results.

A call the stage cannot serve (an input outside its buckets, a parameter it does not cover) goes to upstream's own
method and the stage stays on; a failure of the optimized path rewinds the random generator, so upstream's method
draws what it would have drawn, and then follows the guard's rule.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..core.config import OptimizeConfig
from ..core.guard import Guard
from ..core.runner import Execution, Runner
from .config import PipelineConfig, pipeline_config
from .rng import RngState

logger = logging.getLogger(__name__)

HANDLE = "tts_compile"  # attribute on the patched upstream module holding its stage
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

    def __init__(self, module: nn.Module, config: PipelineConfig) -> None:
        self.original = {name: getattr(type(module), name).__get__(module) for name in self.methods}
        self.config = config
        self.guard = Guard(self.name, config, self.counters)
        self.device = next(module.parameters()).device
        self.execution = Execution.of(config.compile_mode, self.device)
        benchmark = self.cudnn_heuristics_unsafe or self.cudnn_benchmark and config.cudnn_benchmark
        self.runner = Runner(self.execution, self.device, benchmark, benchmark_direct=self.cudnn_heuristics_unsafe)
        self._lock = threading.Lock()  # capture decisions: one capture per key, even from concurrent callers
        self._seen: Counter[Hashable] = Counter()

    @classmethod
    def lacks(cls, module: nn.Module) -> list[str]:
        """What `module` lacks of what the stage reads (empty: it fits)."""
        return []

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
        """The guard's counters (calls, optimized, eager, fallbacks, failure), the runner's (captures, replays,
        direct) and the stage's own."""
        runner = self.runner.counters
        return {**self.guard.counters(), "captures": runner["captures"], "replays": runner["replays"],
                "direct": runner["direct"]}

    def serve(self, method: str, args: tuple[Any, ...], problem: str | None, staged: Callable[..., Any],
              grad_mode: Callable[[], Any] = torch.no_grad) -> Any:
        """`staged(*args)` under upstream's `grad_mode`; upstream's `method` for a call with a `problem`, while off,
        or (generator rewound) after a failure."""
        upstream = lambda: self.original[method](*args)  # noqa: E731 - the guard's fallback
        if problem:
            logger.debug("%s: upstream's %s: %s", self.name, method, problem)
            return self.guard.call(method, upstream, upstream, why_not=problem)

        def optimized() -> Any:
            rng = RngState(self.device)
            try:
                with grad_mode():
                    return staged(*args)
            except Exception:
                rng.restore()
                raise

        return self.guard.call(method, optimized, upstream)

    def due(self, key: Hashable) -> bool:
        """Count one call of bucket `key`: whether it is seen often enough (`capture_after`) to be captured."""
        with self._lock:
            self._seen[key] += 1
            return self._seen[key] >= self.capture_after

    def run_graph(self, key: Hashable, call: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
                  label: str, capture: bool = True) -> torch.Tensor:
        """`call` on `inputs` through the graph of `key`, capturing it first when `capture` (at most `max_graphs`);
        without a graph when `key` has none."""
        with self._lock:
            if capture and self.runner.graphs and not self.runner.has(key):
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
    for name in handle.methods:
        module.__dict__[name] = getattr(handle, name)
    logger.info("%s: %s (%s) ready in %.2f s", stage.name, type(module).__name__, config.compile_mode,
                time.perf_counter() - start)
    return handle


def detach(module: nn.Module, stage: type[Stage] = Stage) -> nn.Module:
    """Undo `attach` of a stage of class `stage` (any stage by default): upstream's own methods again."""
    handle = module.__dict__.get(HANDLE)
    if isinstance(handle, stage):
        for name in (HANDLE, *handle.methods):
            module.__dict__.pop(name, None)
    return module
