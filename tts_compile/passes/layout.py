"""Run 1-D convolutions as channels-last 2-D convolutions.

cuDNN's fast fp16/bf16 convolution kernels work on NHWC data. Given `[B, C, T]` (NCL) tensors, every Conv1d first
transposes its input to NHWC and its output back (a third of the v4 vocoder's eager GPU time on an H100, see
docs/lab-log.md). Viewed as `[B, C, 1, T]` with channels-last strides, the data stays NHWC from one convolution
to the next: the pointwise ops in between keep their input's strides. Same arithmetic, other kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

from ..kernels.decoder_pointwise import add_bias
from . import swap_


class ChannelsLastConv1d(nn.Module):
    """Wraps a `Conv1d`/`ConvTranspose1d` (sharing its parameters) and runs it as a channels-last conv2d.

    The channels-last copy of a plain weight is made once (the optimizer rebuilds when weights change in place), and
    so is that of an old-style `weight_norm` weight, computed by the hook's own function from `weight_g`/`weight_v`
    (upstream's VITS decoder keeps these hooks at inference); a parametrized weight is recomputed by its
    parametrization on every call, so it is converted every call. The bias is added by `with_bias`.
    """

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported (zeros only)")
        self.conv = conv
        self.transposed = isinstance(conv, nn.ConvTranspose1d)
        self.cached = not parametrize.is_parametrized(conv)
        norm = weight_norm_hook(conv)
        weight = norm.compute_weight(conv) if norm is not None else conv.weight
        weight = channels_last_weight(weight.detach()) if self.cached else None
        self.register_buffer("weight4", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return with_bias(self.without_bias(x), self.conv.bias)

    def without_bias(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution without its bias: [B, C, T] with channels-last strides (the next op keeps them)."""
        c = self.conv
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # [B, C, 1, T], NHWC in memory
        weight = self.weight4 if self.cached else channels_last_weight(c.weight)
        if self.transposed:
            y = F.conv_transpose2d(x4, weight, None, (1, c.stride[0]), (0, c.padding[0]), (0, c.output_padding[0]),
                                   c.groups, (1, c.dilation[0]))
        else:
            y = F.conv2d(x4, weight, None, (1, c.stride[0]), (0, c.padding[0]), (1, c.dilation[0]), c.groups)
        return y.squeeze(2)

def with_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y [B, C, T] with channels-last strides, plus `bias` per channel (cuDNN's own bias over channels-last strides
    took 1.7 of 6.9 ms of the v4 vocoder on an H100), by `add_bias`: run eagerly on CUDA (captured as it is), one
    vectorized Triton pass, which torch's broadcast add is not (BigVGAN's 230 bias adds: 1.9 of 17 ms at 1000
    frames on an H200); traced by torch.compile, torch ops inductor fuses with their neighbours. Same values."""
    return y if bias is None else add_bias(y, bias)

def channels_last_weight(weight: torch.Tensor) -> torch.Tensor:
    return weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)

def channels_last_convs_(model: nn.Module) -> int:
    """Wrap every plain zero-padded `Conv1d`/`ConvTranspose1d` of `model` in place; returns how many.

    Left alone (the wrapper would bypass what they add): subclasses with their own forward, convolutions with
    forward hooks other than one old-style `weight_norm`, and other padding modes.
    """
    return swap_(model, _channels_last, "channels-last convolutions")

def _channels_last(module: nn.Module) -> nn.Module | str | None:
    if _plain_conv(module):
        return ChannelsLastConv1d(module)
    return "hooks, a padding mode or a forward of its own" if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) \
        else None

def _plain_conv(module: nn.Module) -> bool:
    cls = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
    pre_hooks = list(module._forward_pre_hooks.values())
    hooked = module._forward_hooks or (pre_hooks and (len(pre_hooks) > 1 or weight_norm_hook(module) is None))
    return cls in (nn.Conv1d, nn.ConvTranspose1d) and module.padding_mode == "zeros" and not hooked

def weight_norm_hook(module: nn.Module) -> WeightNorm | None:
    """The old-style `weight_norm` hook of `module` that computes `weight`, if it has one."""
    return next((h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm) and h.name == "weight"),
                None)
