"""`optimize_vocoder`: exact, bucketed, compiled chunked inference for any mel -> audio vocoder, in three forms: an
instance (`OptimizedVocoder`), an `nn.Module` class (a subclass whose instances optimize on first use) and a plain
mel -> audio function. The work is `optimizer.VocoderOptimizer`'s."""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from ..core.config import OptimizeConfig
from ..core.guard import OptimizationError
from .optimizer import VocoderOptimizer

__all__ = ["OptimizationError", "OptimizedVocoder", "VocoderOptimizer", "optimize_vocoder"]

_RESERVED = ("stream", "warmup", "eager", "optimization_stats")


class OptimizedVocoder(nn.Module):
    """A vocoder module or function wrapped by `optimize_vocoder`; call it like the original.

    Attributes the wrapper lacks are looked up on the wrapped module (`wrapper.remove_weight_norm()` works).
    `eager(...)` calls the original, `stream(pieces)` streams, `warmup()` compiles and captures now,
    `optimization_stats()` returns the counters.
    """

    def __init__(self, target: nn.Module | Callable[..., torch.Tensor], config: OptimizeConfig,
                 example_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(target, nn.Module):
            self.module = target
            eager, name = _call_module, type(target).__name__
        else:
            self.module = None
            eager, name = functools.partial(_call_function, target), getattr(target, "__name__", "vocoder")
        self.optimizer = VocoderOptimizer(eager, self.module, config, name)
        if isinstance(target, nn.Module) and config.warmup == "startup":
            self.optimizer.warmup(**dict(example_kwargs or {}))

    def forward(self, mel: torch.Tensor, *args: Any, lengths: Any = None, **kwargs: Any) -> torch.Tensor:
        return self.optimizer(mel, *args, lengths=lengths, **kwargs)

    def eager(self, mel: torch.Tensor, *args: Any, lengths: Any = None, **kwargs: Any) -> torch.Tensor:
        return self.optimizer.eager(mel, *args, lengths=lengths, **kwargs)

    def stream(self, pieces: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        return self.optimizer.stream(pieces, *args, **kwargs)

    def warmup(self, example: torch.Tensor | None = None, **example_kwargs: Any) -> "OptimizedVocoder":
        self.optimizer.warmup(example, **example_kwargs)
        return self

    def optimization_stats(self) -> dict[str, Any]:
        return self.optimizer.optimization_stats()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = self.__dict__.get("_modules", {}).get("module")
            if module is None:
                raise
            return getattr(module, name)


def _call_module(module: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    return module(*args, **kwargs)


def _call_function(fn: Callable[..., torch.Tensor], _: None, *args: Any, **kwargs: Any) -> torch.Tensor:
    return fn(*args, **kwargs)


def _optimize_class(cls: type[nn.Module], config: OptimizeConfig) -> type[nn.Module]:
    """A subclass of `cls` whose instances run the optimized path; capture happens at first use or warmup()."""
    clashes = [name for name in _RESERVED if hasattr(cls, name)]
    if clashes:
        raise TypeError(f"cannot decorate {cls.__name__}: it already defines {clashes}; wrap an instance instead "
                        "(optimize_vocoder(model))")
    original = cls.forward
    engines: "weakref.WeakKeyDictionary[nn.Module, VocoderOptimizer]" = weakref.WeakKeyDictionary()
    lock = threading.Lock()  # an instance's first calls from several threads make one engine

    def optimizer(self: nn.Module) -> VocoderOptimizer:
        with lock:
            if self not in engines:  # kept outside the instance, so copying an instance never copies its engine
                engines[self] = VocoderOptimizer(functools.partial(_call_unbound, original), self, config,
                                                 cls.__name__)
            return engines[self]

    @functools.wraps(original)
    def forward(self, mel, *args, lengths=None, **kwargs):
        return optimizer(self)(mel, *args, lengths=lengths, **kwargs)

    def warmup(self, example=None, **example_kwargs):
        optimizer(self).warmup(example, **example_kwargs)
        return self

    namespace = {
        "forward": forward,
        "eager": lambda self, mel, *a, lengths=None, **k: optimizer(self).eager(mel, *a, lengths=lengths, **k),
        "stream": lambda self, pieces, *a, **k: optimizer(self).stream(pieces, *a, **k),
        "warmup": warmup,
        "optimization_stats": lambda self: optimizer(self).optimization_stats(),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    return type(cls.__name__, (cls,), namespace)


def _call_unbound(forward: Callable[..., torch.Tensor], module: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    return forward(module, *args, **kwargs)


def optimize_vocoder(target: Any = None, *, config: OptimizeConfig | None = None,
                     example_kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """Make a vocoder fast without changing its output: an instance, an `nn.Module` class or a mel -> audio function.

    Returns an `OptimizedVocoder` for an instance or a function, and a subclass for a class. `options` are
    `OptimizeConfig` fields (they override `config`); `example_kwargs` are the conditioning arguments warm-up
    captures with (e.g. `{"g": torch.zeros(1, 512, 1)}` for a VITS decoder). Works bare (`@optimize_vocoder`)
    and with options (`@optimize_vocoder(chunk_size=250)`).
    """
    resolved = (config or OptimizeConfig()).replace(**options)
    if target is None:
        return functools.partial(optimize_vocoder, config=resolved, example_kwargs=example_kwargs)
    if isinstance(target, type) and issubclass(target, nn.Module):
        return _optimize_class(target, resolved)
    if isinstance(target, nn.Module) or callable(target):
        return OptimizedVocoder(target, resolved, example_kwargs)
    raise TypeError(f"optimize_vocoder expects an nn.Module, an nn.Module class or a function, got "
                    f"{type(target).__name__}")
