"""The engine on the stand-in models (CPU, float32): a request's tokens and audio are its own whatever else runs
(batch invariance), greedy tokens are upstream's, and the queue, cancellation, deadlines and failures behave."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.core.guard import InputError
from tts_compile.engine import (
    Cancelled,
    DeadlinePassed,
    Engine,
    EngineClosed,
    Params,
    QueueFull,
    Segment,
    TokenChunks,
    stand_ins,
)
from tts_compile.engine.render import cut
from tts_compile.engine.request import Status

EAGER = {"compile_mode": "eager", "max_rows": 8}
PADDED = 2e-5  # fp32 max abs, the stage's padded decode vs the exact one (tests/gpt_sovits/test_sovits.py)
TEXTS = ["你好，欢迎使用。", "今天天气很好！我们去公园吧。", "好。", "一二三四五六七八九十，十一十二。"]


@pytest.fixture(scope="module", params=["v2ProPlus", "v4"])
def engine(request):
    """Two render workers: requests render at the same time, and each one's noise must still be its own."""
    with stand_ins.engine(request.param, **EAGER, render_workers=2) as engine:
        engine.voice_ = stand_ins.voice(request.param)
        yield engine


def _run(engine, text: str, params: Params):
    handle = engine.submit(engine.voice_, stand_ins.segments(text), params)
    audio, rate = handle.result(120)
    return handle.request.tokens, audio


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_a_request_is_the_same_alone_or_amid_others(engine, data) -> None:
    """Batch invariance: tokens and audio of a request decoded alone equal those decoded while other requests (any
    texts, parameters, arrival times) share the batch, exactly."""
    params = st.builds(Params, top_k=st.integers(1, 30), top_p=st.sampled_from([1.0, 0.7]),
                       temperature=st.sampled_from([1.0, 0.5]), repetition_penalty=st.sampled_from([1.0, 1.35]),
                       seed=st.integers(0, 2**40), max_tokens=st.integers(5, 60))
    mine = (data.draw(st.sampled_from(TEXTS)), data.draw(params))
    alone = _run(engine, *mine)
    others = data.draw(st.lists(st.tuples(st.sampled_from(TEXTS), params), min_size=1, max_size=5))
    delays = data.draw(st.lists(st.floats(0, 0.02), min_size=len(others) + 1, max_size=len(others) + 1))
    handles = []
    for i, (text, p) in enumerate([*others[: len(others) // 2], mine, *others[len(others) // 2:]]):
        time.sleep(delays[i])
        handles.append(engine.submit(engine.voice_, stand_ins.segments(text), p))
    mine_handle = handles[len(others) // 2]
    audio, _ = mine_handle.result(120)
    assert mine_handle.request.tokens == alone[0] and torch.equal(audio, alone[1])
    for handle in handles:
        handle.result(120)


@pytest.mark.parametrize("stream", [True, False])
def test_the_audio_is_each_segments_then_its_silence(stream) -> None:
    """As upstream's audio_postprocess hands segments out: each one's audio, then fragment_interval seconds of
    silence; the sound does not depend on the interval. Not streamed, the one decode's audio is cut where the
    segments' tokens meet."""
    with stand_ins.engine("v2", **EAGER) as engine:
        voice, segments = stand_ins.voice("v2"), stand_ins.segments(TEXTS[1])
        results = {}
        for interval in (0.0, 0.3):
            handle = engine.submit(voice, segments, Params(seed=4, max_tokens=20, fragment_interval=interval),
                                   stream=stream)
            results[interval] = handle.result(60)[0]
            tokens = [len(handle.request.tokens[i]) for i in range(len(segments))]
        silence = int(0.3 * engine.version.sample_rate)
        bare = cut(results[0.0], tokens)
        assert len(bare) == len(segments) == 2
        assert torch.equal(results[0.3], torch.cat([torch.cat([piece, torch.zeros(silence)]) for piece in bare]))


def test_cut_splits_where_the_inputs_meet() -> None:
    audio = torch.arange(16.0)
    assert [len(p) for p in cut(audio, [3, 5])] == [6, 10] and torch.equal(torch.cat(cut(audio, [3, 5])), audio)
    assert [len(p) for p in cut(torch.arange(10.0), [1, 1, 1])] == [3, 4, 3]


@pytest.mark.parametrize("text", TEXTS[:2])
def test_greedy_tokens_equal_upstreams_alone_and_amid_others(text) -> None:
    """top_k=1: each segment's tokens are the stand-in T2S's own greedy batch decode of it (upstream's interface),
    with the same prompt and cap."""
    with stand_ins.engine("v2", **EAGER) as engine:
        voice, segments = stand_ins.voice("v2"), stand_ins.segments(text)
        params = Params(top_k=1, max_tokens=40, seed=1)
        noise = [engine.submit(voice, stand_ins.segments(t), Params(seed=i)) for i, t in enumerate(TEXTS)]
        handle = engine.submit(voice, segments, params)
        handle.result(120)
        [h.result(120) for h in noise]
        t2s = stand_ins.models("v2")[0]
        for i, segment in enumerate(segments):
            phones = torch.cat([voice.prompt_phones, segment.phones])
            bert = torch.cat([voice.prompt_bert, segment.bert], 1)
            rows, _ = t2s.infer_panel_batch_infer([phones], None, voice.prompt_tokens[None], [bert], top_k=1,
                                                  early_stop_num=params.max_tokens - 1,
                                                  repetition_penalty=params.repetition_penalty)
            assert handle.request.tokens[i] == rows[0][len(voice.prompt_tokens):].tolist()


def test_greedy_tokens_without_a_prompt_equal_the_models_own() -> None:
    """Upstream's no-prompt mode (an empty transcript): a voice of no prompt tokens, phones or features; each
    segment's greedy tokens are the T2S's own decode of it with `prompts=None`."""
    with stand_ins.engine("v2", **EAGER) as engine:
        voice, segments = stand_ins.voice("v2", prompt=False), stand_ins.segments(TEXTS[1])
        params = Params(top_k=1, max_tokens=30, seed=1)
        handle = engine.submit(voice, segments, params)
        handle.result(120)
        t2s = stand_ins.models("v2")[0]
        for i, segment in enumerate(segments):
            rows, _ = t2s.infer_panel_batch_infer([segment.phones], None, None, [segment.bert], top_k=1,
                                                  early_stop_num=params.max_tokens - 1,
                                                  repetition_penalty=params.repetition_penalty)
            assert handle.request.tokens[i] == rows[0].tolist()


def _gate(engine) -> threading.Event:
    """Hold the engine's decode steps until the returned event is set: what a test sees cannot race the decode."""
    gate, steps = threading.Event(), engine.t2s.steps
    engine.t2s.steps = lambda count, nucleus: gate.wait() and steps(count, nucleus)
    return gate


def test_a_full_queue_rejects_with_a_clear_error() -> None:
    with stand_ins.engine("v2", **EAGER, queue_size=2) as engine:
        gate = _gate(engine)
        voice, segments = stand_ins.voice("v2"), stand_ins.segments(TEXTS[3])
        held = [engine.submit(voice, segments, Params(max_tokens=20)) for _ in range(2)]
        with pytest.raises(QueueFull, match="holds 2 requests \\(queue_size\\)"):
            engine.submit(voice, segments, Params())
        assert engine.stats()["rejected"] == 1
        gate.set()
        for handle in held:
            handle.result(60)
        engine.submit(voice, segments, Params(max_tokens=20)).result(60)  # room again


def test_cancelling_frees_the_rows_and_the_others_go_on() -> None:
    with stand_ins.engine("v2", **EAGER) as engine:
        gate = _gate(engine)
        voice = stand_ins.voice("v2")
        doomed = engine.submit(voice, stand_ins.segments(TEXTS[3]), Params(max_tokens=1500))
        while doomed.status != Status.DECODING:  # its rows are in the batch, held before their first step
            time.sleep(0.01)
        assert engine.stats()["rows"] == 2
        doomed.cancel()
        gate.set()
        with pytest.raises(Cancelled):
            doomed.result(60)
        other = engine.submit(voice, stand_ins.segments(TEXTS[0]), Params(max_tokens=20))
        other.result(60)
        stats = engine.stats()
        assert stats["cancelled"] == 1 and stats["finished"] == 1 and stats["rows"] == 0
        assert len(engine.t2s.free) == engine.t2s.pool.rows


def test_a_deadline_cancels_the_request() -> None:
    with stand_ins.engine("v2", **EAGER) as engine:
        gate = _gate(engine)
        handle = engine.submit(stand_ins.voice("v2"), stand_ins.segments(TEXTS[3]), Params(timeout_s=1e-6))
        gate.set()
        with pytest.raises(DeadlinePassed, match="passed its deadline"):
            handle.result(60)


def test_one_failing_request_fails_alone() -> None:
    """A segment whose prefix does not fit a row fails its request at its prefill; one whose voice breaks the
    rendering fails there; requests before and after finish."""
    with stand_ins.engine("v2", **EAGER, kv_capacity=64) as engine:
        voice = stand_ins.voice("v2")
        before = engine.submit(voice, stand_ins.segments(TEXTS[0]), Params(max_tokens=10))
        too_long = engine.submit(voice, [Segment(torch.ones(80, dtype=torch.long), torch.zeros(1024, 80))],
                                 Params(max_tokens=10))
        broken = voice.__class__(**{**voice.__dict__, "refer": (torch.rand(1, 3, 30),)})  # too few bins
        bad_render = engine.submit(broken, stand_ins.segments(TEXTS[2]), Params(max_tokens=10))
        after = engine.submit(voice, stand_ins.segments(TEXTS[1]), Params(max_tokens=10))
        with pytest.raises(ValueError, match="does not fit a row's KV cache of 64"):
            too_long.result(60)
        with pytest.raises(RuntimeError):
            bad_render.result(60)
        for handle in (before, after):
            handle.result(60)
        assert engine.stats()["failed"] == 2 and engine.stats()["finished"] == 2


def test_bad_requests_are_rejected_with_the_field_named() -> None:
    with stand_ins.engine("v2", **EAGER) as engine:
        voice = stand_ins.voice("v2")
        with pytest.raises(InputError, match="segments: expected at least one"):
            engine.submit(voice, [], Params())
        with pytest.raises(InputError, match="segments\\[0\\]"):
            engine.submit(voice, [Segment(torch.ones(3, dtype=torch.long), torch.zeros(1024, 4))])
        with pytest.raises(InputError, match="top_k=0"):
            engine.submit(voice, stand_ins.segments("好。"), Params(top_k=0))
        with pytest.raises(InputError, match="fragment_interval=-0.1 is invalid: expected a number >= 0.0 and <= 10"):
            Params(fragment_interval=-0.1)


def test_handles_are_awaitable_and_threads_can_submit() -> None:
    with stand_ins.engine("v2", **EAGER) as engine:
        voice, segments = stand_ins.voice("v2"), stand_ins.segments(TEXTS[0])

        async def main():
            return await asyncio.gather(*(engine.submit(voice, segments, Params(seed=s, max_tokens=20))
                                          for s in range(3)))

        results = asyncio.run(main())
        assert [rate for _, rate in results] == [32000] * 3
        handles, lock = [], threading.Lock()

        def caller(seed: int) -> None:
            handle = engine.submit(voice, segments, Params(seed=seed, max_tokens=20))
            with lock:
                handles.append(handle)

        threads = [threading.Thread(target=caller, args=(s,)) for s in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert all(h.result(60)[0].numel() > 0 for h in handles)


def test_closing_fails_what_is_held_and_refuses_more() -> None:
    engine = stand_ins.engine("v2", **EAGER)
    gate = _gate(engine)
    voice = stand_ins.voice("v2")
    held = engine.submit(voice, stand_ins.segments(TEXTS[3]), Params())
    closing = threading.Thread(target=engine.close)
    closing.start()
    while any(thread.is_alive() for thread in engine._threads[1:]):  # the render workers have stopped
        time.sleep(0.01)
    gate.set()  # the held round ends, and the loop sees the engine closing
    closing.join()
    with pytest.raises(EngineClosed):
        held.result(10)
    with pytest.raises(EngineClosed):
        engine.submit(voice, stand_ins.segments(TEXTS[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the engine's captured graphs need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunks", [None, TokenChunks(8, 2)])
def test_batch_invariance_natively_on_cuda(dtype, chunks) -> None:
    """On the GPU, with every T2S step and prefill a replayed graph and the renders at once (their own generators):
    a request's tokens and audio, whole or streamed in token chunks, are bit-identical alone and amid others, in
    float32 and float16."""
    with stand_ins.engine("v2ProPlus", device="cuda", dtype=dtype, compile_mode="cudagraphs", max_rows=16) as engine:
        assert engine.renderer.own_draws
        voice = stand_ins.voice("v2ProPlus")
        mine = (stand_ins.segments(TEXTS[1]), Params(seed=5, top_k=10, max_tokens=50))
        stream = {"stream": chunks is not None, "chunks": chunks}
        alone = engine.submit(voice, *mine, **stream)
        alone_audio = alone.result(120)[0]
        others = [engine.submit(voice, stand_ins.segments(TEXTS[i % 4]), Params(seed=i, top_p=0.8 if i % 2 else 1.0),
                                **stream) for i in range(9)]
        amid = engine.submit(voice, *mine, **stream)
        amid_audio = amid.result(120)[0]
        [h.result(120) for h in others]
        assert amid.request.tokens == alone.request.tokens and torch.equal(amid_audio, alone_audio)
        assert engine.stats()["captures"] > 0


def test_a_decode_unlike_the_models_own_stops_the_engine_before_it_serves() -> None:
    """The engine's rows are checked against the T2S model's own decode at start-up: a layer the step does not
    compute as the model does (a forward hook here) is found before any request."""
    from tts_compile.core.verify import VerificationError

    t2s, vits, vocoder = stand_ins.models("v2")
    t2s.h.layers[0].register_forward_hook(lambda module, inputs, output: output * 1.1)
    with pytest.raises(VerificationError, match="logits at step 0"):
        Engine.from_models("v2", t2s, vits, vocoder, **EAGER)


def test_a_synthesizer_of_another_shape_renders_with_upstreams_own_decode(caplog) -> None:
    """As in optimize_pipeline, a module the stage cannot take stays upstream's (one warning naming it) and the
    engine serves: the audio is the unoptimized synthesizer's for the same tokens and seed."""
    t2s, vits, vocoder = stand_ins.models("v2")
    del vits.semantic_frame_rate  # a fork without an attribute the stage reads, which its own decode does not
    with caplog.at_level("WARNING", logger="tts_compile"), \
            Engine.from_models("v2", t2s, vits, vocoder, **EAGER) as engine:
        handle = engine.submit(stand_ins.voice("v2"), stand_ins.segments(TEXTS[0]), Params(seed=3))
        audio, _ = handle.result(120)
    assert "engine: SoVITS left eager" in caplog.text and not hasattr(vits, "tts_compile")
    plain = stand_ins.models("v2")[1]
    with Engine.from_models("v2", stand_ins.models("v2")[0], plain, None, **EAGER, sovits=False) as engine:
        expected, _ = engine.submit(stand_ins.voice("v2"), stand_ins.segments(TEXTS[0]), Params(seed=3)).result(120)
    assert torch.equal(audio, expected)


@pytest.mark.parametrize("chunked", [False, True])
def test_renders_with_their_own_generators_sound_as_seeded_upstream(chunked) -> None:
    """With the SoVITS stage on, renders draw from their threads' own generators and run at once; the audio equals
    the engine's over upstream's synthesizer, whose renders seed and hold the shared generators (same seed and
    tokens; the stage's padded decode differs from the exact one within PADDED)."""
    chunks = TokenChunks(4, 2) if chunked else None
    results = []
    for sovits in (True, False):
        with Engine.from_models("v2", *stand_ins.models("v2"), **EAGER, sovits=sovits, render_workers=3) as engine:
            assert engine.renderer.own_draws is sovits
            handles = [engine.submit(stand_ins.voice("v2"), stand_ins.segments(TEXTS[i % 2]),
                                     Params(seed=i, top_k=1, max_tokens=24), stream=chunked, chunks=chunks)
                       for i in range(4)]
            results.append([handle.result(120)[0] for handle in handles])
    for mine, theirs in zip(*results, strict=True):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=0, atol=PADDED)
