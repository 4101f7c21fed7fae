"""Weight switches across replicas (`serve.shared`), without Ray: backends over the stand-in models sharing one voices
directory, as the replicas of a deployment do. A switch through one replica reaches another before its next request
and a replica that starts after it; weights one replica cannot load answer 503 there, naming them, until the record
changes; switches of both kinds through two replicas at once both stay recorded and reach both."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from tts_compile.core.guard import InputError
from tts_compile.engine import EngineConfig, Params, stand_ins
from tts_compile.serve import StandIns
from tts_compile.serve.app import HTTPError
from tts_compile.serve.shared import RECORD, SharedWeights

VERSION = "v2ProPlus"


def backend() -> StandIns:
    return StandIns(VERSION, EngineConfig(compile_mode="eager", max_rows=4))


def audio(replica: SharedWeights) -> torch.Tensor:
    """One request through the replica, as the server serves one: the deployment's weights followed first."""
    replica.follow()
    served = replica.backend
    return served.engine.submit(stand_ins.voice(VERSION, seed=3), served.segments("今天天气很好。", "zh", "cut5"),
                                Params(seed=5)).result(60)[0]


def weights(folder, kind: str, seed: int) -> str:
    """A weights file for the stand-ins' T2S (`gpt`) or synthesizer (`sovits`), of models built from `seed`."""
    path = folder / f"{kind}-{seed}.pt"
    torch.save(stand_ins.models(VERSION, seed=seed)[0 if kind == "gpt" else 1].state_dict(), path)
    return str(path)


@pytest.fixture
def replicas(tmp_path):
    made = [SharedWeights(tmp_path, backend()) for _ in range(2)]
    yield made
    for replica in made:
        replica.backend.close()


def test_a_switch_reaches_the_other_replica_before_its_next_request(tmp_path, replicas) -> None:
    a, b = replicas
    before = audio(b)
    path = weights(tmp_path, "gpt", 7)
    a.switch("gpt", path)
    assert a.backend.loaded == {"gpt": path} and b.backend.loaded == {}
    after = audio(b)
    assert b.backend.loaded == {"gpt": path}
    assert torch.equal(after, audio(a)) and not torch.equal(after, before)
    engine = b.backend.engine
    b.follow()
    assert b.backend.engine is engine  # nothing new recorded: nothing loads again


def test_a_replica_that_starts_after_a_switch_comes_up_on_it(tmp_path, replicas) -> None:
    a, _ = replicas
    path = weights(tmp_path, "sovits", 4)
    a.switch("sovits", path)
    late = SharedWeights(tmp_path, backend())
    try:
        assert torch.equal(audio(late), audio(a)) and late.backend.loaded == {"sovits": path}
    finally:
        late.backend.close()


def test_weights_a_replica_cannot_load_answer_503_there_until_the_record_changes(tmp_path, replicas) -> None:
    a, b = replicas
    with pytest.raises(InputError, match="not a state dict of the stand-in T2S"):
        a.switch("gpt", weights(tmp_path, "sovits", 1))  # another model's file: refused where it was asked
    assert not (tmp_path / RECORD).exists()
    gone = weights(tmp_path, "gpt", 2)
    a.switch("gpt", gone)
    os.remove(gone)  # recorded, then unreadable for every other replica
    engine, loads = b.backend.engine, []
    load = b.backend._load
    b.backend._load = lambda *args: loads.append(args) or load(*args)
    for _ in range(2):
        with pytest.raises(HTTPError, match=f"cannot load the gpt weights '{gone}'") as raised:
            b.follow()
        assert raised.value.status_code == 503
    assert len(loads) == 1 and b.backend.engine is engine  # tried once per record; the old weights kept
    path = weights(tmp_path, "gpt", 3)
    a.switch("gpt", path)
    assert torch.equal(audio(b), audio(a)) and b.backend.loaded == {"gpt": path}


def test_switches_of_both_kinds_through_two_replicas_at_once_reach_both(tmp_path, replicas) -> None:
    a, b = replicas
    paths = {"gpt": weights(tmp_path, "gpt", 5), "sovits": weights(tmp_path, "sovits", 6)}
    threads = [threading.Thread(target=a.switch, args=("gpt", paths["gpt"])),
               threading.Thread(target=b.switch, args=("sovits", paths["sovits"]))]
    [thread.start() for thread in threads]
    [thread.join(120) for thread in threads]
    assert torch.equal(audio(a), audio(b))
    assert a.backend.loaded == b.backend.loaded == paths


def test_a_broken_record_is_ignored_until_a_switch_writes_a_good_one(tmp_path, replicas) -> None:
    a, b = replicas
    (tmp_path / RECORD).write_text("{not json")
    engine = b.backend.engine
    b.follow()  # no error for the request: the weights it serves stay
    assert b.backend.engine is engine and b.backend.loaded == {}
    path = weights(tmp_path, "gpt", 8)
    a.switch("gpt", path)
    assert torch.equal(audio(b), audio(a)) and b.backend.loaded == {"gpt": path}
