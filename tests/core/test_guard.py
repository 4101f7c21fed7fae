"""The guard's one rule: a failed optimized call is answered by the original; the stage turns off only when the
original succeeds where the optimized path failed; bad input and uncovered calls leave it on."""

from __future__ import annotations

import logging

import pytest

from tts_compile.core.config import OptimizeConfig
from tts_compile.core.guard import Guard, InputError, OptimizationError, Uncovered


def _boom() -> None:
    raise RuntimeError("boom")


def test_a_failure_the_original_answers_turns_the_stage_off_once(caplog) -> None:
    guard = Guard("stage", OptimizeConfig())
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        assert guard.call("a call", _boom, lambda: "eager") == "eager"
        assert guard.call("a call", lambda: "fast", lambda: "eager") == "eager"  # off from now on
    stats = guard.counters()
    assert stats["failure"] == "a call failed: RuntimeError: boom" and not guard.active
    assert (stats["calls"], stats["optimized"], stats["eager"], stats["fallbacks"]) == (2, 0, 2, 1)
    assert caplog.text.count("serving from the eager module") == 1


def test_bad_input_raises_the_originals_error_and_leaves_the_stage_on() -> None:
    guard = Guard("stage", OptimizeConfig())

    def original():
        raise ValueError("x must be 2-D")

    with pytest.raises(ValueError, match="x must be 2-D"):
        guard.call("a call", _boom, original)
    with pytest.raises(InputError):
        guard.call("a call", lambda: (_ for _ in ()).throw(InputError("bad")), lambda: "eager")
    assert guard.active and guard.counters()["fallbacks"] == 0
    assert guard.call("a call", lambda: "fast", lambda: "eager") == "fast"


def test_uncovered_calls_go_to_the_original_and_are_counted() -> None:
    guard = Guard("stage", OptimizeConfig())
    assert guard.call("a call", lambda: "fast", lambda: "eager", why_not="too long") == "eager"
    assert guard.call("a call", lambda: (_ for _ in ()).throw(Uncovered("bucket rejected")), lambda: "eager") == "eager"
    stats = guard.counters()
    assert stats["uncovered"] == 2 and stats["eager"] == 2 and guard.active


def test_fallback_raise_and_recover() -> None:
    with pytest.raises(OptimizationError, match="stage: a call failed: RuntimeError: boom"):
        Guard("stage", OptimizeConfig(fallback="raise")).call("a call", _boom, lambda: "eager")
    recovered = []
    guard = Guard("stage", OptimizeConfig(), recover=lambda what, exc: not recovered and not recovered.append(what))
    assert guard.attempt("warm-up", lambda: _boom() if not recovered else "warm") == "warm"  # retried once
    assert guard.active and recovered == ["warm-up"]
    assert guard.attempt("warm-up", _boom) is None and not guard.active  # recover declines: off
