"""The pointwise work between the convolutions of a HiFi-GAN decoder run on a padded latent (`gpt_sovits.decoder`),
one pass per convolution output: the sum `y + bias + residual + total`, divided by `divisor`, then a leaky ReLU whose
output is zero past a valid length along the last axis.

`y` is a convolution's output without its bias, `residual` the residual block's input, `total` the running sum of a
stage's residual blocks, `divisor` their count. The zeros past the valid length are what make the padded decoder
exact: every convolution's input goes through this, so each real position reads zeros past the end, as the
unpadded call's zero padding gives. In torch ops this chain is four to six launches, the bias add among them a
non-vectorized broadcast; on CUDA it is one Triton pass (`decoder_pointwise_triton`). Both round as torch on CUDA
does: each sum to the tensors' dtype in turn; the division as a float32 product with the float32 reciprocal (torch's
CUDA kernel for a tensor divided by a Python number; its CPU kernel divides, at most one float32 ulp away), rounded;
then the leaky ReLU's product in float32, rounded; +0 past the end.
A plain function, not a traced op: the decoder is captured by CUDA graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Sums = tuple[torch.Tensor | None, torch.Tensor | None]


def pointwise_reference(y: torch.Tensor, valid: torch.Tensor | None, slope: float, bias: torch.Tensor | None = None,
                        residual: torch.Tensor | None = None, total: torch.Tensor | None = None, divisor: int = 1,
                        keep_sum: bool = True, activate: bool = True) -> Sums:
    """(s, h) for y (B, C, T): s = (y + bias[:, None] + residual + total) * (1 / divisor), rounded step by step; h =
    leaky_relu(s, slope) at t < valid, 0 beyond; `valid` a one-element integer tensor (None without `activate`).
    Either is None when not asked for (`keep_sum`, `activate`)."""
    s = y
    for term in (None if bias is None else bias[:, None], residual, total):
        if term is not None:
            s = s + term
    if divisor != 1:
        s = s * (1 / divisor)  # what `s / divisor` computes on CUDA
    h = None
    if activate:
        inside = torch.arange(s.size(-1), device=s.device) < valid.reshape(())
        h = torch.where(inside, F.leaky_relu(s, slope), 0.0)
    return (s if keep_sum else None), h


def pointwise(y: torch.Tensor, valid: torch.Tensor | None, slope: float, bias: torch.Tensor | None = None,
              residual: torch.Tensor | None = None, total: torch.Tensor | None = None, divisor: int = 1,
              keep_sum: bool = True, activate: bool = True) -> Sums:
    """`pointwise_reference`'s function: one Triton launch on CUDA when y, residual and total are dense (B, C, T)
    tensors of one layout, contiguous or channels-last (strides (T*C, 1, C)); torch ops otherwise, and while
    torch.compile traces (inductor fuses them with their neighbours)."""
    args = (y, valid, slope, bias, residual, total, divisor, keep_sum, activate)
    same = all(t is None or (t.shape == y.shape and t.stride() == y.stride()) for t in (residual, total))
    if y.is_cuda and not torch.compiler.is_compiling() and y.dim() == 3 and same and time_stride(y) is not None:
        from .decoder_pointwise_triton import pointwise_triton

        return pointwise_triton(*args)
    return pointwise_reference(*args)


def add_bias(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y + bias[:, None] as a new tensor with y's strides: `pointwise` without the activation (one vectorized pass
    on CUDA; torch's own add broadcasts the bias without vectorizing: 8.5 us per BigVGAN add on an H200)."""
    return pointwise(y, None, 0.0, bias, activate=False)[0]


def masked_leaky_relu(x: torch.Tensor, valid: torch.Tensor, slope: float,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """leaky_relu(x + bias, slope) up to `valid`, zeros beyond: `pointwise` without a sum to keep."""
    return pointwise(x, valid, slope, bias, keep_sum=False)[1]


def time_stride(x: torch.Tensor) -> int | None:
    """Distance in elements between consecutive time steps of a dense (B, C, T) tensor: 1 (contiguous) or C
    (channels-last); None for any other layout."""
    channels, length = x.shape[1], x.shape[2]
    if x.is_contiguous():
        return 1
    if x.stride() == (channels * length, 1, channels):
        return channels
    return None
