"""Copy a module's structure: the one way tts_compile duplicates a user's module."""

from __future__ import annotations

import copy

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
