"""The runner's captured buckets from any thread: a bucket captured under `torch.inference_mode()` in one thread
(its static inputs inference tensors) serves a thread that calls outside inference mode."""

from __future__ import annotations

import threading

import pytest
import torch

from tts_compile.core.runner import Execution, Runner


def _double(x: torch.Tensor) -> torch.Tensor:
    return 2 * x + 1


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_a_bucket_captured_under_inference_mode_serves_another_thread(device) -> None:
    runner = Runner(Execution.of("cudagraphs" if device == "cuda" else "eager", torch.device(device)),
                    torch.device(device))
    example = torch.randn(4, 8, device=device)
    with torch.inference_mode():
        runner.prepare("bucket", _double, [example])
    assert runner.graphs == (device == "cuda")
    value, got = torch.randn(4, 8, device=device), []
    thread = threading.Thread(target=lambda: got.append(runner.run("bucket", [value])))  # not in inference mode
    thread.start()
    thread.join()
    torch.testing.assert_close(got[0], _double(value), rtol=0, atol=0)


def test_captures_count_their_milliseconds(monkeypatch) -> None:
    """Start-up's cost shows per stage and kind of bucket: each capture adds its wall time, in whole milliseconds, to
    `capture_ms` and to its kind's."""
    clock = iter([10.0, 10.25, 20.0, 20.5])  # two captures: 250 ms and 500 ms
    monkeypatch.setattr("tts_compile.core.runner.time.perf_counter", lambda: next(clock))
    runner = Runner(Execution.of("eager", torch.device("cpu")), torch.device("cpu"))
    assert runner.prepare(("enc", 64), _double, [torch.ones(2)]) == 0.25
    assert runner.prepare("b", _double, [torch.ones(3)]) == 0.5
    assert (runner.counters["captures"], runner.counters["capture_ms"]) == (2, 750)
    assert runner.capture_ms_by_kind == {"enc": 250, "str": 500}  # a tuple key's first item, else its type


def test_a_capture_holds_the_shared_generators() -> None:
    """A capture registers the default CUDA generator: while one is made, no other thread may draw from it, so the
    capture holds `DRAWS`, which upstream's draws on other threads take."""
    from tts_compile.core.rng import DRAWS

    runner = Runner(Execution.of("eager", torch.device("cpu")), torch.device("cpu"))
    free = []

    def call(x: torch.Tensor) -> torch.Tensor:
        other = threading.Thread(target=lambda: free.append(DRAWS.acquire(timeout=0.01) and DRAWS.release() is None))
        other.start()
        other.join()
        return x

    runner.prepare("b", call, [torch.ones(2)])
    assert free == [False]
