"""The scheduler is a pure function of request states: first come, first served over segments, up to the free rows;
cancelled and expired requests leave."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.engine.request import Params, Segment, new_request
from tts_compile.engine.scheduler import schedule
from tts_compile.engine.stand_ins import voice

VOICE = voice("v2")


def _request(segments: int, timeout: float | None = None):
    segment = Segment(torch.tensor([1, 2]), torch.zeros(1024, 2))
    return new_request(VOICE, [segment] * segments, Params(timeout_s=timeout))


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=6), started=st.integers(0, 4), free=st.integers(0, 12))
def test_first_come_first_served_over_segments(sizes, started, free) -> None:
    queued = [_request(n) for n in sizes]
    queued[0].next_segment = min(started, sizes[0] - 1)
    plan = schedule(queued, [], free, now=0.0)
    expected = [(r, i) for r in queued for i in range(r.next_segment, len(r.segments))][:free]
    assert list(plan.admit) == expected and not plan.leave


def test_cancelled_and_expired_requests_leave_and_take_no_rows() -> None:
    waiting, cancelled, late, running = _request(2), _request(3), _request(1, timeout=1.0), _request(2)
    cancelled.cancelled.set()
    plan = schedule([cancelled, late, waiting], [running], 10, now=late.submitted + 2.0)
    assert set(plan.leave) == {cancelled, late}
    assert [r for r, _ in plan.admit] == [waiting, waiting]
    running.cancelled.set()
    assert running in schedule([], [running], 10, now=0.0).leave
