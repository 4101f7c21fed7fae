"""Verification: is an optimized output the original module's, to the rounding its precision allows?

One table of tolerances and one relative error serve the run-time checks of every stage and the users' tests
(`tts_compile.testing`). Past the tolerance, a wider reference (float64 for float32, float32 for float16/bfloat16)
gives a second opinion: some models amplify rounding so much that the original module itself, run on other shapes,
is already that far from itself (the random-weight BigVGAN-24k in fp16, docs/lab-log.md). The optimized
output then passes if it is no farther from the wider reference than `REFERENCE_MARGIN` times the original's own
distance. A real error (too short a context, a wrong kernel) does not shrink in the wider dtype and still fails.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch

logger = logging.getLogger(__name__)

# Largest max|optimized - original| relative to the original output's peak, per effective dtype. The optimizations
# are exact in real arithmetic; these bound rounding only. float64 / float32: measured <= 1e-15 / 2e-6 on the
# built-in models (CPU); float16 / bfloat16: different kernels per shape round differently (H100, benchmarks/results).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
REFERENCE_MARGIN = 2.0  # past the tolerance: at most this many times the original's own distance from the reference
WIDER = {torch.float32: torch.float64, torch.float16: torch.float32, torch.bfloat16: torch.float32}


class VerificationError(RuntimeError):
    """The optimized output differs from the original module's by more than the tolerance."""


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max|got - expected| divided by max|expected| (or by 1e-6 for an all-zero `expected`)."""
    got, expected = got.detach().double(), expected.detach().double()
    peak = max(float(expected.abs().max()), 1e-6)
    return float((got - expected).abs().max()) / peak


def effective_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """float32 convolutions and matmuls run in TF32 on CUDA unless turned off: a 10-bit mantissa, like float16."""
    tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    return torch.float16 if dtype == torch.float32 and device.type == "cuda" and tf32 else dtype


def tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """The tolerance of `dtype` as it computes on `device`."""
    return TOLERANCE.get(effective_dtype(dtype, device), TOLERANCE[torch.float16])


def compare(what: str, got: torch.Tensor, expected: torch.Tensor, device: torch.device,
            reference: Callable[[torch.dtype], torch.Tensor] | None = None) -> float:
    """The relative error of `got` against `expected`; raises VerificationError past the tolerance unless the
    wider `reference(dtype)` (the original module's output in that dtype) finds `got` as accurate as `expected`."""
    if got.shape != expected.shape:
        raise VerificationError(f"{what}: optimized output has shape {tuple(got.shape)}, the original "
                                f"{tuple(expected.shape)}")
    if not bool(torch.isfinite(got).all()) and bool(torch.isfinite(expected).all()):
        raise VerificationError(f"{what}: optimized output has NaN or Inf where the original has none")
    error, limit = relative_error(got, expected), tolerance(expected.dtype, device)
    if error <= limit or _as_accurate(what, got, expected, reference):
        return error
    raise VerificationError(f"{what}: optimized output differs from the original by {error:.1e} of its peak "
                            f"(tolerance {limit:.0e})")


def _as_accurate(what: str, got: torch.Tensor, expected: torch.Tensor,
                 reference: Callable[[torch.dtype], torch.Tensor] | None) -> bool:
    wider = WIDER.get(expected.dtype)
    if reference is None or wider is None:
        return False
    try:
        with torch.inference_mode(), without_tf32():
            truth = reference(wider)
    except Exception as exc:  # the reference is a second opinion; without it the first one stands
        logger.debug("%s: no %s reference for verification: %s", what, wider, exc)
        return False
    ours, own = relative_error(got, truth), relative_error(expected, truth)
    logger.info("%s: optimized output is %.1e of peak from the original, past the %s tolerance; from a %s copy it "
                "is %.1e, the original itself %.1e (accepted up to %.0fx)", what, relative_error(got, expected),
                str(expected.dtype).replace("torch.", ""), str(wider).replace("torch.", ""), ours, own,
                REFERENCE_MARGIN)
    return ours <= REFERENCE_MARGIN * own


@contextlib.contextmanager
def without_tf32() -> Iterator[None]:
    """float32 convolutions and matmuls at full precision (CUDA runs them in TF32 by default)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
    finally:
        matmul.allow_tf32 = saved
