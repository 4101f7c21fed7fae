"""optimize_cfm on the stand-in flow-matching model (upstream CFM's interface), CPU, float32: the optimized loop
draws the same noise and gives the same mel as the model's own `inference`, or hands the call to it."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.core.rng import own_draws
from tts_compile.gpt_sovits.cfm import optimize_cfm, restore_cfm
from tts_compile.gpt_sovits.models.dit import DiTConfig, build_flow_matching

CONFIG = DiTConfig()
EAGER = {"compile_mode": "eager"}  # the optimized loop with the blocks uncompiled: no compile on CPU
EXACT = 1e-6  # fp32, same kernels on CPU: measured 0; a slack of rounding only
COMPILED = 1e-5  # fp32, inductor's fused elementwise code vs eager: measured 1e-6


def _inputs(batch: int, frames: int, prompt: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames, CONFIG.text_dim, generator=gen), torch.LongTensor([frames]),
            torch.randn(batch, CONFIG.mel_dim, prompt, generator=gen))


def _seeded(call, *args, seed: int = 11, **kwargs) -> torch.Tensor:
    torch.manual_seed(seed)
    return call(*args, **kwargs)


def _reference(cfm, *args, **kwargs) -> torch.Tensor:
    return _seeded(type(cfm).inference, cfm, *args, **kwargs)


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 3), frames=st.integers(2, 40), prompt=st.integers(0, 40), steps=st.integers(1, 5),
       temperature=st.sampled_from([1.0, 0.7]))
def test_optimized_loop_equals_inference(batch, frames, prompt, steps, temperature) -> None:
    cfm = optimize_cfm(build_flow_matching(), **EAGER)
    args = (*_inputs(batch, frames, min(prompt, frames)), steps, temperature)
    got = _seeded(cfm.inference, *args)
    expected = _reference(cfm, *args)
    assert got.shape == (batch, CONFIG.mel_dim, frames)
    assert float((got - expected).abs().max()) <= EXACT
    assert cfm.tts_compile.optimization_stats()["direct"] == 1


def test_compiled_blocks_match_and_compile_once_for_every_length() -> None:
    cfm = optimize_cfm(build_flow_matching(), compile_mode="default")
    for frames in (24, 31):
        args = (*_inputs(2, frames, 9), 3)
        assert float((_seeded(cfm.inference, *args) - _reference(cfm, *args)).abs().max()) <= COMPILED
    assert cfm.tts_compile.optimization_stats()["direct"] == 2


def test_masking_x_lens_and_guidance_go_to_upstreams_own_path() -> None:
    cfm = optimize_cfm(build_flow_matching(), **EAGER)
    mu, _, prompt = _inputs(2, 20, 5)
    lens = torch.LongTensor([20, 14])  # the second row's last frames are masked: not the unmasked function
    torch.testing.assert_close(_seeded(cfm.inference, mu, lens, prompt, 3), _reference(cfm, mu, lens, prompt, 3),
                               rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="guidance"):  # the stand-in's own answer to guidance
        cfm.inference(mu, torch.LongTensor([20]), prompt, 3, inference_cfg_rate=0.7)
    assert cfm.tts_compile.optimization_stats()["eager"] == 2


def test_a_failing_loop_falls_back_with_the_same_noise(monkeypatch, caplog) -> None:
    cfm = optimize_cfm(build_flow_matching(), **EAGER)
    handle = cfm.tts_compile
    monkeypatch.setattr(handle, "_velocity", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    args = (*_inputs(1, 16, 4), 2)
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        got = _seeded(cfm.inference, *args)
    torch.testing.assert_close(got, _reference(cfm, *args), rtol=0, atol=0)
    assert "RuntimeError: boom" in caplog.text and handle.failure == "inference failed: RuntimeError: boom"
    _seeded(cfm.inference, *args)
    assert handle.optimization_stats()["fallbacks"] == 1 and handle.optimization_stats()["eager"] == 2  # both calls


def test_bad_input_raises_upstreams_error_and_keeps_the_optimizer() -> None:
    cfm = optimize_cfm(build_flow_matching(), **EAGER)
    mu, lens, _ = _inputs(1, 16, 4)
    with pytest.raises(RuntimeError):
        cfm.inference(mu, lens, torch.randn(1, CONFIG.mel_dim + 1, 4), 2)  # wrong mel channels in the prompt
    assert cfm.tts_compile.failure is None and cfm.tts_compile.active


def test_fallback_raise_reraises_the_optimizers_error(monkeypatch) -> None:
    cfm = optimize_cfm(build_flow_matching(), **EAGER, fallback="raise")
    monkeypatch.setattr(cfm.tts_compile, "_velocity", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        cfm.inference(*_inputs(1, 16, 4), 2)


def test_disabled_config_and_restore() -> None:
    cfm = optimize_cfm(build_flow_matching(), **EAGER, enabled=False)
    cfm.inference(*_inputs(1, 8, 2), 2)
    assert cfm.tts_compile.optimization_stats()["eager"] == 1
    restore_cfm(cfm)
    assert "inference" not in vars(cfm) and not hasattr(cfm, "tts_compile")


def test_environment_switch_turns_an_optimized_cfm_off(monkeypatch) -> None:
    cfm = optimize_cfm(build_flow_matching(), **EAGER)
    monkeypatch.setenv("TTS_COMPILE_DISABLE", "1")  # set after optimize_cfm with an explicit config: still honoured
    cfm.inference(*_inputs(1, 8, 2), 2)
    assert cfm.tts_compile.optimization_stats()["eager"] == 1 and cfm.tts_compile.optimization_stats()["direct"] == 0


def test_rejects_a_module_that_is_not_a_cfm() -> None:
    with pytest.raises(TypeError, match="cfm: expected a GPT-SoVITS CFM.*lacks"):
        optimize_cfm(torch.nn.Linear(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_bucket_is_captured_on_its_second_call_and_replayed() -> None:
    cfm = build_flow_matching().cuda()
    optimize_cfm(cfm, compile_mode="cudagraphs")
    args = tuple(t.cuda() for t in _inputs(2, 32, 10)) + (4,)
    outputs = [_seeded(cfm.inference, *args) for _ in range(3)]
    expected = _reference(cfm, *args)
    stats = cfm.tts_compile.optimization_stats()
    assert stats["captures"] == 1 and stats["replays"] == 2 and stats["direct"] == 1
    for out in outputs:
        assert float((out - expected).abs().max()) <= COMPILED


@pytest.mark.parametrize("staged", [True, False])
def test_own_draws_give_what_a_seeded_inference_gives(staged) -> None:
    """Inside `own_draws(seed)` (the engine's renders) the optimized loop, and a call handed to upstream (a masking
    x_lens), draw the seed's noise: the mel of `torch.manual_seed(seed)` then upstream's inference; the default
    generator is left alone."""
    cfm = optimize_cfm(build_flow_matching(), **EAGER)
    mu, lens, prompt = _inputs(2, 16, 5)
    args = (mu, lens if staged else torch.LongTensor([16, 11]), prompt, 3)
    expected = _reference(cfm, *args)
    torch.manual_seed(8)
    state = torch.get_rng_state()
    with own_draws(11, torch.device("cpu")):
        got = cfm.inference(*args)
    assert float((got - expected).abs().max()) <= EXACT and torch.equal(torch.get_rng_state(), state)
    assert cfm.tts_compile.optimization_stats()["direct" if staged else "eager"] == 1
