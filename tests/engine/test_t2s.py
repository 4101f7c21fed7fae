"""The engine's batched prefill: a prefix prefilled amid others (any row of the call, any neighbours of its length
bucket) leaves exactly the KV cache row and logits it leaves prefilled alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.core.runner import Execution, Runner
from tts_compile.engine import Params
from tts_compile.engine.t2s import BatchedT2S, Prefix
from tts_compile.gpt_sovits.models.t2s import build_t2s

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _t2s(device: str, dtype: torch.dtype = torch.float32) -> BatchedT2S:
    model = build_t2s(seed=0).to(device, dtype)
    mode = "cudagraphs" if device == "cuda" else "eager"
    return BatchedT2S(model, 12, 256, Runner(Execution.of(mode, torch.device(device)), torch.device(device)),
                      kernels=device == "cuda")


def _prefix(seed: int, phones: int, prompt: int, device: str, dtype: torch.dtype = torch.float32) -> Prefix:
    gen = torch.Generator().manual_seed(seed)
    return Prefix(torch.randint(1, 40, (phones,), generator=gen).to(device),
                  torch.randn(1024, phones, generator=gen).to(device, dtype),
                  torch.randint(0, 64, (prompt,), generator=gen).to(device), Params(), seed)


def _row(t2s: BatchedT2S, slot: int, positions: int) -> tuple[torch.Tensor, ...]:
    pool = t2s.pool
    return (pool.k[:, slot, :, :positions].clone(), pool.v[:, slot, :, :positions].clone(),
            pool.logits[slot].clone(), pool.seen[slot].clone(), pool.prefix[slot].clone())


@pytest.fixture(scope="module")
def cpu_t2s() -> BatchedT2S:
    return _t2s("cpu")


@settings(max_examples=10, deadline=None)
@given(phones=st.integers(1, 40), others=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 12)), max_size=9),
       at=st.integers(0, 9))
def test_a_prefix_prefills_the_same_alone_or_amid_others(cpu_t2s, phones, others, at) -> None:
    t2s = cpu_t2s
    mine = _prefix(0, phones, 8, "cpu")
    [slot] = t2s.prefill([mine])
    alone = _row(t2s, slot, mine.positions)
    t2s.release(slot)
    prefixes = [_prefix(1 + i, n, q, "cpu") for i, (n, q) in enumerate(others)]
    at = min(at, len(prefixes))
    slots = t2s.prefill([*prefixes[:at], mine, *prefixes[at:]])
    amid = _row(t2s, slots[at], mine.positions)
    for s in slots:
        t2s.release(s)
    for a, b in zip(alone, amid):
        assert torch.equal(a, b)


@pytest.mark.skipif("cuda" not in DEVICES, reason="the captured prefill needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_batched_prefill_is_invariant_natively_on_cuda(dtype) -> None:
    t2s = _t2s("cuda", dtype)
    mine = _prefix(0, 20, 8, "cuda", dtype)
    [slot] = t2s.prefill([mine])
    alone = _row(t2s, slot, mine.positions)
    t2s.release(slot)
    others = [_prefix(i, 10 + i, 8, "cuda", dtype) for i in range(1, 8)]
    slots = t2s.prefill([*others[:5], mine, *others[5:]])
    assert t2s.runner.counters["captures"] > 0
    for a, b in zip(alone, _row(t2s, slots[5], mine.positions)):
        assert torch.equal(a, b)


def test_a_prefix_that_does_not_fit_is_named() -> None:
    t2s = _t2s("cpu")
    with pytest.raises(ValueError, match="prefix of 300 positions"):
        t2s.prefill([_prefix(0, 292, 8, "cpu")])
    assert len(t2s.free) == t2s.pool.rows


def test_a_failed_prefill_gives_its_rows_back(monkeypatch) -> None:
    t2s = _t2s("cpu")
    monkeypatch.setattr(t2s, "_prefill", lambda length: (_ for _ in ()).throw(RuntimeError("kernel failure")))
    with pytest.raises(RuntimeError, match="kernel failure"):
        t2s.prefill([_prefix(0, 10, 8, "cpu"), _prefix(1, 12, 8, "cpu")])
    assert sorted(t2s.free) == list(range(t2s.pool.rows))
