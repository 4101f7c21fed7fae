"""The Triton T2S decode step equals the torch layers (TRITON_INTERPRET=1 on CPU via conftest; natively on a GPU),
and the `tts_compile::t2s_decode_step` op passes torch's op checks."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.gpt_sovits.kernels.t2s_decode import decode_step_reference, flatten, t2s_decode_step, unflatten

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
# float32: accumulation order only. float16: the kernels round once per product, torch after every op, so the
# kernels' error against float64 may be up to that much above torch's own (measured: below 1x-1.5x).
FLOAT32_TOLERANCE = 1e-5
FLOAT16_SLACK = 2.0


def _model(layers: int, dim: int, heads: int, ffn: int, vocab: int, rows: int, capacity: int, bias: bool,
           seed: int):
    """Random layer weights of unit-scale activations, and caches holding random earlier K/V."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale / shape[-1] ** 0.5

    weights = [(rand(3 * dim, dim), rand(3 * dim), rand(dim, dim), rand(dim), 1 + rand(dim), rand(dim), 1e-5,
                rand(ffn, dim), rand(ffn), rand(dim, ffn), rand(dim), 1 + rand(dim), rand(dim), 1e-5)
               for _ in range(layers)]
    cache = (layers, rows, heads, capacity, dim // heads)
    k, v = torch.randn(cache, generator=gen), torch.randn(cache, generator=gen)
    predict = (rand(vocab, dim, scale=8.0), rand(vocab) if bias else None)
    return weights, k, v, predict, torch.randn(rows, dim, generator=gen)


def _cast(weights, dtype, device):
    return [tuple(t.to(device, dtype) if isinstance(t, torch.Tensor) else t for t in w) for w in weights]


def _run(fn, weights, k, v, predict, x, pos, start, dtype, device, slot=None, **options):
    """`fn` on the model in `dtype` on `device`: pos one column for every row (an int) or one per row; slot: each
    row's cache row (default: its own)."""
    k, v = k.to(device, dtype), v.to(device, dtype)
    predict = [t.to(device, dtype) if t is not None else None for t in predict]
    rows = x.shape[0]
    pos = torch.full((rows,), pos) if isinstance(pos, int) else pos
    slot = torch.arange(rows) if slot is None else slot
    logits = fn(x.to(device, dtype), k, v, pos.to(device), start.to(device), slot.to(device),
                _cast(weights, dtype, device), *predict, **options)
    return logits.double().cpu(), k.double().cpu(), v.double().cpu()


@settings(max_examples=20, deadline=None)
@given(layers=st.integers(1, 2), heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([8, 16, 24]),
       rows=st.integers(1, 5), capacity=st.integers(1, 150), vocab=st.integers(2, 40), bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16]), chunk=st.sampled_from([512, 32]), data=st.data())
def test_triton_step_matches_the_torch_layers(layers, heads, head_dim, rows, capacity, vocab, bias, dtype, chunk,
                                              data) -> None:
    """One row through the CUDA-core form, several through the tensor-core form (its reduction in chunks of
    `chunk`: 32 makes several chunks on these small widths)."""
    from tts_compile.gpt_sovits.kernels import t2s_triton
    from tts_compile.gpt_sovits.kernels.t2s_triton import decode_step_triton

    pos = data.draw(st.integers(0, capacity - 1), label="pos")
    start = torch.tensor(data.draw(st.lists(st.integers(0, pos), min_size=rows, max_size=rows), label="start"))
    dim = heads * head_dim
    model = _model(layers, dim, heads, 4 * dim, vocab, rows, capacity, bias, data.draw(st.integers(0, 99)))
    t2s_triton.DOT_BLOCK_K, default = chunk, t2s_triton.DOT_BLOCK_K
    try:
        got = _run(decode_step_triton, *model, pos, start, dtype, DEVICE)
    finally:
        t2s_triton.DOT_BLOCK_K = default
    exact = _run(decode_step_reference, *model, pos, start, torch.float64, "cpu")
    torch_same_dtype = _run(decode_step_reference, *model, pos, start, dtype, "cpu")
    untouched = torch.ones(capacity, dtype=torch.bool)
    untouched[pos] = False
    for mine, reference, same in zip(got, exact, torch_same_dtype):
        error, scale = float((mine - reference).abs().max()), float(reference.abs().max())
        if dtype == torch.float32:
            assert error <= FLOAT32_TOLERANCE * scale
        else:
            assert error <= FLOAT16_SLACK * float((same - reference).abs().max()) + 1e-3 * scale
    for mine, before in zip(got[1:], model[1:3]):  # only column `pos` of the caches is written
        assert torch.equal(mine[:, :, :, untouched], before.to(dtype).double()[:, :, :, untouched])


def test_bad_shapes_are_rejected() -> None:
    from tts_compile.gpt_sovits.kernels.t2s_triton import ROWS, decode_step_triton

    weights, k, v, predict, x = _model(1, 16, 2, 32, 5, ROWS + 1, 4, False, 0)
    rows = torch.zeros(ROWS + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="one position, start and slot per row"):
        decode_step_triton(x, k, v, torch.tensor([0]), rows, rows, weights, *predict)


def test_flatten_round_trip_and_the_op_checks() -> None:
    weights, k, v, (w, b), x = _model(2, 16, 2, 32, 7, 2, 6, True, 1)
    start, pos, slot = torch.tensor([0, 2]), torch.tensor([3, 3]), torch.tensor([0, 1])
    assert unflatten(*flatten(weights)) == weights
    torch.library.opcheck(t2s_decode_step, (x, k, v, pos, start, slot, *flatten(weights), w, b))
    expected = decode_step_reference(x, k.clone(), v.clone(), pos, start, slot, weights, w, b)
    assert torch.equal(t2s_decode_step(x, k, v, pos, start, slot, *flatten(weights), w, b), expected)


def test_a_row_never_reads_the_columns_before_its_start() -> None:
    """Whatever the cache holds before start[r] (a batch row's left padding) leaves row r's logits unchanged."""
    weights, k, v, (w, b), x = _model(2, 16, 2, 32, 7, 2, 6, True, 2)
    start, pos, slot = torch.tensor([0, 3]), torch.tensor([4, 4]), torch.tensor([0, 1])
    expected = decode_step_reference(x, k.clone(), v.clone(), pos, start, slot, weights, w, b)
    k[:, 1, :, :3], v[:, 1, :, :3] = 1e4, -1e4
    assert torch.equal(decode_step_reference(x, k, v, pos, start, slot, weights, w, b)[1], expected[1])


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 40), pool=st.integers(0, 8), capacity=st.integers(2, 60), seed=st.integers(0, 99),
       dtype=st.sampled_from([torch.float32, torch.float16]), data=st.data())
def test_rows_with_their_own_slots_and_positions(rows, pool, capacity, seed, dtype, data) -> None:
    """Rows in any cache rows of a larger pool, each at its own column, more rows than one tile: each row's logits
    and K/V are what it gets alone (the tensor-core form, `invariant`), bit for bit; nothing else is written."""
    from tts_compile.gpt_sovits.kernels.t2s_triton import decode_step_triton

    weights, k, v, predict, x = _model(2, 32, 2, 64, 11, rows + pool, capacity, True, seed)
    x = x[:rows]
    slot = torch.randperm(rows + pool, generator=torch.Generator().manual_seed(seed))[:rows]
    pos = torch.tensor(data.draw(st.lists(st.integers(0, capacity - 1), min_size=rows, max_size=rows)))
    start = torch.zeros(rows, dtype=torch.long)
    got = _run(decode_step_triton, weights, k, v, predict, x, pos, start, dtype, DEVICE, slot, invariant=True)
    exact = _run(decode_step_reference, weights, k, v, predict, x, pos, start, torch.float64, "cpu", slot)
    tolerance = FLOAT32_TOLERANCE if dtype == torch.float32 else 2e-2
    assert float((got[0] - exact[0]).abs().max()) <= tolerance * float(exact[0].abs().max())
    written = torch.zeros(k.shape[1:4], dtype=torch.bool)
    written[slot, :, pos] = True
    for mine, before in zip(got[1:], (k, v)):
        assert torch.equal(mine[:, ~written], before.to(dtype).double()[:, ~written])
    for r in data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=3, unique=True)):
        alone = _run(decode_step_triton, weights, k, v, predict, x[r : r + 1], pos[r : r + 1], start[r : r + 1],
                     dtype, DEVICE, slot[r : r + 1], invariant=True)
        assert torch.equal(alone[0][0], got[0][r]), f"row {r} of {rows} differs from the row alone"
