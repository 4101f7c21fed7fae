"""The polyphase anti-aliased SnakeBeta equals the two-convolution formulation it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tts_compile.kernels.antialias import BAND_FRAMES, anti_aliased_snake_beta, downsampler_band, halo
from tts_compile.models.bigvgan import AntiAliasedSnakeBeta

FLOAT64_TOLERANCE = 1e-12  # same function, different summation order: float64 rounding only


def conv_reference(x, alpha, beta, up, down):
    """The usual form: replicate pad, depthwise transposed conv x2, SnakeBeta, replicate pad, strided conv."""
    taps, channels, pad = len(up), x.shape[1], len(up) // 2 - 1
    up_w = torch.tensor(up, dtype=x.dtype).view(1, 1, taps).expand(channels, 1, taps)
    u = 2 * F.conv_transpose1d(F.pad(x, (pad, pad), mode="replicate"), up_w, stride=2, groups=channels)
    u = u[..., 3 * pad : 3 * pad + 2 * x.shape[-1]]
    s = u + torch.sin(u * alpha[None, :, None]).pow(2) / (beta[None, :, None] + 1e-9)
    down_w = torch.tensor(down, dtype=x.dtype).view(1, 1, taps).expand(channels, 1, taps)
    return F.conv1d(F.pad(s, (pad, pad + 1), mode="replicate"), down_w, stride=2, groups=channels)


@given(taps=st.sampled_from([2, 4, 6, 8, 10, 12, 16]), frames=st.integers(1, 80), channels=st.integers(1, 5),
       batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_matches_convolution_form(taps, frames, channels, batch, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, generator=g, dtype=torch.float64) * 3
    alpha = torch.rand(channels, generator=g, dtype=torch.float64) * 2 + 0.05
    beta = torch.rand(channels, generator=g, dtype=torch.float64) * 2 + 0.05
    up = tuple(torch.randn(taps, generator=g).tolist())
    down = tuple(torch.randn(taps, generator=g).tolist())
    expected = conv_reference(x, alpha, beta, up, down)
    got = anti_aliased_snake_beta(x, alpha, beta, up, down)
    assert got.shape == x.shape
    assert (got - expected).abs().max() <= FLOAT64_TOLERANCE * max(1.0, float(expected.abs().max()))


@given(frames=st.integers(1, 40), channels=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_time_major_layout_computes_the_same(frames, channels, seed) -> None:
    """`[B, T, C]` with `time_dim=1` (what a channels-last tensor is in memory) gives the `[B, C, T]` result,
    transposed, bit for bit; `anti_aliased_snake_polyphase` picks it for channels-last input and keeps the layout."""
    from tts_compile.kernels import anti_aliased_snake_polyphase

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, frames, generator=g, dtype=torch.float64)
    alpha, beta = torch.rand(2, channels, generator=g, dtype=torch.float64) + 0.1
    fir = tuple(torch.randn(12, generator=g).tolist())
    expected = anti_aliased_snake_beta(x, alpha, beta, fir, fir)
    assert torch.equal(anti_aliased_snake_beta(x.transpose(1, 2), alpha, beta, fir, fir, time_dim=1),
                       expected.transpose(1, 2))
    channels_last = x.transpose(1, 2).contiguous().transpose(1, 2)
    got = anti_aliased_snake_polyphase(channels_last, alpha, beta, fir, fir, None, False)
    assert torch.equal(got, expected) and (channels > 1 and frames > 1) <= (got.stride(1) == 1)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_matches_the_module_in_lower_precision(dtype, tolerance) -> None:
    act = AntiAliasedSnakeBeta(6)
    with torch.no_grad():
        act.log_alpha.normal_(0, 0.5)
        act.log_beta.normal_(0, 0.5)
    act = act.to(dtype)
    x = torch.randn(2, 6, 50, dtype=dtype)
    fir = tuple(act.fir.double().tolist())
    got = anti_aliased_snake_beta(x, act.log_alpha.exp(), act.log_beta.exp(), fir, fir)
    expected = act(x)
    assert ((got.double() - expected.double()).abs().max() / expected.double().abs().max()) <= tolerance


def test_rejects_odd_or_mismatched_filters() -> None:
    x, a = torch.randn(1, 1, 5), torch.ones(1)
    with pytest.raises(ValueError, match="even number of taps"):
        anti_aliased_snake_beta(x, a, a, (0.5, 0.2, 0.3), (0.5, 0.2, 0.3))
    with pytest.raises(ValueError, match="even number of taps"):
        anti_aliased_snake_beta(x, a, a, (0.5, 0.5), (0.25, 0.25, 0.25, 0.25))
    with pytest.raises(ValueError, match="time_dim 2 or 1"):
        anti_aliased_snake_beta(x, a, a, (0.5, 0.5), (0.5, 0.5), time_dim=0)


# ------------------------------------------------------------------------------------------- the op and the kernel
def _inputs(batch, channels, frames, taps, channels_last, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, channels, frames, generator=g) * 2).to(dtype)
    if channels_last:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    params = [torch.randn(channels, generator=g) * 0.5 for _ in range(2)]
    filters = [torch.randn(taps, generator=g) for _ in range(2)]
    return x, params, filters


def test_op_passes_opcheck() -> None:
    from tts_compile.kernels import anti_aliased_snake

    for channels_last, bias in ((False, None), (True, None), (True, torch.randn(3))):
        x, (alpha, beta), (up, down) = _inputs(2, 3, 17, 12, channels_last)
        torch.library.opcheck(anti_aliased_snake, (x, alpha, beta, up, down, downsampler_band(down), bias, True))


def test_op_keeps_the_memory_layout() -> None:
    from tts_compile.kernels import anti_aliased_snake

    x, (alpha, beta), (up, down) = _inputs(2, 5, 9, 12, channels_last=True)
    assert anti_aliased_snake(x, alpha, beta, up, down, downsampler_band(down), None, True).stride() == x.stride()


@given(taps=st.sampled_from([2, 4, 6, 12, 16]), seed=st.integers(0, 2**16))
def test_band_products_are_the_strided_downsampler(taps, seed) -> None:
    """The kernel's band (hi + lo) applied to a tile's two phases equals the K-tap stride-2 low-pass on every
    output whose taps lie inside the tile."""
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(taps, generator=g, dtype=torch.float64)
    band = downsampler_band(down).double()
    phases = torch.randn(2, BAND_FRAMES, generator=g, dtype=torch.float64)  # [phase, tile frame]
    from_band = (band[:2] + band[2:]).matmul(phases[..., None]).sum(0)[:, 0]  # [output j]
    pad, (left, right) = taps // 2 - 1, halo(taps)
    outputs = BAND_FRAMES - left - right
    direct = [sum(down[k] * phases[(k - pad) % 2, j + (k - pad) // 2 + left] for k in range(taps))
              for j in range(outputs)]
    scale = float(down.abs().sum() * phases.abs().max())
    assert (from_band[:outputs] - torch.stack(direct)).abs().max() <= 2**-20 * scale
