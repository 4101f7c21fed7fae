"""Copies of a user's module (the one way tts_compile duplicates one) and the fingerprint of its weights."""

from __future__ import annotations

import copy
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


def weights_fingerprint(module: nn.Module) -> tuple[Any, ...]:
    """Storage, in-place write counter, dtype and device of every parameter and buffer: it changes when the weights
    move, are cast or are loaded in place (`load_state_dict`), which copies derived from them must follow."""
    tensors = [*module.parameters(), *module.buffers()]
    return tuple((t.data_ptr(), _version(t), t.dtype, t.device) for t in tensors)


def _version(tensor: torch.Tensor) -> int:
    """In-place write counter; inference-mode tensors have none (and cannot be written in place later)."""
    return 0 if tensor.is_inference() else tensor._version
