"""optimize_t2s on the stand-in T2S model (upstream's interface, a no-cache reference decode), CPU, float32: the
static-cache decode gives the reference's tokens, idx and generator state, or hands the call to it."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.gpt_sovits.t2s import CHECK_EVERY, optimize_t2s, restore_t2s
from tts_compile.models.t2s import build_t2s

EAGER = {"compile_mode": "eager"}  # the static-cache decode without compile (no graphs on CPU anyway)


def _inputs(phones: int, prompt: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 40, (1, phones), generator=gen), torch.randint(0, 64, (1, prompt), generator=gen),
            torch.randn(1, 1024, phones, generator=gen))


def _both_apis(model, inputs, seed: int, **kwargs):
    phones, prompts, bert = inputs
    torch.manual_seed(seed)
    naive = model.infer_panel(phones, None, prompts, bert, **kwargs)
    batch = model.infer_panel_batch_infer([phones[0]], None, prompts, [bert[0]], **kwargs)
    return naive, batch, torch.rand(2)


def _assert_same(got, expected) -> None:
    assert torch.equal(got[0][0], expected[0][0]) and got[0][1] == expected[0][1]
    assert torch.equal(got[1][0][0], expected[1][0][0]) and got[1][1] == expected[1][1]
    assert torch.equal(got[2], expected[2])  # generator state after the call


@settings(max_examples=10, deadline=None)
@given(phones=st.integers(1, 12), prompt=st.integers(1, 10), top_k=st.sampled_from([1, 3, 64, 100]),
       top_p=st.sampled_from([1.0, 0.8]), temperature=st.sampled_from([1.0, 0.6]),
       penalty=st.sampled_from([1.0, 1.35]), early=st.sampled_from([0, 5, 2 * CHECK_EVERY + 3]),
       seed=st.integers(0, 3), kernels=st.booleans())
def test_decode_equals_the_reference(phones, prompt, top_k, top_p, temperature, penalty, early, seed,
                                     kernels) -> None:
    """Both step forms (the `t2s_decode_step` op, the torch layers) give the reference's tokens."""
    model = build_t2s(seed=seed)
    kwargs = {"top_k": top_k, "top_p": top_p, "temperature": temperature, "repetition_penalty": penalty,
              "early_stop_num": early}
    inputs = _inputs(phones, prompt, seed)
    expected = _both_apis(model, inputs, seed, **kwargs)
    optimize_t2s(model, **EAGER, t2s_kernels=kernels)
    _assert_same(_both_apis(model, inputs, seed, **kwargs), expected)
    stats = model.tts_compile.optimization_stats()
    assert stats["optimized"] == 2 and stats["upstream"] == 0
    assert stats["syncs"] <= 2 * (stats["steps"] // CHECK_EVERY + 1)  # one EOS read per chunk, not per token


def test_eos_and_early_stop_slicing() -> None:
    model = build_t2s()
    with torch.no_grad():
        model.h.layers[-1].norm2.bias[0] = 100.0  # one hidden unit always large ...
        model.ar_predict_layer.weight[:, 0] = 0.0
        model.ar_predict_layer.weight[model.EOS, 0] = 1.0  # ... and read only by the EOS logit
    inputs = _inputs(5, 4)
    expected = _both_apis(model, inputs, 0, top_k=1, early_stop_num=-1)
    assert expected[0][1] == 11 and expected[0][0].shape[1] == 4 + 11  # EOS at the first step it is allowed
    optimize_t2s(model, **EAGER)
    _assert_same(_both_apis(model, inputs, 0, top_k=1, early_stop_num=-1), expected)


def test_batches_prompt_free_and_streaming_go_to_upstreams_methods() -> None:
    model = optimize_t2s(build_t2s(), **EAGER)
    phones, prompts, bert = _inputs(5, 4)
    two = model.infer_panel_batch_infer([phones[0]] * 2, None, prompts.repeat(2, 1), [bert[0]] * 2, top_k=1,
                                        early_stop_num=3)
    assert len(two[0]) == 2
    with pytest.raises(TypeError):  # the stand-in has no prompt-free path: upstream's own error comes through
        model.infer_panel(phones, None, None, bert, top_k=1, early_stop_num=3)
    stats = model.tts_compile.optimization_stats()
    assert stats["upstream"] == 2 and stats["optimized"] == 0


def test_a_failing_decode_falls_back_with_the_same_generator(monkeypatch, caplog) -> None:
    model = build_t2s()
    inputs = _inputs(5, 4)
    expected = _both_apis(model, inputs, 2, top_k=3, early_stop_num=9)
    optimize_t2s(model, **EAGER)
    accelerator = model.tts_compile
    original, steps = accelerator._step_body, []

    def fail_late(*args):  # fails mid-decode, after random draws: the generator must be rewound
        steps.append(1)
        if len(steps) > 3:
            raise RuntimeError("boom")
        return original(*args)

    monkeypatch.setattr(accelerator, "_step_body", fail_late)
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        _assert_same(_both_apis(model, inputs, 2, top_k=3, early_stop_num=9), expected)
    assert accelerator.failure == "RuntimeError: boom" and "RuntimeError: boom" in caplog.text
    assert accelerator.optimization_stats()["fallbacks"] == 1 and accelerator.optimization_stats()["upstream"] == 1


def test_bad_input_raises_upstreams_error_and_keeps_the_accelerator() -> None:
    model = optimize_t2s(build_t2s(), **EAGER)
    phones, prompts, _ = _inputs(5, 4)
    with pytest.raises(RuntimeError):
        model.infer_panel(phones, None, prompts, torch.randn(1, 1024, 7), top_k=1, early_stop_num=3)
    assert model.tts_compile.failure is None


def test_environment_switch_turns_the_accelerator_off(monkeypatch) -> None:
    model = optimize_t2s(build_t2s(), **EAGER)
    monkeypatch.setenv("TTS_COMPILE_DISABLE", "1")
    phones, prompts, bert = _inputs(5, 4)
    model.infer_panel(phones, None, prompts, bert, top_k=1, early_stop_num=3)
    stats = model.tts_compile.optimization_stats()
    assert stats["upstream"] == 1 and stats["optimized"] == 0


def test_restore_and_rejection() -> None:
    model = optimize_t2s(build_t2s(), **EAGER)
    restore_t2s(model)
    assert "infer_panel" not in vars(model) and not hasattr(model, "tts_compile")
    with pytest.raises(TypeError, match="model: expected a GPT-SoVITS Text2SemanticDecoder"):
        optimize_t2s(torch.nn.Linear(2, 2))
