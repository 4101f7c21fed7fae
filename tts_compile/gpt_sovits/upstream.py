"""Upstream GPT-SoVITS's own code, from a checkout named by `GPT_SOVITS_HOME`: the one place that puts it on the
import path (its modules import each other both from the repository root and from `GPT_SoVITS/`). Used by the
parity tests and the benchmarks; tts_compile itself never imports upstream."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HOME = "GPT_SOVITS_HOME"


def home() -> Path | None:
    """The checkout named by GPT_SOVITS_HOME, or None when it is not set."""
    value = os.environ.get(HOME)
    return Path(value).resolve() if value else None


def use_upstream(root: str | os.PathLike | None = None) -> Path:
    """Put upstream's checkout (`root`, or GPT_SOVITS_HOME) on `sys.path`; returns its `GPT_SoVITS` folder."""
    path = Path(root).resolve() if root is not None else home()
    if path is None or not (path / "GPT_SoVITS").is_dir():
        raise FileNotFoundError(f"{HOME}={path}: expected a GPT-SoVITS checkout (with a GPT_SoVITS/ folder)")
    for entry in (str(path / "GPT_SoVITS"), str(path)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    return path / "GPT_SoVITS"
