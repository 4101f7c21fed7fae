"""`python -m tts_compile serve --replicas 2`: the server on a local Ray Serve instance over the stand-in models (CPU).
Requests spread over both replicas, a voice registered through one is served by both, a weight switch through one
reaches both, and a replica killed mid-load: every request is answered (200, or a 5xx for those on the killed
replica), none hangs, the replacement comes up and serves the switched weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from tests.serve.conftest import AUTH, reference
from tests.serve.test_command import command
from tts_compile.engine import stand_ins

pytest.importorskip("ray", reason="the replicated server needs the ray extra (pip install 'tts-compile[ray]')")

HEADER = "X-TTS-Replica"
CACHED = {"voice_name": "alice", "text": "你好。", "text_lang": "zh", "seed": 3}
DEADLINE_S = 60  # what one request may take on a busy 2-core machine, far above its ~0.5 s


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    voices = tmp_path_factory.mktemp("voices")
    try:
        with command(voices, "--replicas", "2") as (process, url):
            _wait_for_both(url)
            yield url
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)  # whatever the driver left


def _wait_for_both(url: str) -> None:
    """Until both replicas answer: the proxy routes as soon as one is up, the other may still be importing."""
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while len(seen) < 2 and time.monotonic() < deadline:
        seen.add(httpx.get(f"{url}/health", timeout=DEADLINE_S).headers.get(HEADER, ""))
        time.sleep(0.1)
    assert len(seen - {""}) == 2, f"only {seen} answered within 120 s"


def _spread(client: httpx.Client, count: int, workers: int = 8) -> list[httpx.Response | BaseException]:
    """`count` cached-voice requests from `workers` threads; each answer, or the error that ended it."""
    def one(_: int) -> httpx.Response | BaseException:
        try:
            return client.post("/tts_with_cached_voice", params=CACHED)
        except httpx.HTTPError as exc:
            return exc

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def test_requests_spread_over_the_replicas_and_a_voice_is_everyones(deployment) -> None:
    with httpx.Client(base_url=deployment, timeout=DEADLINE_S) as client:
        registered = client.post("/voices", headers=AUTH, data={"name": "alice", "prompt_text": "你好。"},
                                 files={"ref_audio": ("a.wav", reference())})
        assert registered.status_code == 201, registered.text
        answers = _spread(client, 32)
        assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
        assert len({a.headers[HEADER] for a in answers}) == 2
        assert len({a.content for a in answers}) == 1  # the same seed and voice: the same audio on either replica
        body = {"ref_audio_path": "alice/ref.wav", "prompt_lang": "zh", "prompt_text": "你好。", "text_lang": "zh",
                "text": "今天天气很好！我们去公园吧。", "streaming_mode": 1}
        with client.stream("POST", "/tts", json=body) as streamed:  # through Serve's proxy, piece by piece
            pieces = [piece for piece in streamed.iter_bytes() if piece]
        assert streamed.status_code == 200 and pieces[0][:4] == b"RIFF" and sum(map(len, pieces)) > 44


def test_a_weight_switch_through_one_replica_reaches_both(deployment, tmp_path) -> None:
    path = tmp_path / "gpt.pt"
    torch.save(stand_ins.models("v2ProPlus", seed=7)[0].state_dict(), path)
    with httpx.Client(base_url=deployment, timeout=DEADLINE_S) as client:
        _register(client)
        before = {a.content for a in _spread(client, 8) if isinstance(a, httpx.Response)}
        switch = client.get("/set_gpt_weights", headers=AUTH, params={"weights_path": str(path)})
        assert switch.status_code == 200, switch.text
        answers = _spread(client, 32)
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
    assert len({a.headers[HEADER] for a in answers}) == 2
    assert len({a.content for a in answers}) == 1 and not {a.content for a in answers} & before
    with httpx.Client(base_url=deployment, timeout=DEADLINE_S) as client:
        assert client.get("/ready").json()["weights"] == {"gpt": str(path)}


def test_a_killed_replica_is_replaced_and_no_request_hangs(deployment) -> None:
    with httpx.Client(base_url=deployment, timeout=DEADLINE_S) as client:
        _register(client)
        before = {a.headers[HEADER] for a in _spread(client, 16) if isinstance(a, httpx.Response)}
        victim = sorted(before)[0]
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(_spread, client, 48)
            time.sleep(0.5)
            os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
            started = time.monotonic()
            answers = load.result(timeout=2 * DEADLINE_S)
        assert all(isinstance(a, httpx.Response) for a in answers), [a for a in answers if isinstance(a, Exception)]
        statuses = {a.status_code for a in answers}
        assert statuses <= {200} | set(range(500, 600)) and 200 in statuses
        replaced, contents = set(), set()
        while time.monotonic() - started < 120 and not replaced - before:
            served = [a for a in _spread(client, 8) if isinstance(a, httpx.Response) and a.status_code == 200]
            replaced |= {a.headers[HEADER] for a in served}
            contents |= {a.content for a in served}
        assert replaced - before, f"no new replica answered within 120 s (answers from {replaced})"
        assert len(contents) == 1  # the replacement serves the deployment's weights (switched above), not its config's


def _register(client: httpx.Client) -> None:
    if client.get("/voices").json()["voices"] == []:
        client.post("/voices", headers=AUTH, data={"name": "alice", "prompt_text": "你好。"},
                    files={"ref_audio": ("a.wav", reference())})


def test_the_serve_deploy_config_names_a_builder_that_takes_its_args(tmp_path) -> None:
    """configs/ray_serve.yaml's import_path is `replicas.app`, whose args it accepts (here without a config: the
    stand-ins); an unknown arg is refused by name."""
    import yaml

    from tts_compile.serve import replicas

    config = yaml.safe_load((Path(__file__).parents[2] / "configs" / "ray_serve.yaml").read_text())
    [application] = config["applications"]
    assert application["import_path"] == "tts_compile.serve.replicas:app"
    args = {**application["args"], "voices_dir": str(tmp_path)}
    del args["config"]
    assert replicas.app(args) is not None
    with pytest.raises(ValueError, match="args \\['replica'\\] are not supported"):
        replicas.app({"replica": 2})


def test_the_single_process_server_never_imports_ray() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, tts_compile.serve, tts_compile.tools.cli; "
                           "assert 'ray' not in sys.modules"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
