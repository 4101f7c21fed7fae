"""Anti-aliased SnakeBeta (upsample x2 -> SnakeBeta -> low-pass downsample x2) as shifted-slice arithmetic.

The usual form runs two depthwise convolutions (a transposed one upsamples) and a replicate pad around each; on
an H100 those are most of BigVGAN's eager time (docs/lab-log.md). Written polyphase, the same function is sums
of shifted slices plus pointwise math, which inductor fuses into a couple of kernels, and the 2x-upsampled signal
is never stored: its even and odd samples feed the downsampler directly. Only the order of additions differs.
"""

from __future__ import annotations

import torch

SNAKE_EPS = 1e-9  # 1 / (beta + eps), as in the published SnakeBeta
BAND_FRAMES = 64  # phase frames per program of the CUDA kernel, so its downsampler band is 64 x 64


def halo(taps: int) -> tuple[int, int]:
    """Phase frames the downsampler reads left and right of its output frame (3, 3 for BigVGAN's 12 taps)."""
    offsets = [(k - (taps // 2 - 1)) // 2 for k in range(taps)]
    return -min(offsets), max(offsets)


def downsampler_band(down: torch.Tensor) -> torch.Tensor:
    """The downsampler as the CUDA kernel's float16 matrices `[4, BAND_FRAMES, BAND_FRAMES]`: hi and lo parts.

    `[ph, j, i]` (and `[2 + ph, j, i]`) is the tap through which phase `ph` at tile frame `i` feeds output `j`;
    hi + lo equals the tap to ~2^-22. Built once per module (see `passes.activations`), not per call.
    """
    taps, (left, _) = down.numel(), halo(down.numel())
    frames = torch.arange(BAND_FRAMES, device=down.device)
    k = 2 * (frames[None, :] - frames[:, None] - left) + taps // 2 - 1  # [j, i]
    phases = []
    for tap in (k, k + 1):
        valid = (tap >= 0) & (tap < taps)
        phases.append(torch.where(valid, down.double()[tap.clamp(0, taps - 1)], 0.0))
    hi = [m.half() for m in phases]
    return torch.stack(hi + [(m - h.double()).half() for m, h in zip(phases, hi)])


def anti_aliased_snake_beta(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                            up_filter: tuple[float, ...], down_filter: tuple[float, ...],
                            time_dim: int = 2) -> torch.Tensor:
    """`x: [B, C, T]` -> `[B, C, T]`, or `[B, T, C]` -> `[B, T, C]` with `time_dim=1`; `alpha`, `beta`: `[C]`
    (exponentiated already if stored as logs).

    Upsampler: replicate-pad by K/2 - 1, stride-2 transposed conv with `up_filter` (times 2), trimmed to 2T.
    Downsampler: replicate-pad by (K/2 - 1, K/2), stride-2 conv with `down_filter`. K (even) taps each.
    """
    taps = len(up_filter)
    if taps % 2 or taps < 2 or len(down_filter) != taps:
        raise ValueError(f"filters need the same even number of taps, got {len(up_filter)} and {len(down_filter)}")
    if time_dim not in (1, 2) or x.ndim != 3:
        raise ValueError(f"x must be [B, C, T] or [B, T, C] with time_dim 2 or 1, got {tuple(x.shape)}, {time_dim}")
    pad, frames = taps // 2 - 1, x.shape[time_dim]
    per_channel = (1, -1, 1) if time_dim == 2 else (1, 1, -1)
    a, b = alpha.view(per_channel), beta.view(per_channel)
    xp = _extend(x, x, x, pad, pad, time_dim)  # replicate-padded: T + 2 pad frames
    # Upsampled u[2p + ph] = 2 sum over taps k of parity (ph + trim - k) of f[k] xp[p + (ph + trim - k) / 2],
    # where trim = 3 pad is what the usual form cuts off the transposed convolution's output.
    phases = []
    for ph in (0, 1):
        u = sum(2 * up_filter[k] * xp.narrow(time_dim, (ph + 3 * pad - k) // 2, frames)
                for k in range(taps) if (ph + 3 * pad - k) % 2 == 0)
        phases.append(u + torch.sin(u * a).pow(2) / (b + SNAKE_EPS))
    # The downsampler reads s[clamp(2q + k - pad, 0, 2T - 1)]: tap k reads phase (k - pad) % 2 at offset
    # (k - pad) // 2; reads before the start clamp to s[0] (even phase), after the end to s[2T-1] (odd phase).
    offsets = [(k - pad) // 2 for k in range(taps)]
    left, right = halo(taps)
    padded = [_extend(p, phases[0], phases[1], left, right, time_dim) for p in phases]
    return sum(down_filter[k] * padded[(k - pad) % 2].narrow(time_dim, left + o, frames)
               for k, o in enumerate(offsets))


def _extend(x: torch.Tensor, first: torch.Tensor, last: torch.Tensor, left: int, right: int,
            dim: int) -> torch.Tensor:
    """`x` with `left` copies of `first`'s first frame before it and `right` of `last`'s last frame after it."""
    edge = [*x.shape]
    edge[dim] = left
    before = first.narrow(dim, 0, 1).expand(edge)
    edge[dim] = right
    after = last.narrow(dim, last.shape[dim] - 1, 1).expand(edge)
    return torch.cat([before, x, after], dim)


@torch.library.custom_op("tts_compile::anti_aliased_snake", mutates_args=())
def anti_aliased_snake(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, up: torch.Tensor,
                       down: torch.Tensor, band: torch.Tensor, bias: torch.Tensor | None,
                       log_scale: bool) -> torch.Tensor:
    """The fused activation of `x + bias[:, None]` as one op: a Triton kernel on CUDA, `anti_aliased_snake_beta`
    elsewhere.

    `up`/`down`: the float32 filter taps `[K]`; `band`: `downsampler_band(down)` (read by the kernel for float16
    input); `bias`: None, or the preceding convolution's bias `[C]`, added and rounded to `x`'s dtype as torch's add
    would, so the convolution can skip its own bias pass; `log_scale`: `alpha`/`beta` hold logarithms. The output has
    `x`'s shape, dtype and memory layout.
    """
    out = torch.empty_like(x)
    out.copy_(anti_aliased_snake_polyphase(x, alpha, beta, up.to(x.dtype), down.to(x.dtype), bias, log_scale))
    return out


def anti_aliased_snake_polyphase(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, up, down,
                                 bias: torch.Tensor | None, log_scale: bool) -> torch.Tensor:
    """`anti_aliased_snake`'s function in torch ops: the op's CPU body, and what `fused_activation="inductor"` traces
    into the compiled graph so that inductor writes the fused kernel. `up`/`down`: taps as tensors or floats.

    A channels-last `x` (channel stride 1) is computed as the `[B, T, C]` tensor it is in memory, so each shifted
    slice is a run of whole contiguous rows and the result keeps the layout the next convolution reads."""
    if bias is not None:
        x = x + bias[:, None].to(x.dtype)
    if log_scale:
        alpha, beta = alpha.exp(), beta.exp()
    if x.stride(1) == 1 and x.stride(2) != 1:
        return anti_aliased_snake_beta(x.transpose(1, 2), alpha, beta, up, down, time_dim=1).transpose(1, 2)
    return anti_aliased_snake_beta(x, alpha, beta, up, down)


@anti_aliased_snake.register_kernel("cuda")
def _anti_aliased_snake_cuda(x, alpha, beta, up, down, band, bias, log_scale):
    from .antialias_triton import anti_aliased_snake_triton

    return anti_aliased_snake_triton(x, alpha.contiguous(), beta.contiguous(), up.contiguous(), down.contiguous(),
                                     band.contiguous(), log_scale, None if bias is None else bias.contiguous())


@anti_aliased_snake.register_fake
def _anti_aliased_snake_fake(x, alpha, beta, up, down, band, bias, log_scale):
    return torch.empty_like(x)
