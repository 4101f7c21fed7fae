"""Module passes: rewrite a copy of the vocoder into a faster form of the same function.

`optimized_copy` returns a structural copy that shares every parameter and buffer with the original (a weight
loaded into the original is seen by the copy), so the original stays untouched and serves as the eager fallback.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from .._copy import structural_copy
from .activations import fuse_activations_
from .blocks import fold_amp_blocks_
from .layout import channels_last_convs_

__all__ = ["optimized_copy", "fuse_activations_", "channels_last_convs_", "fold_amp_blocks_"]

logger = logging.getLogger(__name__)


def optimized_copy(module: nn.Module, *, channels_last: bool, fuse_activations: bool,
                   inline_activations: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """A weight-sharing copy of `module` with the requested passes applied, and what each pass changed.

    `inline_activations`: fused activations as torch ops for inductor to compile, not the op. The AMP block fold is
    then skipped: handing conv1's bias to the compiled activation made a second graph and a slower start (run 56)."""
    shadow = structural_copy(module, share_weights=True)
    report = {}
    if fuse_activations:
        report["fused_activations"] = fuse_activations_(shadow, inline_activations)
    if channels_last:
        report["channels_last_convs"] = channels_last_convs_(shadow)
    if fuse_activations and channels_last and not inline_activations:
        report["folded_amp_blocks"] = fold_amp_blocks_(shadow)
    return shadow.eval(), report
