"""Triton kernel for the anti-aliased SnakeBeta: the whole activation in one pass, nothing 2x-upsampled in memory.

Each program owns `BLOCK_C` channels and `BLOCK_T` frames of the SnakeBeta'd upsampled signal, kept as its even and
odd phases `s0`, `s1` ([BLOCK_C, BLOCK_T] each). Every phase sample is computed once: K/2 taps of the upsampler
from shifted loads of `x` (cache hits), SnakeBeta in float32 with a polynomial sine. The stride-2 downsampler then
is two banded (Toeplitz) matrix products on tensor cores, `out^T = D0^T s0^T + D1^T s1^T` (time as the rows, so
Hopper's warpgroup MMA applies); the band is K/2 + 1 wide, so each program writes `BLOCK_T - HALO` outputs.
Float16 input multiplies float16 hi/lo parts (three products, the band prebuilt by `downsampler_band`); float32
and bfloat16 input, whose SnakeBeta may leave float16's range, use `tf32x3` on a band gathered from the taps.
Both keep float32 accuracy; the output is rounded once. A sweep on an H200 (docs/lab-log.md) measured this form
2.6x faster than gathering the band in float32 with libdevice's sine: fewer registers, more programs per SM.

Replicate padding clamps the upsampled index to [0, 2T - 1]: before the start every phase reads s[0] (even), after
the end s[2T - 1] (odd). Hard-coded assumptions (checked by `tts_compile.passes.activations` before a module is
swapped): 2x up- and downsampling, the same even number of taps K for both filters, BigVGAN's padding offsets
(K/2 - 1 on both sides of the input, (K/2 - 1, K/2) around the upsampled signal), `x` of shape [B, C, T] with any
strides, `alpha`/`beta` of shape [C].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .antialias import BAND_FRAMES, halo

SNAKE_EPS = tl.constexpr(1e-9)  # 1 / (beta + eps), as in the published SnakeBeta
INV_PI = tl.constexpr(0.3183098861837907)
PI_HI = tl.constexpr(3.140625)  # 8 significant bits: k * PI_HI is exact for |k| < 2^16
PI_LO = tl.constexpr(9.676535897932795e-4)  # pi - PI_HI


@triton.jit
def _upsampled(x_row, stride_t, p, frames, up_ptr, PAD: tl.constexpr, TAPS: tl.constexpr, row_mask, bias,
               HAS_BIAS: tl.constexpr):
    """Both phases of the upsampled signal, u[2p] and u[2p + 1], for frame indices `p`: two [BLOCK_C, len(p)].

    Upsampler tap k feeds phase (3 PAD - k) % 2 from input frame p + (3 PAD - k) // 2 - PAD (reads clamped to
    [0, T-1]: replicate padding); the K/2 + 1 shifted loads are shared by both phases. With HAS_BIAS each input
    value is `x + bias` ([BLOCK_C, 1], float32) rounded to x's dtype, as torch's bias add stores it.
    """
    u0 = tl.zeros([x_row.shape[0], p.shape[0]], dtype=tl.float32)
    u1 = tl.zeros([x_row.shape[0], p.shape[0]], dtype=tl.float32)
    for shift in tl.static_range(-((PAD + 1) // 2), (TAPS - 1 - PAD) // 2 + 1):
        idx = tl.minimum(tl.maximum(p + shift, 0), frames - 1)
        value = tl.load(x_row + idx[None, :] * stride_t, mask=row_mask, other=0.0)
        if HAS_BIAS:
            value = (value.to(tl.float32) + bias).to(value.dtype)
        value = value.to(tl.float32)
        u0 = _add_tap(u0, up_ptr, value, PAD - 2 * shift, TAPS)
        u1 = _add_tap(u1, up_ptr, value, PAD - 2 * shift + 1, TAPS)
    return u0, u1


@triton.jit
def _add_tap(u, up_ptr, value, K: tl.constexpr, TAPS: tl.constexpr):
    """`u + 2 up[K] value` when tap K exists (0 <= K < TAPS), else `u`: decided at compile time."""
    if K >= 0 and K < TAPS:
        u += 2.0 * tl.load(up_ptr + K) * value
    return u


@triton.jit
def _snake(u, alpha, inv_beta):
    """SnakeBeta. sin^2 has period pi: reduce alpha u to r in [-pi/2, pi/2] (Cody-Waite, two-part pi), then the odd
    Taylor polynomial to r^13 (truncation < 7e-10). Float32 arithmetic only: ~a third of libdevice's registers."""
    v = u * alpha
    k = tl.floor(v * INV_PI + 0.5)
    r = v - k * PI_HI
    r = r - k * PI_LO
    r2 = r * r
    p = 1.6059043836821613e-10
    p = p * r2 - 2.505210838544172e-08
    p = p * r2 + 2.7557319223985893e-06
    p = p * r2 - 1.984126984126984e-04
    p = p * r2 + 8.333333333333333e-03
    p = p * r2 - 1.6666666666666666e-01
    s = r + r * r2 * p
    return u + s * s * inv_beta


@triton.jit
def _dot_hi_lo(d_hi, d_lo, s, acc):
    """`acc + (d_hi + d_lo) s^T` as three float16 tensor-core products (hi x hi, hi x lo, lo x hi): each exact in
    float32, so the result keeps ~22 bits; `s` must lie within float16's range."""
    t = tl.trans(s)
    hi = t.to(tl.float16)
    lo = (t - hi.to(tl.float32)).to(tl.float16)
    acc = tl.dot(d_hi, hi, acc)
    acc = tl.dot(d_hi, lo, acc)
    return tl.dot(d_lo, hi, acc)


@triton.jit
def _anti_aliased_snake_kernel(x_ptr, out_ptr, alpha_ptr, beta_ptr, up_ptr, down_ptr, band_ptr, bias_ptr, channels,
                               frames, sx_b, sx_c, sx_t, so_b, so_c, so_t,
                               TAPS: tl.constexpr, LOG_SCALE: tl.constexpr, BLOCK_C: tl.constexpr,
                               BLOCK_T: tl.constexpr, HALO_LEFT: tl.constexpr, HALO: tl.constexpr,
                               HALF: tl.constexpr, HAS_BIAS: tl.constexpr):
    PAD: tl.constexpr = TAPS // 2 - 1
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    q0 = tl.program_id(0) * (BLOCK_T - HALO)  # first output frame of this program
    p = q0 - HALO_LEFT + tl.arange(0, BLOCK_T)  # the phase frames it computes
    c_mask = c < channels
    alpha = tl.load(alpha_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    if LOG_SCALE:
        alpha, beta = tl.exp(alpha), tl.exp(beta)
    alpha, inv_beta = alpha[:, None], (1.0 / (beta + SNAKE_EPS))[:, None]
    x_row = x_ptr + tl.program_id(2).to(tl.int64) * sx_b + c[:, None].to(tl.int64) * sx_c  # [BLOCK_C, 1] rows
    row_mask = c_mask[:, None]
    bias = tl.zeros([BLOCK_C, 1], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    edge = tl.zeros([1], dtype=tl.int32)
    first, _ = _upsampled(x_row, sx_t, edge, frames, up_ptr, PAD, TAPS, row_mask, bias, HAS_BIAS)
    _, last = _upsampled(x_row, sx_t, edge + frames - 1, frames, up_ptr, PAD, TAPS, row_mask, bias, HAS_BIAS)
    first, last = _snake(first, alpha, inv_beta), _snake(last, alpha, inv_beta)
    u0, u1 = _upsampled(x_row, sx_t, p, frames, up_ptr, PAD, TAPS, row_mask, bias, HAS_BIAS)
    before, after = (p < 0)[None, :], (p >= frames)[None, :]
    s0 = tl.where(before, first, tl.where(after, last, _snake(u0, alpha, inv_beta)))
    s1 = tl.where(before, first, tl.where(after, last, _snake(u1, alpha, inv_beta)))
    # Downsampler tap k reads phase (k - PAD) % 2 at frame offset (k - PAD) // 2 from the output frame: in tile
    # coordinates phase frame i feeds output j through tap k = 2 (i - j - HALO_LEFT) + PAD + phase.
    j = tl.arange(0, BLOCK_T)[:, None]
    i = tl.arange(0, BLOCK_T)[None, :]
    acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    if HALF:
        band = band_ptr + j * BLOCK_T + i  # [hi0, hi1, lo0, lo1], each [j, i]
        acc = _dot_hi_lo(tl.load(band), tl.load(band + 2 * BLOCK_T * BLOCK_T), s0, acc)
        acc = _dot_hi_lo(tl.load(band + BLOCK_T * BLOCK_T), tl.load(band + 3 * BLOCK_T * BLOCK_T), s1, acc)
    else:
        k0 = 2 * (i - j - HALO_LEFT) + PAD
        d0 = tl.load(down_ptr + k0, mask=(k0 >= 0) & (k0 < TAPS), other=0.0)
        d1 = tl.load(down_ptr + k0 + 1, mask=(k0 + 1 >= 0) & (k0 + 1 < TAPS), other=0.0)
        acc = tl.dot(d0, tl.trans(s0), acc, input_precision="tf32x3")  # three TF32 products: float32 accuracy
        acc = tl.dot(d1, tl.trans(s1), acc, input_precision="tf32x3")
    q = q0 + j
    out = out_ptr + tl.program_id(2).to(tl.int64) * so_b + c[None, :].to(tl.int64) * so_c + q * so_t
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=c_mask[None, :] & (j < BLOCK_T - HALO) & (q < frames))


NUM_WARPS = 4
BLOCK_T = BAND_FRAMES  # phase frames per program; it writes BLOCK_T - HALO outputs (58 for 12 taps)


def tile(channels: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_T): 16 or 32 channels (tl.dot needs at least 16 rows) by 64 frames."""
    return min(32, max(16, triton.next_power_of_2(channels))), BLOCK_T


def anti_aliased_snake_triton(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, up: torch.Tensor,
                              down: torch.Tensor, band: torch.Tensor, log_scale: bool,
                              bias: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the kernel: `x [B, C, T]` (any strides) -> a new tensor with `x`'s shape, dtype and memory layout.

    `band` is `downsampler_band(down)`; it is read for float16 `x` only. `bias` (`[C]`, optional) is added to `x`.
    """
    if band.shape != (4, BLOCK_T, BLOCK_T) or band.dtype != torch.float16:
        raise ValueError(f"band must be downsampler_band(down): float16 [4, {BLOCK_T}, {BLOCK_T}], got "
                         f"{band.dtype} {list(band.shape)}")
    batch, channels, frames = x.shape
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    left, right = halo(up.numel())
    block_c, block_t = tile(channels)
    grid = (triton.cdiv(frames, block_t - left - right), triton.cdiv(channels, block_c), batch)
    _anti_aliased_snake_kernel[grid](
        x, out, alpha, beta, up, down, band, x if bias is None else bias, channels, frames, *x.stride(),
        *out.stride(), TAPS=up.numel(), LOG_SCALE=log_scale, BLOCK_C=block_c, BLOCK_T=block_t, HALO_LEFT=left,
        HALO=left + right, HALF=x.dtype == torch.float16, HAS_BIAS=bias is not None, num_warps=NUM_WARPS)
    return out
