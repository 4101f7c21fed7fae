"""Module passes: recognise what they can rewrite, leave the rest alone, never change the function."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrizations

from tts_compile.gpt_sovits.polyphase import PolyphaseConvTranspose1d, polyphase_problem
from tts_compile.models.bigvgan import AntiAliasedSnakeBeta
from tts_compile.passes import channels_last_convs_, fuse_activations_, optimized_copy
from tts_compile.passes.activations import FusedAntiAliasedActivation, recognise
from tts_compile.passes.layout import ChannelsLastConv1d
from tts_compile.testing import relative_error

from ..conftest import TINY, conditioning, mel_for, tiny

FLOAT32_TOLERANCE = 1e-5  # relative to peak: the passes reorder float32 additions only


def _nvidia():
    return pytest.importorskip("bigvgan.bigvgan", reason="NVIDIA's bigvgan package is not installed")


@pytest.mark.parametrize("name", TINY)
def test_optimized_copy_computes_the_same_function(name: str) -> None:
    model = tiny(name)
    shadow, report = optimized_copy(model, channels_last=True, fuse_activations=True)
    assert report["channels_last_convs"] > 0
    assert report["fused_activations"] == (9 if name == "bigvgan-tiny" else 0)
    assert report["folded_amp_blocks"] == (2 if name == "bigvgan-tiny" else 0)
    x, kw = mel_for(name, 57, batch=2), conditioning(name, batch=2)
    with torch.no_grad():
        assert relative_error(shadow(x, **kw), model(x, **kw)) <= FLOAT32_TOLERANCE


def test_optimized_copy_shares_weights_and_leaves_the_original_alone() -> None:
    model = tiny("bigvgan-tiny")
    before = [type(m) for m in model.modules()]
    shadow, _ = optimized_copy(model, channels_last=True, fuse_activations=True)
    assert [type(m) for m in model.modules()] == before
    with torch.no_grad():
        model.conv_pre.weight.mul_(2.0)  # a weight loaded into the original is seen by the copy
    assert shadow.conv_pre.conv.weight is model.conv_pre.weight


def test_conv_pass_takes_weight_norm_and_leaves_hooked_and_custom_convolutions_alone() -> None:
    class Causal(nn.Conv1d):
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (2, 0)))[..., : x.shape[-1]]

    old_style = nn.utils.weight_norm(nn.Conv1d(4, 4, 3, padding=1))  # upstream's VITS decoder keeps these hooks
    hooked = nn.Conv1d(4, 4, 3, padding=1)
    hooked.register_forward_pre_hook(lambda module, args: (args[0] * 2,))
    model = nn.Sequential(Causal(4, 4, 3), old_style, parametrizations.weight_norm(nn.Conv1d(4, 4, 3, padding=1)),
                          nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect"), hooked)
    x = torch.randn(1, 4, 20)
    with torch.no_grad():
        expected = model(x)
        old_style.weight = torch.zeros_like(old_style.weight)  # only the hook's own function gives the real weight
        assert channels_last_convs_(model) == 2  # weight norm, old style and parametrized
        assert isinstance(model[1], ChannelsLastConv1d) and isinstance(model[2], ChannelsLastConv1d)
        assert type(model[0]) is Causal and type(model[4]) is nn.Conv1d
        assert relative_error(model(x), expected) <= FLOAT32_TOLERANCE


def test_activation_pass_recognises_only_what_it_can_fuse() -> None:
    assert "not an anti-aliased" in recognise(nn.ReLU())
    model = tiny("bigvgan-tiny")
    act = model.act_post
    act.register_forward_hook(lambda *a: None)
    assert "hooks" in recognise(act)
    hooked_conv = nn.utils.weight_norm(nn.Conv1d(2, 2, 3))  # old-style weight norm: a forward pre-hook
    assert "not an anti-aliased" in recognise(hooked_conv)  # no "left alone" log line for every such conv


def test_inline_activation_compiles_one_graph_for_every_batch_and_layout() -> None:
    """On its own (outside a whole-model compile) the inline activation is compiled once per memory layout: batch 1,
    larger batches and other lengths reuse that graph, and each call matches the module."""
    from torch._dynamo.utils import counters

    module = AntiAliasedSnakeBeta(6)
    with torch.no_grad():
        module.log_alpha.normal_(0, 0.5)
    inline = FusedAntiAliasedActivation(recognise(module), inline=True)
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for layouts, (channels_last, shapes) in enumerate([(False, [(1, 40), (3, 57)]), (True, [(1, 33), (2, 70)])]):
            for batch, frames in shapes:
                x = torch.randn(batch, 6, frames)
                x = x.transpose(1, 2).contiguous().transpose(1, 2) if channels_last else x
                assert relative_error(inline(x), module(x)) <= FLOAT32_TOLERANCE
            assert counters["stats"]["unique_graphs"] - graphs == layouts + 1


def test_nvidia_activation1d_is_recognised_and_matches() -> None:
    _nvidia()
    from bigvgan.activations import Snake, SnakeBeta
    from bigvgan.alias_free_activation.torch.act import Activation1d

    for act_cls in (Snake, SnakeBeta):
        act = Activation1d(activation=act_cls(6, alpha_logscale=True))
        with torch.no_grad():
            for p in act.parameters():
                p.normal_(0, 0.5)
        model = nn.Sequential(act)
        x = torch.randn(2, 6, 33)
        with torch.no_grad():
            expected = model(x)
            assert fuse_activations_(model) == 1 and isinstance(model[0], FusedAntiAliasedActivation)
            assert relative_error(model(x), expected) <= FLOAT32_TOLERANCE


def test_unexpected_activation1d_layout_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    _nvidia()
    from bigvgan.activations import SnakeBeta
    from bigvgan.alias_free_activation.torch.act import Activation1d

    act = Activation1d(activation=SnakeBeta(4), up_ratio=4)
    model = nn.Sequential(act)
    with caplog.at_level(logging.INFO, logger="tts_compile"):
        assert fuse_activations_(model) == 0
    assert model[0] is act and "2x resampling" in caplog.text


def test_whole_nvidia_bigvgan_with_passes_equals_without() -> None:
    bigvgan = _nvidia()
    model = bigvgan.BigVGAN(nvidia_small_config(), use_cuda_kernel=False).eval()
    x = torch.randn(2, 20, 31)
    shadow, report = optimized_copy(model, channels_last=True, fuse_activations=True)
    assert report["fused_activations"] == 2 * 1 * 2 * 2 + 1  # 2 stages x 1 kernel x 2 dilations x 2 acts + post
    assert report["folded_amp_blocks"] == 2 and type(shadow.resblocks[0]).__name__ == "FusedAMPBlock"
    with torch.no_grad():
        assert relative_error(shadow(x), model(x)) <= FLOAT32_TOLERANCE


def test_amp_block_fold_needs_both_passes_and_leaves_hooked_blocks_alone(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny("bigvgan-tiny")
    _, report = optimized_copy(model, channels_last=False, fuse_activations=True)
    assert "folded_amp_blocks" not in report
    model.resblocks[0].register_forward_hook(lambda *a: None)
    with caplog.at_level(logging.INFO, logger="tts_compile"):
        shadow, report = optimized_copy(model, channels_last=True, fuse_activations=True)
    assert report["folded_amp_blocks"] == 1 and "AMP block fold: left" in caplog.text
    assert type(shadow.resblocks[0]).__name__ == "AMPBlock" and type(shadow.resblocks[1]).__name__ == "FusedAMPBlock"
    x = mel_for("bigvgan-tiny", 40)
    with torch.no_grad():
        assert relative_error(shadow(x), model(x)) <= FLOAT32_TOLERANCE


def nvidia_small_config():
    from bigvgan.env import AttrDict

    return AttrDict({
        "num_mels": 20, "upsample_rates": [4, 2], "upsample_kernel_sizes": [8, 4], "upsample_initial_channel": 32,
        "resblock": "1", "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3]], "activation": "snakebeta",
        "snake_logscale": True, "use_tanh_at_final": False, "use_bias_at_final": False,
    })


@settings(max_examples=30, deadline=None)
@given(stride=st.integers(1, 10), extra=st.integers(0, 6), length=st.integers(1, 40), weight_norm=st.booleans(),
       bias=st.booleans(), seed=st.integers(0, 1000))
def test_polyphase_upsampling_equals_the_transposed_convolution(stride, extra, length, weight_norm, bias,
                                                                seed) -> None:
    """Kernels stride + 2 * padding (GPT-SoVITS's upsamplers) and + 1 with output_padding 1; any input layout."""
    torch.manual_seed(seed)
    padding, output_padding = extra // 2, extra % 2
    if output_padding >= stride:
        padding, output_padding = padding + 1, 0  # torch wants output_padding < stride: kernel one tap longer
    kernel = stride + 2 * padding - output_padding
    conv = torch.nn.ConvTranspose1d(5, 3, kernel, stride, padding, output_padding, bias=bias)
    if weight_norm:
        conv = torch.nn.utils.weight_norm(conv)
    x = torch.randn(2, 5, length)
    layer = PolyphaseConvTranspose1d(conv)
    with torch.inference_mode():
        expected = conv(x)
        for given_x in (x, x.transpose(1, 2).contiguous().transpose(1, 2)):
            got = layer(given_x)
            assert got.shape == expected.shape == (2, 3, length * stride)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_polyphase_names_what_it_cannot_run() -> None:
    assert polyphase_problem(torch.nn.ConvTranspose1d(2, 2, 8, 4, 2)) is None
    assert "not exactly stride" in polyphase_problem(torch.nn.ConvTranspose1d(2, 2, 7, 4, 2))
    assert "groups=2" in polyphase_problem(torch.nn.ConvTranspose1d(2, 2, 8, 4, 2, groups=2))
    assert "not a plain" in polyphase_problem(torch.nn.Conv1d(2, 2, 3))
    with pytest.raises(ValueError, match="PolyphaseConvTranspose1d: .*not exactly stride"):
        PolyphaseConvTranspose1d(torch.nn.ConvTranspose1d(2, 2, 7, 4, 2))
