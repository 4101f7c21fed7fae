"""`Engine.prepare`: before serving, every render bucket a request of up to `warm_tokens` tokens meets is rendered
once (captured on CUDA, verified against upstream everywhere): a request inside that range verifies nothing new."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_compile.engine import Params, Segment, TokenChunks, stand_ins
from tts_compile.engine.render import PHONES_PER_TOKEN, STREAM_PHONES_PER_TOKEN, warm_shapes
from tts_compile.engine.streaming import warm_chunks
from tts_compile.gpt_sovits.versions import VERSIONS

EAGER = {"compile_mode": "eager", "max_rows": 4}
WARM = 96  # tokens: a few buckets of every kind, quick on a CPU


def _verifications(engine) -> int:
    return sum(stats.get("verifications", 0) for stats in engine.stage_stats().values())


@pytest.fixture(scope="module", params=["v2ProPlus", "v4"])
def prepared(request):
    with stand_ins.engine(request.param, **EAGER) as engine:
        voice = stand_ins.voice(request.param)
        streams = engine.renderer.chunk is not None
        chunks = len(warm_chunks(engine.version)) if engine.version.renderer == "cfm" else 0
        assert engine.prepare(voice, WARM) == len(warm_shapes(WARM, engine.t2s.pool.capacity, streams,
                                                              engine.version)) + chunks
        yield engine, voice


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_a_render_inside_the_prepared_range_meets_no_new_bucket(prepared, data) -> None:
    engine, voice = prepared
    high = STREAM_PHONES_PER_TOKEN if engine.renderer.chunk is not None else PHONES_PER_TOKEN[1]
    tokens = data.draw(st.integers(1, WARM), label="tokens")
    phones = data.draw(st.integers(max(1, int(tokens * PHONES_PER_TOKEN[0]) + 1), max(1, int(tokens * high))),
                       label="phones")
    before = _verifications(engine)
    segment = Segment(torch.randint(1, 20, (phones,)), torch.zeros(1024, phones))
    audio = engine.renderer.audio_of(0, voice, Params(), [segment], [torch.randint(0, 64, (tokens,)).tolist()])
    assert audio[0].numel() > 0
    assert _verifications(engine) == before


def test_requests_and_token_chunk_streams_after_prepare_meet_no_new_bucket(prepared) -> None:
    engine, voice = prepared
    before = _verifications(engine)
    text = "今天天气很好！我们去公园吧。"
    handles = [engine.submit(voice, stand_ins.segments(text), Params(seed=i, max_tokens=30), stream=i > 0,
                             chunks=TokenChunks(8, 2) if i == 2 else None) for i in range(3)]
    assert all(handle.result(120)[0].numel() > 0 for handle in handles)
    assert _verifications(engine) == before


def test_a_render_past_the_prepared_range_is_verified_at_first_sight(prepared) -> None:
    engine, voice = prepared
    before = _verifications(engine)
    tokens = 2 * WARM
    segment = Segment(torch.randint(1, 20, (tokens // 2,)), torch.zeros(1024, tokens // 2))
    engine.renderer.audio_of(0, voice, Params(), [segment], [[1] * tokens])
    assert _verifications(engine) > before


def test_a_later_voice_renders_once_for_its_reference(prepared) -> None:
    engine, _ = prepared
    cfm = engine.version.renderer == "cfm"  # v1-v2ProPlus may have no prompt (upstream's no-prompt mode)
    chunks = len(warm_chunks(engine.version)) if cfm else 0  # v3/v4 streams' windows follow the voice's prompt
    assert engine.prepare(stand_ins.voice(engine.version.name, seed=5, prompt=cfm), WARM) == 1 + chunks


@pytest.mark.parametrize("version", ["v2", "v4"])
def test_the_warm_shapes_meet_every_bucket_of_the_ladders(version) -> None:
    from tts_compile.gpt_sovits.sovits import LADDERS

    shapes = warm_shapes(1024, 2048, True, VERSIONS[version])
    assert {LADDERS["tokens"].fit(t) for t, _ in shapes} == {t for t in LADDERS["tokens"].sizes if t <= 1024}
    assert {LADDERS["frames"].fit(2 * t) for t, _ in shapes} == {f for f in LADDERS["frames"].sizes if f <= 2048}
    assert shapes == sorted(shapes, reverse=True)


def test_the_stages_say_where_prepare_went(prepared) -> None:
    """Every verification's milliseconds are counted once under the kinds of buckets it covered, every capture's under
    its kind, so the parts add up to the totals; the SoVITS text encoder is among them."""
    engine, _ = prepared
    stages = engine.stage_stats()
    assert set(stages) == ({"sovits", "cfm", "vocoder"} if engine.version.renderer == "cfm" else {"sovits"})
    for name, stats in stages.items():
        assert sum(stats["capture_ms_by_kind"].values()) == stats["capture_ms"], name
        if name != "vocoder":  # the vocoder verifies its setup, not buckets
            assert sum(stats["verify_ms_by_kinds"].values()) == stats["verify_ms"] > 0, name
    sovits = engine.stage_stats()["sovits"]
    assert any("enc" in kinds.split("+") for kinds in sovits["verify_ms_by_kinds"])
