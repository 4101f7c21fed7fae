"""`Accelerator`: what the GPT-SoVITS accelerators (`optimize_t2s`, `optimize_cfm`, `optimize_sovits`) share: the config, the runtime
switch, TTS_COMPILE_DISABLE, the failure state, the rule for falling back to upstream's own method, and patching
upstream's methods on the module instance (`install`, `uninstall`)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any, Callable

import torch
from torch import nn

from ..config import OptimizeConfig, disabled_by_environment, load_config
from ..runner import GRAPH_MODES, Runner
from .rng import RngState

logger = logging.getLogger(__name__)

HANDLE = "tts_compile"  # attribute on the patched upstream module holding its accelerator


class Accelerator:
    """Base of an accelerator patched onto one upstream module: `active`, counters, and the fallback rule."""

    name = "accelerator"  # the optimize_* function, for log lines
    methods: tuple[str, ...] = ()  # upstream's methods the accelerator answers on the patched instance

    def __init__(self, module: nn.Module, config: OptimizeConfig, counters: tuple[str, ...]) -> None:
        self.original = {name: getattr(type(module), name).__get__(module) for name in self.methods}
        self.config = config
        self.switch: Callable[[], bool] = lambda: True
        self.failure: str | None = None
        self.counters: Counter[str] = Counter(dict.fromkeys(counters + ("fallbacks",), 0))

    @property
    def active(self) -> bool:
        """Whether calls take the optimized path (enabled, not disabled by the environment, not failed, switch on)."""
        return self.config.enabled and not disabled_by_environment() and self.failure is None and bool(self.switch())

    def optimization_stats(self) -> dict[str, Any]:
        """The counters, and the failure that turned the accelerator off (None while it runs)."""
        return {**self.counters, "failure": self.failure}

    def serve_upstream(self, exc: Exception, upstream: Callable[[], Any]) -> Any:
        """After the optimized path raised `exc`: serve upstream's result, and turn the accelerator off only if
        upstream succeeds where it failed (a bad input raises upstream's own error and leaves it on)."""
        result = upstream()
        if self.config.fallback == "raise":
            raise exc
        self.failure = f"{type(exc).__name__}: {exc}"
        self.counters["fallbacks"] += 1
        logger.warning("%s: %s; upstream's own method serves every later call", self.name, self.failure)
        return result


class GraphAccelerator(Accelerator):
    """An accelerator whose optimized calls run on one `Runner` (CUDA graphs on CUDA in the graph modes): the runner
    counts graph replays, uncaptured (direct) runs and captures; `serve` counts calls and upstream ("eager") calls."""

    max_graphs = 48  # captured buckets per module; later new buckets run uncaptured
    cudnn_benchmark = False  # time cuDNN's algorithms at each capture (config.cudnn_benchmark permitting)
    cudnn_heuristics_unsafe = False  # time them at every capture and uncaptured run, whatever the config says

    def __init__(self, module: nn.Module, config: OptimizeConfig) -> None:
        super().__init__(module, config, ("calls", "eager"))
        self.device = next(module.parameters()).device
        benchmark = self.cudnn_heuristics_unsafe or self.cudnn_benchmark and config.cudnn_benchmark
        self.runner = Runner("cudagraphs" if config.compile_mode in GRAPH_MODES else "eager", self.device, benchmark,
                             benchmark_direct=self.cudnn_heuristics_unsafe)
        self._lock = threading.Lock()  # capture decisions: one capture per key, even from concurrent callers

    def optimization_stats(self) -> dict[str, Any]:
        """The counters, graph replays, direct runs and captures, and the failure (None while it runs)."""
        runner = self.runner.counters
        return {**super().optimization_stats(), "graph": runner["replays"], "direct": runner["direct"],
                "captures": runner["captures"]}

    def serve(self, method: str, args: tuple[Any, ...], problem: str | None, staged: Callable[..., Any],
              grad_mode: Callable[[], Any] = torch.no_grad) -> Any:
        """`staged(*args)` under upstream's `grad_mode`; upstream's `method` for a call with a `problem`, while off,
        or (RNG rewound, so it draws the same noise) after a failure."""
        self.counters["calls"] += 1
        if problem or not self.active:
            if problem:
                logger.debug("%s: upstream's %s: %s", self.name, method, problem)
            self.counters["eager"] += 1
            return self.original[method](*args)
        rng = RngState(self.device)
        try:
            with grad_mode():
                return staged(*args)
        except Exception as exc:
            rng.restore()
            return self.serve_upstream(exc, lambda: self.original[method](*args))

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
        return self.runner.run(key, inputs) if self.runner.has(key) else self.runner.direct(call, inputs)


def install(accelerator: Accelerator, module: nn.Module) -> nn.Module:
    """Patch `module` in place: its `methods` answered by `accelerator`, which `module.tts_compile` holds."""
    module.__dict__[HANDLE] = accelerator
    for name in accelerator.methods:
        module.__dict__[name] = getattr(accelerator, name)
    return module


def uninstall(module: nn.Module, kind: type[Accelerator]) -> nn.Module:
    """Undo `install` of an accelerator of class `kind`: upstream's own methods again."""
    for name in (HANDLE, *kind.methods):
        module.__dict__.pop(name, None)
    return module


def resolve_config(config: OptimizeConfig | None, options: dict[str, Any]) -> OptimizeConfig:
    """`config` with keyword `options` applied, or the defaults (and TTS_COMPILE_DISABLE) with them."""
    if config is None:
        return load_config(**options)
    return config.replace(**options) if options else config
