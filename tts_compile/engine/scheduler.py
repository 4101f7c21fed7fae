"""The scheduler: which rows join and which requests leave the T2S batch, as a pure function of request states;
and the order renders are taken in.

First come, first served over segments: a request's segments take free rows in order, the oldest request first, so
a long text never waits behind requests that came after it, and its later segments may start while its first ones
decode. A request that was cancelled or whose deadline passed leaves: its running rows are freed at the next step
and its waiting segments dropped.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from .request import Request


@dataclass(frozen=True)
class Plan:
    """One scheduling decision: rows to start, as (request, segment index) in order, and requests that leave."""

    admit: tuple[tuple[Request, int], ...]
    leave: tuple[Request, ...]


def schedule(queued: Sequence[Request], running: Sequence[Request], free_rows: int, now: float) -> Plan:
    """Requests of `queued` (submission order, some with segments left) and `running` (rows decoding) that leave, and
    segments of the queued ones that take the `free_rows` rows free now (rows that leaving frees serve the next
    round)."""
    leave = tuple(r for r in (*running, *queued) if r.expired(now))
    admit = []
    for request in queued:
        if request in leave:
            continue
        for index in range(request.next_segment, len(request.segments)):
            if len(admit) == free_rows:
                return Plan(tuple(admit), leave)
            admit.append((request, index))
    return Plan(tuple(admit), leave)


STOP, FIRST, NEXT = -1, 0, 1  # render priorities: close, first audio (a stream's first piece), the rest


class RenderQueue:
    """The render jobs, taken by priority, then arrival. A worker `first_only` takes first-audio jobs (and STOP)
    alone: kept free for them, a new stream's first piece never waits behind other renders."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Any]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()

    def put(self, priority: int, job: Any) -> None:
        with self._cv:
            heapq.heappush(self._heap, (priority, next(self._order), job))
            self._cv.notify_all()

    def get(self, first_only: bool = False) -> Any:
        """The next job this worker may take (None: stop), waiting for one."""
        with self._cv:
            self._cv.wait_for(lambda: self._heap and (not first_only or self._heap[0][0] <= FIRST))
            return heapq.heappop(self._heap)[2]
