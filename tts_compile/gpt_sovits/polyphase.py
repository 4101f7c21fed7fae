"""`PolyphaseConvTranspose1d`: GPT-SoVITS's decoder upsamplings as stride-1 channels-last convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..passes.layout import channels_last_weight, weight_norm_hook, with_bias


class PolyphaseConvTranspose1d(nn.Module):
    """A `ConvTranspose1d` whose output is `stride` times as long as its input (GPT-SoVITS's upsamplers) as one
    stride-1 channels-last conv2d with `stride * out_channels` channels, one block of channels per output phase.

    Output sample `s * stride + r` sums `x[s - n] * W[:, :, r + padding + n * stride]` over the taps that exist, so
    phase r is a correlation with taps `W[r + padding + n * stride]` at offsets -n (zero where no tap exists). Its
    NHWC output [B, 1, T, stride * C] already is the upsampled [B, T * stride, C]. With cuDNN's algorithms timed it is
    a little faster than cuDNN's transposed convolution (v2ProPlus's five upsamplings at 250 tokens, H200:
    0.26 vs 0.28 ms).
    """

    def __init__(self, conv: nn.ConvTranspose1d) -> None:
        super().__init__()
        if problem := polyphase_problem(conv):
            raise ValueError(f"PolyphaseConvTranspose1d: {problem}")
        self.conv = conv
        norm = weight_norm_hook(conv)
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
    if conv._forward_hooks or len(conv._forward_pre_hooks) > (weight_norm_hook(conv) is not None):
        return "it has hooks other than one old-style weight_norm"
    return None

def _polyphase_weight(weight: torch.Tensor, stride: int, padding: int) -> tuple[torch.Tensor, int]:
    """The [stride * C_out, C_in, 1, 2 * reach + 1] channels-last weight of `PolyphaseConvTranspose1d`, and reach."""
    c_in, c_out, kernel = weight.shape
    offsets = [((r, j), (j - r - padding) // stride) for r in range(stride) for j in range(kernel)
               if (j - r - padding) % stride == 0]
    reach = max(abs(n) for _, n in offsets)
    phases = weight.new_zeros(stride, c_out, c_in, 2 * reach + 1)
    for (r, j), n in offsets:
        phases[r, :, :, reach - n] = weight[:, :, j].T
    return channels_last_weight(phases.reshape(stride * c_out, c_in, 2 * reach + 1)), reach
