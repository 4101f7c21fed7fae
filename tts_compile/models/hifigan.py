"""HiFi-GAN-style generator: GPT-SoVITS's v4 vocoder and its v1/v2 VITS decoder (`dec`) share this layout.

Written from the published architecture (HiFi-GAN V1 generator with MRF residual blocks, optional global
conditioning added after the input convolution). Weights are random and seeded; see `tts_compile.models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

RELU_SLOPE = 0.1  # slope of the leaky ReLUs inside the upsampling stack (HiFi-GAN convention)


@dataclass(frozen=True)
class HiFiGANConfig:
    """Shape of a HiFi-GAN generator; `hop` is the product of `upsample_rates`."""

    in_channels: int = 100
    upsample_rates: tuple[int, ...] = (10, 6, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (20, 12, 4, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    gin_channels: int = 0
    final_bias: bool = True
    final_slope: float = 0.01  # the last leaky ReLU uses torch's default slope in GPT-SoVITS's generator

    @property
    def hop(self) -> int:
        hop = 1
        for rate in self.upsample_rates:
            hop *= rate
        return hop


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock(nn.Module):
    """Residual block: per dilation, leaky ReLU -> dilated conv -> leaky ReLU -> conv, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, 1)) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            y = conv1(F.leaky_relu(x, RELU_SLOPE))
            x = x + conv2(F.leaky_relu(y, RELU_SLOPE))
        return x


def upsampling_stages(c0: int, rates, kernels, block_kernels, block_dilations,
                      block: Callable[[int, int, tuple[int, ...]], nn.Module]) -> tuple[nn.ModuleList, nn.ModuleList]:
    """HiFi-GAN's stack (BigVGAN keeps it): per stage a transposed conv halving the channels, then one residual
    block per kernel size, whose outputs `run_stages` averages."""
    ups, blocks = nn.ModuleList(), nn.ModuleList()
    for i, (rate, kernel) in enumerate(zip(rates, kernels)):
        c_in, c_out = c0 // 2**i, c0 // 2 ** (i + 1)
        ups.append(nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2))
        blocks.extend(block(c_out, k, d) for k, d in zip(block_kernels, block_dilations))
    return ups, blocks


def run_stages(x: torch.Tensor, ups: nn.ModuleList, blocks: nn.ModuleList,
               before_up: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    n_kernels = len(blocks) // len(ups)
    for i, up in enumerate(ups):
        x = up(before_up(x) if before_up else x)
        x = sum(block(x) for block in blocks[i * n_kernels : (i + 1) * n_kernels]) / n_kernels
    return x


class HiFiGANGenerator(nn.Module):
    """mel/latent `[B, in_channels, T]` (+ optional `g: [B, gin_channels, 1]`) -> audio `[B, 1, T * hop]`."""

    def __init__(self, config: HiFiGANConfig) -> None:
        super().__init__()
        self.config = config
        c0 = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.in_channels, c0, 7, padding=3)
        self.ups, self.resblocks = upsampling_stages(c0, config.upsample_rates, config.upsample_kernel_sizes,
                                                     config.resblock_kernel_sizes, config.resblock_dilations, ResBlock)
        c_last = c0 // 2 ** len(config.upsample_rates)
        self.conv_post = nn.Conv1d(c_last, 1, 7, padding=3, bias=config.final_bias)
        self.cond = nn.Conv1d(config.gin_channels, c0, 1) if config.gin_channels else None

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv_pre(x)
        if g is not None:
            if self.cond is None:
                raise ValueError("g was given but this generator was built with gin_channels=0")
            x = x + self.cond(g)
        x = run_stages(x, self.ups, self.resblocks, lambda y: F.leaky_relu(y, RELU_SLOPE))
        x = self.conv_post(F.leaky_relu(x, self.config.final_slope))
        return torch.tanh(x)
