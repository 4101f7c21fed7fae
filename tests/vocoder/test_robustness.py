"""optimize_vocoder stays on and stays exact under what a service meets: bad calls between good ones, a module that
is not what the passes assume, a corrupted optimized path, weights changed in every way, and many threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tts_compile import optimize_vocoder
from tts_compile.core.runner import Runner
from tts_compile.models import build_model
from tts_compile.models.bigvgan import AntiAliasedSnakeBeta
from tts_compile.testing import TOLERANCE, assert_matches_eager, relative_error
from tts_compile.vocoder import VocoderOptimizer

from ..conftest import mel_for, tiny

CHECKED = {"compile_mode": "eager", "chunk_size": 40}  # windows, captures and verification, no compile on CPU
FP32 = TOLERANCE[torch.float32]


def _good(vocoder, name: str = "vits-tiny", frames: int = 150) -> None:
    """A good call: served by the optimized path and equal to the eager module."""
    before = vocoder.optimization_stats()["optimized"]
    assert_matches_eager(vocoder, mel_for(name, frames), g=torch.randn(1, 8, 1))
    assert vocoder.optimization_stats()["optimized"] == before + 1


BAD_CALLS = {  # name -> (call, error type, words the message must hold)
    "lengths as an int": (lambda v, mel, g: v(mel, g=g, lengths=150), ValueError, "lengths=150"),
    "lengths with a bool": (lambda v, mel, g: v(mel, g=g, lengths=[True]), ValueError, r"lengths=\[True\]"),
    "an unexpected keyword": (lambda v, mel, g: v(mel, g=g, speed=2), ValueError, "speed"),
    "an extra positional tensor": (lambda v, mel, g: v(mel, g, g=g), (ValueError, TypeError), "argument 0"),
    "g with the wrong channels": (lambda v, mel, g: v(mel, g=torch.randn(1, 9, 1)), ValueError, "extra arguments"),
    "NaN in g": (lambda v, mel, g: v(mel, g=torch.full((1, 8, 1), float("nan"))), ValueError, "g contains 8 NaN"),
    "NaN in the mel": (lambda v, mel, g: v(torch.full_like(mel, float("nan")), g=g), ValueError, "NaN or Inf"),
    "a 2-D mel": (lambda v, mel, g: v(mel[0], g=g), ValueError, "add a batch axis"),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS))
def test_a_bad_call_raises_for_itself_and_the_next_call_is_optimized(bad) -> None:
    vocoder = optimize_vocoder(tiny("vits-tiny"), **CHECKED)
    call, error, words = BAD_CALLS[bad]
    with pytest.raises(error, match=words):
        call(vocoder, mel_for("vits-tiny", 90), torch.randn(1, 8, 1))
    assert vocoder.optimization_stats()["failure"] is None and vocoder.optimization_stats()["fallbacks"] == 0
    _good(vocoder)


@pytest.mark.parametrize("bad", ["NaN in the mel", "a 2-D mel", "NaN in g", "lengths as an int"])
def test_input_is_checked_with_the_optimizer_disabled_too(monkeypatch, bad) -> None:
    monkeypatch.setenv("TTS_COMPILE_DISABLE", "1")
    call, error, words = BAD_CALLS[bad]
    with pytest.raises(error, match=words):
        call(optimize_vocoder(tiny("vits-tiny"), **CHECKED), mel_for("vits-tiny", 90), torch.randn(1, 8, 1))


def test_lengths_from_numpy_and_tensors_are_accepted() -> None:
    vocoder = optimize_vocoder(tiny("hifigan-tiny"), **CHECKED)
    mel = mel_for("hifigan-tiny", 120, batch=2)
    expected = vocoder.eager(mel, lengths=[120, 70])
    for lengths in (np.array([120, 70]), torch.tensor([120, 70]), (120, 70)):
        assert relative_error(vocoder(mel, lengths=lengths), expected) <= FP32


@settings(max_examples=10, deadline=None)
@given(plan=st.lists(st.sampled_from(["good", *BAD_CALLS]), min_size=2, max_size=8))
def test_bad_calls_mixed_between_good_ones_never_switch_anything_off(plan) -> None:
    vocoder = optimize_vocoder(tiny("vits-tiny"), **CHECKED)
    for step in plan:
        if step == "good":
            _good(vocoder, frames=60 + 13 * len(plan))
            continue
        call, error, _ = BAD_CALLS[step]
        with pytest.raises(error):
            call(vocoder, mel_for("vits-tiny", 90), torch.randn(1, 8, 1))
    stats = vocoder.optimization_stats()
    assert stats["failure"] is None and stats["fallbacks"] == 0 and stats["degraded"] == 0


def test_a_wrong_first_call_of_the_function_form_does_not_switch_it_off() -> None:
    model = tiny("hifigan-tiny")

    @optimize_vocoder(**CHECKED)
    def vocode(mel):
        return model(mel)

    with pytest.raises(RuntimeError):  # the model's own error for 31 mel bins
        vocode(torch.randn(1, 31, 80))
    assert vocode.optimization_stats()["failure"] is None
    assert_matches_eager(vocode, mel_for("hifigan-tiny", 200))
    assert vocode.optimization_stats()["optimized"] >= 1


# ------------------------------------------------------------------------------------ verification on every path
class AntiAliasedSnakeBetaFork(AntiAliasedSnakeBeta):
    """A user's fork: the layout of the reference activation, another function (recognised by its structure)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.5


AntiAliasedSnakeBetaFork.__name__ = "AntiAliasedSnakeBeta"


def _forked_bigvgan() -> nn.Module:
    model = tiny("bigvgan-tiny")
    for block in model.resblocks:
        block.acts[0].__class__ = AntiAliasedSnakeBetaFork
    return model


@pytest.mark.parametrize("warmup", ["startup", "lazy"])
def test_a_fork_the_passes_misread_is_caught_before_it_serves(warmup) -> None:
    model = _forked_bigvgan()
    vocoder = optimize_vocoder(model, **CHECKED, fused_activation="on", warmup=warmup)
    mel = mel_for("bigvgan-tiny", 200)
    with torch.inference_mode():
        assert torch.equal(vocoder(mel), model(mel))
    assert "VerificationError" in vocoder.optimization_stats()["failure"]


def test_too_small_a_context_is_caught_in_lazy_mode_and_for_a_decorated_class() -> None:
    model = tiny("bigvgan-tiny")
    lazy = optimize_vocoder(model, context=1, chunk_size=20, compile_mode="eager", warmup="lazy")
    mel = mel_for("bigvgan-tiny", 300)
    with torch.inference_mode():
        assert torch.equal(lazy(mel), model(mel))
    assert "context=1" in lazy.optimization_stats()["failure"]

    decorated = optimize_vocoder(type(model), context=1, chunk_size=20, compile_mode="eager")(model.config).eval()
    decorated.load_state_dict(model.state_dict())
    with torch.inference_mode():
        assert relative_error(decorated(mel), model(mel)) <= FP32
    assert "context=1" in decorated.optimization_stats()["failure"]


def test_a_corrupted_optimized_result_is_caught_at_warm_up(monkeypatch) -> None:
    run = Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, key, inputs: run(self, key, inputs) + 1e-2)
    model = tiny("hifigan-tiny")
    vocoder = optimize_vocoder(model, **CHECKED)
    mel = mel_for("hifigan-tiny", 300)
    with torch.inference_mode():
        assert torch.equal(vocoder(mel), model(mel))
    stats = vocoder.optimization_stats()
    assert "VerificationError" in stats["failure"] and "bucket" in stats["failure"] and stats["verifications"] >= 1


# ------------------------------------------------------------------------------------ weights
def _inference_model(name: str) -> nn.Module:
    with torch.inference_mode():
        return build_model(name, seed=0)


WEIGHT_CHANGES = {
    "param.data": lambda model, new: [setattr(p, "data", q.data.clone())
                                      for p, q in zip(model.parameters(), new.parameters())],
    "load_state_dict": lambda model, new: model.load_state_dict(new.state_dict()),
    "load_state_dict(assign=True)": lambda model, new: model.load_state_dict(new.state_dict(), assign=True),
}


@pytest.mark.parametrize("change", list(WEIGHT_CHANGES))
def test_every_weight_change_reaches_the_next_call(change) -> None:
    """Channels-last convolutions keep derived copies of the weights: each change must rebuild them."""
    model = tiny("hifigan-tiny")
    vocoder = optimize_vocoder(model, **CHECKED, channels_last="on")
    mel = mel_for("hifigan-tiny", 150)
    assert_matches_eager(vocoder, mel)
    new = tiny("hifigan-tiny", seed=1)
    WEIGHT_CHANGES[change](model, new)
    with torch.inference_mode():
        assert relative_error(vocoder(mel), new(mel)) <= FP32
    assert vocoder.optimization_stats()["rebuilds"] == 1


def test_an_in_place_load_into_inference_tensors_reaches_the_next_call() -> None:
    """Inference tensors keep no version counter: the fingerprint reads their content instead."""
    model = _inference_model("hifigan-tiny")
    vocoder = optimize_vocoder(model, **CHECKED, channels_last="on")
    mel = mel_for("hifigan-tiny", 150)
    with torch.inference_mode():
        vocoder(mel)
        model.load_state_dict(tiny("hifigan-tiny", seed=1).state_dict())
        got = vocoder(mel)
    with torch.inference_mode():
        assert relative_error(got, tiny("hifigan-tiny", seed=1)(mel)) <= FP32
    assert vocoder.optimization_stats()["rebuilds"] == 1


# ------------------------------------------------------------------------------------ threads
def test_eight_threads_a_weight_swap_and_a_discard_mid_run() -> None:
    """Mixed lengths (several buckets and unchunked short inputs) from 8 threads; between two phases the weights are
    loaded in place, and the captures are dropped while the threads run: every output is the eager module's for the
    weights in force, and nothing is switched off."""
    model = tiny("bigvgan-tiny")
    vocoder = optimize_vocoder(model, compile_mode="eager", chunk_size=40, max_batch=2)
    weights = [tiny("bigvgan-tiny", seed=s) for s in (0, 1)]
    mels = [mel_for("bigvgan-tiny", 10 + 41 * i) for i in range(8)]
    with torch.inference_mode():
        expected = [[w(m) for m in mels] for w in weights]
    barrier, errors = threading.Barrier(9), []

    def work(i: int) -> None:
        for phase in range(2):
            barrier.wait()  # the main thread has set the weights of this phase
            with torch.inference_mode():
                for _ in range(3):
                    error = relative_error(vocoder(mels[i]), expected[phase][i])
                    if error > FP32:
                        errors.append((phase, i, error))
            barrier.wait()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    barrier.wait()
    vocoder.optimizer.setup.runner.discard(lambda key: True)  # mid-run, while the threads call
    barrier.wait()
    model.load_state_dict(weights[1].state_dict())
    barrier.wait()
    barrier.wait()
    for t in threads:
        t.join()
    stats = vocoder.optimization_stats()
    assert not errors and stats["failure"] is None and stats["rebuilds"] == 1


def test_a_decorated_instance_first_called_from_threads_makes_one_engine(monkeypatch) -> None:
    """Four threads make the first calls of one instance of a decorated class at once: one engine serves them all
    (its counters see every call), not one engine per thread that happened to ask first."""
    model = tiny("hifigan-tiny")
    decorated = optimize_vocoder(type(model), **CHECKED)(model.config).eval()
    decorated.load_state_dict(model.state_dict())
    made, init = [], VocoderOptimizer.__init__

    def slow_init(self, *args, **kwargs) -> None:  # widens the window between "not made yet" and "made"
        made.append(self)
        threading.Event().wait(0.05)
        init(self, *args, **kwargs)

    monkeypatch.setattr(VocoderOptimizer, "__init__", slow_init)
    mel, start = mel_for("hifigan-tiny", 120), threading.Barrier(4)

    def call() -> None:
        start.wait()
        with torch.inference_mode():
            decorated(mel)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(made) == 1 and decorated.optimization_stats()["calls"] == 4
