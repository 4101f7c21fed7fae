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


class MelStream:
    """A stream fed piece by piece: `push(piece)` gives the audio that is final now (None if none), `close()` the
    rest. For callers that get their pieces one call at a time (the engine's render jobs); `stream` is built on it."""

    def __init__(self, optimizer: "VocoderOptimizer", args: Sequence[Any] = (),
                 kwargs: Mapping[str, Any] | None = None) -> None:
        self.optimizer, self.args, self.kwargs = optimizer, args, kwargs or {}
        self.buffer: torch.Tensor | None = None  # mel not yet dropped
        self.offset = self.done = 0  # the buffer's first frame's index, frames emitted

    def push(self, piece: torch.Tensor) -> torch.Tensor | None:
        """Audio for the frames that are final once `piece` [B, n_mels, frames] follows the pieces before it."""
        before = self.buffer
        buffer = self.buffer = piece if before is None else torch.cat([before, check_piece(piece, before)], dim=-1)
        guard = self.optimizer.guard
        if not buffer.shape[-1] or not guard.active:
            return None
        audio, self.done = _step(self.optimizer, buffer, self.offset, self.done, None, self.args, self.kwargs)
        setup = self.optimizer.setup
        if guard.active and setup is not None:
            keep_from = max(self.offset, self.done - setup.buckets.lengths[-1])
            self.buffer, self.offset = buffer[..., keep_from - self.offset:], keep_from
        return audio

    def close(self) -> torch.Tensor | None:
        """The audio of every frame not emitted yet (the eager module's, if the optimizer is off or failed)."""
        buffer, optimizer = self.buffer, self.optimizer
        if buffer is None:
            return None
        end = self.offset + buffer.shape[-1]
        audio = _step(optimizer, buffer, self.offset, self.done, end, self.args, self.kwargs)[0] \
            if optimizer.guard.active else None
        if audio is None and self.done < end:  # disabled, or failed along the way: finish with the eager module
            full = optimizer.eager(buffer, *self.args, **self.kwargs)
            audio = full[..., (self.done - self.offset) * (full.shape[-1] // buffer.shape[-1]):]
        self.buffer = None
        return audio


def stream(optimizer: "VocoderOptimizer", pieces: Iterable[torch.Tensor], args: Sequence[Any],
           kwargs: Mapping[str, Any]) -> Iterator[torch.Tensor]:
    """Audio for mel `pieces` [B, n_mels, frames_i] as they arrive, piece by piece."""
    fed = MelStream(optimizer, args, kwargs)
    for piece in pieces:
        if (audio := fed.push(piece)) is not None:
            yield audio
    if (audio := fed.close()) is not None:
        yield audio


def _step(optimizer: "VocoderOptimizer", buffer: torch.Tensor, offset: int, done: int, total: int | None,
          args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[torch.Tensor | None, int]:
    """One step of the optimized stream; (None, done) when no frame is final yet, or after a logged failure."""
    check_layout(buffer)
    cond = Conditioning.of(args, kwargs, buffer.shape[0])
    step = optimizer.guard.attempt("a stream step", lambda: optimizer.stream_step(buffer, offset, done, total, cond))
    return step or (None, done)
