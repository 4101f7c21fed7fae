"""Checks of a vocoder call's input: each names the parameter, the value and what is allowed, and raises for that
call only (`InputError`, `InputTypeError`), in the optimized and the eager path alike."""

from __future__ import annotations

import numbers
from typing import Any

import torch

from ..core.guard import InputError, InputTypeError

MAX_OUTPUT_SAMPLES = 2**31 - 1  # int32 indexing limit of many kernels: about 12 hours at 48 kHz


def check_layout(mel: Any) -> None:
    """mel is a non-empty [batch, n_mels, frames] tensor."""
    if not isinstance(mel, torch.Tensor):
        raise InputTypeError(f"mel must be a torch.Tensor, got {type(mel).__name__}")
    if mel.ndim != 3:
        hint = " (add a batch axis: mel.unsqueeze(0))" if mel.ndim == 2 else ""
        raise InputError(f"mel must have shape [batch, n_mels, frames], got {tuple(mel.shape)}{hint}")
    if mel.shape[0] == 0 or mel.shape[-1] == 0:
        raise InputError(f"mel is empty (shape {tuple(mel.shape)}): need at least one item and one frame")


def check_finite(name: str, value: torch.Tensor) -> None:
    """No NaN or Inf in `value` (a meta tensor has no values to check)."""
    if value.is_floating_point() and value.device.type != "meta" and not bool(torch.isfinite(value).all()):
        raise InputError(f"{name} contains {int((~torch.isfinite(value)).sum())} NaN or Inf values")


def check_mel(mel: torch.Tensor, n_mels: int, hop: int, dtype: torch.dtype, device: torch.device) -> None:
    """mel fits the vocoder: its mel bins, dtype, device, and an output within int32 indexing."""
    if mel.shape[1] != n_mels:
        raise InputError(f"mel has {mel.shape[1]} mel bins (shape {tuple(mel.shape)}); this vocoder expects "
                         f"n_mels={n_mels}")
    if mel.shape[-1] * hop > MAX_OUTPUT_SAMPLES:
        raise InputError(f"mel has {mel.shape[-1]} frames: the output would exceed {MAX_OUTPUT_SAMPLES} samples; "
                         "split it or use stream()")
    if mel.dtype != dtype:
        raise InputTypeError(f"mel dtype {mel.dtype} does not match the vocoder's {dtype}; cast it first "
                             f"(mel.to({dtype}))")
    if mel.device != device:
        raise InputError(f"mel is on {mel.device} but the vocoder runs on {device}; move it first")


def check_lengths(lengths: Any, mel: torch.Tensor) -> list[int]:
    """Per-item valid lengths of a padded batch: a sequence (list, tuple, tensor, array) of `batch` ints in
    [1, frames]."""
    batch, frames = mel.shape[0], mel.shape[-1]
    if lengths is None:
        return [frames] * batch
    values = lengths.tolist() if hasattr(lengths, "tolist") else lengths
    if not isinstance(values, (list, tuple)) or len(values) != batch or \
            not all(_is_int(n) and 1 <= n <= frames for n in values):
        raise InputError(f"lengths={lengths!r} is invalid: expected {batch} ints in [1, {frames}] (one per item, "
                         "as a list, tuple, tensor or array)")
    return [int(n) for n in values]


def check_conditioning(slot: int | str, value: torch.Tensor, batch: int) -> None:
    """A conditioning tensor has a batch axis of 1 or the mel's batch, no time axis, and finite values."""
    name = f"argument {slot}" if isinstance(slot, int) else slot
    if value.ndim == 0 or value.shape[0] not in (1, batch):
        raise InputError(f"{name} has shape {tuple(value.shape)}: conditioning tensors need a batch axis of 1 or "
                         f"{batch} (the mel's batch) first")
    if value.ndim >= 3 and value.shape[-1] != 1:
        raise InputError(f"{name} has shape {tuple(value.shape)}: a time axis ({value.shape[-1]} frames) cannot be "
                         "split into windows; only per-item conditioning such as g: [B, C, 1] is supported")
    check_finite(name, value)


def check_piece(piece: Any, first: torch.Tensor) -> torch.Tensor:
    """A stream piece has the first piece's batch and mel bins."""
    if not isinstance(piece, torch.Tensor) or piece.ndim != 3 or piece.shape[:2] != first.shape[:2]:
        shape = tuple(piece.shape) if isinstance(piece, torch.Tensor) else type(piece).__name__
        raise InputError(f"stream pieces must all have shape [{first.shape[0]}, {first.shape[1]}, frames]; "
                         f"got {shape}")
    return piece


def _is_int(n: Any) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)
