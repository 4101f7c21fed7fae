"""optimize_pipeline on a stand-in of upstream's `TTS` object (same attributes and reload behaviour), on CPU."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from tts_compile import OptimizedVocoder
from tts_compile.gpt_sovits import optimize_pipeline
from tts_compile.gpt_sovits.models.dit import build_flow_matching
from tts_compile.gpt_sovits.models.t2s import build_t2s
from tts_compile.gpt_sovits.models.vits import VITSConfig, build_vits
from tts_compile.models import build_model

from ..conftest import mel_for
from .test_sovits import PADDED, _request, _seeded

FAST = {"compile_mode": "eager", "warmup": "lazy", "verify": False, "chunk_size": 40}


class FakeTTS:
    """What optimize_pipeline touches on upstream's TTS: configs.version / configs_path, vocoder, vits_model,
    and init_vits_weights, which (like upstream) builds new models and switches version."""

    def __init__(self, version: str, configs_path: str | None = None) -> None:
        self.configs = SimpleNamespace(version=version, configs_path=configs_path)
        self.vocoder = None
        self.vits_model = None
        self.t2s_model = None
        self.init_vits_weights(version)
        self.init_t2s_weights("t2s")

    def init_t2s_weights(self, weights_path: str) -> None:
        self.t2s_model = SimpleNamespace(model=build_t2s(seed=len(weights_path)))

    def init_vits_weights(self, weights_path: str) -> None:
        self.configs.version = weights_path  # the stand-in's "weights file" names its version
        self.vits_model = build_vits(VITSConfig(version=weights_path), seed=1) if weights_path in (
            "v1", "v2", "v2Pro", "v2ProPlus", "v3", "v4") else None
        if weights_path in ("v3", "v4"):
            self.vocoder = build_model("bigvgan-tiny" if weights_path == "v3" else "hifigan-tiny", seed=2)
            self.vits_model.cfm = build_flow_matching(seed=3)


def _vits_call(tts: FakeTTS, tokens: int = 45) -> tuple[torch.Tensor, torch.Tensor]:
    """`tts.vits_model.decode` on a request, and an untouched copy of the same model's (same seed, same noise)."""
    version = tts.vits_model.version
    request = _request(version, tokens, 20, 1)
    return _seeded(tts.vits_model.decode, **request)[0], _seeded(build_vits(VITSConfig(version=version),
                                                                            seed=1).decode, **request)[0]


def test_v2_stages_decode_with_its_decoder_and_keeps_its_output() -> None:
    tts = FakeTTS("v2")
    handle = optimize_pipeline(tts, **FAST)
    assert tts.tts_compile is handle and set(handle.stages) == {"vits_model", "t2s_model.model"}
    got, expected = _vits_call(tts)
    torch.testing.assert_close(got, expected, rtol=0, atol=PADDED)
    assert handle.stats()["vits_model"]["direct"] == 3  # reference, encoder, flow + decoder: the staged decode ran
    assert tts.vits_model.tts_compile.decoder is not None  # with the padded decoder


def test_v4_optimizes_the_vocoder() -> None:
    tts = FakeTTS("v4")
    optimize_pipeline(tts, **FAST)
    assert isinstance(tts.vocoder, OptimizedVocoder)
    mel = mel_for("hifigan-tiny", 100)
    with torch.inference_mode():
        torch.testing.assert_close(tts.vocoder(mel), tts.vocoder.module(mel), rtol=0, atol=1e-5)


def test_v4_captures_the_cfm_loop_and_keeps_its_output() -> None:
    tts = FakeTTS("v4")
    handle = optimize_pipeline(tts, **FAST)
    cfm = tts.vits_model.cfm
    mu, lens, prompt = torch.randn(1, 30, 24), torch.LongTensor([30]), torch.randn(1, 20, 12)
    torch.manual_seed(5)
    got = cfm.inference(mu, lens, prompt, 4)
    torch.manual_seed(5)
    expected = type(cfm).inference(cfm, mu, lens, prompt, 4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert handle.stats()["vits_model.cfm"]["direct"] == 1
    tts.use_vocoder_optimization = False
    cfm.inference(mu, lens, prompt, 4)
    assert handle.stats()["vits_model.cfm"]["eager"] == 1


def test_cfm_off_leaves_the_flow_matching_alone() -> None:
    tts = FakeTTS("v3")
    handle = optimize_pipeline(tts, **FAST, cfm=False)
    assert "inference" not in vars(tts.vits_model.cfm)
    assert set(handle.stages) == {"vocoder", "vits_model", "t2s_model.model"}


def test_v3_captures_decode_encp_and_sovits_off_leaves_it_alone() -> None:
    tts = FakeTTS("v3")
    handle = optimize_pipeline(tts, **FAST)
    request = _request("v3", 30, 12, None)
    args = (request["codes"], request["text"], request["refer"])
    got, ge = tts.vits_model.decode_encp(*args)
    expected, expected_ge = type(tts.vits_model).decode_encp(tts.vits_model, *args)
    torch.testing.assert_close(got, expected, rtol=0, atol=PADDED)
    assert torch.equal(ge, expected_ge) and handle.stats()["vits_model"]["direct"] == 3
    optimize_pipeline(tts, **FAST, sovits=False)
    assert "decode_encp" not in vars(tts.vits_model) and "vits_model" not in handle.stages


def test_t2s_decode_is_accelerated_and_reapplied_after_a_t2s_weight_switch() -> None:
    tts = FakeTTS("v2")
    handle = optimize_pipeline(tts, **FAST)
    gen = torch.Generator().manual_seed(0)
    phones, prompts = torch.randint(0, 40, (1, 6), generator=gen), torch.randint(0, 64, (1, 5), generator=gen)
    bert = torch.randn(1, 1024, 6, generator=gen)
    tts.t2s_model.model.infer_panel(phones, None, prompts, bert, top_k=1, early_stop_num=5)
    assert handle.stats()["t2s_model.model"]["optimized"] == 1
    tts.init_t2s_weights("other")  # what api_v2's /set_gpt_weights calls
    assert hasattr(tts.t2s_model.model, "tts_compile") and handle.stats()["t2s_model.model"]["calls"] == 0
    optimize_pipeline(tts, **FAST, t2s=False)
    assert not hasattr(tts.t2s_model.model, "tts_compile") and "t2s_model.model" not in handle.stages


def test_runtime_switch_serves_eager_and_back() -> None:
    tts = FakeTTS("v2")
    handle = optimize_pipeline(tts, **FAST)
    tts.use_vocoder_optimization = False
    _vits_call(tts)
    stats = handle.stats()
    assert stats["vits_model"]["eager"] == 1 and stats["vits_model"]["direct"] == 0
    tts.use_vocoder_optimization = True
    _vits_call(tts)
    assert handle.stats()["vits_model"]["eager"] == 1 and handle.stats()["vits_model"]["direct"] == 3


def test_weight_switch_reoptimizes_the_new_models(caplog) -> None:
    tts = FakeTTS("v2")
    optimize_pipeline(tts, **FAST)
    with caplog.at_level(logging.INFO, logger="tts_compile"):
        tts.init_vits_weights("v3")  # what api_v2's /set_sovits_weights calls
    assert isinstance(tts.vocoder, OptimizedVocoder) and "GPT-SoVITS v3, optimized vocoder" in caplog.text
    tts.init_vits_weights("v2ProPlus")
    assert "decode" in vars(tts.vits_model) and hasattr(tts.vits_model, "tts_compile")
    got, expected = _vits_call(tts)
    torch.testing.assert_close(got, expected, rtol=0, atol=PADDED)


def test_calling_again_replaces_the_config_without_stacking_wrappers() -> None:
    tts = FakeTTS("v2")
    optimize_pipeline(tts, **FAST)
    reload = tts.init_vits_weights
    handle = optimize_pipeline(tts, **{**FAST, "chunk_size": 60})
    assert tts.init_vits_weights is reload and handle.config.chunk_size == 60
    assert tts.vits_model.tts_compile.config.chunk_size == 60
    assert tts.vits_model.decode.__self__ is tts.vits_model.tts_compile  # one accelerator, not one on another


def test_sovits_off_leaves_decode_alone() -> None:
    tts = FakeTTS("v2")
    assert optimize_pipeline(tts, sovits=False, **FAST).stages.keys() == {"t2s_model.model"}
    assert "decode" not in vars(tts.vits_model) and not hasattr(tts.vits_model, "tts_compile")


def test_config_comes_from_the_pipelines_tts_infer_yaml(tmp_path) -> None:
    path = tmp_path / "tts_infer.yaml"
    path.write_text("use_vocoder_optimization: false\nvocoder_chunk_size: 77\ntts_compile:\n  warmup: lazy\n"
                    "custom:\n  version: v2\n")
    tts = FakeTTS("v2", configs_path=str(path))
    handle = optimize_pipeline(tts)
    assert handle.config.chunk_size == 77 and handle.config.enabled is False
    _vits_call(tts)
    assert handle.stats()["vits_model"]["eager"] == 1


def test_unknown_version_warns_and_leaves_upstream_alone(caplog) -> None:
    tts = FakeTTS("v2")
    tts.configs.version = "v9"
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        assert optimize_pipeline(tts, **FAST).stages == {}
    assert "unknown GPT-SoVITS version 'v9'" in caplog.text
    assert "decode" not in vars(tts.vits_model)
    with pytest.raises(ValueError, match="v9"):
        optimize_pipeline(tts, fallback="raise", **FAST)
