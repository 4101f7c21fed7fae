"""Receptive-field and hop probes against architectures whose answer is known by construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tts_compile.core.receptive import ProbeError, detect_n_mels, probe, probe_module
from tts_compile.models import MODELS

from ..conftest import conditioning, tiny


class ConvStack(nn.Module):
    """Known receptive field: each k=5 dilation-d conv reaches 2d frames; the upsampler adds none at the centre."""

    def __init__(self, dilations=(1, 2, 3), hop=4):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv1d(3 if i == 0 else 8, 8, 5, dilation=d, padding=2 * d)
                                     for i, d in enumerate(dilations)])
        self.up = nn.Upsample(scale_factor=hop, mode="nearest")
        self.out = nn.Conv1d(8, 1, 1)

    def forward(self, x):
        return self.out(self.up(torch.tanh(self.convs(x))))


class GlobalMean(nn.Module):
    def forward(self, x):
        return (x - x.mean(dim=-1, keepdim=True)).repeat_interleave(2, dim=-1)


class OddLength(nn.Module):
    def forward(self, x):
        return torch.cat([x, x[..., :1]], dim=-1)


@pytest.mark.parametrize("dilations", [(1,), (1, 2, 3), (4, 1)])
def test_probe_measures_a_known_receptive_field(dilations) -> None:
    field = probe_module(ConvStack(dilations), 3)
    assert (field.left, field.right, field.hop, field.out_dims) == (2 * sum(dilations), 2 * sum(dilations), 4, (1,))
    assert field.context() >= field.frames + 2


@pytest.mark.parametrize("name", ["bigvgan-tiny", "hifigan-tiny", "vits-tiny"])
def test_probe_builtin_models(name: str) -> None:
    field = probe_module(tiny(name), MODELS[name].n_mels, kwargs=conditioning(name))
    assert field.hop == MODELS[name].config.hop and field.out_dims == (1,)
    assert 0 < field.left == field.right < 64


def test_probe_is_cached_per_module() -> None:
    model = tiny("hifigan-tiny")
    assert probe_module(model, 32) is probe_module(model, 32)


def test_unbounded_receptive_field_is_refused() -> None:
    with pytest.raises(ProbeError, match="whole input"):
        probe(GlobalMean(), 2, device=torch.device("cpu"), dtype=torch.float64)


def test_output_length_must_be_a_multiple_of_the_input() -> None:
    with pytest.raises(ProbeError, match="whole multiple"):
        probe(OddLength(), 2, device=torch.device("cpu"), dtype=torch.float64)


def test_detect_n_mels() -> None:
    assert detect_n_mels(tiny("vits-tiny")) == MODELS["vits-tiny"].n_mels
    assert detect_n_mels(nn.Sequential(nn.ReLU())) is None
