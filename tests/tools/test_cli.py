"""The command line: bench prints its table and writes JSON; probe reports a receptive field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tts_compile import OptimizeConfig, load_config
from tts_compile.core.config import field_docs
from tts_compile.models import build_model
from tts_compile.tools.cli import main, options_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_bench_prints_a_table_and_appends_json(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "vits-tiny", "--mode", "eager", "--lengths", "40,300", "--repeats", "2"]
    assert main([*args, "--json", str(out)]) == 0
    assert main([*args, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "vits-tiny on cpu" in table and "speedup" in table and "speed-ups are claims about GPUs only" in table
    runs = json.loads(out.read_text())
    assert len(runs) == 2 and [r["frames"] for r in runs[0]["rows"]] == [40, 300]
    assert runs[0]["command"].startswith("python -m tts_compile") and runs[0]["device_type"] == "cpu"
    assert all(r["max_abs_diff"] <= 1e-5 for r in runs[0]["rows"])


def test_bench_passes_the_pass_switches_to_the_optimizer(monkeypatch) -> None:
    from tts_compile.tools import bench

    seen = {}

    def fake_run(model, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(bench, "run", fake_run)
    try:
        main(["bench", "--fused-activation", "off", "--channels-last", "on"])
    except SystemExit:
        pass
    assert seen["fused_activation"] == "off" and seen["channels_last"] == "on"


def small_decoder():
    """A zero-argument factory, probed through `module:attribute`."""
    return build_model("vits-tiny")


def test_probe_builtin_and_module_attribute(capsys) -> None:
    assert main(["probe", "hifigan-tiny"]) == 0
    assert main(["probe", "tests.tools.test_cli:small_decoder"]) == 0
    text = capsys.readouterr().out
    assert "hifigan-tiny: hop 16 samples/frame, receptive field -8/+8 frames, context 10 frames" in text
    assert "tests.tools.test_cli:small_decoder: hop 8 samples/frame, receptive field -7/+7 frames" in text


def test_example_tts_infer_yaml_documents_every_option() -> None:
    path = ROOT / "configs" / "tts_infer.yaml"
    assert load_config(path) == OptimizeConfig()
    data = yaml.safe_load(path.read_text())
    listed = set(data["tts_compile"]) | {"enabled", "chunk_size"}
    assert listed == set(field_docs())  # every option of the section: the vocoder's and the pipeline's
    assert {"custom", "use_vocoder_optimization", "vocoder_chunk_size"} <= set(data)


def test_configuration_doc_is_generated_and_lists_every_option() -> None:
    """docs/configuration.md is what `python -m tts_compile options` prints today: regenerate it after a change."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == options_markdown()
    for name in field_docs():
        assert f"`{name}`" in doc, f"docs/configuration.md does not document the option {name}"


def test_readme_has_the_ci_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line.split("=", 1)[1].strip().strip("'") for line in ci.splitlines()
                   if line.startswith("TEST_COMMAND="))
    assert command in readme.splitlines()


@pytest.mark.parametrize("argv, flag", [
    (["bench", "--lengths", "100,abc"], "--lengths"), (["bench", "--lengths", "0"], "--lengths"),
    (["bench", "--repeats", "0"], "--repeats"), (["bench", "--chunk-size", "0"], "--chunk-size"),
    (["bench", "--device", "cuda:7"], "--device"), (["probe", "no.such.module:thing"], "no.such.module"),
    (["client", "--concurrency", "-1"], "--concurrency"),
])
def test_bad_flags_get_one_line_naming_the_flag(argv, flag, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and "error:" in error and flag in error and "Traceback" not in error


def test_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "(default: 5)" in capsys.readouterr().out
