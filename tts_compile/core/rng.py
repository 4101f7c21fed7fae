"""Random-generator state a stage must leave as it found it: a seeded request draws the same numbers whether or not
the optimizer drew some of its own (a probe, a capture example, verification) or undid some (a failed optimized
call, decode steps run past a stop)."""

from __future__ import annotations

import contextlib

import torch


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


def own_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Draws inside leave the CPU's and `device`'s default generators where they were."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
