"""Random-generator state a stage must leave as it found it: a seeded request draws the same numbers whether or not
the optimizer drew some of its own (a probe, a capture example, verification) or undid some (a failed optimized
call, decode steps run past a stop).

Every thread shares the default generators, so whoever saves their state to restore it, or draws from them where a
verification compares two runs, holds `DRAWS` meanwhile: otherwise another thread's draws land between a
verification's two runs (a false mismatch) or a restore rewinds them (numbers repeated). The stages and verification
hold it; a caller who needs a seeded call's numbers from its seed under threads holds it around the seeding and the
call. The optimizer's own examples and probes draw from private generators instead. A CUDA graph capture holds it
too (`core.runner`): it registers the default CUDA generator, which no other thread may draw from meanwhile.

A thread inside `own_draws(seed)` (the engine's renders) needs no lock for the stages' draws: they come from
generators of its own, seeded as `torch.manual_seed(seed)` seeds the default ones (the same numbers). Upstream's own
code, where a stage hands a call to it, draws from the default generators: `upstream_draws` lends them the thread's
state under `DRAWS` and takes back where they end.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

DRAWS = threading.RLock()
_OWN = threading.local()  # .generators: {device: generator} inside `own_draws`


class RngState:
    """The state of `generator` (default: the default generator of `device`) at construction; `restore()` puts it
    back."""

    def __init__(self, device: torch.device, generator: torch.Generator | None = None) -> None:
        self.device, self.generator = device, generator
        self.state = generator.get_state() if generator is not None else _default_state(device)

    def restore(self) -> None:
        if self.generator is not None:
            self.generator.set_state(self.state)
        else:
            _set_default_state(self.device, self.state)


def _default_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_default_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@contextlib.contextmanager
def own_draws(seed: int, device: torch.device) -> Iterator[None]:
    """The stages' draws in this thread come from its own generators (CPU and `device`), seeded with `seed`: the
    numbers the default generators give after `torch.manual_seed(seed)`, with no lock held."""
    _OWN.generators = {d: torch.Generator(device=d).manual_seed(seed) for d in {torch.device("cpu"), _indexed(device)}}
    try:
        yield
    finally:
        del _OWN.generators


def own_generator(device: torch.device) -> torch.Generator | None:
    """This thread's generator for `device` inside `own_draws`; None elsewhere (the default generator draws)."""
    generators = getattr(_OWN, "generators", None)
    return None if generators is None else generators.get(_indexed(device))


def _indexed(device: torch.device) -> torch.device:
    """`device` with its index ("cuda" is the current CUDA device): the generators' key."""
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" and device.index is None \
        else device


@contextlib.contextmanager
def upstream_draws() -> Iterator[None]:
    """Upstream's code inside draws from the default generators (holding `DRAWS`). Inside `own_draws` they start
    from this thread's generators' state, which then continue from where they end; the default generators are left
    as they were."""
    generators = getattr(_OWN, "generators", None)
    with DRAWS:
        if generators is None:
            yield
            return
        with torch.random.fork_rng(devices=[d for d in generators if d.type == "cuda"]):
            for d, generator in generators.items():
                _set_default_state(d, generator.get_state())
            yield
            for d, generator in generators.items():
                generator.set_state(_default_state(d))


@contextlib.contextmanager
def own_rng(device: torch.device) -> Iterator[None]:
    """Draws inside leave the CPU's and `device`'s default generators where they were (holding `DRAWS`)."""
    with DRAWS, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def private_generator(device: torch.device | str, seed: int = 0) -> torch.Generator:
    """A generator of its own on `device`: examples and probes drawn from it leave the default generators alone."""
    return torch.Generator(device=device).manual_seed(seed)
