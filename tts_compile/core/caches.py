"""Persistent compile caches under one directory (`cache_dir`), so a restarted service skips most of its compiles:
inductor's (`TORCHINDUCTOR_CACHE_DIR`, the directory itself) and Triton's for the project's own kernels
(`TRITON_CACHE_DIR`, its `triton/` folder). Process-wide, through the environment; a variable already set wins."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def use_cache_dir(path: str | os.PathLike | None) -> None:
    """Point inductor's and Triton's persistent caches under `path` (nothing for None)."""
    if path is None:
        return
    root = os.path.abspath(os.fspath(path))
    for variable, where in (("TORCHINDUCTOR_CACHE_DIR", root), ("TRITON_CACHE_DIR", os.path.join(root, "triton"))):
        current = os.environ.get(variable)
        if current is None:
            os.makedirs(where, exist_ok=True)
            os.environ[variable] = where
            logger.info("compile cache: %s=%s", variable, where)
        elif os.path.abspath(current) != where:
            logger.warning("cache_dir=%s: %s=%s is already set and stays", path, variable, current)
