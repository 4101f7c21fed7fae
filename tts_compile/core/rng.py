"""Random-generator state a stage must leave as it found it: a seeded request draws the same numbers whether or not
the optimizer drew some of its own (a probe, a capture example, verification) or undid some (a failed optimized
call, decode steps run past a stop).

Every thread shares the default generators, so whoever saves their state to restore it, or draws from them where a
verification compares two runs, holds `DRAWS` meanwhile: otherwise another thread's draws land between a
verification's two runs (a false mismatch) or a restore rewinds them (numbers repeated). The stages, the engine's
renders and verification hold it; a caller who needs a seeded call's numbers from its seed under threads holds it
around the seeding and the call. The optimizer's own examples and probes draw from private generators instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

DRAWS = threading.RLock()


class RngState:
    """The default generator state of `device` at construction; `restore()` puts it back."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()

    def restore(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(self.state, self.device)
        else:
            torch.set_rng_state(self.state)


@contextlib.contextmanager
def own_rng(device: torch.device) -> Iterator[None]:
    """Draws inside leave the CPU's and `device`'s default generators where they were (holding `DRAWS`)."""
    with DRAWS, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def private_generator(device: torch.device | str, seed: int = 0) -> torch.Generator:
    """A generator of its own on `device`: examples and probes drawn from it leave the default generators alone."""
    return torch.Generator(device=device).manual_seed(seed)
