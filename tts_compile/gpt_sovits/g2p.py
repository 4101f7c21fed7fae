"""G2P apart from BERT: upstream's `segment_and_extract_feature_for_text` run with its BERT calls recorded instead
of made (`g2p`), so that one request's BERT runs once for all its segments; in the caller's process or in worker
processes (`G2PPool`), where a long text's G2P (jieba, pypinyin, G2PW: pure Python, seconds for a long text) holds
neither the GIL of the GPU loop nor another request's G2P.

While recorded, `get_bert_feature` answers a marker of upstream's shape and dtype, zeros with row 0 holding the
call's number (1, 2, ...): the features upstream then assembles (markers, and zeros for other languages) show which
call each column came from. A call of an attempt upstream retried (a segment of fewer than 6 phones is made again
with a "." in front) places no column and is dropped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import torch

from .bert import Item

logger = logging.getLogger(__name__)


class Unplaced(Exception):
    """The assembled features hold markers unlike the recorded calls (a frontend that changes its BERT features):
    that segment is made upstream's own way."""


@dataclass(frozen=True)
class Spoken:
    """A segment's G2P: its phones, row 0 of its assembled features (`marks`: the BERT call that made each column,
    0 for zeros) with their width and dtype, and the BERT calls the marks name."""

    phones: list[int]
    marks: torch.Tensor
    width: int
    dtype: torch.dtype
    calls: dict[int, Item]

    def features(self, found: dict[int, torch.Tensor]) -> torch.Tensor:
        """The segment's features (width, L): each call's columns from `found[call]`, the others zeros."""
        out = torch.zeros(self.width, len(self.marks), dtype=self.dtype)
        for number, feature in found.items():
            out[:, self.marks == number] = feature.to(out)
        return out


@contextlib.contextmanager
def recorded(pre: Any, width: int, dtype: torch.dtype) -> Iterator[list[Item]]:
    """While held, `pre.get_bert_feature` records its (text, word2ph) and answers a marker (module docstring)."""
    asked: list[Item] = []

    def record(text: str, word2ph: list) -> torch.Tensor:
        asked.append((text, list(word2ph)))
        mark = torch.zeros(width, sum(word2ph), dtype=dtype)
        mark[0] = len(asked)
        return mark

    saved = pre.__dict__.get("get_bert_feature")
    pre.__dict__["get_bert_feature"] = record
    try:
        yield asked
    finally:
        if saved is None:
            del pre.__dict__["get_bert_feature"]
        else:
            pre.__dict__["get_bert_feature"] = saved


def g2p(pre: Any, piece: str, lang: str, version: str, width: int, dtype: torch.dtype) -> Spoken | None:
    """`pre.segment_and_extract_feature_for_text(piece, lang, version)` with its BERT calls recorded; None for a
    segment with nothing to speak; Unplaced when the marks do not match the calls."""
    with torch.inference_mode(), recorded(pre, width, dtype) as asked:
        phones, marks, norm_text = pre.segment_and_extract_feature_for_text(piece, lang, version)
    if phones is None or norm_text == "":
        return None
    row = marks[0].cpu()
    placed = Counter(row.tolist())
    calls = {number: item for number, item in enumerate(asked, 1) if placed[number]}
    if set(placed) - {0} - set(calls) or any(placed[n] != sum(w2p) for n, (_, w2p) in calls.items()):
        raise Unplaced(f"{piece!r}: BERT features placed unlike upstream's")
    return Spoken(list(phones), row, marks.shape[0], marks.dtype, calls)


_WORKER: dict[str, Any] = {}  # in a worker process: its preprocessor


def _start(factory: Callable[[], Any]) -> None:
    _WORKER["pre"] = factory()


def _ready() -> bool:
    return "pre" in _WORKER


def _work(piece: str, lang: str, version: str, width: int, dtype: torch.dtype) -> Spoken | None:
    return g2p(_WORKER["pre"], piece, lang, version, width, dtype)


class G2PPool:
    """`g2p` in `workers` processes, each with its own preprocessor from `factory` (a picklable callable: the
    processes are spawned). Started at construction: BrokenProcessPool when a worker cannot start."""

    def __init__(self, factory: Callable[[], Any], workers: int) -> None:
        self._new_pool = functools.partial(ProcessPoolExecutor, workers, initializer=_start, initargs=(factory,),
                                           mp_context=multiprocessing.get_context("spawn"))
        self._pool = self._new_pool()
        self._lock = threading.Lock()  # one restart for a pool that broke under several callers
        for ready in [self._pool.submit(_ready) for _ in range(workers)]:  # started now, not in a request
            ready.result()

    def __call__(self, piece: str, lang: str, version: str, width: int, dtype: torch.dtype) -> Spoken | None:
        """`g2p` of `piece` in a worker; BrokenProcessPool when a worker died (the pool starts again for the next
        call)."""
        pool = self._pool
        try:
            return pool.submit(_work, piece, lang, version, width, dtype).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    logger.warning("a G2P worker died; the pool starts again")
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._new_pool()
            raise

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


def upstream_preprocessor(root: str) -> Any:
    """Upstream's `TextPreprocessor` from the checkout at `root`, without a BERT (a G2P worker's)."""
    from .upstream import use_upstream

    use_upstream(root)
    from TTS_infer_pack.TextPreprocessor import TextPreprocessor  # upstream's own, from the user's checkout

    return TextPreprocessor(None, None, torch.device("cpu"))
