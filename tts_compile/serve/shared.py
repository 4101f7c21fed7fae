"""Weight switches that reach every replica (Ray Serve): the weights the deployment serves, recorded in
`.weights.json` in the voices directory the replicas share. The replica that gets `/set_*_weights` loads them, then
records them; every replica follows the record before it serves a request (a cheap `stat`; the request waits while
new weights load, as requests wait on a single server's switch) and when it starts, so a replacement comes up on the
switched weights, not on its config's. Writers hold a lock file (`flock`: one host, or a file system that honours it
across hosts); the record is replaced atomically, so readers never see half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .app import HTTPError
from .backend import Backend

logger = logging.getLogger(__name__)

RECORD, LOCK = ".weights.json", ".weights.lock"
KINDS = ("gpt", "sovits")


class SharedWeights:
    """One replica's side of the record: `switch` its backend and record the switch, `follow` the others'."""

    def __init__(self, directory: str | Path, backend: Backend) -> None:
        self.record, self.backend = Path(directory) / RECORD, backend
        self._lock = threading.Lock()
        self._seen: tuple[int, ...] | None = None  # the record this replica follows (its stat), None: none yet
        self._problems: dict[str, str] = {}  # kind -> why this replica cannot load the recorded weights (503s)

    def switch(self, kind: str, path: str) -> None:
        """Load `kind`'s weights from `path` here (InputError, and nothing recorded, when they do not load), then
        record them for every replica."""
        with self._lock:
            self._follow()
            self.backend.set_weights(kind, path)
            with self._locked():
                current = _stat(self.record) == self._seen  # else another switch came meanwhile: follow it next
                record = self._read()
                record[kind] = path
                temporary = self.record.with_name(f"{RECORD}.{os.getpid()}.tmp")
                temporary.write_text(json.dumps(record))
                os.replace(temporary, self.record)
                if current:
                    self._seen = _stat(self.record)
            self._problems.pop(kind, None)

    def follow(self) -> None:
        """Take the weights another replica switched to since the last look (blocking while they load);
        HTTPError 503 while this replica cannot load them."""
        if _stat(self.record) != self._seen:
            with self._lock:
                self._follow()
        if self._problems:
            raise HTTPError(503, "; ".join(self._problems.values()))

    def _follow(self) -> None:
        with self._locked():
            stat = _stat(self.record)
            if stat == self._seen:
                return
            record = self._read()
            self._seen = stat
        for kind in KINDS:
            path = record.get(kind)
            if not path or path == self.backend.loaded.get(kind):
                continue
            logger.info("serve: following the deployment's switch to %s weights %s", kind, path)
            try:
                self.backend.set_weights(kind, path)
                self._problems.pop(kind, None)
            except Exception as exc:  # noqa: BLE001 - this replica cannot serve the deployment's weights
                self._problems[kind] = (f"this replica cannot load the {kind} weights {path!r} that the deployment "
                                        f"switched to: {exc}")
                logger.error("serve: %s", self._problems[kind])

    def _read(self) -> dict[str, str]:
        """The recorded weights by kind; none for a record that is missing or not one (logged: the next switch
        writes a good one)."""
        try:
            record = json.loads(self.record.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            logger.error("serve: %s is not a weights record (%s); it is ignored", self.record, exc)
            return {}
        return {kind: record[kind] for kind in KINDS if isinstance(record.get(kind), str)}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The record's lock, across the replicas' processes."""
        with open(self.record.with_name(LOCK), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _stat(path: Path) -> tuple[int, ...] | None:
    """What changes whenever the record is replaced (a new file each time); None while there is none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
