"""`PaddedDecoder`: GPT-SoVITS's HiFi-GAN decoder (`SynthesizerTrn.dec`) on a latent padded to a static length,
exactly as on the unpadded latent.

A convolution near the end of a sequence reads zeros past it. On a padded latent those positions hold whatever the
padding became after the previous layers, so here every convolution's input is zeroed past the true length of its
stage: each leaky ReLU becomes a masked one (the decoder convolves nothing else), computed with the bias, residual
and block-mean arithmetic around it in one `kernels.decoder_pointwise` pass per convolution. Each real output then
reads exactly what the unpadded call reads, at any padding, with no windows and no overlap; the lengths per stage
(`lengths`) follow each transposed convolution's own arithmetic. One graph per padded length then serves every
shorter latent. With channels-last convolutions the upsamplings run as `PolyphaseConvTranspose1d` (a little faster
than cuDNN's transposed convolutions once both are timed), and every convolution leaves its bias to the pass after it.

The structure is upstream's `Generator` with `ResBlock1` blocks (all of v1-v2ProPlus's configs) and the project's
stand-in: `conv_pre`, optional `cond`, `ups`, per upsampling `len(resblocks) // len(ups)` blocks of
`convs1`/`convs2` pairs, `conv_post`, tanh; leaky ReLU slopes 0.1, and torch's default 0.01 before `conv_post`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.weights import structural_copy, weights_fingerprint
from ..kernels.decoder_pointwise import masked_leaky_relu, pointwise
from ..passes import channels_last_convs_
from ..passes.layout import ChannelsLastConv1d
from .polyphase import PolyphaseConvTranspose1d, polyphase_problem

SLOPE = 0.1  # upstream's LRELU_SLOPE: every leaky ReLU of the upsampling stack
FINAL_SLOPE = 0.01  # torch's default: upstream's leaky ReLU before conv_post


def decoder_problem(dec: nn.Module) -> str | None:
    """Why `dec` is not a decoder `PaddedDecoder` can run (None when it is)."""
    for name in ("conv_pre", "ups", "resblocks", "conv_post"):
        if not hasattr(dec, name):
            return f"{type(dec).__name__} has no {name}"
    if not isinstance(dec.ups, nn.ModuleList) or not all(isinstance(u, nn.ConvTranspose1d) for u in dec.ups):
        return "its ups are not a list of ConvTranspose1d"
    if not dec.ups or len(dec.resblocks) % len(dec.ups):
        return f"{len(dec.resblocks)} residual blocks for {len(dec.ups)} upsamplings"
    for block in dec.resblocks:
        if not (hasattr(block, "convs1") and hasattr(block, "convs2") and len(block.convs1) == len(block.convs2) > 0):
            return f"residual block {type(block).__name__} is not of convs1/convs2 pairs (upstream's ResBlock1)"
    return None


class PaddedDecoder:
    """`dec`'s function on a padded latent: `__call__(z, lengths, g)` with z zero past `lengths[0]` frames, `lengths`
    the device tensor of `lengths(frames)`. Runs a weight-sharing copy, with channels-last convolutions if asked
    (their weights are copies: `fingerprint` tells when the original's weights changed)."""

    def __init__(self, dec: nn.Module, channels_last: bool) -> None:
        if problem := decoder_problem(dec):
            raise TypeError(f"dec: {problem}")
        self.fingerprint = weights_fingerprint(dec)  # of the weights the copy's channels-last weights come from
        self.geometry = [(u.stride[0], u.padding[0], u.dilation[0] * (u.kernel_size[0] - 1) + u.output_padding[0] + 1)
                         for u in dec.ups]
        self.module = structural_copy(dec, share_weights=True).eval()
        if channels_last:
            channels_last_convs_(self.module)
            for i, up in enumerate(dec.ups):
                if polyphase_problem(up) is None:
                    self.module.ups[i] = PolyphaseConvTranspose1d(up)

    def lengths(self, frames: int) -> list[int]:
        """True lengths at the decoder's input and after each upsampling, for a latent of `frames` frames."""
        sizes = [frames]
        for stride, padding, span in self.geometry:
            sizes.append((sizes[-1] - 1) * stride - 2 * padding + span)
        return sizes

    def __call__(self, z: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        dec = self.module
        x = dec.conv_pre(z)
        if g is not None:
            x = x + dec.cond(g)
        h = masked_leaky_relu(x, lengths[0], SLOPE)
        blocks = len(dec.resblocks) // len(dec.ups)
        for i, up in enumerate(dec.ups):
            slope = SLOPE if i + 1 < len(dec.ups) else FINAL_SLOPE  # of the leaky ReLU after this stage
            u, bias = _without_bias(up, h)
            x, h_in = pointwise(u, lengths[i + 1], SLOPE, bias)  # each block's input and its first activation
            total = None
            for k, block in enumerate(dec.resblocks[i * blocks:(i + 1) * blocks]):
                last = k + 1 == blocks
                total, h = _block(block, x, h_in, lengths[i + 1], total, (blocks, slope) if last else None)
        return torch.tanh(dec.conv_post(h))


def _block(block: nn.Module, x: torch.Tensor, h: torch.Tensor, valid: torch.Tensor, total: torch.Tensor | None,
           average: tuple[int, float] | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A ResBlock1 on x (h: x's masked leaky ReLU), its output added to the stage's running `total`. For the stage's
    last block, `average` = (blocks, slope): returns (None, the masked leaky ReLU of the blocks' mean) instead."""
    *pairs, last = zip(block.convs1, block.convs2)
    for conv1, conv2 in pairs:
        y, bias = _pair(conv1, conv2, h, valid)
        x, h = pointwise(y, valid, SLOPE, bias, residual=x)
    y, bias = _pair(*last, h, valid)
    if average is None:
        return pointwise(y, valid, SLOPE, bias, residual=x, total=total, activate=False)
    return pointwise(y, valid, average[1], bias, residual=x, total=total, divisor=average[0], keep_sum=False)


def _pair(conv1: nn.Module, conv2: nn.Module, h: torch.Tensor,
          valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """conv2(masked leaky ReLU(conv1(h))) as (output without conv2's bias, that bias); conv1's bias goes in the ReLU."""
    y, bias = _without_bias(conv1, h)
    return _without_bias(conv2, masked_leaky_relu(y, valid, SLOPE, bias))


def _without_bias(conv: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """conv(x) as (output without the bias, bias) where the convolution can leave its bias out, else (conv(x), None)."""
    if isinstance(conv, (ChannelsLastConv1d, PolyphaseConvTranspose1d)):
        return conv.without_bias(x), conv.conv.bias
    return conv(x), None
