"""The planner: windows lie inside the span, kept parts tile the requested frames, each inside its exact region."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tts_compile.core.buckets import Bucket, BucketSet, Ladder, group, plan


def _exact_region(start: int, stop: int, context: int, total: int | None) -> tuple[int, int]:
    return (start if start == 0 else start + context, stop if stop == total else stop - context)


def _check_plan(windows, buckets, keep, span, total) -> None:
    assert windows[0].keep_start == keep[0] and windows[-1].keep_stop == keep[1]
    for before, after in zip(windows, windows[1:]):
        assert before.keep_stop == after.keep_start
    for w in windows:
        assert span[0] <= w.start and w.stop <= span[1], "a window reaches outside the available frames"
        assert w.stop - w.start in buckets.lengths, "a window is not a bucket length"
        lo, hi = _exact_region(w.start, w.stop, buckets.context, total)
        assert lo <= w.keep_start < w.keep_stop <= hi, "kept frames lack context"
    assert len({w.stop - w.start for w in windows}) == 1


@given(context=st.integers(0, 24), chunk=st.integers(1, 300), max_batch=st.sampled_from([1, 2, 4, 8]),
       total=st.integers(1, 3000))
def test_one_shot_plan_covers_every_frame_exactly(context: int, chunk: int, max_batch: int, total: int) -> None:
    buckets = BucketSet.from_chunk_size(chunk, context, max_batch)
    windows = plan(buckets, keep=(0, total), span=(0, total), total=total)
    if windows is None:
        assert total < buckets.lengths[0], "no plan although a window fits"
        return
    _check_plan(windows, buckets, (0, total), (0, total), total)


@given(context=st.integers(0, 16), lengths=st.lists(st.integers(1, 200), min_size=1, max_size=4, unique=True),
       total=st.integers(1, 1500), data=st.data())
def test_stream_steps_plan_with_interior_edges(context, lengths, total, data) -> None:
    lengths = sorted(n + 2 * context for n in lengths)
    buckets = BucketSet(tuple(lengths), context)
    done = data.draw(st.integers(0, total - 1))
    final = data.draw(st.booleans())
    span_start = max(0, done - lengths[-1])
    keep_stop = total if final else total - context
    assume(keep_stop > done)
    windows = plan(buckets, keep=(done, keep_stop), span=(span_start, total), total=total if final else None)
    if windows is not None:
        _check_plan(windows, buckets, (done, keep_stop), (span_start, total), total if final else None)
    elif final:
        assert span_start == 0 and total < lengths[0]  # only an input shorter than every window has no plan


def test_plan_prefers_fewer_frames() -> None:
    buckets = BucketSet((100, 200, 584), context=42)
    windows = plan(buckets, keep=(0, 584), span=(0, 584), total=584)
    assert [(w.start, w.stop) for w in windows] == [(0, 584)]
    assert plan(buckets, keep=(0, 99), span=(0, 99), total=99) is None


def test_span_without_context_is_an_error() -> None:
    with pytest.raises(ValueError, match="lacks the context"):
        plan(BucketSet((50,), context=10), keep=(20, 40), span=(15, 60), total=None)


@given(context=st.integers(0, 30), chunk=st.integers(1, 600), max_batch=st.integers(1, 16))
def test_default_bucket_set(context: int, chunk: int, max_batch: int) -> None:
    buckets = BucketSet.from_chunk_size(chunk, context, max_batch)
    assert buckets.lengths[-1] == chunk + 2 * context
    assert buckets.lengths[0] == min(chunk, 16) + 2 * context
    for shape in buckets.buckets():
        assert shape.batch <= max_batch
        assert shape.batch == 1 or shape.batch * shape.length <= buckets.lengths[-1], "a batch outgrows memory bound"
    sizes = [s.batch * s.length for s in buckets.buckets()]
    assert sizes == sorted(sizes, reverse=True), "warm-up must capture the largest bucket first"


def test_bucket_set_rejects_windows_without_kept_frames() -> None:
    with pytest.raises(ValueError, match=">= 21"):
        BucketSet((20, 40), context=10)
    with pytest.raises(ValueError, match="ascending"):
        BucketSet((40, 30), context=1)


def test_group_packs_into_captured_batches_without_padding() -> None:
    buckets = BucketSet((10, 40), context=1, max_batch=4)
    windows = plan(buckets, keep=(0, 60), span=(0, 60), total=60)
    lengths = {w.stop - w.start for w in windows}
    calls = group(windows, buckets)
    assert sum(len(ws) for _, ws in calls) == len(windows)
    for bucket, ws in calls:
        assert bucket.batch == len(ws) and bucket.batch in buckets.batches(bucket.length)
    assert lengths and all(isinstance(b, Bucket) for b, _ in calls)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5000), smallest=st.sampled_from([16, 32, 64]))
def test_half_octave_buckets_hold_the_length_with_bounded_padding(n, smallest) -> None:
    ladder = Ladder.half_octaves(smallest, 5000)
    size = ladder.fit(n)
    assert size >= n and size % 8 == 0 and ladder.fit(size) == size
    assert size <= max(smallest, 1.5 * n + 8)
    assert ladder.fit(n + 1) >= size


def test_a_handful_of_buckets_serve_every_length() -> None:
    ladder = Ladder.half_octaves(32, 1500)
    assert len({ladder.fit(n) for n in range(1, 1501)}) == 13
    assert ladder.fit(ladder.largest + 1) is None  # past the largest bucket: the caller's own path


def test_power_of_two_ladder_and_bad_sizes() -> None:
    assert Ladder.powers_of_two(1, 16).sizes == (1, 2, 4, 8, 16)
    assert Ladder.powers_of_two(1, 12).sizes == (1, 2, 4, 8)
    with pytest.raises(ValueError, match="distinct ascending"):
        Ladder((4, 2))


@settings(max_examples=30, deadline=None)
@given(limit=st.integers(1, 3000))
def test_a_ladder_ending_at_a_limit_serves_up_to_it_exactly(limit) -> None:
    for ladder in (Ladder.powers_of_two(1, limit), Ladder.half_octaves(32, limit)):
        ended = ladder.ending_at(limit)
        assert ended.largest == limit and ended.fit(limit + 1) is None
        assert set(ended.sizes) - {limit} == {size for size in ladder.sizes if size < limit}
