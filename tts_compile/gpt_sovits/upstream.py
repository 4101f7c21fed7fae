"""Upstream GPT-SoVITS's own code, from a checkout named by `GPT_SOVITS_HOME`: the one place that puts it on the
import path (its modules import each other both from the repository root and from `GPT_SoVITS/`). Used by the
parity tests and the benchmarks; tts_compile itself never imports upstream."""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Callable
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


def upstream_method(module: str, cls: str, name: str, **names: object) -> Callable[..., object]:
    """Upstream's method `cls.name` from its checkout's source file `module` (relative to `GPT_SoVITS/`), compiled
    alone with `names` as its globals: for a method whose module imports more than its own body needs (upstream's
    TextPreprocessor imports the whole G2P stack and torchaudio)."""
    path = use_upstream() / module
    [owner] = [n for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef) and
               n.name == cls]
    [method] = [n for n in owner.body if isinstance(n, ast.FunctionDef) and n.name == name]
    namespace = dict(names)
    exec(compile(ast.Module([method], []), str(path), "exec"), namespace)  # noqa: S102 - upstream's own method
    return namespace[name]
