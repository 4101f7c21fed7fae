"""OptimizeConfig: defaults, validation messages naming key/value/allowed, YAML loading and precedence."""

from __future__ import annotations

import logging
import os

import pytest

from tts_compile import ConfigError, OptimizeConfig, load_config, optimize_vocoder
from tts_compile.core.config import disabled_by_environment, field_docs
from tts_compile.engine import EngineConfig
from tts_compile.gpt_sovits import PipelineConfig

from ..conftest import tiny


def test_defaults_are_valid_and_documented() -> None:
    config = OptimizeConfig()
    assert config.chunk_size == 500 and config.compile_mode == "reduce-overhead" and config.context == "auto"
    docs = field_docs()
    # the section's options: the shared ones, those PipelineConfig adds and those EngineConfig adds to them
    assert set(docs) == set(EngineConfig.__dataclass_fields__) > set(PipelineConfig.__dataclass_fields__) > \
        set(OptimizeConfig.__dataclass_fields__)
    assert all(len(d) > 30 for d in docs.values())


@pytest.mark.parametrize("key, value, allowed", [
    ("chunk_size", 0, "int >= 1"), ("chunk_size", -5, "int >= 1"), ("chunk_size", 2.5, "int >= 1"),
    ("chunk_size", True, "int >= 1"), ("max_batch", 0, "int >= 1"), ("context", -1, "'auto' or an int"),
    ("context", "big", "'auto' or an int"), ("compile_mode", "fast", "reduce-overhead"),
    ("dtype", "half", "float16"), ("fallback", "ignore", "raise"), ("warmup", "never", "lazy"),
    ("enabled", "yes", "true or false"), ("buckets", [], "non-empty"), ("buckets", [10, -1], "ints >= 1"),
    ("buckets", "100", "list of window lengths"), ("n_mels", 0, "int >= 1"), ("fused_activation", "yes", "auto"),
    ("channels_last", True, "auto"),
])
def test_bad_values_name_key_value_and_allowed(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        OptimizeConfig(**{key: value})
    message = str(info.value)
    assert key in message and repr(value) in message and allowed in message


def test_buckets_must_leave_kept_frames_for_an_explicit_context() -> None:
    with pytest.raises(ConfigError, match=r"> 2 \* context = 20"):
        OptimizeConfig(buckets=(20, 64), context=10)
    assert OptimizeConfig(buckets=[64, 21, 64], context=10).buckets == (21, 64)


def test_inductor_activation_needs_a_mode_that_rewrites_the_module() -> None:
    with pytest.raises(ConfigError, match="fused_activation='inductor' is invalid with compile_mode='eager'"):
        OptimizeConfig(fused_activation="inductor", compile_mode="eager")
    assert OptimizeConfig(fused_activation="inductor", compile_mode="cudagraphs").fused_activation == "inductor"


def test_unknown_option_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match="unknown options key.*chunksize.*valid keys.*chunk_size"):
        optimize_vocoder(tiny("hifigan-tiny"), chunksize=100)


def test_bad_option_fails_at_optimize_time_not_first_request() -> None:
    with pytest.raises(ConfigError, match="chunk_size=0"):
        optimize_vocoder(tiny("hifigan-tiny"), chunk_size=0, warmup="lazy")


def test_yaml_seed_keys_and_section(tmp_path) -> None:
    path = tmp_path / "tts_infer.yaml"
    path.write_text("custom:\n  device: cuda\nuse_vocoder_optimization: false\nvocoder_chunk_size: 250\n"
                    "tts_compile:\n  max_batch: 2\n  compile_mode: cudagraphs\n")
    config = load_config(path)
    assert (config.enabled, config.chunk_size, config.max_batch, config.compile_mode) == (False, 250, 2, "cudagraphs")
    assert load_config(path, chunk_size=100, enabled=True).chunk_size == 100  # keyword arguments win


def test_yaml_unknown_section_key_and_contradiction(tmp_path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("tts_compile:\n  chunk: 3\n")
    with pytest.raises(ConfigError, match="unknown options key.*'chunk'"):
        load_config(path)
    path.write_text("vocoder_chunk_size: 250\ntts_compile:\n  chunk_size: 300\n")
    with pytest.raises(ConfigError, match="contradicts"):
        load_config(path)


def test_keys_under_custom_warn(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("custom:\n  use_vocoder_optimization: true\n  vocoder_chunk_size: 100\n")
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        config = load_config(path)
    assert config.chunk_size == 500  # ignored there, as upstream would drop them
    assert "under 'custom:' are ignored" in caplog.text and "vocoder_chunk_size" in caplog.text


@pytest.mark.parametrize("value, disabled", [("1", True), ("true", True), ("0", False), ("", False)])
def test_disable_environment_variable(monkeypatch: pytest.MonkeyPatch, value: str, disabled: bool) -> None:
    monkeypatch.setenv("TTS_COMPILE_DISABLE", value)
    assert disabled_by_environment() is disabled


def test_replace_validates() -> None:
    assert OptimizeConfig().replace(chunk_size=7).chunk_size == 7
    with pytest.raises(ConfigError):
        OptimizeConfig().replace(chunk_size=-7)


def test_a_misspelled_section_or_seed_key_warns_with_the_closest_name(tmp_path, caplog) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("tts_compil:\n  max_batch: 2\nuse_vocoder_optimisation: false\n")
    with caplog.at_level(logging.WARNING, logger="tts_compile"):
        config = load_config(path)
    assert config == OptimizeConfig()  # neither key is ours: both ignored, both named
    assert "'tts_compil'" in caplog.text and "did you mean 'tts_compile'" in caplog.text
    assert "did you mean 'use_vocoder_optimization'" in caplog.text


def test_a_misspelled_option_names_the_closest_one(tmp_path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("tts_compile:\n  max_bacth: 2\n")
    with pytest.raises(ConfigError, match="'max_bacth': did you mean 'max_batch'"):
        load_config(path)


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("tts_compile:\n  max_batch: 2\n    chunk_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:3:\d+: not valid YAML"):
        load_config(path)


def test_a_keyword_option_of_another_config_class_is_rejected_not_ignored() -> None:
    """The YAML section is shared by every config class, keyword options are not: `max_rows` (the engine's) given to
    the vocoder's config names the valid keys instead of vanishing."""
    with pytest.raises(ConfigError, match=r"unknown options key.*'max_rows'"):
        OptimizeConfig().replace(max_rows=3)
    with pytest.raises(ConfigError, match=r"unknown options key.*'t2s'"):
        load_config(config_class=OptimizeConfig, t2s=False)


def test_cache_dir_points_inductor_and_triton_under_it(tmp_path, monkeypatch) -> None:
    """The engine's cache_dir: inductor's cache in it, Triton's (the T2S kernels) in its triton/ folder; a variable
    already set stays."""
    from tts_compile.engine import stand_ins

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    with stand_ins.engine("v2", compile_mode="eager", max_rows=2, cache_dir=str(tmp_path / "caches")):
        pass
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "caches")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine")
    monkeypatch.delenv("TRITON_CACHE_DIR")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    with stand_ins.engine("v2", compile_mode="eager", max_rows=2, cache_dir=str(tmp_path / "caches")):
        pass
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "caches" / "triton")
    assert (tmp_path / "caches" / "triton").is_dir()
