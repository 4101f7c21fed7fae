"""The stand-in backend's weight switches: a state dict saved from its models loads exactly (the built-in weights
saved and switched to give the same audio), another model's file is refused naming it, and the old weights serve
on."""

from __future__ import annotations

import pytest
import torch

from tts_compile.core.guard import InputError
from tts_compile.engine import EngineConfig, Params, stand_ins
from tts_compile.serve import StandIns

VERSION = "v4"  # the synthesizer's state dict holds the CFM too


@pytest.fixture
def served():
    backend = StandIns(VERSION, EngineConfig(compile_mode="eager", max_rows=2))
    yield backend
    backend.close()


def audio(backend: StandIns) -> torch.Tensor:
    return backend.engine.submit(stand_ins.voice(VERSION, seed=1), backend.segments("好。", "zh", "cut5"),
                                 Params(seed=2, sample_steps=2)).result(120)[0]


def test_saved_weights_switch_back_exactly(served, tmp_path) -> None:
    before = audio(served)
    for index, kind in enumerate(("gpt", "sovits")):
        path = tmp_path / f"{kind}.pt"
        torch.save(stand_ins.models(VERSION)[index].state_dict(), path)  # the built-in weights: seed 0
        engine = served.engine
        served.set_weights(kind, str(path))
        assert served.engine is not engine and served.loaded[kind] == str(path)
    assert torch.equal(audio(served), before) and served.weights == str(tmp_path / "sovits.pt")


def test_another_models_file_is_refused_and_the_old_weights_serve_on(served, tmp_path) -> None:
    path = tmp_path / "t2s.pt"
    torch.save(stand_ins.models(VERSION)[0].state_dict(), path)
    engine = served.engine
    with pytest.raises(InputError, match=f"set_sovits_weights: '{path}' is not a state dict of the stand-in "
                                         "synthesizer of v4"):
        served.set_weights("sovits", str(path))
    assert served.engine is engine and served.loaded == {} and audio(served).numel()
