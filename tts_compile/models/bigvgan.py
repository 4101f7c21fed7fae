"""BigVGAN-style generator with anti-aliased SnakeBeta activations (GPT-SoVITS v3's vocoder layout).

Written from the published architecture (BigVGAN, Lee et al. 2023): transposed-conv upsampling stages, each
followed by AMP residual blocks whose activations are "upsample x2 -> SnakeBeta -> low-pass downsample x2"
with 12-tap Kaiser-windowed sinc filters. Weights are random and seeded; see `tts_compile.models`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hifigan import run_stages, upsampling_stages

SNAKE_EPS = 1e-9  # keeps 1 / beta finite for beta -> 0, as in the published SnakeBeta
FILTER_TAPS = 12  # taps of the anti-aliasing filters (both resampling directions)


@dataclass(frozen=True)
class BigVGANConfig:
    """Shape of a BigVGAN generator; `hop` is the product of `upsample_rates`."""

    n_mels: int = 100
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    final_bias: bool = False
    final_tanh: bool = False  # False: clamp the output to [-1, 1] (BigVGAN v2 24 kHz)

    @property
    def hop(self) -> int:
        return math.prod(self.upsample_rates)


def kaiser_sinc_filter(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """Low-pass FIR filter `[taps]`: a sinc at `cutoff` (in cycles/sample) under a Kaiser window.

    The window's beta follows Kaiser's design formula for the attenuation implied by the transition
    `half_width`; the filter is normalised to unit DC gain.
    """
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21.0) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, periodic=False, beta=beta, dtype=torch.float64)
    offset = 0.5 if taps % 2 == 0 else 0.0
    t = torch.arange(-half, taps - half, dtype=torch.float64) + offset
    fir = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (fir / fir.sum()).float()


class AntiAliasedSnakeBeta(nn.Module):
    """`x -> down2(snakebeta(up2(x)))`, channel-wise; `alpha`/`beta` are stored as logarithms.

    Both resamplers use replicate padding and the same 12-tap low-pass (cutoff 1/4, half-width 0.3 of the
    doubled rate), so the activation maps `[B, C, T]` to `[B, C, T]`.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(channels))
        self.log_beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("fir", kaiser_sinc_filter(0.25, 0.3, FILTER_TAPS), persistent=False)

    def _upsample2(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T] -> [B, C, 2T]; transposed conv of the replicate-padded input, trimmed to 2T
        c = x.shape[1]
        pad = FILTER_TAPS // 2 - 1
        trim = 2 * pad + (FILTER_TAPS - 2) // 2
        weight = self.fir.to(x.dtype).expand(c, 1, FILTER_TAPS)
        y = 2 * F.conv_transpose1d(F.pad(x, (pad, pad), mode="replicate"), weight, stride=2, groups=c)
        return y[..., trim:-trim]

    def _downsample2(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, 2T] -> [B, C, T]; strided low-pass of the replicate-padded input
        c = x.shape[1]
        weight = self.fir.to(x.dtype).expand(c, 1, FILTER_TAPS)
        padded = F.pad(x, (FILTER_TAPS // 2 - 1, FILTER_TAPS // 2), mode="replicate")
        return F.conv1d(padded, weight, stride=2, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.log_alpha.exp()[None, :, None]
        beta = self.log_beta.exp()[None, :, None]
        y = self._upsample2(x)
        y = y + torch.sin(y * alpha).pow(2) / (beta + SNAKE_EPS)
        return self._downsample2(y)


class AMPBlock(nn.Module):
    """Residual block: per dilation, act -> dilated conv -> act -> conv, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size - 1) * d // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )
        self.acts = nn.ModuleList(AntiAliasedSnakeBeta(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            y = conv1(self.acts[2 * i](x))
            x = x + conv2(self.acts[2 * i + 1](y))
        return x


class BigVGANGenerator(nn.Module):
    """mel `[B, n_mels, T]` -> audio `[B, 1, T * hop]` in [-1, 1]."""

    def __init__(self, config: BigVGANConfig) -> None:
        super().__init__()
        self.config = config
        c0 = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.n_mels, c0, 7, padding=3)
        self.ups, self.resblocks = upsampling_stages(c0, config.upsample_rates, config.upsample_kernel_sizes,
                                                     config.resblock_kernel_sizes, config.resblock_dilations, AMPBlock)
        c_last = c0 // 2 ** len(config.upsample_rates)
        self.act_post = AntiAliasedSnakeBeta(c_last)
        self.conv_post = nn.Conv1d(c_last, 1, 7, padding=3, bias=config.final_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_stages(self.conv_pre(x), self.ups, self.resblocks)
        x = self.conv_post(self.act_post(x))
        return torch.tanh(x) if self.config.final_tanh else x.clamp(-1.0, 1.0)
