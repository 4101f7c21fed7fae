"""Copies of a user's module (the one way tts_compile duplicates one) and fingerprints of its weights.

Two fingerprints, for two kinds of dependents:
* `storage_fingerprint`: where each weight lives. A captured graph reads weights where they were at capture, so it
  must be dropped when a weight moves (`.to()`, `param.data = ...`, `load_state_dict(assign=True)`); an in-place
  load keeps the storage and the graph reads the new values.
* `weights_fingerprint`: where each weight lives and what it holds. A derived copy (a channels-last weight) must be
  rebuilt after an in-place load too. Tensors track in-place writes in a version counter, except inference tensors
  (made under `torch.inference_mode()`), which have none: for those, a content digest.
"""

from __future__ import annotations

import copy
import weakref
from functools import partial
from itertools import chain
from operator import attrgetter, is_not
from typing import Any

import torch
from torch import nn


def structural_copy(module: nn.Module, *, share_weights: bool) -> nn.Module:
    """A deep copy of `module`; with `share_weights`, its parameters and buffers are the original's tensors.

    Tensors kept as plain attributes (old-style `weight_norm` stores the recomputed `weight` that way, a non-leaf
    tensor that cannot be deep-copied) are shared either way: the copy's hooks recompute them from its own
    parameters before every forward.
    """
    shared = {id(v): v for m in module.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)}
    if share_weights:
        shared.update({id(t): t for t in [*module.parameters(), *module.buffers()]})
    return copy.deepcopy(module, memo=shared)


_WALKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> _Walk
_DTYPE, _DEVICE, _VERSION = attrgetter("dtype"), attrgetter("device"), attrgetter("_version")
_PRESENT = partial(is_not, None)


class _Walk:
    """A module's submodules as last walked: their child dicts, the children then, their weight dicts."""

    def __init__(self, module: nn.Module) -> None:
        modules = [module, *(m for m in module.modules() if m is not module)]  # the key itself is held weakly only
        self.child_dicts = [m._modules for m in modules]
        self.children = _values(self.child_dicts)
        self.weight_dicts = [d for m in modules for d in (m._parameters, m._buffers)]


def _values(dicts: list[dict]) -> tuple[Any, ...]:
    return tuple(chain.from_iterable(map(dict.values, dicts)))


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of `module` and its submodules. The submodules are walked again only when one of
    them gained, lost or replaced a child, and every loop runs in C: a fingerprint is paid by every stage call
    (benchmarks/guard.py measures it on upstream's v2ProPlus synthesizer)."""
    walk = _WALKS.get(module)
    if walk is None or _values(walk.child_dicts) != walk.children:
        walk = _WALKS[module] = _Walk(module)
    return list(filter(_PRESENT, chain.from_iterable(map(dict.values, walk.weight_dicts))))  # bias=False: None


def storage_fingerprint(module: nn.Module) -> tuple[Any, ...]:
    """Storage, dtype and device of every parameter and buffer: changes when a weight moves or is replaced."""
    return _storage(_tensors(module))


def weights_fingerprint(module: nn.Module) -> tuple[Any, ...]:
    """`storage_fingerprint` plus each tensor's in-place writes: its version counter, or for inference tensors
    (which have none) a content digest, read from the device in one transfer."""
    tensors = _tensors(module)
    storage = _storage(tensors)
    inference = tuple(map(torch.Tensor.is_inference, tensors))
    if not any(inference):
        return storage + (tuple(map(_VERSION, tensors)),)
    versions = tuple(-1 if frozen else t._version for t, frozen in zip(tensors, inference))
    digested = [t for t, frozen in zip(tensors, inference) if frozen and t.is_floating_point() and t.numel() > 1]
    return storage + (versions,) + content_digest(digested)


def _storage(tensors: list[torch.Tensor]) -> tuple[tuple[Any, ...], ...]:
    return tuple(map(torch.Tensor.data_ptr, tensors)), tuple(map(_DTYPE, tensors)), tuple(map(_DEVICE, tensors))


def content_digest(tensors: list[torch.Tensor]) -> tuple[float, ...]:
    """Per tensor, the norms of the whole and of its first half (so moving values between halves shows too)."""
    with torch.no_grad():
        flat = [t.detach().reshape(-1) for t in tensors]
        halves = [f[: f.numel() // 2] for f in flat]
        norms = torch._foreach_norm(flat + halves)
        return tuple(torch.stack([n.float() for n in norms]).tolist())
