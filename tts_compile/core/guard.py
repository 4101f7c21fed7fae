"""`Guard`: whether a stage's optimized path serves a call, and what happens when that path fails.

Every stage (a vocoder, the T2S decode, the CFM loop, a SoVITS decode) has one: the config's `enabled`, the
`TTS_COMPILE_DISABLE` switch, a runtime `switch` an integration sets, the failure that turned the stage off, the
fallback policy and the counters. The rule for a failed call is the same everywhere (`Guard.call`): the original
module answers it; if the original fails too, the input was bad and its own error propagates with the stage left
on; only when the original succeeds where the optimized path failed is the stage turned off (or an
`OptimizationError` raised, with `fallback="raise"`), unless the stage `recover`s (the vocoder drops inductor once).
A call the optimized path does not cover (an input outside its buckets, a bucket that failed verification) is
answered by the original and counted as `uncovered`; the stage stays on.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Callable, Iterable, TypeVar

from .config import DISABLE_ENV, ConfigError, OptimizeConfig, disabled_by_environment

logger = logging.getLogger(__name__)

COUNTERS = ("calls", "optimized", "eager", "uncovered", "fallbacks")
T = TypeVar("T")


class OptimizationError(RuntimeError):
    """The optimized path failed and the config says `fallback="raise"`."""


class InputError(ValueError):
    """A call's input is invalid (shape, channels, device, values, lengths); raised for that call only."""


class InputTypeError(TypeError):
    """A call's input has the wrong type or dtype; raised for that call only."""


class Uncovered(Exception):
    """Raised inside an optimized path for a call it does not cover (outside its buckets, a rejected bucket): the
    guard serves that call from the original and leaves the stage on."""


CALLER_ERRORS = (InputError, InputTypeError, ConfigError)  # the caller's mistakes: never a reason to fall back


def _always_on() -> bool:
    return True


class Guard:
    """On/off state, failure, fallback policy and counters of one stage. Thread-safe."""

    def __init__(self, name: str, config: OptimizeConfig, counters: Iterable[str] = (),
                 recover: Callable[[str, BaseException], bool] | None = None) -> None:
        self.name = name
        self.config = config
        self.failure: str | None = None
        self.switch: Callable[[], bool] = _always_on  # a runtime switch an integration reads per call
        self.recover = recover  # called on a failure of the optimized path; True: try again instead of turning off
        self._counters: Counter[str] = Counter(dict.fromkeys((*COUNTERS, *counters), 0))
        self._lock = threading.Lock()
        if config.enabled and disabled_by_environment():
            logger.info("%s is set: %s runs eager", DISABLE_ENV, name)

    @property
    def active(self) -> bool:
        """Whether calls take the optimized path: enabled, not disabled by the environment, not failed, switch on."""
        return self.config.enabled and self.failure is None and not disabled_by_environment() and bool(self.switch())

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def counters(self) -> dict[str, Any]:
        """The counters and the failure that turned the stage off (None while it runs)."""
        with self._lock:
            return {**self._counters, "failure": self.failure}

    def call(self, what: str, optimized: Callable[[], T], original: Callable[[], T],
             why_not: str | None = None) -> T:
        """`optimized()` while active, else `original()`; `original()` also for a call the optimized path does not
        cover (`why_not` says why) and after a failure of the optimized path (see the module docstring)."""
        self.count("calls")
        if why_not or not self.active:
            if why_not:
                self.uncovered(what, why_not)
            return self.original(original)
        try:
            result = optimized()
        except CALLER_ERRORS:
            raise
        except Uncovered as exc:
            self.uncovered(what, str(exc))
            return self.original(original)
        except Exception as exc:  # noqa: BLE001 - any failure of the optimized path falls back
            result = self.original(original)  # raises the original's own error for a bad input: the stage stays on
            self.fail(what, exc)
            return result
        self.count("optimized")
        return result

    def uncovered(self, what: str, why: str) -> None:
        """Count a call the optimized path does not cover; logged at DEBUG with the reason."""
        self.count("uncovered")
        logger.debug("%s: %s served by the original module: %s", self.name, what, why)

    def original(self, original: Callable[[], T]) -> T:
        """`original()`, counted."""
        self.count("eager")
        return original()

    def fail(self, what: str, exc: BaseException) -> None:
        """The optimized path failed at `what`: raise with `fallback="raise"`, else turn the stage off (one warning)."""
        reason = f"{what} failed: {type(exc).__name__}: {exc}"
        if self.config.fallback == "raise":
            raise OptimizationError(f"{self.name}: {reason}") from exc
        if self.recover is not None and self.recover(what, exc):
            return
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = reason
            self._counters["fallbacks"] += 1
        if first:
            logger.warning("%s: %s; serving from the eager module from now on", self.name, reason)

    def attempt(self, what: str, run: Callable[[], T]) -> T | None:
        """`run()` of a step with no original to answer instead (warm-up, a stream step): once more after the stage
        recovered from a failure, None after a failure that turned it off."""
        try:
            return run()
        except CALLER_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the optimized path falls back
            self.fail(what, exc)
            return self.attempt(what, run) if self.active else None
