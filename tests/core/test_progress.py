"""The warm-up progress bar and log lines share stderr without overwriting each other."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from tts_compile.core.progress import ProgressBar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_during_a_bar_get_their_own_line_and_the_bar_comes_back(monkeypatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with ProgressBar(2, "capturing", enabled=True) as bar:
            bar.advance("1x60")
            logging.getLogger("tts_compile.test").warning("bucket ready")
            bar.advance("2x60")
        logging.getLogger("tts_compile.test").warning("after")
    finally:
        root.removeHandler(handler)
    text = terminal.getvalue()
    assert "\r\033[Kbucket ready\n\rcapturing [" in text  # cleared, written, bar redrawn below it
    assert text.endswith("2/2 2x60\033[K\nafter\n")  # the bar's last state ends with a newline; the handler restored
    assert handler.stream is terminal


@pytest.mark.parametrize("tty", [False, True])
def test_nothing_is_drawn_unless_enabled_on_a_terminal(monkeypatch, tty) -> None:
    stream = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with ProgressBar(3, "x", enabled=False) as bar:
        bar.advance("a")
    with ProgressBar(3, "x", enabled=True) as bar:
        bar.advance("a")
    assert (stream.getvalue() != "") is tty
