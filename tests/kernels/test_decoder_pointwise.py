"""The Triton decoder pointwise pass equals its torch reference bit for bit (TRITON_INTERPRET=1 on CPU via conftest;
natively on a GPU), for every combination of terms and outputs, in both layouts the decoder produces; the reference
is the chain of torch ops the decoder would otherwise run."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.kernels.decoder_pointwise import pointwise, pointwise_reference

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")
from tts_compile.kernels.decoder_pointwise_triton import pointwise_triton

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)
DTYPES = {"float32": torch.float32, "float16": torch.float16}
if not INTERPRETED:  # the interpreter rounds float32 -> bfloat16 by truncation (-0.18047 -> -0.1797, not -0.1807)
    DTYPES["bfloat16"] = torch.bfloat16


def _tensor(shape: tuple[int, int, int], dtype: str, channels_last: bool, seed: int) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 4
    if channels_last:  # the decoder's channels-last convolutions give [B, C, T] with strides (T*C, 1, C)
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return x.to(DTYPES[dtype]).to(DEVICE)


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 2), channels=st.integers(1, 40), length=st.integers(1, 300),
       dtype=st.sampled_from(sorted(DTYPES)), channels_last=st.booleans(), slope=st.sampled_from([0.1, 0.01, 0.3]),
       beyond=st.integers(-3, 3), terms=st.sets(st.sampled_from(["bias", "residual", "total"])),
       divisor=st.sampled_from([1, 3, 7]), outputs=st.sampled_from([(True, True), (True, False), (False, True)]),
       seed=st.integers(0, 10_000))
def test_triton_equals_the_reference(batch, channels, length, dtype, channels_last, slope, beyond, terms, divisor,
                                     outputs, seed) -> None:
    shape = (batch, channels, length)
    y = _tensor(shape, dtype, channels_last, seed)
    valid = torch.tensor([max(0, length // 2 + beyond * length // 3)], device=DEVICE)
    kwargs = {"divisor": divisor, "keep_sum": outputs[0], "activate": outputs[1],
              "bias": (torch.randn(channels, generator=torch.Generator().manual_seed(seed + 1)) * 3).to(y)
              if "bias" in terms else None,
              "residual": _tensor(shape, dtype, channels_last, seed + 2) if "residual" in terms else None,
              "total": _tensor(shape, dtype, channels_last, seed + 3) if "total" in terms else None}
    got = pointwise_triton(y, valid, slope, **kwargs)
    expected = pointwise_reference(y, valid, slope, **kwargs)
    for g, e, wanted in zip(got, expected, outputs):
        assert (g is not None) == wanted and (e is not None) == wanted
        if wanted:
            assert g.stride() == y.stride() and torch.equal(g, e)


@pytest.mark.parametrize("valid", [0, 5, 9, 12])
def test_reference_is_the_decoders_torch_chain(valid: int) -> None:
    """((y + bias) + residual + total) / 3, then leaky ReLU up to `valid`, zeros beyond, in float16 (the division as
    torch's CUDA kernel computes it: times the float32 reciprocal)."""
    gen = torch.Generator().manual_seed(valid)
    y, residual, total = (torch.randn(2, 3, 9, generator=gen).half() for _ in range(3))
    bias = torch.randn(3, generator=gen).half()
    s, h = pointwise_reference(y, torch.tensor([valid]), 0.1, bias, residual, total, divisor=3)
    chain = (total + ((y + bias[:, None]) + residual)) * (1 / 3)
    inside = min(valid, 9)
    assert torch.equal(s, chain)
    assert torch.equal(h[..., :inside], F.leaky_relu(chain, 0.1)[..., :inside]) and not h[..., inside:].any()


@pytest.mark.skipif(INTERPRETED, reason="the claim is about torch's CUDA kernel")
def test_torchs_cuda_division_by_a_number_is_the_reciprocal_product() -> None:
    """What the reference's `* (1 / divisor)` stands for: upstream's `xs / self.num_kernels` on CUDA."""
    x = torch.randn(1 << 16, device=DEVICE)
    assert torch.equal(x / 3, x * (1 / 3)) and not torch.equal((x / 3).cpu(), x.cpu() / 3)


def test_mixed_layouts_take_the_reference() -> None:
    """A residual in another layout than y is not the kernel's case: the dispatcher computes it with torch ops."""
    y = _tensor((1, 4, 16), "float32", True, 0)
    residual = _tensor((1, 4, 16), "float32", False, 1)
    got = pointwise(y, torch.tensor([10], device=DEVICE), 0.1, residual=residual)
    expected = pointwise_reference(y, torch.tensor([10], device=DEVICE), 0.1, residual=residual)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    with pytest.raises(ValueError, match="residual / total of its shape and strides"):
        pointwise_triton(y, torch.tensor([2], device=DEVICE), 0.1, residual=residual)


def test_an_unsupported_layout_is_refused() -> None:
    x = torch.randn(2, 3, 8, device=DEVICE)[..., ::2]
    with pytest.raises(ValueError, match="contiguous or channels-last"):
        pointwise_triton(x, torch.tensor([2], device=DEVICE), 0.1)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_bias_pass_equals_torchs_broadcast_add(dtype) -> None:
    """What `passes.layout.with_bias` runs on CUDA (no `valid`, no activation) against the in-place broadcast add it
    replaces, on a channels-last convolution output."""
    y = _tensor((2, 24, 70), dtype, True, seed=5)
    bias = (torch.randn(24, generator=torch.Generator().manual_seed(6)) * 3).to(y)
    s, h = pointwise_triton(y, None, 0.0, bias, activate=False)
    expected = y.clone()
    expected.transpose(1, 2).add_(bias)
    assert h is None and s.stride() == y.stride() and torch.equal(s, expected)
