"""Module passes: rewrite a copy of a model into a faster form of the same function.

`optimized_copy` returns a structural copy that shares every parameter and buffer with the original (a weight
loaded into the original is seen by the copy), so the original stays untouched and serves as the eager fallback.
Every pass is a `swap_` of the children it recognises; what it leaves alone for a reason worth knowing is logged.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from torch import nn

from ..core.weights import structural_copy

logger = logging.getLogger(__name__)


def swap_(model: nn.Module, replace: Callable[[nn.Module], nn.Module | str | None], label: str) -> int:
    """Replace, in place, every submodule of `model` that `replace` maps to a module; `replace` returns a string to
    say why a candidate is left alone (logged) and None for modules it does not concern. Returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = replace(child)
            if isinstance(new, nn.Module):
                setattr(parent, name, new)
                swapped += 1
            elif new is not None:
                logger.info("%s: left %s (%s) alone: %s", label, name, type(child).__name__, new)
    logger.debug("%s: %d swapped", label, swapped)
    return swapped


from .activations import fuse_activations_  # noqa: E402 - the passes use swap_
from .blocks import fold_amp_blocks_  # noqa: E402
from .layout import channels_last_convs_  # noqa: E402

__all__ = ["optimized_copy", "swap_", "fuse_activations_", "channels_last_convs_", "fold_amp_blocks_"]


def optimized_copy(module: nn.Module, *, channels_last: bool, fuse_activations: bool,
                   inline_activations: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """A weight-sharing copy of `module` with the requested passes applied, and what each pass changed.

    `inline_activations`: fused activations as torch ops for inductor to compile, not the op. The AMP block fold is
    then skipped: handing conv1's bias to the compiled activation made a second graph and a slower start."""
    shadow = structural_copy(module, share_weights=True)
    report = {}
    if fuse_activations:
        report["fused_activations"] = fuse_activations_(shadow, inline_activations)
    if channels_last:
        report["channels_last_convs"] = channels_last_convs_(shadow)
    if fuse_activations and channels_last and not inline_activations:
        report["folded_amp_blocks"] = fold_amp_blocks_(shadow)
    return shadow.eval(), report
