"""`RngState`: a device's random-generator state, saved and restored, so an accelerator can undo draws that
upstream would not have made (a failed optimized call, decode steps run past a stop) and seeded runs stay upstream's."""

from __future__ import annotations

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
