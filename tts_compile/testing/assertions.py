"""`assert_matches_eager`: the optimized vocoder's output equals the eager module's, within a measured tolerance."""

from __future__ import annotations

from typing import Any

import torch

# Largest max|optimized - eager| relative to the eager output's peak, per dtype. Chunking is exact in real arithmetic;
# these bound rounding only. float32/float64: measured <= 2e-6 / 1e-15 on the built-in models (CPU); float16/bfloat16:
# different kernels per window shape round differently, measured on an H100 (benchmarks/results).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max|got - expected| divided by max|expected| (or by 1e-6 for an all-zero `expected`)."""
    peak = max(float(expected.double().abs().max()), 1e-6)
    return float((got.double() - expected.double()).abs().max()) / peak


def assert_matches_eager(vocoder: Any, mel: torch.Tensor, *args: Any, lengths: Any = None,
                         tolerance: float | None = None, **kwargs: Any) -> float:
    """Assert `vocoder(mel, ...)` equals `vocoder.eager(mel, ...)` (same shape, within `tolerance` of the peak).

    `vocoder` is anything `optimize_vocoder` returned (an instance wrapper or an instance of a decorated class).
    Returns the relative error, so tests can also report it.
    """
    with torch.inference_mode():
        expected = vocoder.eager(mel, *args, lengths=lengths, **kwargs)
        got = vocoder(mel, *args, lengths=lengths, **kwargs)
    if got.shape != expected.shape:
        raise AssertionError(f"optimized output has shape {tuple(got.shape)}, eager {tuple(expected.shape)}")
    if not torch.isfinite(got).all():
        raise AssertionError("optimized output contains NaN or Inf")
    error = relative_error(got, expected)
    limit = TOLERANCE.get(mel.dtype, 1e-2) if tolerance is None else tolerance
    if not error <= limit:
        worst = int((got.double() - expected.double()).abs().flatten().argmax())
        raise AssertionError(f"optimized output differs from eager by {error:.2e} of its peak (tolerance {limit:.0e}); "
                             f"worst at flat index {worst} of shape {tuple(got.shape)}")
    return error
