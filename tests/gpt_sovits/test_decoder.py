"""PaddedDecoder: a HiFi-GAN decoder on a latent padded with zeros to any length gives the unpadded call's audio
(float32, CPU, random generators of several shapes), with channels-last convolutions or without."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.gpt_sovits.decoder import PaddedDecoder, decoder_problem
from tts_compile.models.hifigan import HiFiGANConfig, HiFiGANGenerator

TOLERANCE = 1e-6  # float32 max abs, padded vs unpadded (convolution algorithms per length): measured 8.2e-8
GENERATORS = {  # rates, kernels: even and odd (kernel - rate) padding, one upsampling longer than its kernel
    "gpt-sovits-like": ((4, 2, 2), (8, 4, 4)),
    "odd": ((3, 2), (7, 5)),
    "short kernels": ((2, 2), (2, 3)),
}


def _generator(name: str, gin: int, seed: int) -> HiFiGANGenerator:
    rates, kernels = GENERATORS[name]
    torch.manual_seed(seed)
    config = HiFiGANConfig(in_channels=6, upsample_rates=rates, upsample_kernel_sizes=kernels,
                           upsample_initial_channel=16, resblock_kernel_sizes=(3, 5),
                           resblock_dilations=((1, 3), (1, 2)), gin_channels=gin)
    return HiFiGANGenerator(config).eval()


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(GENERATORS)), frames=st.integers(1, 60), padding=st.integers(0, 50),
       conditioned=st.booleans(), channels_last=st.booleans(), seed=st.integers(0, 1000))
def test_padded_equals_unpadded(name, frames, padding, conditioned, channels_last, seed) -> None:
    dec = _generator(name, 4 if conditioned else 0, seed)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 6, frames, generator=gen)
    g = torch.randn(1, 4, 1, generator=gen) if conditioned else None
    decoder = PaddedDecoder(dec, channels_last)
    sizes = decoder.lengths(frames)
    with torch.inference_mode():
        expected = dec(z, g=g)
        got = decoder(F.pad(z, (0, padding)), torch.tensor(sizes), g)
    assert got.shape[-1] >= sizes[-1] == expected.shape[-1]
    assert float((got[..., :sizes[-1]] - expected).abs().max()) <= TOLERANCE


def test_without_the_masks_the_padding_would_leak() -> None:
    """The masks are what makes it exact: the plain generator on the padded latent differs at the last samples."""
    dec = _generator("gpt-sovits-like", 0, 0)
    z = torch.randn(1, 6, 20)
    with torch.inference_mode():
        expected, padded = dec(z), dec(F.pad(z, (0, 12)))[..., :expected_length(dec, 20)]
    assert float((padded - expected).abs().max()) > 1e-3


def expected_length(dec: HiFiGANGenerator, frames: int) -> int:
    return PaddedDecoder(dec, False).lengths(frames)[-1]


def test_decoder_problem_names_what_does_not_fit() -> None:
    dec = _generator("odd", 0, 0)
    assert decoder_problem(dec) is None
    assert "no conv_pre" in decoder_problem(torch.nn.Linear(2, 2))
    dec.resblocks[1] = torch.nn.Identity()
    assert "residual block Identity" in decoder_problem(dec)
    with pytest.raises(TypeError, match="dec: residual block Identity"):
        PaddedDecoder(dec, False)
