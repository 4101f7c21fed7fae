"""The engine's sampling: upstream's rule per row, noise that is a function of a row's own seed and step."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.engine.sampling import EARLY_STEPS, counter_exponential, row_seed, sample_rows
from tts_compile.gpt_sovits.kernels.t2s_sample import Sampling, probabilities


def test_the_noise_of_a_row_is_its_own() -> None:
    seeds, steps = torch.tensor([5, 2**40 + 3, 7]), torch.tensor([0, 11, 3])
    together = counter_exponential(seeds, steps, 1025)
    for r in range(3):
        assert torch.equal(counter_exponential(seeds[r : r + 1], steps[r : r + 1], 1025)[0], together[r])
    assert not torch.equal(counter_exponential(seeds[:1], steps[:1] + 1, 1025), together[:1])
    assert not torch.equal(counter_exponential(seeds[:1] + 1, steps[:1], 1025), together[:1])


def test_the_noise_is_exponential() -> None:
    q = counter_exponential(torch.arange(64), torch.zeros(64, dtype=torch.long), 1025).flatten()
    assert torch.isfinite(q).all() and (q > 0).all()
    assert abs(float(q.mean()) - 1) < 0.01 and abs(float(q.var()) - 1) < 0.03  # 65600 draws of Exp(1)
    uniform = torch.exp(-q)
    counts = torch.histc(uniform, bins=16, min=0, max=1)
    expected = q.numel() / 16
    assert float(((counts - expected) ** 2 / expected).sum()) < 40  # chi-square, 15 dof: p < 1e-3 above 37.7


def test_row_seeds_differ_by_segment_and_request() -> None:
    seeds = {row_seed(s, i) for s in range(20) for i in range(20)}
    assert len(seeds) == 400 and all(0 <= s < 2**62 for s in seeds)


@settings(max_examples=25, deadline=None)
@given(top_k=st.integers(1, 40), top_p=st.sampled_from([1.0, 0.8, 0.3]), temperature=st.sampled_from([1.0, 0.6]),
       penalty=st.sampled_from([1.0, 1.35]), step=st.integers(0, 20), seed=st.integers(0, 999),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_one_row_samples_by_upstreams_rule(top_k, top_p, temperature, penalty, step, seed, dtype) -> None:
    """Per-row tensors give what the one-parameter-set rule (gpt_sovits' `probabilities`, upstream's order) gives
    for the same noise; EOS is not sampled in the first EARLY_STEPS steps."""
    gen = torch.Generator().manual_seed(seed)
    vocab, eos = 33, 32
    logits = (4 * torch.randn(1, vocab, generator=gen)).to(dtype)
    seen = torch.rand(1, vocab, generator=gen) < 0.3
    q = counter_exponential(torch.tensor([seed]), torch.tensor([step]), vocab)
    columns = vocab - 1 if step < EARLY_STEPS else vocab
    penalised, probs = probabilities(logits[:, :columns], seen[:, :columns],
                                     Sampling(top_k, top_p, temperature, penalty))
    expected = torch.argmax(probs / q[:, :columns].to(dtype), dim=-1)
    one = lambda value, kind=torch.float32: torch.tensor([value], dtype=kind)  # noqa: E731
    token, stop = sample_rows(logits, seen, q, torch.tensor([step]), one(top_k, torch.long), one(top_p),
                              one(temperature), one(penalty), eos)
    assert torch.equal(token, expected)
    assert bool(stop) == bool(token == eos or (columns == vocab and torch.argmax(penalised, dim=-1) == eos))


@pytest.mark.parametrize("rows", [2, 5])
def test_rows_with_their_own_parameters_sample_as_each_alone(rows) -> None:
    gen = torch.Generator().manual_seed(rows)
    logits, seen = torch.randn(rows, 40, generator=gen) * 3, torch.rand(rows, 40, generator=gen) < 0.2
    params = (torch.randint(1, 30, (rows,), generator=gen), torch.rand(rows, generator=gen) * 0.5 + 0.5,
              torch.rand(rows, generator=gen) + 0.5, torch.rand(rows, generator=gen) + 1.0)
    step = torch.randint(0, 30, (rows,), generator=gen)
    q = counter_exponential(torch.arange(rows), step, 40)
    together = sample_rows(logits, seen, q, step, *params, 39)
    for r in range(rows):
        alone = sample_rows(logits[r : r + 1], seen[r : r + 1], q[r : r + 1], step[r : r + 1],
                            *(p[r : r + 1] for p in params), 39)
        assert torch.equal(alone[0], together[0][r : r + 1]) and torch.equal(alone[1], together[1][r : r + 1])
