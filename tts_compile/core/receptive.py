"""Measure what chunking needs to know about a vocoder: its receptive field (in mel frames) and its hop.

The receptive field is the support of the gradient of one output frame with respect to the input, computed in
float64 on a copy of the module (so tiny far-away contributions cannot underflow to zero) and united over a few
random inputs and probe positions. The probe grows until the support sits strictly inside it; a model whose
support keeps touching the edges (attention or normalisation over time) cannot be chunked exactly.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .rng import private_generator
from .weights import structural_copy

logger = logging.getLogger(__name__)

PROBE_TRIALS = 3  # random inputs whose supports are united: one input can zero a gradient by chance
FIRST_PROBE_FRAMES = 32
MAX_PROBE_FRAMES = 4096

_CACHE: "weakref.WeakKeyDictionary[nn.Module, ReceptiveField]" = weakref.WeakKeyDictionary()


class ProbeError(RuntimeError):
    """The vocoder cannot be chunked exactly (unbounded receptive field, non-integer hop, ...)."""


@dataclass(frozen=True)
class ReceptiveField:
    """How a vocoder maps mel frames to audio: frame `j` becomes samples `[j*hop, (j+1)*hop)` and depends on
    input frames `[j - left, j + right]`. `out_dims` is the output's shape between batch and time (`(1,)` for
    `[B, 1, N]`, `()` for `[B, N]`)."""

    left: int
    right: int
    hop: int
    out_dims: tuple[int, ...]

    @property
    def frames(self) -> int:
        """The one-sided reach that a window's context must cover."""
        return max(self.left, self.right)

    def context(self) -> int:
        """Context frames to add on each side: the measured reach plus a margin of at least two frames."""
        return self.frames + max(2, self.frames // 8)


def detect_n_mels(module: nn.Module) -> int | None:
    """Input channels of the first convolution registered in `module` (a vocoder's input layer), if any."""
    for sub in module.modules():
        if isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d)):
            return sub.in_channels
    return None


def probe(
    call: Callable[..., torch.Tensor],
    n_mels: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    kwargs: Mapping[str, Any] | None = None,
) -> ReceptiveField:
    """Measure hop, output layout and receptive field of `call(mel[1, n_mels, T], **kwargs)` in `dtype`.

    Probe a float64 copy of a module (`float64_copy`) where possible: in float16 the gradient of far-away frames
    can underflow to zero and the receptive field would be under-estimated.
    """
    with torch.inference_mode(False):  # autograd must work even when the caller is in inference mode
        kwargs = {k: _cast(v, dtype) for k, v in (kwargs or {}).items()}
        hop, out_dims = _probe_hop(call, n_mels, device, dtype, kwargs)
        left, right = _probe_support(call, n_mels, hop, device, dtype, kwargs)
    return ReceptiveField(left=left, right=right, hop=hop, out_dims=out_dims)


def probe_module(
    module: nn.Module,
    n_mels: int,
    *,
    forward: Callable[..., torch.Tensor] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> ReceptiveField:
    """`probe` a float64 copy of `module` on its own device, through `forward(copy, mel, **kwargs)` (default:
    calling the copy). Cached per module: the receptive field is a property of the architecture."""
    if module in _CACHE:
        return _CACHE[module]
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.inference_mode(False):  # a copy made in inference mode could not take part in autograd
        clone = float64_copy(module)
    call = (lambda mel, **kw: forward(clone, mel, **kw)) if forward else clone
    field = probe(call, n_mels, device=device, dtype=torch.float64, kwargs=kwargs)
    _CACHE[module] = field
    logger.debug("probed %s: %s", type(module).__name__, field)
    return field


def float64_copy(module: nn.Module) -> nn.Module:
    """A float64, eval-mode, gradient-free copy of `module` on its own device."""
    clone = structural_copy(module, share_weights=False).to(torch.float64).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _cast(value: Any, dtype: torch.dtype) -> Any:
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _probe_hop(fn, n_mels, device, dtype, kwargs) -> tuple[int, tuple[int, ...]]:
    lengths = (FIRST_PROBE_FRAMES, FIRST_PROBE_FRAMES + 3)
    with torch.no_grad():
        gen = private_generator(device)
        outs = [fn(torch.randn(1, n_mels, t, device=device, dtype=dtype, generator=gen), **kwargs) for t in lengths]
    n0, n1 = (o.shape[-1] for o in outs)
    hop = (n1 - n0) // (lengths[1] - lengths[0])
    if hop <= 0 or n0 != hop * lengths[0] or n1 != hop * lengths[1]:
        raise ProbeError(
            f"output length is not a whole multiple of the input length (T={lengths[0]} -> {n0} samples, "
            f"T={lengths[1]} -> {n1}): only vocoders with output length = T * hop can be chunked exactly"
        )
    if outs[0].ndim < 2 or outs[0].shape[0] != 1:
        raise ProbeError(f"expected an output of shape [B, ..., N], got {tuple(outs[0].shape)} for B=1")
    return hop, tuple(outs[0].shape[1:-1])


def _probe_support(fn, n_mels, hop, device, dtype, kwargs) -> tuple[int, int]:
    frames = FIRST_PROBE_FRAMES
    while frames <= MAX_PROBE_FRAMES:
        lo, hi, mid = _support(fn, n_mels, frames, hop, device, dtype, kwargs)
        if lo > 0 and hi < frames - 1:
            return mid - lo, hi - mid
        frames *= 2
    raise ProbeError(
        f"the receptive field reaches the edges of a {MAX_PROBE_FRAMES}-frame probe: the model looks at the "
        "whole input (attention or normalisation over time?) and cannot be chunked exactly"
    )


def _support(fn, n_mels, frames, hop, device, dtype, kwargs) -> tuple[int, int, int]:
    """Smallest and largest input frame that output frame `mid` depends on, over a few random inputs."""
    mid = frames // 2
    lo, hi = mid, mid
    gen = private_generator(device)
    with torch.enable_grad():
        for _ in range(PROBE_TRIALS):
            x = torch.randn(1, n_mels, frames, device=device, dtype=dtype, generator=gen).requires_grad_()
            out = fn(x, **kwargs)[..., mid * hop : (mid + 1) * hop]
            if not out.requires_grad:
                raise ProbeError("the vocoder's output does not depend on its input through autograd; pass context=N")
            weights = torch.randn(out.shape, device=out.device, dtype=out.dtype, generator=gen)
            (grad,) = torch.autograd.grad((out * weights).sum(), x)
            touched = grad.abs().amax(dim=1)[0].nonzero().flatten()
            if touched.numel():
                lo, hi = min(lo, int(touched.min())), max(hi, int(touched.max()))
            if lo == 0 or hi == frames - 1:
                break  # already too small a probe: no need for more trials at this size
    return lo, hi, mid
