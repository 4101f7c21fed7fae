"""Reference vocoder architectures with seeded random weights, for the benchmark, the tests and the notebooks.

Each preset names a real GPT-SoVITS vocoder shape (full size, for GPU measurements) or a tiny one that
compiles in seconds on a CPU. Timing does not depend on weight values, and the exactness contract is a property
of the architecture, so random weights are enough for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from .bigvgan import AntiAliasedSnakeBeta, BigVGANConfig, BigVGANGenerator
from .hifigan import HiFiGANConfig, HiFiGANGenerator

__all__ = ["MODELS", "Preset", "build_model", "BigVGANConfig", "BigVGANGenerator", "HiFiGANConfig",
           "HiFiGANGenerator", "AntiAliasedSnakeBeta"]

ModelConfig = Union[BigVGANConfig, HiFiGANConfig]


@dataclass(frozen=True)
class Preset:
    """A named architecture: its config, output sample rate and a one-line description."""

    config: ModelConfig
    sample_rate: int
    description: str

    @property
    def n_mels(self) -> int:
        return self.config.n_mels if isinstance(self.config, BigVGANConfig) else self.config.in_channels


_TINY_BIGVGAN = BigVGANConfig(
    n_mels=32, upsample_rates=(4, 4), upsample_kernel_sizes=(8, 8), upsample_initial_channel=32,
    resblock_kernel_sizes=(3,), resblock_dilations=((1, 3),),
)
_TINY_HIFIGAN = HiFiGANConfig(
    in_channels=32, upsample_rates=(4, 4), upsample_kernel_sizes=(8, 8), upsample_initial_channel=32,
    resblock_kernel_sizes=(3, 5), resblock_dilations=((1, 3), (1, 3)),
)

MODELS: dict[str, Preset] = {
    "bigvgan-24k": Preset(BigVGANConfig(), 24000, "BigVGAN v2 24 kHz 100-band 256x (GPT-SoVITS v3 vocoder)"),
    "hifigan-v4": Preset(HiFiGANConfig(), 48000, "GPT-SoVITS v4 vocoder: 100 mels, 48 kHz, 480x"),
    "vits-v2": Preset(
        HiFiGANConfig(in_channels=192, upsample_rates=(10, 8, 2, 2, 2), upsample_kernel_sizes=(16, 16, 8, 2, 2),
                      gin_channels=512, final_bias=False),
        32000, "GPT-SoVITS v1/v2 VITS decoder `dec` (192-ch latent, g: [B, 512, 1])",
    ),
    "vits-v2proplus": Preset(
        HiFiGANConfig(in_channels=192, upsample_rates=(10, 8, 2, 2, 2), upsample_kernel_sizes=(20, 16, 8, 2, 2),
                      upsample_initial_channel=768, gin_channels=1024, final_bias=False),
        32000, "GPT-SoVITS v2ProPlus VITS decoder `dec` (768 ch, g: [B, 1024, 1])",
    ),
    "bigvgan-tiny": Preset(_TINY_BIGVGAN, 16000, "tiny BigVGAN-style model for CPU tests (hop 16)"),
    "hifigan-tiny": Preset(_TINY_HIFIGAN, 16000, "tiny HiFi-GAN-style model for CPU tests (hop 16)"),
    "vits-tiny": Preset(
        HiFiGANConfig(in_channels=24, upsample_rates=(4, 2), upsample_kernel_sizes=(8, 4), upsample_initial_channel=32,
                      resblock_kernel_sizes=(3,), resblock_dilations=((1, 3),), gin_channels=8, final_bias=False),
        8000, "tiny VITS-decoder-style model with g conditioning for CPU tests (hop 8)",
    ),
}


def _init_weights_(model: nn.Module, generator: torch.Generator) -> None:
    """Variance-preserving random init, so activations stay O(1) through the stack and outputs are not tiny."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            fan_in = module.weight[0].numel() if isinstance(module, nn.Conv1d) else module.weight[:, 0].numel()
            with torch.no_grad():
                module.weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.02, generator=generator)
        elif isinstance(module, AntiAliasedSnakeBeta):
            with torch.no_grad():
                module.log_alpha.normal_(0.0, 0.3, generator=generator)
                module.log_beta.normal_(0.0, 0.3, generator=generator)
    if isinstance(model, BigVGANGenerator):
        with torch.no_grad():  # keep the output mostly inside the final clamp, like a trained model
            model.conv_post.weight.mul_(0.05)


def build_model(name: str, *, seed: int = 0) -> nn.Module:
    """A preset from `MODELS` on the CPU in float32, eval mode, weights drawn from `seed`."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not a built-in model; choose one of {sorted(MODELS)}")
    config = MODELS[name].config
    model = BigVGANGenerator(config) if isinstance(config, BigVGANConfig) else HiFiGANGenerator(config)
    _init_weights_(model, torch.Generator().manual_seed(seed))
    return model.eval()
