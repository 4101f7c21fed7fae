"""Triton kernel for the anti-aliased SnakeBeta: the whole activation in one pass, nothing 2x-upsampled in memory.

Each program owns a `[BLOCK_C, BLOCK_T]` tile of the output. For each of the K downsampling taps it rebuilds the
upsampled sample it needs from K/2 loads of `x` (cache hits: neighbouring taps read the same few frames), applies
SnakeBeta in float32 and accumulates. Replicate padding clamps the upsampled index to [0, 2T - 1]; a clamp changes
the sample's phase only at the sequence ends, where the kernel uses two per-channel edge values instead.

Hard-coded assumptions (checked by `tts_compile.passes.activations` before a module is swapped): 2x up- and
downsampling, the same even number of taps K for both filters, replicate padding with BigVGAN's offsets
(K/2 - 1 on both sides of the input, (K/2 - 1, K/2) around the upsampled signal), `x` of shape [B, C, T] with any
strides, `alpha`/`beta` of shape [C].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SNAKE_EPS = tl.constexpr(1e-9)  # 1 / (beta + eps), as in the published SnakeBeta


@triton.jit
def _upsampled(x_row, stride_t, p, frames, up_ptr, PHASE: tl.constexpr, PAD: tl.constexpr, TAPS: tl.constexpr,
               row_mask):
    """Upsampled samples u[2p + PHASE] for frame indices `p` (already clamped to [0, T-1]): [BLOCK_C, len(p)]."""
    u = tl.zeros([x_row.shape[0], p.shape[0]], dtype=tl.float32)
    for k in tl.static_range(TAPS):
        if (PHASE + 3 * PAD - k) % 2 == 0:
            shift = (PHASE + 3 * PAD - k) // 2 - PAD
            idx = tl.minimum(tl.maximum(p + shift, 0), frames - 1)
            value = tl.load(x_row + idx[None, :] * stride_t, mask=row_mask, other=0.0).to(tl.float32)
            u += 2.0 * tl.load(up_ptr + k) * value
    return u


@triton.jit
def _snake(u, alpha, inv_beta):
    s = tl.sin(u * alpha)
    return u + s * s * inv_beta


@triton.jit
def _anti_aliased_snake_kernel(x_ptr, out_ptr, alpha_ptr, beta_ptr, up_ptr, down_ptr, channels, frames,
                               sx_b, sx_c, sx_t, so_b, so_c, so_t,
                               TAPS: tl.constexpr, LOG_SCALE: tl.constexpr, BLOCK_C: tl.constexpr,
                               BLOCK_T: tl.constexpr):
    PAD: tl.constexpr = TAPS // 2 - 1
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    q = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    c_mask, q_mask = c < channels, q < frames
    alpha = tl.load(alpha_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    if LOG_SCALE:
        alpha, beta = tl.exp(alpha), tl.exp(beta)
    alpha, inv_beta = alpha[:, None], (1.0 / (beta + SNAKE_EPS))[:, None]
    x_row = x_ptr + tl.program_id(2).to(tl.int64) * sx_b + c[:, None].to(tl.int64) * sx_c  # [BLOCK_C, 1] rows
    edge = tl.zeros([1], dtype=tl.int32)
    row_mask = c_mask[:, None]
    first = _snake(_upsampled(x_row, sx_t, edge, frames, up_ptr, 0, PAD, TAPS, row_mask), alpha, inv_beta)
    last = _snake(_upsampled(x_row, sx_t, edge + frames - 1, frames, up_ptr, 1, PAD, TAPS, row_mask), alpha,
                  inv_beta)
    acc = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
    for k in tl.static_range(TAPS):
        phase = (k - PAD) % 2  # a compile-time value: k comes from static_range
        r = q + (k - PAD - phase) // 2  # frame index of the upsampled sample 2r + phase this tap reads
        s = _snake(_upsampled(x_row, sx_t, tl.minimum(tl.maximum(r, 0), frames - 1), frames, up_ptr, phase, PAD,
                              TAPS, row_mask), alpha, inv_beta)
        if phase == 1:
            s = tl.where((r < 0)[None, :], first, s)  # index 2r + 1 < 0 clamps to s[0], an even sample
        else:
            s = tl.where((r >= frames)[None, :], last, s)  # index 2r >= 2T clamps to s[2T - 1], an odd sample
        acc += tl.load(down_ptr + k) * s
    out = out_ptr + tl.program_id(2).to(tl.int64) * so_b + c[:, None].to(tl.int64) * so_c + q[None, :] * so_t
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=c_mask[:, None] & q_mask[None, :])


NUM_WARPS = 4
TILE_ELEMENTS = 512  # outputs per program: 4 per thread. 2048 (64 x 32) spilled ~3.4 KB per thread on sm_90 and ran
# ~20x slower than this; tests/kernels/test_antialias_triton.py checks with ptxas that every tile below spills nothing


def tile(channels: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_T) for the kernel: along channels for channels-last data (coalesced loads), else along time."""
    if channels_last:
        block_c = min(32, triton.next_power_of_2(channels))
        return block_c, TILE_ELEMENTS // block_c
    return 4, TILE_ELEMENTS // 4


def anti_aliased_snake_triton(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, up: torch.Tensor,
                              down: torch.Tensor, log_scale: bool) -> torch.Tensor:
    """Launch the kernel: `x [B, C, T]` (any strides) -> a new tensor with `x`'s shape, dtype and memory layout."""
    batch, channels, frames = x.shape
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    block_c, block_t = tile(channels, channels_last=x.stride(1) == 1 and channels > 1)
    grid = (triton.cdiv(frames, block_t), triton.cdiv(channels, block_c), batch)
    _anti_aliased_snake_kernel[grid](
        x, out, alpha, beta, up, down, channels, frames, *x.stride(), *out.stride(),
        TAPS=up.numel(), LOG_SCALE=log_scale, BLOCK_C=block_c, BLOCK_T=block_t, num_warps=NUM_WARPS)
    return out
