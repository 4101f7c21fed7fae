"""Run BigVGAN's residual AMP blocks with their bias adds folded into neighbouring passes.

Per dilation an AMP block computes `x + conv2(act2(conv1(act1(x))))`. With the activation and layout passes applied,
each convolution's bias is one more pass over its output (230 of them in BigVGAN-24k, 1.9 of 17 ms at 1000 frames
on an H200, docs/lab-log.md). Here conv1's bias is added by act2's kernel as it loads its input, and
conv2's bias and the residual are one pointwise pass. Same values, rounded as torch rounds each add.

Recognised by structure after the other two passes: our `AMPBlock` and `AMPBlock1` of NVIDIA's `bigvgan` package and
of the copy vendored in GPT-SoVITS (whose forward is the one above), with `convs1`, `convs2` as `ChannelsLastConv1d`
and `2 * len(convs1)` activations (`acts` or `activations`) as `FusedAntiAliasedActivation`, and no hooks.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..kernels.decoder_pointwise import pointwise
from . import swap_
from .activations import FusedAntiAliasedActivation
from .layout import ChannelsLastConv1d

logger = logging.getLogger(__name__)
BLOCK_CLASSES = ("AMPBlock", "AMPBlock1")  # classes whose forward is act -> conv1 -> act -> conv2, plus the input


class FusedAMPBlock(nn.Module):
    """An AMP block's function with conv1's bias in act2's kernel and conv2's bias in the residual add; shares the
    block's convolutions and activations."""

    def __init__(self, convs1: nn.ModuleList, convs2: nn.ModuleList, acts: nn.ModuleList) -> None:
        super().__init__()
        self.convs1, self.convs2, self.acts = convs1, convs2, acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            y = conv1.without_bias(self.acts[2 * i](x))
            y = conv2.without_bias(self.acts[2 * i + 1](y, conv1.conv.bias))
            x = pointwise(y, None, 0.0, conv2.conv.bias, residual=x, activate=False)[0]  # (y + bias) + x
        return x


def fusable_block(module: nn.Module) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList] | None:
    """(convs1, convs2, activations) of an AMP block the fold applies to, or None."""
    if type(module).__name__ not in BLOCK_CLASSES or module._forward_hooks or module._forward_pre_hooks:
        return None
    convs1, convs2 = getattr(module, "convs1", None), getattr(module, "convs2", None)
    acts = getattr(module, "acts", getattr(module, "activations", None))
    if not all(isinstance(m, nn.ModuleList) for m in (convs1, convs2, acts)):
        return None
    if len(convs1) != len(convs2) or len(acts) != 2 * len(convs1):
        return None
    if not all(isinstance(c, ChannelsLastConv1d) and not c.transposed for c in [*convs1, *convs2]):
        return None
    if not all(type(a) is FusedAntiAliasedActivation for a in acts):
        return None
    return convs1, convs2, acts


def fold_amp_blocks_(model: nn.Module) -> int:
    """Swap every recognised AMP block of `model` (after the activation and layout passes) for `FusedAMPBlock`;
    returns how many."""
    return swap_(model, _folded, "AMP block fold")


def _folded(module: nn.Module) -> nn.Module | str | None:
    parts = fusable_block(module)
    if parts is not None:
        return FusedAMPBlock(*parts)
    return "not the structure the fold assumes" if type(module).__name__ in BLOCK_CLASSES else None
