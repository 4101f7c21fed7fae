"""`assert_matches_eager`: the optimized vocoder's output equals the eager module's, within the tolerance the
run-time verification uses (`core.verify`)."""

from __future__ import annotations

from typing import Any

import torch

from ..core.verify import TOLERANCE, relative_error

__all__ = ["TOLERANCE", "assert_matches_eager", "relative_error"]


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
    limit = TOLERANCE.get(mel.dtype, TOLERANCE[torch.float16]) if tolerance is None else tolerance
    if not error <= limit:
        worst = int((got.double() - expected.double()).abs().flatten().argmax())
        raise AssertionError(f"optimized output differs from eager by {error:.2e} of its peak (tolerance {limit:.0e}); "
                             f"worst at flat index {worst} of shape {tuple(got.shape)}")
    return error
