"""Token-chunk streams (api_v2's streaming modes 2 and 3) through the engine, stand-in models, CPU, float32: chunks
cut where upstream's rule cuts them however the tokens arrive, each chunk the synthesizer's `decode_streaming` of
the tokens so far, a stream the same alone or amid others, cancelled mid-way it frees its rows, bad chunk
parameters named."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.core.guard import InputError
from tts_compile.engine import Cancelled, Params, TokenChunks, stand_ins
from tts_compile.engine.request import Status
from tts_compile.engine.streaming import THRESHOLD, Cutter, SegmentChunks, join, render_chunk
from tts_compile.gpt_sovits.chunks import Chunker
from tts_compile.gpt_sovits.models.vits import VITSConfig, build_vits

EAGER = {"compile_mode": "eager", "max_rows": 8}
TEXT = "今天天气很好！我们去公园散步吧。好。"  # three segments
OTHERS = ["你好，欢迎使用。", "一二三四五六七八九十，十一十二。", "好。"]
VOCAB = 65  # the stand-in T2S's tokens


def _upstream_cuts(tokens: list[int], chunks: TokenChunks, mute: list[float]) -> list[int]:
    """Where upstream's streaming loop moves its cut (`gpt_sovits.chunks.Chunker`, the parity-tested rule), before
    the stop."""
    chunker = Chunker([], chunks.min_tokens, torch.tensor(mute) if chunks.mute_cuts else None, THRESHOLD)
    cuts = []
    for token in tokens:
        before = chunker.cut
        chunker.step(token)
        cuts += [chunker.cut] if chunker.cut != before else []
    return cuts


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, VOCAB - 1), max_size=120), min_tokens=st.integers(1, 30),
       mute_cuts=st.booleans(), splits=st.lists(st.integers(0, 120), max_size=8), seed=st.integers(0, 99))
def test_cuts_are_upstreams_however_the_tokens_arrive(tokens, min_tokens, mute_cuts, splits, seed) -> None:
    """The engine reads a row's tokens every few steps: fed in any pieces, the cuts are those of upstream's rule fed
    token by token."""
    mute = (torch.rand(VOCAB, generator=torch.Generator().manual_seed(seed)) * 2 - 1).tolist()
    chunks = TokenChunks(min_tokens, 2, mute_cuts)
    cutter, cuts = Cutter(chunks, mute), []
    for end in [*sorted(s for s in splits if s <= len(tokens)), len(tokens)]:
        cuts += cutter.feed(tokens[:end])
    assert cuts == _upstream_cuts(tokens, chunks, mute)
    assert all(b - a >= min_tokens for a, b in zip([0, *cuts], cuts))


@pytest.mark.parametrize("name,value", [("min_tokens", 0), ("overlap", -1), ("min_tokens", 2.5),
                                        ("mute_cuts", "yes")])
def test_bad_chunk_parameters_are_named(name, value) -> None:
    with pytest.raises(InputError, match=f"{name}={value!r} is invalid"):
        TokenChunks(**{name: value})


def test_join_finds_where_the_next_chunk_continues() -> None:
    """Two chunks of one sine that overlap by `size` samples, the second shifted by a few more: the join finds the
    shift and the crossfade of the same signal is the signal."""
    wave = torch.sin(torch.arange(4000) * 0.05)
    size, shift = 64, 17
    previous, current = wave[:1000], wave[1000 - size - shift:]
    out = join(previous, current, size)
    assert torch.allclose(out, wave[1000 - size:], atol=1e-5)


def test_a_chunk_is_the_synthesizers_streaming_decode() -> None:
    """The first chunk: `decode_streaming` of its tokens, the shared tail held back; the next: the chunk and the
    overlap kept, the latent's frames crossfaded, the audio joined; the last: the tail not held back."""
    vits, voice = build_vits(VITSConfig(version="v2"), seed=1), stand_ins.voice("v2")
    [segment] = stand_ins.segments("今天天气很好")
    params, tokens = Params(), torch.randint(0, 64, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    state = SegmentChunks(Cutter(TokenChunks(), None), tokens=tokens)
    torch.manual_seed(0)
    first = render_chunk(vits, voice, params, segment, state, 12, False, 2)
    torch.manual_seed(0)
    expected, latent, _ = vits.decode_streaming(torch.tensor(tokens[:12]).view(1, 1, -1), segment.phones[None],
                                                list(voice.refer), sv_emb=None, padding_length=0)
    per_token = expected.shape[-1] // 12
    assert torch.equal(first, expected[0, 0, : 10 * per_token]) and torch.equal(state.latent, latent)
    state.rendered = 12
    torch.manual_seed(1)
    last = render_chunk(vits, voice, params, segment, state, 30, True, 2)
    torch.manual_seed(1)
    audio, _, _ = vits.decode_streaming(torch.tensor(tokens).view(1, 1, -1), segment.phones[None], list(voice.refer),
                                        result_length=20, overlap_frames=latent[:, :, -4:], padding_length=0)
    assert torch.equal(last, join(expected[0, 0], audio[0, 0], 2 * per_token))
    assert last.shape[-1] <= 20 * per_token  # the chunk and its overlap, from where it joins


@pytest.fixture(scope="module")
def engine():
    with stand_ins.engine("v2ProPlus", **EAGER, render_workers=2) as engine:
        engine.voice_ = stand_ins.voice("v2ProPlus")
        yield engine


@pytest.mark.parametrize("chunks", [TokenChunks(8, 2), TokenChunks(6, 2, True), TokenChunks(5, 0)])
def test_a_token_chunk_stream_comes_in_chunks_of_the_same_tokens(engine, chunks) -> None:
    """More pieces than segments, in order, the whole their concatenation; the tokens those of the same request not
    streamed; each segment's last piece followed by its silence."""
    params = Params(seed=5, max_tokens=40)
    handle = engine.submit(engine.voice_, stand_ins.segments(TEXT), params, chunks=chunks)
    pieces = list(handle.chunks(120))
    audio, rate = handle.result(0)
    assert torch.equal(audio, torch.cat(pieces))
    tokens = handle.request.tokens
    cuts = [[c for c in Cutter(chunks, engine._mute).feed(tokens[i]) if c < len(tokens[i])] for i in range(3)]
    assert len(pieces) == sum(len(c) + 1 for c in cuts) and (chunks.mute_cuts or len(pieces) > 3)
    whole = engine.submit(engine.voice_, stand_ins.segments(TEXT), params)
    whole.result(120)
    assert whole.request.tokens == tokens
    silence = int(rate * params.fragment_interval)
    assert sum(bool(torch.all(piece[-silence:] == 0)) for piece in pieces) >= 3  # each segment's end
    assert not engine._chunked  # nothing kept once done


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_a_token_chunk_stream_is_the_same_alone_or_amid_others(engine, data) -> None:
    """Batch invariance: its pieces alone equal its pieces amid other requests (whole, segment streams, token-chunk
    streams) arriving around it."""
    chunks = TokenChunks(data.draw(st.integers(3, 12)), data.draw(st.integers(0, 3)), data.draw(st.booleans()))
    params = Params(seed=data.draw(st.integers(0, 2**40)), max_tokens=data.draw(st.integers(5, 40)))
    alone = list(engine.submit(engine.voice_, stand_ins.segments(TEXT), params, chunks=chunks).chunks(120))
    kinds = [{}, {"stream": True}, {"chunks": TokenChunks(4, 1)}]
    others = data.draw(st.lists(st.tuples(st.sampled_from(OTHERS), st.sampled_from(kinds), st.integers(0, 2**40)),
                                min_size=1, max_size=4))
    handles = [engine.submit(engine.voice_, stand_ins.segments(text), Params(seed=seed, max_tokens=30), **kind)
               for text, kind, seed in others[:2]]
    mine = engine.submit(engine.voice_, stand_ins.segments(TEXT), params, chunks=chunks)
    handles += [engine.submit(engine.voice_, stand_ins.segments(text), Params(seed=seed, max_tokens=30), **kind)
                for text, kind, seed in others[2:]]
    amid = list(mine.chunks(120))
    assert len(amid) == len(alone) and all(torch.equal(a, b) for a, b in zip(alone, amid))
    for handle in handles:
        handle.result(120)


def test_the_first_chunk_comes_before_its_segment_is_decoded() -> None:
    """The segment never stops (EOS's logit 0, below the top 3, and the cap hidden from the engine): its chunks still
    come, cut from the tokens so far; cancelled, the stream frees its row and its chunk state."""
    with stand_ins.engine("v2", **EAGER) as engine:
        with torch.no_grad():
            engine.t2s.model.ar_predict_layer.weight[engine.t2s.model.EOS] = 0
        stopped = engine.t2s.stopped
        engine.t2s.stopped = lambda slots: {}
        [segment] = stand_ins.segments("今天天气很好")
        handle = engine.submit(stand_ins.voice("v2"), [segment], Params(seed=2, top_k=3, max_tokens=1500),
                               chunks=TokenChunks(8, 2))
        pieces = handle.chunks(60)
        next(pieces)
        assert engine.stats()["rows"] == 1 and not handle.done()
        handle.cancel()
        with pytest.raises(Cancelled):
            list(pieces)
        deadline = time.monotonic() + 60
        while (engine.stats()["rows"] or engine._chunked) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats()["rows"] == 0 and not engine._chunked and handle.status == Status.CANCELLED
        engine.t2s.stopped = stopped
        engine.submit(stand_ins.voice("v2"), [segment], Params(max_tokens=10), chunks=TokenChunks()).result(60)


@pytest.mark.parametrize("version", ["v3", "v4"])
def test_v3_v4_stream_token_chunks_through_cfm_windows(version) -> None:
    """v3/v4 (upstream cannot stream them): segments that never stop early (EOS's logit 0, below the top 3) come in
    more pieces than segments, the same tokens as the request not streamed, the same pieces alone or amid others."""
    with stand_ins.engine(version, **EAGER) as engine:
        with torch.no_grad():
            engine.t2s.model.ar_predict_layer.weight[engine.t2s.model.EOS] = 0
        voice, segments = stand_ins.voice(version), stand_ins.segments("今天天气很好！我们去公园吧。")
        params, chunks = Params(seed=8, top_k=3, max_tokens=60), TokenChunks(12, 2)
        alone = engine.submit(voice, segments, params, chunks=chunks)
        pieces = list(alone.chunks(120))
        assert len(pieces) > 2 and torch.equal(torch.cat(pieces), alone.result(0)[0])
        others = [engine.submit(voice, stand_ins.segments(text), Params(seed=i, max_tokens=30), chunks=chunks)
                  for i, text in enumerate(OTHERS)]
        amid = engine.submit(voice, segments, params, chunks=chunks)
        assert all(torch.equal(a, b) for a, b in zip(pieces, amid.chunks(120), strict=True))
        whole = engine.submit(voice, segments, params)
        whole.result(120)
        assert whole.request.tokens == alone.request.tokens == amid.request.tokens
        for handle in others:
            handle.result(120)


def test_a_chunk_longer_than_a_cfm_window_is_cut() -> None:
    """v3/v4: `longest` cuts a chunk whatever the rule says (mode 2 without a mute-like pair)."""
    cutter = Cutter(TokenChunks(4, 2, True), [-1.0] * VOCAB, longest=10)
    assert cutter.feed(list(range(35))) == [10, 20, 30]


def test_chunks_must_be_token_chunks() -> None:
    with stand_ins.engine("v2", **EAGER) as engine:
        with pytest.raises(InputError, match="chunks: expected None or a tts_compile.engine.TokenChunks"):
            engine.submit(stand_ins.voice("v2"), stand_ins.segments("好。"), chunks=16)

