"""optimize_sovits on the stand-in synthesizer (upstream SynthesizerTrn's interface), CPU, float32: the staged,
padded decode draws the same noise and gives the same audio as the model's own `decode`, or hands the call to it."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.core.rng import own_draws, own_generator
from tts_compile.gpt_sovits import optimize_sovits, restore_sovits
from tts_compile.gpt_sovits import sovits as sovits_module
from tts_compile.gpt_sovits.models.vits import VITSConfig, build_vits

FAST = {"compile_mode": "eager", "warmup": "lazy", "verify": False, "chunk_size": 40}
PADDED = 2e-5  # fp32 max abs, padded vs exact lengths on CPU (reduction order): measured 4.3e-6 over 60 requests


def _request(version: str, tokens: int, phones: int, refs: int | None, seed: int = 0) -> dict:
    """decode's arguments: `refs` None gives one reference as a tensor (upstream's other calling form)."""
    c, gen = VITSConfig(version=version), torch.Generator().manual_seed(seed)
    refer = [torch.rand(1, c.spec_bins, 20 + 7 * i, generator=gen) for i in range(refs or 1)]
    speakers = [torch.randn(1, c.sv_dim, generator=gen) for _ in refer]
    pro = "Pro" in version
    return {"codes": torch.randint(0, c.codebook, (1, 1, tokens), generator=gen),
            "text": torch.randint(0, c.symbols, (1, phones), generator=gen),
            "refer": refer if refs else refer[0], "sv_emb": (speakers if refs else speakers[0]) if pro else None}


def _seeded(decode, seed: int = 3, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """decode's audio, and the next number the generator gives (same draws -> same number)."""
    torch.manual_seed(seed)
    with torch.inference_mode():
        audio = decode(**kwargs)
    return audio, torch.rand(1)


@settings(max_examples=15, deadline=None)
@given(version=st.sampled_from(["v1", "v2", "v2ProPlus"]), tokens=st.integers(1, 70), phones=st.integers(1, 40),
       refs=st.sampled_from([None, 1, 2]), speed=st.sampled_from([1, 0.8, 1.25]), noise=st.sampled_from([0.5, 0.3]))
def test_staged_decode_equals_decode(version, tokens, phones, refs, speed, noise) -> None:
    config = VITSConfig(version=version)
    model = optimize_sovits(build_vits(config, seed=1), **FAST)
    kwargs = {**_request(version, tokens, phones, refs), "speed": speed, "noise_scale": noise}
    got, got_next = _seeded(model.decode, **kwargs)
    expected, expected_next = _seeded(build_vits(config, seed=1).decode, **kwargs)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= PADDED
    assert torch.equal(got_next, expected_next)  # the same random draws
    assert model.tts_compile.optimization_stats()["direct"] == 3  # reference, encoder, flow + decoder: staged


@settings(max_examples=15, deadline=None)
@given(version=st.sampled_from(["v1", "v2", "v2ProPlus"]), tokens=st.integers(1, 70), phones=st.integers(1, 40),
       result=st.one_of(st.none(), st.integers(0, 80)), overlap=st.integers(0, 4),
       speed=st.sampled_from([1, 0.8, 1.25]))
def test_staged_decode_streaming_equals_decode_streaming(version, tokens, phones, result, overlap, speed) -> None:
    """A stream's chunk (TTS.run's calls: the last chunk + overlap tokens of the codes so far, the first frames
    crossfaded with the previous chunk's latent), result lengths past the codes (upstream keeps them all) included."""
    config = VITSConfig(version=version)
    model = optimize_sovits(build_vits(config, seed=1), **FAST)
    kept = 2 * (min(tokens, result) if result else tokens)
    previous = torch.randn(1, config.hidden, min(2 * overlap, kept), generator=torch.Generator().manual_seed(tokens))
    kwargs = {**_request(version, tokens, phones, None), "speed": speed, "result_length": result,
              "overlap_frames": previous if overlap else None, "padding_length": 0}
    got, got_next = _seeded(model.decode_streaming, **kwargs)
    expected, expected_next = _seeded(build_vits(config, seed=1).decode_streaming, **kwargs)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.shape == theirs.shape
        assert float((mine - theirs).abs().max()) <= PADDED
    assert torch.equal(got_next, expected_next)
    assert model.tts_compile.optimization_stats()["optimized"] == 1


def test_decode_streaming_calls_the_staged_path_cannot_take_go_to_upstream() -> None:
    """A padding length (TTS.run passes 0) or an overlap longer than the kept frames: upstream's own method."""
    config = VITSConfig(version="v2")
    model, plain = optimize_sovits(build_vits(config, seed=1), **FAST), build_vits(config, seed=1)
    request = _request("v2", 12, 6, None)
    got, _ = _seeded(model.decode_streaming, **request, padding_length=2)
    assert torch.equal(got[0], _seeded(plain.decode_streaming, **request, padding_length=2)[0][0])
    with pytest.raises(RuntimeError):  # upstream's own error: 8 overlap frames against 4 kept
        model.decode_streaming(**request, result_length=2, overlap_frames=torch.zeros(1, config.hidden, 8))
    assert model.tts_compile.optimization_stats()["eager"] == 2 and model.tts_compile.failure is None


@settings(max_examples=15, deadline=None)
@given(version=st.sampled_from(["v3", "v4"]), tokens=st.integers(1, 90), phones=st.integers(1, 40),
       speed=st.sampled_from([1, 0.8, 1.25, 2]), ge_given=st.booleans())
def test_staged_decode_encp_equals_decode_encp(version, tokens, phones, speed, ge_given) -> None:
    """v3/v4: the CFM conditioning, from a reference (the prompt's call) or a given ge (a segment's); speed 2 on one
    token makes upstream's WN mask shorter than the upsampled features."""
    config = VITSConfig(version=version)
    model, plain = optimize_sovits(build_vits(config, seed=1), **FAST), build_vits(config, seed=1)
    request = _request(version, tokens, phones, None)
    args = (request["codes"], request["text"], request["refer"])
    ge = plain.decode_encp(*args)[1] if ge_given else None
    expected, expected_ge = plain.decode_encp(*args, ge, speed)
    got, got_ge = model.decode_encp(*args, ge, speed)
    assert got.shape == expected.shape and got.is_contiguous()
    assert float((got - expected).abs().max()) <= PADDED
    assert got_ge is ge if ge_given else torch.equal(got_ge, expected_ge)  # the reference stage is not padded
    assert model.tts_compile.optimization_stats()["direct"] == (2 if ge_given else 3)


def test_decode_encp_without_ge_or_reference_gets_upstreams_own_error() -> None:
    model = optimize_sovits(build_vits(VITSConfig(version="v3")), **FAST)
    request = _request("v3", 12, 6, None)
    with pytest.raises(AttributeError):  # the stand-in reads refer.size
        model.decode_encp(request["codes"], request["text"], None)
    assert model.tts_compile.optimization_stats()["eager"] == 1 and model.tts_compile.failure is None


@pytest.mark.parametrize("change", ["batch", "no_reference", "speed", "speaker"])
def test_inputs_upstream_rejects_get_upstreams_own_error(change) -> None:
    version = "v2ProPlus" if change == "speaker" else "v2"
    model = optimize_sovits(build_vits(VITSConfig(version=version)), **FAST)
    kwargs = _request(version, 12, 6, 1)
    kwargs.update({"batch": {"codes": kwargs["codes"].expand(1, 2, 12)}, "no_reference": {"refer": []},
                   "speed": {"speed": 0}, "speaker": {"sv_emb": None}}[change])
    with pytest.raises((RuntimeError, ZeroDivisionError, TypeError, AttributeError)):  # the stand-in's own errors
        _seeded(model.decode, **kwargs)
    assert model.tts_compile.optimization_stats()["eager"] == 1 and model.tts_compile.failure is None


def test_a_too_long_request_is_served_by_upstreams_decode(monkeypatch) -> None:
    monkeypatch.setattr(sovits_module, "LARGEST_TOKENS", 8)
    model = optimize_sovits(build_vits(seed=1), **FAST)
    kwargs = _request("v2", 12, 6, 1)
    got, _ = _seeded(model.decode, **kwargs)
    expected, _ = _seeded(build_vits(seed=1).decode, **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=PADDED)
    assert model.tts_compile.optimization_stats()["eager"] == 1


def test_a_failing_stage_falls_back_with_the_same_noise(monkeypatch, caplog) -> None:
    model = optimize_sovits(build_vits(seed=1), **FAST)
    monkeypatch.setattr(sovits_module, "_flow", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    kwargs = _request("v2", 20, 9, None)
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        got = _seeded(model.decode, **kwargs)
    expected = _seeded(build_vits(seed=1).decode, **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=PADDED)
    assert "RuntimeError: boom" in caplog.text and model.tts_compile.failure == "decode failed: RuntimeError: boom"
    _seeded(model.decode, **kwargs)
    assert model.tts_compile.optimization_stats()["eager"] == 2  # the failed call and the next one


def test_switch_off_and_restore_give_upstreams_decode_back() -> None:
    model = optimize_sovits(build_vits(), **FAST)
    model.tts_compile.switch = lambda: False
    _seeded(model.decode, **_request("v2", 10, 5, None))
    assert model.tts_compile.optimization_stats()["eager"] == 1
    restore_sovits(model)
    assert "decode" not in vars(model) and not hasattr(model, "tts_compile")


def test_decoder_weights_loaded_in_place_are_followed() -> None:
    """The padded decoder runs channels-last copies of the weights: a load_state_dict into the model must reach them."""
    model, other = optimize_sovits(build_vits(seed=1), **FAST, channels_last="on"), build_vits(seed=2)
    kwargs = _request("v2", 15, 7, None)
    _seeded(model.decode, **kwargs)
    first = model.tts_compile.decoder
    model.dec.load_state_dict(other.dec.state_dict())
    got, _ = _seeded(model.decode, **kwargs)
    reference = build_vits(seed=1)
    reference.dec.load_state_dict(other.dec.state_dict())
    torch.testing.assert_close(got, _seeded(reference.decode, **kwargs)[0], rtol=0, atol=PADDED)
    assert model.tts_compile.decoder is not first


def test_an_unknown_decoder_runs_as_it_is_after_the_graphs(caplog) -> None:
    model, plain = build_vits(seed=1), build_vits(seed=1)
    model.dec.resblocks[0] = plain.dec.resblocks[0] = torch.nn.Identity()  # not upstream's ResBlock1
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        optimize_sovits(model, **FAST)
    assert "residual block Identity" in caplog.text
    kwargs = _request("v2", 15, 7, None)
    torch.testing.assert_close(_seeded(model.decode, **kwargs)[0], _seeded(plain.decode, **kwargs)[0], rtol=0,
                               atol=PADDED)
    assert model.tts_compile.optimization_stats()["direct"] == 3 and model.tts_compile.decoder is None


def test_optimize_sovits_names_what_a_model_lacks() -> None:
    with pytest.raises(TypeError, match="vits_model: expected a GPT-SoVITS SynthesizerTrn .* lacks decode"):
        optimize_sovits(torch.nn.Linear(2, 2))
    v3 = build_vits(VITSConfig(version="v3"))
    del v3.wns1
    with pytest.raises(TypeError, match="expected a GPT-SoVITS SynthesizerTrnV3 .* lacks wns1"):
        optimize_sovits(v3)


def test_restore_gives_decode_encp_back() -> None:
    model = optimize_sovits(build_vits(VITSConfig(version="v4")), **FAST)
    assert "decode_encp" in vars(model)
    restore_sovits(model)
    assert "decode_encp" not in vars(model) and not hasattr(model, "tts_compile")


def test_the_decoder_times_cudnns_algorithms_even_when_the_config_says_not_to(monkeypatch) -> None:
    """cuDNN's heuristics choose a 22 ms kernel for one v2ProPlus decoder convolution (H200): the SoVITS
    decode times algorithms at capture and on uncaptured runs alike; decode_encp follows the config."""
    model = optimize_sovits(build_vits(), **{**FAST, "cudnn_benchmark": False})
    seen = []
    real = sovits_module._synthesize
    monkeypatch.setattr(sovits_module, "_synthesize",
                        lambda *a: seen.append(torch.backends.cudnn.benchmark) or real(*a))
    _seeded(model.decode, **_request("v2", 12, 6, None))
    assert seen == [True] and model.tts_compile.optimization_stats()["direct"] == 3  # uncaptured on CPU
    assert not torch.backends.cudnn.benchmark  # restored after the call
    v3 = optimize_sovits(build_vits(VITSConfig(version="v3")), **{**FAST, "cudnn_benchmark": False})
    assert not v3.tts_compile.runner.cudnn_benchmark


@pytest.mark.parametrize("path", ["verified", "failed", "upstream"])
def test_own_draws_give_what_a_seeded_decode_gives(path, monkeypatch) -> None:
    """Inside `own_draws(seed)` (the engine's renders): the staged call, its verification, a fallback after a failure
    and a call handed to upstream each give the audio of `torch.manual_seed(seed)` then upstream's decode, continue
    the thread's generator where upstream's draws end, and leave the default generator alone."""
    model = optimize_sovits(build_vits(seed=1), **{**FAST, "verify": path == "verified"})
    if path == "failed":
        monkeypatch.setattr(sovits_module, "_flow", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    kwargs = {**_request("v2", 20, 9, None), **({"speed": 0.5} if path == "upstream" else {})}
    if path == "upstream":
        monkeypatch.setattr(sovits_module, "MIN_SPEED", 0.6)  # speed 0.5: upstream's decode serves the call
    expected, expected_next = _seeded(build_vits(seed=1).decode, seed=5, **kwargs)
    torch.manual_seed(8)
    state = torch.get_rng_state()
    with own_draws(5, torch.device("cpu")), torch.inference_mode():
        got = model.decode(**kwargs)
        got_next = torch.rand(1, generator=own_generator(torch.device("cpu")))
    torch.testing.assert_close(got, expected, rtol=0, atol=PADDED)
    assert torch.equal(got_next, expected_next) and torch.equal(torch.get_rng_state(), state)
    stats = model.tts_compile.optimization_stats()
    assert stats[{"verified": "verifications", "failed": "fallbacks", "upstream": "eager"}[path]] == 1
