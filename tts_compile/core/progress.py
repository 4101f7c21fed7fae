"""`ProgressBar`: a one-line progress bar on stderr for long warm-ups, drawn only when stderr is a terminal.

Log lines written to stderr while the bar is up would otherwise land on the bar's line and be overwritten by its
next redraw. While a bar is open, the logging handlers that write to stderr go through a stream that clears the
bar's line, writes the record, and redraws the bar below it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

WIDTH = 30  # characters of the bar itself


class _BarStream:
    """Stands in for stderr in the logging handlers while a bar is drawn: clear, write, redraw."""

    def __init__(self, stream: TextIO, bar: "ProgressBar") -> None:
        self.stream, self.bar = stream, bar

    def write(self, text: str) -> int:
        self.stream.write("\r\033[K" + text)
        if text.endswith("\n"):
            self.bar.draw()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class ProgressBar:
    """`with ProgressBar(total, label, enabled) as bar: ... bar.advance(note)`; nothing is drawn unless `enabled`
    and stderr is a terminal."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.done, self.note = total, label, 0, ""
        self.enabled = enabled and sys.stderr.isatty()
        self._handlers: list[logging.StreamHandler] = []

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            for handler in _stderr_handlers():
                handler.setStream(_BarStream(sys.stderr, self))
                self._handlers.append(handler)
            self.draw()
        return self

    def __exit__(self, *exc: object) -> None:
        for handler in self._handlers:
            handler.setStream(sys.stderr)
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def advance(self, note: str) -> None:
        self.done, self.note = self.done + 1, note
        self.draw()

    def draw(self) -> None:
        if self.enabled:
            filled = int(WIDTH * self.done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total} "
                             f"{self.note}\033[K")
            sys.stderr.flush()


def _stderr_handlers() -> list[logging.StreamHandler]:
    """The stream handlers of the root and `tts_compile` loggers that write to stderr."""
    handlers = [*logging.getLogger().handlers, *logging.getLogger("tts_compile").handlers]
    return [h for h in handlers if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr]
