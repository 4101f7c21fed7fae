"""`pointwise` as one Triton pass over dense (B, C, T) tensors of one layout, seen as a (rows, columns) matrix: (B*T, C)
channels-last, (B*C, T) contiguous, so the time index and the channel of an element come from its row or its column
(no per-element integer division). Which terms and outputs exist are compile-time flags: one specialization each."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .decoder_pointwise import Sums, time_stride

TILE = 4096  # elements per program
CONTIGUOUS_COLUMNS = 1024  # columns (time steps) per program in the contiguous layout
NUM_WARPS = 4


@triton.jit
def _rounded_add(s, term):
    """s + term in float32, rounded to s's dtype: torch's arithmetic on float16 / bfloat16 tensors."""
    return (s.to(tl.float32) + term.to(tl.float32)).to(s.dtype)


@triton.jit
def _pointwise_kernel(y_ptr, bias_ptr, residual_ptr, total_ptr, s_ptr, h_ptr, valid_ptr, rows, cols, length, channels,
                      slope, reciprocal, TIME_IN_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                      HAS_TOTAL: tl.constexpr, DIVIDE: tl.constexpr, KEEP_SUM: tl.constexpr, ACTIVATE: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (r < rows)[:, None] & (c < cols)[None, :]
    offsets = r.to(tl.int64)[:, None] * cols + c[None, :]
    s = tl.load(y_ptr + offsets, mask=inside, other=0.0)
    if HAS_BIAS:
        channel = c[None, :] if TIME_IN_ROWS else (r % channels)[:, None]
        s = _rounded_add(s, tl.load(bias_ptr + channel, mask=inside, other=0.0))
    if HAS_RESIDUAL:
        s = _rounded_add(s, tl.load(residual_ptr + offsets, mask=inside, other=0.0))
    if HAS_TOTAL:
        s = _rounded_add(s, tl.load(total_ptr + offsets, mask=inside, other=0.0))
    if DIVIDE:
        s = (s.to(tl.float32) * reciprocal).to(s.dtype)  # torch's CUDA division by a number
    if KEEP_SUM:
        tl.store(s_ptr + offsets, s, mask=inside)
    if ACTIVATE:
        wide = s.to(tl.float32)
        h = tl.where(wide > 0, wide, wide * slope).to(s.dtype)
        t = (r % length)[:, None] if TIME_IN_ROWS else c[None, :]
        tl.store(h_ptr + offsets, tl.where(t < tl.load(valid_ptr), h, tl.zeros_like(h)), mask=inside)


def pointwise_triton(y: torch.Tensor, valid: torch.Tensor | None, slope: float, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, total: torch.Tensor | None = None, divisor: int = 1,
                     keep_sum: bool = True, activate: bool = True) -> Sums:
    """Outputs have y's strides; y, residual and total must be dense (B, C, T) tensors with y's strides."""
    stride = time_stride(y) if y.dim() == 3 else None
    if stride is None or any(t is not None and (t.shape != y.shape or t.stride() != y.stride())
                             for t in (residual, total)):
        raise ValueError(f"pointwise_triton: y of shape {tuple(y.shape)} and strides {y.stride()}: expected a "
                         "(B, C, T) tensor, contiguous or channels-last, and residual / total of its shape and strides")
    batch, channels, length = y.shape
    s = torch.empty_like(y) if keep_sum else None
    h = torch.empty_like(y) if activate else None
    if y.numel() == 0:
        return s, h
    channels_last = stride != 1 or channels == 1
    rows, cols = (batch * length, channels) if channels_last else (batch * channels, length)
    block_c = min(triton.next_power_of_2(cols), 256) if channels_last else CONTIGUOUS_COLUMNS
    grid = (triton.cdiv(rows, TILE // block_c), triton.cdiv(cols, block_c))
    _pointwise_kernel[grid](y, y if bias is None else bias, y if residual is None else residual,
                            y if total is None else total, y if s is None else s, y if h is None else h,
                            y if valid is None else valid, rows,
                            cols, length, channels, slope, 1 / divisor, TIME_IN_ROWS=channels_last,
                            HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
                            HAS_TOTAL=total is not None, DIVIDE=divisor != 1, KEEP_SUM=keep_sum,
                            ACTIVATE=activate, BLOCK_R=TILE // block_c, BLOCK_C=block_c, num_warps=NUM_WARPS)
    return s, h
