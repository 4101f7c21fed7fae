"""Triton kernel for the anti-aliased SnakeBeta: the whole activation in one pass, nothing 2x-upsampled in memory.

Each program owns `BLOCK_C` channels and `BLOCK_T` frames of the SnakeBeta'd upsampled signal, kept as its even and
odd phases `s0`, `s1` ([BLOCK_C, BLOCK_T] each). Every phase sample is computed once: K/2 taps of the upsampler
from shifted loads of `x` (cache hits), SnakeBeta in float32. The stride-2 downsampler then is two banded
(Toeplitz) matrix products, `out = s0 @ D0 + s1 @ D1`, on tensor cores; the band is K/2 + 1 wide, so each program
writes `BLOCK_T - HALO` outputs. (The previous version rebuilt the upsampled samples per downsampling tap: 6x the
arithmetic and 0.6x the speed of NVIDIA's kernel, benchmarks/NOTES.md.)

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

SNAKE_EPS = tl.constexpr(1e-9)  # 1 / (beta + eps), as in the published SnakeBeta


@triton.jit
def _upsampled(x_row, stride_t, p, frames, up_ptr, PAD: tl.constexpr, TAPS: tl.constexpr, row_mask):
    """Both phases of the upsampled signal, u[2p] and u[2p + 1], for frame indices `p`: two [BLOCK_C, len(p)].

    Upsampler tap k feeds phase (3 PAD - k) % 2 from input frame p + (3 PAD - k) // 2 - PAD (reads clamped to
    [0, T-1]: replicate padding); the K/2 + 1 shifted loads are shared by both phases.
    """
    u0 = tl.zeros([x_row.shape[0], p.shape[0]], dtype=tl.float32)
    u1 = tl.zeros([x_row.shape[0], p.shape[0]], dtype=tl.float32)
    for shift in tl.static_range(-((PAD + 1) // 2), (TAPS - 1 - PAD) // 2 + 1):
        idx = tl.minimum(tl.maximum(p + shift, 0), frames - 1)
        value = tl.load(x_row + idx[None, :] * stride_t, mask=row_mask, other=0.0).to(tl.float32)
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
    s = tl.sin(u * alpha)
    return u + s * s * inv_beta


@triton.jit
def _anti_aliased_snake_kernel(x_ptr, out_ptr, alpha_ptr, beta_ptr, up_ptr, down_ptr, channels, frames,
                               sx_b, sx_c, sx_t, so_b, so_c, so_t,
                               TAPS: tl.constexpr, LOG_SCALE: tl.constexpr, BLOCK_C: tl.constexpr,
                               BLOCK_T: tl.constexpr, HALO_LEFT: tl.constexpr, HALO: tl.constexpr):
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
    edge = tl.zeros([1], dtype=tl.int32)
    first, _ = _upsampled(x_row, sx_t, edge, frames, up_ptr, PAD, TAPS, row_mask)
    _, last = _upsampled(x_row, sx_t, edge + frames - 1, frames, up_ptr, PAD, TAPS, row_mask)
    first, last = _snake(first, alpha, inv_beta), _snake(last, alpha, inv_beta)
    u0, u1 = _upsampled(x_row, sx_t, p, frames, up_ptr, PAD, TAPS, row_mask)
    before, after = (p < 0)[None, :], (p >= frames)[None, :]
    s0 = tl.where(before, first, tl.where(after, last, _snake(u0, alpha, inv_beta)))
    s1 = tl.where(before, first, tl.where(after, last, _snake(u1, alpha, inv_beta)))
    # Downsampler tap k reads phase (k - PAD) % 2 at frame offset (k - PAD) // 2 from the output frame: in tile
    # coordinates row i (phase frame) feeds column j (output) through tap k = 2 (i - j - HALO_LEFT) + PAD + phase.
    k0 = 2 * (tl.arange(0, BLOCK_T)[:, None] - tl.arange(0, BLOCK_T)[None, :] - HALO_LEFT) + PAD
    d0 = tl.load(down_ptr + k0, mask=(k0 >= 0) & (k0 < TAPS), other=0.0)
    d1 = tl.load(down_ptr + k0 + 1, mask=(k0 + 1 >= 0) & (k0 + 1 < TAPS), other=0.0)
    acc = tl.dot(s0, d0, input_precision="tf32x3")  # three TF32 products: float32 accuracy on tensor cores
    acc = tl.dot(s1, d1, acc, input_precision="tf32x3")
    j = tl.arange(0, BLOCK_T)
    q = q0 + j
    out = out_ptr + tl.program_id(2).to(tl.int64) * so_b + c[:, None].to(tl.int64) * so_c + q[None, :] * so_t
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_mask & ((j < BLOCK_T - HALO) & (q < frames))[None, :])


NUM_WARPS = 4
BLOCK_T = 64  # phase frames per program; it writes BLOCK_T - HALO outputs (58 for 12 taps)


def halo(taps: int) -> tuple[int, int]:
    """Phase frames the downsampler reads left and right of its output frame (3, 3 for BigVGAN's 12 taps)."""
    offsets = [(k - (taps // 2 - 1)) // 2 for k in range(taps)]
    return -min(offsets), max(offsets)


def tile(channels: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_T): 16 or 32 channels (tl.dot needs at least 16 rows) by 64 frames."""
    return min(32, max(16, triton.next_power_of_2(channels))), BLOCK_T


def anti_aliased_snake_triton(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, up: torch.Tensor,
                              down: torch.Tensor, log_scale: bool) -> torch.Tensor:
    """Launch the kernel: `x [B, C, T]` (any strides) -> a new tensor with `x`'s shape, dtype and memory layout."""
    batch, channels, frames = x.shape
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    left, right = halo(up.numel())
    block_c, block_t = tile(channels)
    grid = (triton.cdiv(frames, block_t - left - right), triton.cdiv(channels, block_c), batch)
    _anti_aliased_snake_kernel[grid](
        x, out, alpha, beta, up, down, channels, frames, *x.stride(), *out.stride(),
        TAPS=up.numel(), LOG_SCALE=log_scale, BLOCK_C=block_c, BLOCK_T=block_t, HALO_LEFT=left, HALO=left + right,
        num_warps=NUM_WARPS)
    return out
