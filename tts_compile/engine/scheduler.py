"""The scheduler: which rows join and which requests leave the T2S batch, as a pure function of request states.

First come, first served over segments: a request's segments take free rows in order, the oldest request first, so
a long text never waits behind requests that came after it, and its later segments may start while its first ones
decode. A request that was cancelled or whose deadline passed leaves: its running rows are freed at the next step
and its waiting segments dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
