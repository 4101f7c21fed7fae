"""Run 1-D convolutions as channels-last 2-D convolutions.

cuDNN's fast fp16/bf16 convolution kernels work on NHWC data. Given `[B, C, T]` (NCL) tensors, every Conv1d first
transposes its input to NHWC and its output back (a third of the v4 vocoder's eager GPU time on an H100, see
benchmarks/NOTES.md). Viewed as `[B, C, 1, T]` with channels-last strides, the data stays NHWC from one convolution
to the next: the pointwise ops in between keep their input's strides. Same arithmetic, other kernels.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

from ..kernels.decoder_pointwise import add_bias

logger = logging.getLogger(__name__)


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
        norm = _weight_norm(conv)
        weight = norm.compute_weight(conv) if norm is not None else conv.weight
        weight = _channels_last_weight(weight.detach()) if self.cached else None
        self.register_buffer("weight4", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return with_bias(self.without_bias(x), self.conv.bias)

    def without_bias(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution without its bias: [B, C, T] with channels-last strides (the next op keeps them)."""
        c = self.conv
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # [B, C, 1, T], NHWC in memory
        weight = self.weight4 if self.cached else _channels_last_weight(c.weight)
        if self.transposed:
            y = F.conv_transpose2d(x4, weight, None, (1, c.stride[0]), (0, c.padding[0]), (0, c.output_padding[0]),
                                   c.groups, (1, c.dilation[0]))
        else:
            y = F.conv2d(x4, weight, None, (1, c.stride[0]), (0, c.padding[0]), (1, c.dilation[0]), c.groups)
        return y.squeeze(2)


class PolyphaseConvTranspose1d(nn.Module):
    """A `ConvTranspose1d` whose output is `stride` times as long as its input (GPT-SoVITS's upsamplers) as one
    stride-1 channels-last conv2d with `stride * out_channels` channels, one block of channels per output phase.

    Output sample `s * stride + r` sums `x[s - n] * W[:, :, r + padding + n * stride]` over the taps that exist, so
    phase r is a correlation with taps `W[r + padding + n * stride]` at offsets -n (zero where no tap exists). Its
    NHWC output [B, 1, T, stride * C] already is the upsampled [B, T * stride, C]. With cuDNN's algorithms timed it is
    a little faster than cuDNN's transposed convolution (v2ProPlus's five upsamplings at 250 tokens, H200, run 31:
    0.26 vs 0.28 ms).
    """

    def __init__(self, conv: nn.ConvTranspose1d) -> None:
        super().__init__()
        if problem := polyphase_problem(conv):
            raise ValueError(f"PolyphaseConvTranspose1d: {problem}")
        self.conv = conv
        norm = _weight_norm(conv)
        weight = norm.compute_weight(conv) if norm is not None else conv.weight
        weight4, self.reach = _polyphase_weight(weight.detach(), conv.stride[0], conv.padding[0])
        self.register_buffer("weight4", weight4, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return with_bias(self.without_bias(x), self.conv.bias)

    def without_bias(self, x: torch.Tensor) -> torch.Tensor:
        """The upsampling without its bias: [B, C, T * stride] with channels-last strides."""
        batch, length, stride = x.size(0), x.size(-1), self.conv.stride[0]
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x4, self.weight4, None, 1, (0, self.reach))  # [B, stride * C, 1, T], NHWC: [B, T, stride, C]
        return y.permute(0, 2, 3, 1).reshape(batch, length * stride, -1).transpose(1, 2)


def polyphase_problem(conv: nn.Module) -> str | None:
    """Why `conv` cannot run as a `PolyphaseConvTranspose1d` (None when it can)."""
    if type(conv) is not nn.ConvTranspose1d or conv.padding_mode != "zeros":
        return f"{type(conv).__name__} is not a plain zero-padded ConvTranspose1d"
    if conv.groups != 1 or conv.dilation[0] != 1:
        return f"groups={conv.groups}, dilation={conv.dilation[0]}: only 1 and 1"
    if conv.kernel_size[0] - 2 * conv.padding[0] + conv.output_padding[0] != conv.stride[0]:
        return "its output is not exactly stride times its input"
    if conv._forward_hooks or len(conv._forward_pre_hooks) > (_weight_norm(conv) is not None):
        return "it has hooks other than one old-style weight_norm"
    return None


def with_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y [B, C, T] with channels-last strides, plus `bias` per channel (cuDNN's own bias over channels-last strides
    took 1.7 of 6.9 ms of the v4 vocoder on an H100), by `add_bias`: run eagerly on CUDA (captured as it is), one
    vectorized Triton pass, which torch's broadcast add is not (BigVGAN's 230 bias adds: 1.9 of 17 ms at 1000
    frames, run 49); traced by torch.compile, torch ops inductor fuses with their neighbours. Same values."""
    return y if bias is None else add_bias(y, bias)


def _polyphase_weight(weight: torch.Tensor, stride: int, padding: int) -> tuple[torch.Tensor, int]:
    """The [stride * C_out, C_in, 1, 2 * reach + 1] channels-last weight of `PolyphaseConvTranspose1d`, and reach."""
    c_in, c_out, kernel = weight.shape
    offsets = [((r, j), (j - r - padding) // stride) for r in range(stride) for j in range(kernel)
               if (j - r - padding) % stride == 0]
    reach = max(abs(n) for _, n in offsets)
    phases = weight.new_zeros(stride, c_out, c_in, 2 * reach + 1)
    for (r, j), n in offsets:
        phases[r, :, :, reach - n] = weight[:, :, j].T
    return _channels_last_weight(phases.reshape(stride * c_out, c_in, 2 * reach + 1)), reach


def _channels_last_weight(weight: torch.Tensor) -> torch.Tensor:
    return weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def channels_last_convs_(model: nn.Module) -> int:
    """Wrap every plain zero-padded `Conv1d`/`ConvTranspose1d` of `model` in place; returns how many.

    Left alone (the wrapper would bypass what they add): subclasses with their own forward, convolutions with
    forward hooks other than one old-style `weight_norm`, and other padding modes.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _plain_conv(child):
                setattr(parent, name, ChannelsLastConv1d(child))
                swapped += 1
            elif isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):
                logger.debug("channels-last convolutions: left %s (%s) alone", name, type(child).__name__)
    logger.debug("channels-last convolutions: %d swapped", swapped)
    return swapped


def _plain_conv(module: nn.Module) -> bool:
    cls = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
    pre_hooks = list(module._forward_pre_hooks.values())
    hooked = module._forward_hooks or (pre_hooks and (len(pre_hooks) > 1 or _weight_norm(module) is None))
    return cls in (nn.Conv1d, nn.ConvTranspose1d) and module.padding_mode == "zeros" and not hooked


def _weight_norm(module: nn.Module) -> WeightNorm | None:
    """The old-style `weight_norm` hook of `module` that computes `weight`, if it has one."""
    return next((h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm) and h.name == "weight"),
                None)
