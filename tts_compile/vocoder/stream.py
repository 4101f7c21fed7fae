"""`stream`: a vocoder's audio for mel pieces as they arrive (v3/v4's CFM windows, a streaming T2S).

Each frame is emitted once enough frames after it exist to compute it exactly (its context), so the concatenation of
what is emitted equals the one-shot output of the concatenated pieces. The optimizer keeps at most one longest
window of mel behind what it emitted; if it is off or fails along the way, the eager module finishes the stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import torch

from .conditioning import Conditioning
from .inputs import check_layout, check_piece

if TYPE_CHECKING:
    from .optimizer import VocoderOptimizer


def stream(optimizer: "VocoderOptimizer", pieces: Iterable[torch.Tensor], args: Sequence[Any],
           kwargs: Mapping[str, Any]) -> Iterator[torch.Tensor]:
    """Audio for mel `pieces` [B, n_mels, frames_i] as they arrive, piece by piece."""
    guard = optimizer.guard
    buffer, offset, done = None, 0, 0  # mel not yet dropped, its first frame's index, frames emitted
    for piece in pieces:
        buffer = piece if buffer is None else torch.cat([buffer, check_piece(piece, buffer)], dim=-1)
        if buffer.shape[-1] and guard.active:
            audio, done = _step(optimizer, buffer, offset, done, None, args, kwargs)
            if audio is not None:
                yield audio
            setup = optimizer.setup
            if guard.active and setup is not None:
                keep_from = max(offset, done - setup.buckets.lengths[-1])
                buffer, offset = buffer[..., keep_from - offset :], keep_from
    if buffer is None:
        return
    end = offset + buffer.shape[-1]
    audio = _step(optimizer, buffer, offset, done, end, args, kwargs)[0] if guard.active else None
    if audio is None and done < end:  # disabled, or failed along the way: finish with the eager module
        full = optimizer.eager(buffer, *args, **kwargs)
        audio = full[..., (done - offset) * (full.shape[-1] // buffer.shape[-1]) :]
    if audio is not None:
        yield audio


def _step(optimizer: "VocoderOptimizer", buffer: torch.Tensor, offset: int, done: int, total: int | None,
          args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[torch.Tensor | None, int]:
    """One step of the optimized stream; (None, done) when no frame is final yet, or after a logged failure."""
    check_layout(buffer)
    cond = Conditioning.of(args, kwargs, buffer.shape[0])
    step = optimizer.guard.attempt("a stream step", lambda: optimizer.stream_step(buffer, offset, done, total, cond))
    return step or (None, done)
