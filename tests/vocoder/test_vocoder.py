"""optimize_vocoder keeps the exactness contract: optimized(x) == eager(x) for every length, bucket set, batch."""

from __future__ import annotations

import logging
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tts_compile import ConfigError, OptimizationError, OptimizedVocoder, optimize_vocoder
from tts_compile.core.runner import Runner
from tts_compile.models import MODELS, HiFiGANGenerator
from tts_compile.testing import TOLERANCE, assert_matches_eager, relative_error
from tts_compile.testing import strategies as tst

from ..conftest import TINY, conditioning, mel_for, tiny

FAST = {"compile_mode": "eager", "warmup": "lazy", "verify": False}  # the chunking machinery, no compile time
_MODELS = {name: tiny(name) for name in TINY}  # probed once, shared by the property tests


def _optimized(name: str, **options) -> OptimizedVocoder:
    return optimize_vocoder(_MODELS[name], **{**FAST, **options})


# ------------------------------------------------------------------------------------------- exactness properties
@given(name=st.sampled_from(TINY), frames=tst.lengths(), chunk=tst.chunk_sizes(), max_batch=st.sampled_from([1, 2, 4]))
def test_matches_eager_for_any_length_and_chunk_size(name, frames, chunk, max_batch) -> None:
    vocoder = _optimized(name, chunk_size=chunk, max_batch=max_batch)
    assert_matches_eager(vocoder, mel_for(name, frames), **conditioning(name))


@given(name=st.sampled_from(TINY), frames=tst.lengths(max_frames=400), data=st.data())
def test_matches_eager_for_any_bucket_set(name, frames, data) -> None:
    context = 18  # above every tiny model's receptive field
    buckets = data.draw(tst.bucket_lengths(context))
    vocoder = _optimized(name, buckets=buckets, context=context)
    assert_matches_eager(vocoder, mel_for(name, frames), **conditioning(name))


@given(name=st.sampled_from(TINY), lengths=tst.batch_lengths(), shared_g=st.booleans())
def test_batches_with_lengths_match_each_item_alone(name, lengths, shared_g) -> None:
    vocoder = _optimized(name, chunk_size=40)
    mel = mel_for(name, max(lengths), batch=len(lengths))
    cond = conditioning(name, batch=1 if shared_g else len(lengths))
    with torch.inference_mode():
        out = vocoder(mel, lengths=lengths, **cond)
        hop = MODELS[name].config.hop
        for i, n in enumerate(lengths):
            item_cond = {k: v[i : i + 1] if v.shape[0] > 1 else v for k, v in cond.items()}
            alone = _MODELS[name](mel[i : i + 1, :, :n], **item_cond)[0]
            assert relative_error(out[i, :, : n * hop], alone) <= TOLERANCE[torch.float32]
            assert not out[i, :, n * hop :].any(), "samples after an item's end must be zero"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@given(frames=tst.lengths(max_frames=300))
def test_matches_eager_in_other_dtypes(dtype, frames) -> None:
    vocoder = optimize_vocoder(tiny("bigvgan-tiny"), chunk_size=60, **FAST, dtype=str(dtype).split(".")[1])
    assert_matches_eager(vocoder, mel_for("bigvgan-tiny", frames, dtype=dtype))


# ------------------------------------------------------------------------------------------- real compilation (CPU)
@pytest.fixture(scope="module")
def compiled_bigvgan() -> OptimizedVocoder:
    """Inductor over the whole model, with the fused activation op inside and the channels-last convolutions, so the
    AMP block fold is traced too (warm-up + verify)."""
    return optimize_vocoder(tiny("bigvgan-tiny"), chunk_size=80, max_batch=2, channels_last="on")


@pytest.fixture(scope="module")
def compiled_bigvgan_inline() -> OptimizedVocoder:
    """The activation as polyphase torch ops traced into inductor's graph (`fused_activation="inductor"`)."""
    return optimize_vocoder(tiny("bigvgan-tiny"), chunk_size=80, max_batch=2, fused_activation="inductor")


@pytest.fixture(scope="module")
def compiled_bigvgan_regional() -> OptimizedVocoder:
    """Only the polyphase activation compiled by inductor; the rest of the module runs as it is (on CUDA: captured),
    in the channels-last layout, which the activation computes in as well."""
    return optimize_vocoder(tiny("bigvgan-tiny"), chunk_size=80, max_batch=2, fused_activation="inductor",
                            compile_mode="cudagraphs", channels_last="on")


@pytest.fixture(scope="module")
def compiled_hifigan() -> OptimizedVocoder:
    return optimize_vocoder(tiny("hifigan-tiny"), chunk_size=80, max_batch=2)


@pytest.mark.parametrize("frames, batch", [(1, 1), (30, 2), (112, 1), (113, 3), (401, 2), (2000, 1)])
@pytest.mark.parametrize("which", ["compiled_bigvgan", "compiled_bigvgan_inline", "compiled_bigvgan_regional",
                                   "compiled_hifigan"])
def test_compiled_paths_match_eager(which, frames, batch, request) -> None:
    vocoder = request.getfixturevalue(which)
    name = "hifigan-tiny" if which == "compiled_hifigan" else "bigvgan-tiny"
    assert_matches_eager(vocoder, mel_for(name, frames, batch=batch))
    stats = vocoder.optimization_stats()
    assert stats["failure"] is None and stats["fallbacks"] == 0 and stats["captures"] > 0


def test_compiled_bigvgan_uses_fused_activations(compiled_bigvgan) -> None:
    from tts_compile.passes.activations import FusedAntiAliasedActivation

    target = compiled_bigvgan.optimizer._setup.target
    assert sum(isinstance(m, FusedAntiAliasedActivation) for m in target.modules()) == 9
    assert sum(type(m).__name__ == "FusedAMPBlock" for m in target.modules()) == 2
    assert not any(isinstance(m, FusedAntiAliasedActivation) for m in compiled_bigvgan.module.modules())


@pytest.mark.parametrize("which", ["compiled_bigvgan_inline", "compiled_bigvgan_regional"])
def test_inline_activations_are_compiled_not_called_as_the_op(which, request) -> None:
    """With `fused_activation="inductor"` every activation is inline (no AMP block fold, which serves the op), and a
    call after warm-up never dispatches the op: inductor's code holds the activation's own arithmetic."""
    from tts_compile.passes.activations import FusedAntiAliasedActivation

    vocoder = request.getfixturevalue(which)
    target = vocoder.optimizer._setup.target
    fused = [m for m in target.modules() if isinstance(m, FusedAntiAliasedActivation)]
    assert len(fused) == 9 and all(m.inline for m in fused)
    assert not any(type(m).__name__ == "FusedAMPBlock" for m in target.modules())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert_matches_eager(vocoder, mel_for("bigvgan-tiny", 401))
    ops = {event.name for event in prof.events()}
    assert "aten::convolution" in ops and "tts_compile::anti_aliased_snake" not in ops
    assert any(name.startswith("Torch-Compiled Region") for name in ops)
    stats = vocoder.optimization_stats()
    assert stats["fallbacks"] == stats["degraded"] == 0 and stats["failure"] is None


# ------------------------------------------------------------------------------------------- streaming
@given(name=st.sampled_from(TINY), frames=st.integers(1, 500), data=st.data())
def test_stream_concatenation_equals_one_shot(name, frames, data) -> None:
    vocoder = _optimized(name, chunk_size=50)
    mel, cond = mel_for(name, frames), conditioning(name)
    sizes = data.draw(tst.pieces(frames))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    with torch.inference_mode():
        pieces = list(vocoder.stream((mel[..., s : s + n] for s, n in zip(starts, sizes)), **cond))
        one_shot = vocoder(mel, **cond)
    streamed = torch.cat(pieces, dim=-1)
    assert streamed.shape == one_shot.shape
    assert relative_error(streamed, one_shot) <= TOLERANCE[torch.float32]


def test_stream_emits_before_the_end() -> None:
    vocoder = _optimized("hifigan-tiny", chunk_size=50)
    mel = mel_for("hifigan-tiny", 600)
    emitted = []
    for audio in vocoder.stream(mel[..., s : s + 100] for s in range(0, 600, 100)):
        emitted.append(audio.shape[-1])
    assert len(emitted) >= 5 and emitted[0] > 0


def test_stream_rejects_mismatched_pieces() -> None:
    vocoder = _optimized("hifigan-tiny")
    with pytest.raises(ValueError, match="stream pieces must all have shape"):
        list(vocoder.stream([mel_for("hifigan-tiny", 10), mel_for("hifigan-tiny", 10, batch=2)]))


# ------------------------------------------------------------------------------------------- conditioning, layout
def test_positional_conditioning_and_output_layout() -> None:
    class Squeezed(nn.Module):  # a vocoder whose output is [B, N] and takes g positionally
        def __init__(self):
            super().__init__()
            self.inner = tiny("vits-tiny")

        def forward(self, x, g):
            return self.inner(x, g=g)[:, 0]

    vocoder = optimize_vocoder(Squeezed(), **FAST)
    mel, g = mel_for("vits-tiny", 77, batch=2), torch.randn(2, 8, 1)
    assert vocoder(mel, g).shape == (2, 77 * 8)
    assert_matches_eager(vocoder, mel, g)


def test_conditioning_with_a_time_axis_is_refused() -> None:
    vocoder = _optimized("vits-tiny")
    with pytest.raises(ValueError, match="time axis"):
        vocoder(mel_for("vits-tiny", 50), g=torch.randn(1, 8, 50))
    with pytest.raises(ValueError, match="batch axis of 1 or 2"):
        vocoder(mel_for("vits-tiny", 50, batch=2), g=torch.randn(3, 8, 1))


# ------------------------------------------------------------------------------------------- the three forms
def test_class_decorator_bare_and_with_options() -> None:
    @optimize_vocoder
    class Bare(HiFiGANGenerator):
        pass

    @optimize_vocoder(chunk_size=30, **FAST)
    class Tuned(HiFiGANGenerator):
        pass

    for cls in (Bare, Tuned):
        model = cls(MODELS["hifigan-tiny"].config).eval()
        model.load_state_dict(tiny("hifigan-tiny").state_dict())  # weights arrive after construction
        assert isinstance(model, HiFiGANGenerator) and cls.__name__ in ("Bare", "Tuned")
        assert_matches_eager(model, mel_for("hifigan-tiny", 150))
        assert model.optimization_stats()["calls"] >= 1
    assert Tuned(MODELS["hifigan-tiny"].config).warmup().optimization_stats()["buckets"][-1] == 30 + 2 * 10


def test_class_decorator_refuses_to_shadow_methods() -> None:
    class HasStream(nn.Module):
        def stream(self):
            pass

    with pytest.raises(TypeError, match="already defines.*stream"):
        optimize_vocoder(HasStream)


def test_plain_function() -> None:
    model = tiny("hifigan-tiny")

    @optimize_vocoder(**FAST)
    def vocode(mel):
        return model(mel)

    mel = mel_for("hifigan-tiny", 123)
    with torch.inference_mode():
        assert relative_error(vocode(mel), model(mel)) <= TOLERANCE[torch.float32]
    with pytest.raises(ValueError, match="expects n_mels=32"):
        vocode(torch.randn(1, 31, 50))
    with pytest.raises(ValueError, match="example mel"):
        optimize_vocoder(lambda m: model(m), **FAST).warmup()


def test_wrapper_delegates_attributes_and_moves_with_to() -> None:
    vocoder = _optimized("bigvgan-tiny")
    assert vocoder.config is _MODELS["bigvgan-tiny"].config and vocoder.conv_pre is _MODELS["bigvgan-tiny"].conv_pre
    with pytest.raises(AttributeError):
        vocoder.no_such_attribute


def test_setting_up_draws_nothing_from_the_callers_generator() -> None:
    """Probes, capture examples and verification use random mels; a seeded caller (upstream's decode draws its noise
    right before the decoder runs) must see the same stream whether or not a call set something up."""
    mel = mel_for("hifigan-tiny", 80)
    torch.manual_seed(4)
    expected = torch.rand(3)
    vocoder = optimize_vocoder(tiny("hifigan-tiny"), **{**FAST, "verify": True})
    torch.manual_seed(4)
    vocoder(mel)
    vocoder.warmup()
    assert torch.equal(torch.rand(3), expected)


def test_weights_moving_rebuilds_the_setup() -> None:
    model = tiny("hifigan-tiny")
    vocoder = optimize_vocoder(model, **FAST)
    vocoder(mel_for("hifigan-tiny", 80))
    vocoder.double()
    assert_matches_eager(vocoder, mel_for("hifigan-tiny", 80, dtype=torch.float64))
    assert vocoder.optimization_stats()["rebuilds"] == 1


def test_weights_loaded_in_place_are_used(caplog) -> None:
    """Passes keep derived copies of weights (channels-last convolutions): an in-place load must rebuild them."""
    model = tiny("hifigan-tiny")
    vocoder = optimize_vocoder(model, **{**FAST, "compile_mode": "cudagraphs"}, channels_last="on")
    mel = mel_for("hifigan-tiny", 150)
    assert_matches_eager(vocoder, mel)
    model.load_state_dict(tiny("hifigan-tiny", seed=1).state_dict())
    with caplog.at_level(logging.INFO, logger="tts_compile"):
        assert_matches_eager(vocoder, mel)
    assert vocoder.optimization_stats()["rebuilds"] == 1 and "optimizing again" in caplog.text


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("mel, error, message", [
    (torch.randn(32, 50), ValueError, "add a batch axis"),
    (torch.randn(1, 1, 32, 50), ValueError, r"shape \[batch, n_mels, frames\]"),
    (torch.randn(1, 31, 50), ValueError, "31 mel bins.*n_mels=32"),
    (torch.randn(1, 32, 0), ValueError, "empty"),
    (torch.randn(0, 32, 10), ValueError, "empty"),
    (torch.full((1, 32, 20), float("nan")), ValueError, "NaN or Inf"),
    (torch.randn(1, 32, 20, dtype=torch.float64), TypeError, "dtype torch.float64 does not match.*float32"),
    (torch.randn(1, 32, 20, device="meta"), ValueError, "on meta but the vocoder runs on cpu"),
    ([[0.0]], TypeError, "must be a torch.Tensor"),
])
def test_bad_input_gets_a_clear_error(mel, error, message) -> None:
    vocoder = _optimized("hifigan-tiny")
    vocoder(mel_for("hifigan-tiny", 10))  # set up first, so the checks are the call's own
    with pytest.raises(error, match=message):
        vocoder(mel)
    assert vocoder.optimization_stats()["failure"] is None, "bad input must not disable the optimizer"


@pytest.mark.parametrize("lengths", [[0], [51], [10, 10], [2.5], "ab"])
def test_bad_lengths(lengths) -> None:
    with pytest.raises(ValueError, match="lengths=.*expected 1 ints in \\[1, 50\\]"):
        _optimized("hifigan-tiny")(mel_for("hifigan-tiny", 50), lengths=lengths)


# ------------------------------------------------------------------------------------------- fallback
def test_compile_failure_warns_once_and_serves_eager(monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("injected capture failure")

    monkeypatch.setattr(Runner, "prepare", broken)
    model = tiny("hifigan-tiny")
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        vocoder = optimize_vocoder(model, compile_mode="eager")
        mel = mel_for("hifigan-tiny", 200)
        with torch.inference_mode():
            out, expected = vocoder(mel), model(mel)
            vocoder(mel)
    assert torch.equal(out, expected)
    assert caplog.text.count("injected capture failure") == 1 and "serving from the eager module" in caplog.text
    stats = vocoder.optimization_stats()
    assert stats["fallbacks"] == 1 and "warm-up failed" in stats["failure"] and stats["eager"] == 2


def test_run_failure_falls_back_for_that_request(monkeypatch) -> None:
    vocoder = _optimized("hifigan-tiny", warmup="startup")
    monkeypatch.setattr(Runner, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("replay broke")))
    mel = mel_for("hifigan-tiny", 300)
    with torch.inference_mode():
        assert torch.equal(vocoder(mel), _MODELS["hifigan-tiny"](mel))
    assert "replay broke" in vocoder.optimization_stats()["failure"]


def test_fallback_raise(monkeypatch) -> None:
    monkeypatch.setattr(Runner, "prepare", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(OptimizationError, match="warm-up failed: RuntimeError: no"):
        optimize_vocoder(tiny("hifigan-tiny"), compile_mode="eager", fallback="raise")


def test_verification_catches_too_small_a_context(caplog) -> None:
    model = tiny("bigvgan-tiny")
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        vocoder = optimize_vocoder(model, context=1, chunk_size=20, compile_mode="eager")
    failure = vocoder.optimization_stats()["failure"]
    assert "VerificationError" in failure and "context=1" in failure and "context=1" in caplog.text
    mel = mel_for("bigvgan-tiny", 300)
    with torch.inference_mode():
        assert torch.equal(vocoder(mel), model(mel)), "after a failed verification every call is eager"


def test_inductor_failure_degrades_to_graphs_without_inductor(monkeypatch, caplog) -> None:
    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("injected inductor failure")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = tiny("bigvgan-tiny")
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        vocoder = optimize_vocoder(model, compile_mode="reduce-overhead", chunk_size=60)
    stats = vocoder.optimization_stats()
    assert stats["degraded"] == 1 and stats["compile_mode"] == "cudagraphs" and stats["failure"] is None
    assert "continuing with 'cudagraphs'" in caplog.text
    assert_matches_eager(vocoder, mel_for("bigvgan-tiny", 333))


def test_inline_activations_are_dropped_when_inductor_degrades(monkeypatch) -> None:
    """Without inductor the inline activation would run as dozens of slice ops: the degraded path keeps the
    module's own activations instead of switching to the hand-written kernel."""
    from tts_compile.passes.activations import FusedAntiAliasedActivation

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: (lambda *args: 1 / 0))
    vocoder = optimize_vocoder(tiny("bigvgan-tiny"), fused_activation="inductor", chunk_size=60)
    assert vocoder.optimization_stats()["compile_mode"] == "cudagraphs"
    assert not any(isinstance(m, FusedAntiAliasedActivation) for m in vocoder.optimizer._setup.target.modules())
    assert_matches_eager(vocoder, mel_for("bigvgan-tiny", 333))


def test_disable_environment_variable_serves_eager(monkeypatch) -> None:
    monkeypatch.setenv("TTS_COMPILE_DISABLE", "1")
    model = tiny("hifigan-tiny")
    vocoder = optimize_vocoder(model)
    mel = mel_for("hifigan-tiny", 100)
    with torch.inference_mode():
        assert torch.equal(vocoder(mel), model(mel))
    assert "captures" not in vocoder.optimization_stats()


def test_disabled_config_serves_eager() -> None:
    vocoder = optimize_vocoder(tiny("hifigan-tiny"), enabled=False)
    vocoder(mel_for("hifigan-tiny", 100))
    assert vocoder.optimization_stats()["eager"] == 1 and "captures" not in vocoder.optimization_stats()


def test_memory_is_bounded_by_the_largest_bucket(monkeypatch) -> None:
    vocoder = _optimized("hifigan-tiny", chunk_size=100, warmup="startup")
    seen = []
    run = Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, key, inputs: seen.append(inputs[0].shape) or run(self, key, inputs))
    vocoder(mel_for("hifigan-tiny", 20_000))
    largest = vocoder.optimization_stats()["buckets"][-1]
    assert len(seen) > 150 and all(s[0] * s[-1] <= largest for s in seen)


# ------------------------------------------------------------------------------------------- concurrency
@pytest.mark.parametrize("fixture", [None, "compiled_bigvgan"])
def test_threads_each_get_their_own_exact_output(fixture, request) -> None:
    vocoder = request.getfixturevalue(fixture) if fixture else _optimized("bigvgan-tiny", warmup="startup")
    name = "bigvgan-tiny"
    mels = [mel_for(name, 40 + 37 * i) for i in range(8)]
    with torch.inference_mode():
        expected = [vocoder.eager(m) for m in mels]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(len(mels))

    def work(i: int) -> None:
        barrier.wait()
        with torch.inference_mode():
            for _ in range(3):
                results[i] = vocoder(mels[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(mels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        assert relative_error(results[i], want) <= TOLERANCE[torch.float32]


def test_logging_reports_setup_buckets_and_verification(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="tts_compile"):
        optimize_vocoder(tiny("hifigan-tiny"), compile_mode="eager", chunk_size=40)
    text = caplog.text
    assert "optimizing HiFiGANGenerator: float32 on cpu" in text and "receptive field -8/+8" in text
    assert "bucket 1x60 ready" in text and "buckets ready in" in text and "verified on" in text


def test_bad_explicit_buckets_for_the_measured_context() -> None:
    with pytest.raises(ConfigError, match="buckets=\\(12,\\)"):
        optimize_vocoder(tiny("hifigan-tiny"), buckets=[12], compile_mode="eager")


def test_low_precision_verification_takes_eager_own_error_into_account(monkeypatch, caplog) -> None:
    """Past the tolerance, bfloat16 still passes when it is as close to a float32 copy as eager is; a context below
    the receptive field does not (its error does not shrink in float32)."""
    from tts_compile.core import verify

    monkeypatch.setitem(verify.TOLERANCE, torch.bfloat16, 0.0)  # any rounding difference is past it
    options = {"chunk_size": 20, "compile_mode": "eager", "fused_activation": "on"}  # other summation order
    with caplog.at_level(logging.INFO, logger="tts_compile"):
        good = optimize_vocoder(tiny("bigvgan-tiny").to(torch.bfloat16), **options)
    assert good.optimization_stats()["failure"] is None
    assert "from a float32 copy" in caplog.text
    bad = optimize_vocoder(tiny("bigvgan-tiny").to(torch.bfloat16), context=1, **options)
    assert "VerificationError" in bad.optimization_stats()["failure"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the float32 second opinion on CUDA (TF32 off) needs a GPU")
def test_low_precision_verification_on_cuda(monkeypatch, caplog) -> None:
    """The same two verdicts natively: float16, the fused Triton activation, captured graphs."""
    from tts_compile.core import verify

    monkeypatch.setitem(verify.TOLERANCE, torch.float16, 0.0)
    options = {"chunk_size": 20, "compile_mode": "cudagraphs", "fused_activation": "on"}
    with caplog.at_level(logging.INFO, logger="tts_compile"):
        good = optimize_vocoder(tiny("bigvgan-tiny").cuda().half(), **options)
    assert good.optimization_stats()["failure"] is None and "from a float32 copy" in caplog.text
    bad = optimize_vocoder(tiny("bigvgan-tiny").cuda().half(), context=1, **options)
    assert "VerificationError" in bad.optimization_stats()["failure"]
