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


_WALKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (its submodules, their children)


def _children(modules: list[nn.Module]) -> tuple[int, ...]:
    return tuple(id(child) for m in modules for child in m._modules.values())


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of `module` and its submodules. The submodules are walked again only when one of
    them gained, lost or replaced a child: the walk was most of a fingerprint's cost (1.9 ms of host time per call
    for upstream's v2ProPlus synthesizer on the H200's host, benchmarks/guard.py), which every stage call pays."""
    walked = _WALKS.get(module)
    if walked is None or _children([module, *walked[0]]) != walked[1]:
        submodules = [m for m in module.modules() if m is not module]  # not the key itself: the entry stays weak
        walked = (submodules, _children([module, *submodules]))
        _WALKS[module] = walked
    return [t for m in (module, *walked[0]) for d in (m._parameters, m._buffers) for t in d.values() if t is not None]


def storage_fingerprint(module: nn.Module) -> tuple[Any, ...]:
    """Storage, dtype and device of every parameter and buffer: changes when a weight moves or is replaced."""
    return tuple((t.data_ptr(), t.dtype, t.device) for t in _tensors(module))


def weights_fingerprint(module: nn.Module) -> tuple[Any, ...]:
    """`storage_fingerprint` plus each tensor's in-place writes: its version counter, or for inference tensors
    (which have none) a content digest, read from the device in one transfer."""
    tensors = _tensors(module)
    marks = tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device) for t in tensors)
    frozen = [t for t in tensors if t.is_inference() and t.is_floating_point() and t.numel() > 1]
    return marks + content_digest(frozen) if frozen else marks


def content_digest(tensors: list[torch.Tensor]) -> tuple[float, ...]:
    """Per tensor, the norms of the whole and of its first half (so moving values between halves shows too)."""
    with torch.no_grad():
        flat = [t.detach().reshape(-1) for t in tensors]
        halves = [f[: f.numel() // 2] for f in flat]
        norms = torch._foreach_norm(flat + halves)
        return tuple(torch.stack([n.float() for n in norms]).tolist())
