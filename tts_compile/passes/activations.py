"""Find anti-aliased Snake/SnakeBeta activations by structure and run them as one fused polyphase function.

Recognised: the layout of this project's reference `AntiAliasedSnakeBeta` (`log_alpha`, `log_beta`, one `fir` for
both directions), and the `Activation1d` layout of NVIDIA's BigVGAN (the PyPI
`bigvgan` package and the copy vendored in GPT-SoVITS): `upsample` (UpSample1d), `act` (Snake or SnakeBeta),
`downsample.lowpass` (LowPassFilter1d). A module is swapped only when every assumption of the fused function
holds (2x resampling, equal even filter lengths, replicate padding with the standard offsets, no hooks); anything
else is left alone with an info line saying why. The replacement shares the original's parameters.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.fx.experimental import _config as fx_config

from ..kernels import anti_aliased_snake, anti_aliased_snake_polyphase, downsampler_band
from . import swap_

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivationSpec:
    """What the fused function needs from a recognised module."""

    alpha: nn.Parameter
    beta: nn.Parameter  # the same tensor as alpha for plain Snake
    log_scale: bool
    up: tuple[float, ...]
    down: tuple[float, ...]


class FusedAntiAliasedActivation(nn.Module):
    """Drop-in for a recognised activation: same parameters (shared), computed by the fused
    `tts_compile::anti_aliased_snake` op (one Triton kernel on CUDA), or with `inline` by its polyphase torch
    function, traced into the caller's graph or compiled on its own (inductor generates the fused kernel; no
    hand-written one)."""

    def __init__(self, spec: ActivationSpec, inline: bool = False) -> None:
        super().__init__()
        self.alpha, self.beta, self.log_scale = spec.alpha, spec.beta, spec.log_scale
        self.inline, self.taps = inline, (spec.up, spec.down)  # the taps as Python floats: constants in the graph
        device = spec.alpha.device
        self.register_buffer("up", torch.tensor(spec.up, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("down", torch.tensor(spec.down, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("band", downsampler_band(torch.tensor(spec.down, dtype=torch.float64, device=device)),
                             persistent=False)

    def _apply(self, fn, recurse=True):
        """`.to()`, `.half()`, `.cuda()` move the filter buffers but keep their values and dtypes (float32 taps, the
        float16 band): they are constants of the function, not weights to cast."""
        saved = dict(self.named_buffers(recurse=False))
        super()._apply(fn, recurse)
        for name, buffer in saved.items():
            setattr(self, name, buffer.to(getattr(self, name).device))
        return self

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The activation of `x`, or of `x + bias[:, None]` (a preceding convolution's bias, folded in)."""
        if self.inline and torch.compiler.is_compiling():
            return anti_aliased_snake_polyphase(x, self.alpha, self.beta, *self.taps, bias, self.log_scale)
        if self.inline:
            with fx_config.patch(backed_size_oblivious=True):  # batch 1 shares the graph
                return _regional()(x, self.alpha, self.beta, *self.taps, bias, self.log_scale)
        return anti_aliased_snake(x, self.alpha, self.beta, self.up, self.down, self.band, bias, self.log_scale)


@functools.cache
def _regional() -> Callable[..., torch.Tensor]:
    """The polyphase function compiled by inductor on its own, for a module that runs outside a compiled graph
    (`compile_mode="cudagraphs"`): one compile for every batch, channel count and length, shared by all
    activations. The caller compiles with sizes treated as size-oblivious, so batch 1 gets no graph of its own
    (H200: ~38 s per compile)."""
    return torch.compile(anti_aliased_snake_polyphase, dynamic=True)


def recognise(module: nn.Module) -> ActivationSpec | str:
    """The spec of a fusable anti-aliased activation, or the reason `module` is not one."""
    ours = type(module).__name__ == "AntiAliasedSnakeBeta" and all(
        hasattr(module, a) for a in ("log_alpha", "log_beta", "fir"))
    if not ours and not all(hasattr(module, a) for a in ("upsample", "downsample", "act")):
        return "not an anti-aliased activation"
    if module._forward_pre_hooks or module._forward_hooks:  # only an activation's hooks are worth a log line
        return "has forward hooks"
    if ours:
        fir = tuple(module.fir.double().tolist())
        return ActivationSpec(module.log_alpha, module.log_beta, True, fir, fir)
    return _recognise_activation1d(module)


def _recognise_activation1d(module: nn.Module) -> ActivationSpec | str:
    up, act, low = module.upsample, module.act, getattr(module.downsample, "lowpass", None)
    if low is None or not all(hasattr(m, "filter") for m in (up, low)):
        return "no resampling filters found"
    taps = up.filter.numel()
    pad = taps // 2 - 1
    checks = {
        "2x resampling": getattr(up, "ratio", None) == 2 and getattr(low, "stride", None) == 2,
        "equal even filter lengths": taps % 2 == 0 and low.filter.numel() == taps,
        "replicate padding": getattr(low, "padding_mode", None) == "replicate" and getattr(low, "padding", True),
        "standard offsets": (getattr(up, "pad", None), getattr(up, "pad_left", None), getattr(up, "pad_right", None),
                             getattr(low, "pad_left", None), getattr(low, "pad_right", None))
        == (pad, 3 * pad, 3 * pad, pad, pad + 1),
        "Snake or SnakeBeta": type(act).__name__ in ("Snake", "SnakeBeta") and hasattr(act, "alpha"),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        return f"assumptions not met: {failed}"
    beta = act.beta if type(act).__name__ == "SnakeBeta" else act.alpha
    log_scale = bool(getattr(act, "alpha_logscale", False))
    return ActivationSpec(act.alpha, beta, log_scale, _taps(up.filter), _taps(low.filter))


def _taps(fir: torch.Tensor) -> tuple[float, ...]:
    return tuple(fir.detach().double().flatten().tolist())


def fuse_activations_(model: nn.Module, inline: bool = False) -> int:
    """Swap every recognised activation in `model` for `FusedAntiAliasedActivation` (`inline`: traced torch ops
    instead of the op); returns how many."""
    return swap_(model, functools.partial(_fused, inline=inline), "fused activation")


def _fused(module: nn.Module, inline: bool) -> nn.Module | str | None:
    spec = recognise(module)
    if isinstance(spec, ActivationSpec):
        return FusedAntiAliasedActivation(spec, inline)
    return spec if "assumptions" in spec or "hooks" in spec else None
