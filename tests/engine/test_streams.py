"""Streams through the engine (stand-in models, CPU, float32): a stream's segments arrive one by one, in order, the
first before the last is rendered; each is its own segment's audio whatever else runs; a stream cancelled mid-way
frees its rows."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.core.guard import InputError
from tts_compile.engine import Cancelled, Params, TokenChunks, stand_ins
from tts_compile.engine.render import Job, fragment
from tts_compile.engine.request import MARKS, Status
from tts_compile.engine.sampling import row_seed

EAGER = {"compile_mode": "eager", "max_rows": 8}
TEXT = "今天天气很好！我们去公园吧。好。"  # three segments
OTHERS = ["你好，欢迎使用。", "一二三四五六七八九十，十一十二。", "好。"]


@pytest.fixture(scope="module", params=["v2ProPlus", "v4"])
def engine(request):
    with stand_ins.engine(request.param, **EAGER, render_workers=2) as engine:
        engine.voice_ = stand_ins.voice(request.param)
        yield engine


def test_a_stream_gives_each_segment_in_order_and_the_whole_at_the_end(engine) -> None:
    segments = stand_ins.segments(TEXT)
    params = Params(seed=11, max_tokens=30)
    handle = engine.submit(engine.voice_, segments, params, stream=True)
    chunks = list(handle.chunks(120))
    audio, rate = handle.result(0)
    assert len(chunks) == len(segments) == 3 and rate == engine.version.sample_rate
    assert torch.equal(audio, torch.cat(chunks))
    for index, chunk in enumerate(chunks):  # segment `index`'s tokens, rendered alone with its own seed
        assert torch.equal(chunk, _alone(engine, handle.request, index))
    whole = engine.submit(engine.voice_, segments, params)  # not streamed: the same tokens, one decode
    whole.result(120)
    assert whole.request.tokens == handle.request.tokens


def _alone(engine, request, index: int) -> torch.Tensor:
    """Segment `index` of `request` rendered alone with its own seed, as the engine hands it out."""
    with torch.inference_mode():
        [audio] = engine.renderer.render(Job(request, (index,), row_seed(request.seed, index)))
    return fragment(audio.float().cpu(), request.params.fragment_interval, engine.version.sample_rate)


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_a_stream_is_the_same_alone_or_amid_others(engine, data) -> None:
    """Batch invariance holds for streams: the chunks of a stream alone equal those amid other requests, streamed
    or not, that arrive around it, whether the loop waits for streams' first renders (`first_alone`) or not."""
    params = Params(seed=data.draw(st.integers(0, 2**40)), max_tokens=data.draw(st.integers(5, 40)))
    alone = list(engine.submit(engine.voice_, stand_ins.segments(TEXT), params, stream=True).chunks(120))
    others = data.draw(st.lists(st.tuples(st.sampled_from(OTHERS), st.booleans(), st.integers(0, 2**40)),
                                min_size=1, max_size=4))
    engine.first_alone = data.draw(st.booleans(), label="first_alone")  # the loop waits for first renders, or not
    handles = [engine.submit(engine.voice_, stand_ins.segments(text), Params(seed=seed, max_tokens=30),
                             stream=streamed) for text, streamed, seed in others[:2]]
    mine = engine.submit(engine.voice_, stand_ins.segments(TEXT), params, stream=True)
    handles += [engine.submit(engine.voice_, stand_ins.segments(text), Params(seed=seed, max_tokens=30),
                              stream=streamed) for text, streamed, seed in others[2:]]
    amid = list(mine.chunks(120))
    assert len(amid) == len(alone) and all(torch.equal(a, b) for a, b in zip(alone, amid))
    for handle in handles:
        handle.result(120)
    engine.first_alone = engine.config.first_alone


def test_the_first_segment_arrives_before_the_last_is_rendered() -> None:
    """The later segments' renders are held back (queued only once the gate opens): the first one's audio still
    comes, and the handle is not done."""
    with stand_ins.engine("v2", **EAGER) as engine:
        gate, later = threading.Event(), engine._render_later

        def held(request, indices):
            if indices != (0,):
                threading.Thread(target=lambda: (gate.wait(60), later(request, indices))).start()
            else:
                later(request, indices)

        engine._render_later = held
        handle = engine.submit(stand_ins.voice("v2"), stand_ins.segments(TEXT), Params(seed=1, max_tokens=20),
                               stream=True)
        chunks = handle.chunks(60)
        first = next(chunks)
        assert first.numel() > 0 and not handle.done()
        gate.set()
        assert len([first, *chunks]) == 3


@pytest.mark.parametrize("mode", ["whole", "segments", "chunks"])
def test_a_requests_timings_follow_its_way_in_order(mode) -> None:
    with stand_ins.engine("v2", **EAGER) as engine:
        handle = engine.submit(stand_ins.voice("v2"), stand_ins.segments(TEXT), Params(seed=6, max_tokens=20),
                               stream=mode != "whole", chunks=TokenChunks(4, 2) if mode == "chunks" else None)
        first = next(iter(handle.chunks(60)))
        assert first.numel() > 0 and "first_audio" in handle.timings()
        handle.result(60)
        timings = handle.timings()
        assert list(timings) == list(MARKS) and list(timings.values()) == sorted(timings.values())
        assert timings["prefilled"] >= 0


def test_a_failed_request_has_no_first_audio() -> None:
    with stand_ins.engine("v2", **EAGER) as engine:
        engine.renderer.render = lambda job: 1 / 0
        handle = engine.submit(stand_ins.voice("v2"), stand_ins.segments(TEXT), Params(seed=6, max_tokens=20))
        with pytest.raises(ZeroDivisionError):
            handle.result(60)
        assert "first_audio" not in handle.timings() and "finished" in handle.timings()


def test_a_stream_is_async_iterable() -> None:
    with stand_ins.engine("v2", **EAGER) as engine:
        voice, segments = stand_ins.voice("v2"), stand_ins.segments(TEXT)

        async def main():
            handle = engine.submit(voice, segments, Params(seed=3, max_tokens=20), stream=True)
            return [chunk async for chunk in handle], await handle

        chunks, (audio, _) = asyncio.run(main())
        assert len(chunks) == 3 and torch.equal(torch.cat(chunks), audio)


def test_a_stream_cancelled_mid_way_frees_its_rows() -> None:
    """The later segments are kept decoding (their stops hidden from the engine) until the stream is cancelled
    after its first audio: their rows are freed and the engine serves the next request."""
    with stand_ins.engine("v2", **EAGER) as engine:
        stopped = engine.t2s.stopped
        engine.t2s.stopped = lambda slots: {slot: tokens for slot, tokens in stopped(slots).items()
                                            if engine._rows[slot][1] == 0}
        voice = stand_ins.voice("v2")
        handle = engine.submit(voice, stand_ins.segments(TEXT), Params(seed=2, max_tokens=1500), stream=True)
        chunks = handle.chunks(60)
        next(chunks)
        assert engine.stats()["rows"] == 2
        handle.cancel()
        with pytest.raises(Cancelled):
            list(chunks)
        deadline = time.monotonic() + 60
        while engine.stats()["rows"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats()["rows"] == 0 and len(engine.t2s.free) == engine.t2s.pool.rows
        assert handle.status == Status.CANCELLED
        engine.t2s.stopped = stopped
        engine.submit(voice, stand_ins.segments(OTHERS[0]), Params(max_tokens=10)).result(60)


def test_stream_must_be_a_bool() -> None:
    with stand_ins.engine("v2", **EAGER) as engine:
        with pytest.raises(InputError, match="stream='yes' is invalid"):
            engine.submit(stand_ins.voice("v2"), stand_ins.segments("好。"), stream="yes")


def test_a_stream_whose_pieces_arrive_out_of_order_is_whole() -> None:
    """Segment 0's piece is handed over last (after 1 and 2 are in): the stream and its result still hold every
    piece, in order, and no render worker dies."""
    with stand_ins.engine("v2", **EAGER, render_workers=3) as engine:
        handle = engine.submit(stand_ins.voice("v2"), stand_ins.segments(TEXT), Params(seed=5, max_tokens=20),
                               stream=True)
        deliver, later = handle.deliver, threading.Event()
        seen = set()

        def out_of_order(index, audio):
            if index == 0:
                assert later.wait(60)
            count = deliver(index, audio)
            seen.add(index)
            if {1, 2} <= seen:
                later.set()
            return count

        handle.deliver = out_of_order
        chunks = list(handle.chunks(120))
        audio, _ = handle.result(0)
        assert len(chunks) == 3 and torch.equal(audio, torch.cat(chunks))
        assert all(thread.is_alive() for thread in engine._threads)


def test_a_stream_that_fails_while_its_segments_wait_does_not_block_others() -> None:
    """Two rows, a stream of four segments whose first render fails while the last two still wait for rows: the
    stream fails, its waiting segments leave the queue, and the next request is served."""
    with stand_ins.engine("v2", compile_mode="eager", max_rows=2) as engine:
        render = engine.renderer.render

        def failing(job):
            if job.request.segments[job.indices[0]] is doomed[0]:
                raise RuntimeError("a broken render")
            return render(job)

        engine.renderer.render = failing
        doomed = stand_ins.segments("好。一二三。四五六。七八九。")
        handle = engine.submit(stand_ins.voice("v2"), doomed, Params(seed=1, max_tokens=300), stream=True)
        with pytest.raises(RuntimeError, match="a broken render"):
            list(handle.chunks(60))
        after = engine.submit(stand_ins.voice("v2"), stand_ins.segments(OTHERS[2]), Params(max_tokens=10))
        after.result(60)
        deadline = time.monotonic() + 30
        while (engine.stats()["queued"] or engine.stats()["rows"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats()["queued"] == 0 and engine.stats()["rows"] == 0


def test_a_first_render_queued_after_the_worker_took_a_later_one_goes_first(monkeypatch) -> None:
    """`first_alone`, one render worker: a stream's first render queued just after the worker took another request's
    render is rendered first (the other goes back to the queue), not left waiting behind it."""
    import queue

    from tts_compile.engine.engine import FIRST, NEXT
    from tts_compile.engine.request import new_request

    arrivals = []  # called with each item the worker takes

    class Watched(queue.PriorityQueue):
        def get(self, *args, **kwargs):
            item = super().get(*args, **kwargs)
            for arrive in arrivals:
                arrive(item)
            return item

    monkeypatch.setattr(queue, "PriorityQueue", Watched)
    with stand_ins.engine("v2", **EAGER, render_workers=1) as engine:
        assert engine.first_alone
        voice, order = stand_ins.voice("v2"), []
        first = new_request(voice, tuple(stand_ins.segments("好。")), Params(seed=1), stream=True)
        arrivals.append(lambda item: item[0] == NEXT and not order and
                        engine._queue_render(FIRST, Job(first, (0,), 0)))
        render = engine._render_job
        monkeypatch.setattr(engine, "_render_job", lambda job: order.append(job.request.id) or (
            None if job.request is first else render(job)))
        handle = engine.submit(voice, stand_ins.segments(TEXT), Params(seed=2, max_tokens=20))
        assert handle.result(120)[0].numel() > 0
        assert order == [first.id, handle.request.id]
        assert (engine._firsts, engine._firsts_queued) == (0, 0)
