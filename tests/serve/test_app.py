"""The server over HTTP (stand-in models, CPU): every route, every bad input answered 4xx with the field named,
streams in pieces, the same seed the same bytes alone or amid others, overload, disconnects."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from tests.serve.conftest import AUTH, hold_steps, reference, running
from tts_compile.engine import Cancelled, EngineConfig, Params, TokenChunks, stand_ins
from tts_compile.serve import StandIns
from tts_compile.serve.app import Server, Settings
from tts_compile.serve.audio import MEDIA_TYPES, encode, pcm16
from tts_compile.serve.voices import UnknownVoice, VoiceStore
from tts_compile.tools.client import ClientConfig, run

TTS = {"ref_audio_path": "alice/ref.wav", "prompt_lang": "zh", "prompt_text": "你好。", "text_lang": "zh"}
TEXT = "今天天气很好！我们去公园吧。好的。"  # three segments


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with running(tmp_path_factory.mktemp("voices"), max_text_chars=300, max_body_bytes=2**20) as live:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            answer = client.post("/voices", data={"name": "alice", "prompt_text": "你好。", "prompt_lang": "zh"},
                                 files={"ref_audio": ("alice.wav", reference(), "audio/wav")}, headers=AUTH)
            assert answer.status_code == 201, answer.text
            live.client = client
            yield live


def _wav_samples(body: bytes) -> int:
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE" and body[36:40] == b"data"
    return (len(body) - 44) // 2


def test_every_route_answers(live) -> None:
    client = live.client
    assert client.get("/health").json() == {"status": "alive"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["weights"] == {}  # the built-in weights: none switched to
    assert [v["name"] for v in client.get("/voices").json()["voices"]] == ["alice"]
    get = client.get("/tts", params={**TTS, "text": TEXT, "seed": 5})
    post = client.post("/tts", json={**TTS, "text": TEXT, "seed": 5})
    assert get.status_code == post.status_code == 200 and get.headers["content-type"] == "audio/wav"
    assert get.content == post.content and _wav_samples(get.content) > 0 and get.headers["X-TTS-Seed"] == "5"
    raw = client.post("/tts", json={**TTS, "text": TEXT, "seed": 5, "media_type": "raw"})
    assert raw.content == get.content[44:]
    cached = client.post("/tts_with_cached_voice", params={"voice_name": "alice", "text": TEXT, "text_lang": "zh",
                                                           "temperature": 1.0, "speed_factor": 1.0, "seed": 5})
    cached_json = client.post("/tts_with_cached_voice", json={"voice_name": "alice", "text": TEXT,
                                                               "text_lang": "zh", "seed": 5})
    assert cached.status_code == 200 and cached.content == cached_json.content
    assert _wav_samples(cached.content) > 0
    speech = client.post("/v1/audio/speech", json={"model": "tts", "input": TEXT, "voice": "alice", "seed": 3,
                                                   "response_format": "pcm"})
    assert speech.status_code == 200 and len(speech.content) % 2 == 0 and speech.content
    events = client.post("/v1/audio/speech", json={"model": "tts", "input": TEXT, "voice": "alice", "seed": 3,
                                                   "stream_format": "sse"})
    parsed = [json.loads(line[6:]) for line in events.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in parsed] == ["speech.audio.delta"] * 3 + ["speech.audio.done"]
    assert b"".join(base64.b64decode(e["audio"]) for e in parsed[:-1]) == speech.content
    assert client.get("/set_refer_audio", params={"refer_audio_path": "alice/ref.wav"}, headers=AUTH).json() == \
        {"message": "success"}
    client.post("/voices", data={"name": "bob", "prompt_lang": "zh", "ref_audio_path": "alice/ref.wav"},
                headers=AUTH).raise_for_status()
    assert client.delete("/voices/bob", headers=AUTH).status_code == 200
    assert client.get("/tts_with_cached_voice", params={"voice_name": "bob", "text": "好。",
                                                        "text_lang": "zh"}).status_code == 404
    metrics = client.get("/metrics").text
    assert 'tts_requests_total{route="/tts",status="200"}' in metrics and "tts_engine_finished" in metrics
    assert "tts_first_audio_seconds_count" in metrics and 'tts_frontend_seconds_count{part="g2p"}' in metrics
    assert 'tts_stage_fallbacks_total{stage="sovits"} 0.0' in metrics and 'tts_stage_calls_total{stage="sovits"}' \
        in metrics


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "message"), [
    ("post", "/tts", {"json": {**TTS}}, 400, "text is required"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "text_lang": "klingon"}}, 400, "text_lang='klingon'"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "prompt_lang": None}}, 400, "prompt_lang is required"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "top_k": 0}}, 400, "top_k=0"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "top_k": "many"}}, 400, "top_k='many'"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "temperature": -1}}, 400, "temperature=-1"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "top_p": 1.5}}, 400, "top_p=1.5"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "speed_factor": 9}}, 400, "speed_factor=9"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "media_type": "mp3"}}, 400, "media_type='mp3'"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "streaming_mode": 7}}, 400, "streaming_mode=7"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "min_chunk_length": 0}}, 400, "min_chunk_length=0"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "overlap_length": -1}}, 400, "overlap_length=-1"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "text_split_method": "cut9"}}, 400, "text_split_method"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "seed": -5}}, 400, "seed=-5"),
    ("post", "/tts", {"json": {**TTS, "text": "。！？"}}, 400, "nothing to speak"),
    ("post", "/tts", {"json": {**TTS, "text": "😀🎵…"}}, 400, "nothing to speak"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "fragment_interval": -1}}, 400, "fragment_interval=-1"),
    ("post", "/tts", {"json": {**TTS, "text": "好" * 301}}, 400, "at most 300"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "ref_audio_path": "../../etc/passwd"}}, 403, "outside"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "ref_audio_path": "/etc/hostname"}}, 403, "outside"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "ref_audio_path": "missing.wav"}}, 400, "cannot be read"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "aux_ref_audio_paths": ["/etc/hostname"]}}, 403,
     "aux_ref_audio_paths='/etc/hostname' is outside"),
    ("post", "/tts", {"json": {**TTS, "text": "好", "aux_ref_audio_paths": ["alice/ref.wav"] * 9}}, 400,
     "at most 8 paths"),
    ("post", "/tts", {"content": b"[1, 2]"}, 400, "JSON object"),
    ("post", "/tts", {"content": b"{not json"}, 400, "not JSON"),
    ("post", "/tts", {"content": b"x" * (2**20 + 1)}, 413, "at most 1048576"),
    ("get", "/tts_with_cached_voice", {"params": {"voice_name": "nobody", "text": "好", "text_lang": "zh"}}, 404,
     "'nobody' is not registered"),
    ("get", "/tts_with_cached_voice", {"params": {"text": "好", "text_lang": "zh"}}, 400, "voice_name is required"),
    ("post", "/v1/audio/speech", {"json": {"input": "好", "voice": "alice", "response_format": "mp3"}}, 400,
     "response_format='mp3'"),
    ("post", "/v1/audio/speech", {"json": {"input": "", "voice": "alice"}}, 400, "input is required"),
    ("post", "/v1/audio/speech", {"json": {"input": "好", "voice": "alice", "speed": 0}}, 400, "speed=0"),
    ("post", "/voices", {"data": {"name": "carol", "prompt_lang": "zh"}, "files": {"ref_audio": ("c.wav", b"RIFF")}},
     401, "API key"),
    ("delete", "/voices/alice", {}, 401, "API key"),
    ("get", "/set_gpt_weights", {"params": {"weights_path": "x.ckpt"}, "headers": AUTH}, 400, "no such file"),
    ("get", "/set_sovits_weights", {"params": {"weights_path": __file__}, "headers": AUTH}, 400,
     "is not a state dict of the stand-in synthesizer"),
    ("get", "/set_sovits_weights", {"params": {"weights_path": __file__}}, 401, "API key"),
    ("get", "/control", {"params": {"command": "dance"}, "headers": AUTH}, 400, "command='dance'"),
    ("get", "/no/such/route", {}, 404, "Not Found"),
    ("delete", "/tts", {}, 405, "Method Not Allowed"),
])
def test_bad_input_gets_a_4xx_naming_the_field(live, method, path, kwargs, status, message) -> None:
    answer = getattr(live.client, method)(path, **kwargs)
    assert answer.status_code == status, answer.text
    body = answer.json()
    text = body["error"]["message"] if path.startswith("/v1/") else body["message"]
    assert message in text and "Traceback" not in answer.text


@pytest.mark.parametrize(("fields", "files", "message"), [
    ({"name": "x y", "prompt_lang": "zh"}, {"ref_audio": ("r.wav", reference())}, "name='x y' is invalid"),
    ({"name": "short", "prompt_lang": "zh"}, {"ref_audio": ("r.wav", reference(1.0))}, "1.0 s long"),
    ({"name": "junk", "prompt_lang": "zh"}, {"ref_audio": ("r.wav", b"not audio")}, "not a readable PCM WAV"),
    ({"name": "lang", "prompt_lang": "xx"}, {"ref_audio": ("r.wav", reference())}, "prompt_lang='xx'"),
    ({"name": "none", "prompt_lang": "zh"}, {}, "ref_audio or as ref_audio_path"),
    ({"name": "gone", "prompt_lang": "zh", "ref_audio_path": "missing.wav"}, {}, "cannot be read"),
    ({"prompt_lang": "zh"}, {"ref_audio": ("r.wav", reference())}, "name: Field required"),
])
def test_bad_voices_are_rejected_with_the_field_named(live, fields, files, message) -> None:
    answer = live.client.post("/voices", data=fields, files=files or None, headers=AUTH)
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text


def test_a_stream_arrives_in_pieces_the_first_before_the_last_is_rendered(live) -> None:
    """The last segment's render is held back (queued once the first pieces are at the client)."""
    engine = live.backend.engine
    gate, later = threading.Event(), engine._render_later

    def held(request, indices):
        if indices == (len(request.segments) - 1,):
            threading.Thread(target=lambda: (gate.wait(60), later(request, indices))).start()
        else:
            later(request, indices)

    engine._render_later = held
    try:
        with live.client.stream("POST", "/tts", json={**TTS, "text": TEXT, "streaming_mode": 1, "seed": 9}) as s:
            assert s.status_code == 200
            pieces = s.iter_raw()
            body = next(pieces)
            while len(body) < 46:  # the WAV header, then the first segment's samples
                body += next(pieces)
            assert body[:4] == b"RIFF" and not gate.is_set()
            gate.set()
            body += b"".join(pieces)
    finally:
        engine._render_later = later
        gate.set()
    whole = live.client.post("/tts", json={**TTS, "text": TEXT, "streaming_mode": 1, "seed": 9})
    assert body == whole.content


@pytest.mark.parametrize("mode", [2, 3])
def test_streaming_modes_2_and_3_stream_token_chunks(live, mode) -> None:
    """More renders than segments (a chunk each), the same bytes for the same seed, and the same audio as the
    engine's own token-chunk stream."""
    engine = live.backend.engine
    request = {**TTS, "text": TEXT, "streaming_mode": mode, "seed": 4, "min_chunk_length": 4, "overlap_length": 1,
               "media_type": "raw"}
    before = engine.stats()["renders"]
    first = live.client.post("/tts", json=request)
    assert first.status_code == 200 and engine.stats()["renders"] - before > len(TEXT.split("。"))
    assert live.client.post("/tts", json=request).content == first.content
    voice = live.state.voices.reference(TTS["ref_audio_path"], TTS["prompt_text"], TTS["prompt_lang"], ())
    segments = live.backend.cached_segments(TEXT, TTS["text_lang"], "cut5")
    handle = engine.submit(voice, segments, Params(seed=4), chunks=TokenChunks(4, 1, mode == 2))
    assert encode(handle.result(60)[0], handle.sample_rate, "raw") == first.content


def test_the_same_seed_gives_the_same_bytes_alone_and_amid_16_others(live) -> None:
    mine = {**TTS, "text": TEXT, "seed": 77, "top_k": 5}
    alone = live.client.post("/tts", json=mine).content

    def call(i: int) -> bytes:
        body = mine if i == 8 else {**TTS, "text": ["你好。", TEXT, "一二三，四五六。"][i % 3], "seed": i}
        answer = live.client.post("/tts", json=body)
        assert answer.status_code == 200
        return answer.content

    with ThreadPoolExecutor(17) as pool:
        results = list(pool.map(call, range(17)))
    assert results[8] == alone


def test_overload_answers_503_and_loses_no_request(tmp_path) -> None:
    with running(tmp_path, queue_size=4) as live:
        (tmp_path / "ref.wav").write_bytes(reference())
        body = {**TTS, "ref_audio_path": "ref.wav", "text": "你好。"}
        with httpx.Client(base_url=live.url, timeout=60) as client:
            client.post("/tts", json={**body, "text": "预热。"})  # the voice prepared: callers only submit
            gate = hold_steps(live.backend.engine)
            with ThreadPoolExecutor(32) as pool:
                futures = [pool.submit(client.post, "/tts", json=body) for _ in range(32)]
                while live.backend.engine.stats()["rejected"] < 28:
                    threading.Event().wait(0.01)
                gate.set()
                answers = [f.result() for f in futures]
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 4 + [503] * 28
    assert all(a.headers["Retry-After"] == "1" and "queue_size" in a.json()["message"] for a in answers
               if a.status_code == 503)


def test_a_client_that_disconnects_cancels_its_request(tmp_path) -> None:
    with running(tmp_path) as live:
        (tmp_path / "ref.wav").write_bytes(reference())
        gate = hold_steps(live.backend.engine)
        body = {**TTS, "ref_audio_path": "ref.wav", "text": TEXT}
        with httpx.Client(base_url=live.url, timeout=httpx.Timeout(60, read=0.5)) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.post("/tts", json=body)
        engine = live.backend.engine
        for _ in range(600):  # the server may still be preparing the request when the client leaves
            if held := list(engine._handles.values()):
                break
            threading.Event().wait(0.05)
        assert len(held) == 1
        assert held[0].request.cancelled.wait(30)  # the server cancelled it while its rows were held
        gate.set()
        with pytest.raises(Cancelled):
            held[0].result(60)
        for _ in range(600):  # a render worker may settle it first; its rows leave at the loop's next round
            if engine.stats()["rows"] == 0:
                break
            threading.Event().wait(0.05)
        stats = engine.stats()
        assert stats["cancelled"] == 1 and stats["requests"] == 0 and stats["rows"] == 0
        with httpx.Client(base_url=live.url, timeout=60) as client:
            assert client.post("/tts", json=body).status_code == 200


def _held_past_its_deadline(tmp_path, body: dict) -> httpx.Response:
    """`body` posted to `/tts` of a server whose requests time out after 0.5 s, its steps held until the request's
    deadline has passed."""
    with running(tmp_path, request_timeout_s=0.5) as live:
        (tmp_path / "ref.wav").write_bytes(reference())
        engine = live.backend.engine
        gate, box = hold_steps(engine), []
        caller = threading.Thread(target=lambda: box.append(httpx.post(f"{live.url}/tts", json=body, timeout=60)))
        caller.start()
        while not (held := list(engine._handles.values())):
            time.sleep(0.01)
        while time.monotonic() <= held[0].request.deadline:
            time.sleep(0.01)
        gate.set()
        caller.join(60)
    return box[0]


def test_a_request_past_its_deadline_answers_504(tmp_path) -> None:
    answer = _held_past_its_deadline(tmp_path, {**TTS, "ref_audio_path": "ref.wav", "text": TEXT})
    assert answer.status_code == 504 and "deadline" in answer.json()["message"]


def test_registered_voices_survive_a_restart(tmp_path) -> None:
    """A new store over the same directory (a restarted server) serves the same prepared voice, from disk."""
    calls = []

    def prepare(data: bytes, text: str, lang: str):
        calls.append(text)
        return stand_ins.voice("v2ProPlus", seed=len(data))

    first = VoiceStore(tmp_path, prepare)
    first.register("alice", reference(), "你好。", "zh")
    again = VoiceStore(tmp_path, prepare)
    voice = again.get("alice")
    assert calls == ["你好。"] and torch.equal(voice.prompt_bert, first.get("alice").prompt_bert)
    assert [info.name for info in again.infos()] == ["alice"]
    small = VoiceStore(tmp_path, prepare, memory_bytes=1)  # the LRU keeps one voice at most
    small.get("alice")
    small.reference("alice/ref.wav", "", "")
    assert len(small._held) == 1


def test_a_server_with_registered_voices_prepares_its_render_buckets_before_it_is_ready(tmp_path) -> None:
    backend = StandIns("v2ProPlus", EngineConfig(compile_mode="eager", max_rows=4, warm_tokens=48))
    try:
        VoiceStore(tmp_path, backend.voice).register("alice", reference(), "你好。", "zh")
        server = Server(Settings(tmp_path))
        server.ready(backend)
        assert server.backend is backend and backend.engine._prepared == 48
        assert backend.engine.stage_stats()["sovits"]["verifications"] > 0
        torch.save(stand_ins.models("v2ProPlus", seed=1)[1].state_dict(), tmp_path / "sovits.pth")
        old = backend.engine
        backend.set_weights("sovits", str(tmp_path / "sovits.pth"))  # a new engine, prepared before it serves
        assert backend.engine is not old and backend.engine._prepared == 48
    finally:
        backend.close()


def test_a_voice_replaced_or_deleted_by_another_store_is_not_served_stale(tmp_path) -> None:
    """Two stores over one directory (two replicas): what one replaces or deletes, the other no longer serves from
    its memory."""
    def prepare(data: bytes, text: str, lang: str):
        return stand_ins.voice("v2ProPlus", seed=len(text))

    mine, theirs = VoiceStore(tmp_path, prepare), VoiceStore(tmp_path, prepare)
    mine.register("alice", reference(), "你好。", "zh")
    first = theirs.get("alice")
    time.sleep(0.01)  # a later write time on coarse file systems
    mine.register("alice", reference(), "今天天气很好。", "zh")
    assert not torch.equal(theirs.get("alice").prompt_bert, first.prompt_bert)
    assert torch.equal(theirs.get("alice").prompt_bert, mine.get("alice").prompt_bert)
    mine.delete("alice")
    with pytest.raises(UnknownVoice):
        theirs.get("alice")


@pytest.mark.parametrize(("endpoint", "params"), [
    ("tts", {**TTS, "streaming_mode": 1}),
    ("tts_with_cached_voice", {"voice_name": "alice"}),
    ("v1/audio/speech", {"voice": "alice"}),
])
def test_the_client_talks_to_every_synthesis_route(live, endpoint, params) -> None:
    """`python -m tts_compile client` against this server: every request answered with audio, the first audio bytes
    timed (before the end for streams)."""
    report = run(ClientConfig(url=live.url, endpoint=endpoint, texts={"three": TEXT}, requests=3, concurrency=3,
                              params=params, timeout_s=60), progress=False)
    assert report["summary"]["ok"] == 3, report["summary"]
    assert all(0 < r["first_audio_s"] <= r["latency_s"] for r in report["results"])


def test_auxiliary_references_average_their_timbre_in(live) -> None:
    """api_v2's `aux_ref_audio_paths`: the voice gets each one's spectrogram and speaker embedding beside the main
    reference's (v2ProPlus averages them); the audio is the engine's for that voice."""
    (live.state.voices.directory / "bob.wav").write_bytes(reference(5.0, pitch=0.2))
    body = {**TTS, "text": "你好，世界。", "seed": 8}
    plain = live.client.post("/tts", json=body).content
    mixed = live.client.post("/tts", json={**body, "aux_ref_audio_paths": ["bob.wav"]}).content
    assert mixed != plain
    voice = live.state.voices.reference("alice/ref.wav", "你好。", "zh", ("bob.wav",))
    assert len(voice.refer) == len(voice.sv_emb) == 2
    segments = live.backend.cached_segments("你好，世界。", "zh", "cut5")
    audio, _ = live.backend.engine.submit(voice, segments, Params(seed=8)).result(60)
    assert mixed[44:] == pcm16(audio)


@pytest.mark.skipif("ogg" not in MEDIA_TYPES, reason="soundfile cannot write Ogg here")
def test_ogg_whole_and_streamed(live) -> None:
    import soundfile

    body = {**TTS, "text": TEXT, "seed": 2, "media_type": "ogg"}
    whole = live.client.post("/tts", json=body)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/ogg"
    audio, rate = soundfile.read(io.BytesIO(whole.content))
    wav = live.client.post("/tts", json={**body, "media_type": "wav"}).content
    assert rate == 32000 and len(audio) == (len(wav) - 44) // 2
    streamed = live.client.post("/tts", json={**body, "streaming_mode": 1}).content
    assert streamed.count(b"OggS") > whole.content.count(b"OggS")  # one Ogg stream per segment, chained


@pytest.mark.skipif("aac" not in MEDIA_TYPES, reason="PyAV is not installed (pip install 'tts-compile[aac]')")
def test_aac_whole_and_streamed(live) -> None:
    """AAC in ADTS frames, decoded back to the WAV answer's length (the encoder's priming trimmed); streamed, each
    segment's frames in turn, one playable stream."""
    import av

    body = {**TTS, "text": TEXT, "seed": 2, "media_type": "aac"}
    whole = live.client.post("/tts", json=body)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/aac"
    assert whole.content[:2] == b"\xff\xf1"  # an ADTS sync word: MPEG-4 AAC, no CRC

    def samples(data: bytes) -> int:
        with av.open(io.BytesIO(data), format="adts") as container:
            return sum(frame.samples for frame in container.decode(audio=0))

    wav = live.client.post("/tts", json={**body, "media_type": "wav"}).content
    expected = (len(wav) - 44) // 2
    assert expected <= samples(whole.content) <= expected + 2048  # whole AAC frames of 1024 samples, priming
    streamed = live.client.post("/tts", json={**body, "streaming_mode": 1}).content
    assert samples(streamed) >= expected and streamed[:2] == b"\xff\xf1"


def test_an_empty_transcript_serves_v2_and_is_refused_for_v4(live, tmp_path) -> None:
    """api_v2's no-prompt mode for v1-v2ProPlus; v3/v4 need the transcript, as upstream says."""
    assert live.client.post("/tts", json={**TTS, "prompt_text": "", "text": "好。"}).status_code == 200
    v4 = StandIns("v4", EngineConfig(compile_mode="eager", max_rows=4))
    with running(tmp_path, v4) as server:
        (tmp_path / "ref.wav").write_bytes(reference())
        answer = httpx.post(f"{server.url}/tts", json={**TTS, "ref_audio_path": "ref.wav", "prompt_text": "",
                                                        "text": "好。"}, timeout=60)
    assert answer.status_code == 400 and "prompt_text is required with v4" in answer.json()["message"]


def test_a_stream_that_cannot_start_answers_its_status_not_200(tmp_path) -> None:
    """The answer of a stream starts with its first piece: a deadline passed before it is a 504."""
    answer = _held_past_its_deadline(tmp_path, {**TTS, "ref_audio_path": "ref.wav", "text": TEXT, "streaming_mode": 1})
    assert answer.status_code == 504 and "deadline" in answer.json()["message"]


def test_streaming_mode_true_in_a_query_string_streams(live) -> None:
    answer = live.client.get("/tts", params={**TTS, "text": TEXT, "seed": 9, "streaming_mode": "true"})
    streamed = live.client.post("/tts", json={**TTS, "text": TEXT, "seed": 9, "streaming_mode": 1})
    assert answer.status_code == 200 and answer.content == streamed.content


def test_set_refer_audio_prepares_the_voice_requests_then_use(live) -> None:
    (live.state.voices.directory / "carol.wav").write_bytes(reference(4.5, pitch=0.11))
    params = {"refer_audio_path": "carol.wav", "prompt_text": "你好。", "prompt_lang": "zh"}
    assert live.client.get("/set_refer_audio", params=params, headers=AUTH).json() == {"message": "success"}
    held = len(live.state.voices._held)
    answer = live.client.post("/tts", json={**TTS, "ref_audio_path": "carol.wav", "text": "好。"})
    assert answer.status_code == 200 and len(live.state.voices._held) == held


def test_weights_cannot_be_switched_from_the_network_without_a_key(tmp_path) -> None:
    with running(tmp_path, api_key=None, exposed=True) as live:
        answer = httpx.get(f"{live.url}/set_gpt_weights", params={"weights_path": __file__}, timeout=60)
    assert answer.status_code == 403 and "--api-key" in answer.json()["message"]


def test_texts_in_the_frontend_hold_back_no_other_request(tmp_path) -> None:
    """Eight long texts held inside the frontend (G2P and BERT, on the server's worker threads): a short request is
    still answered, its stream's first audio included, while they wait; then they finish too."""
    with running(tmp_path) as live:
        (tmp_path / "ref.wav").write_bytes(reference())
        gate, started, segments = threading.Event(), threading.Semaphore(0), live.backend.segments

        def slow(text, lang, method, observe=None):
            if len(text) > 100:
                started.release()
                gate.wait(60)
            return segments(text, lang, method, observe)

        live.backend.segments = slow
        long = {**TTS, "ref_audio_path": "ref.wav", "text": "今天天气很好，我们去公园吧。" * 8}
        with httpx.Client(base_url=live.url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
            held = [pool.submit(client.post, "/tts", json=long) for _ in range(8)]
            for _ in range(8):
                assert started.acquire(timeout=60)  # all eight are in the frontend now
            short = {**TTS, "ref_audio_path": "ref.wav", "text": "你好。", "streaming_mode": 1}
            with client.stream("POST", "/tts", json=short) as answer:
                assert answer.status_code == 200 and next(answer.iter_bytes())
            assert not any(f.done() for f in held)
            gate.set()
            assert [f.result().status_code for f in held] == [200] * 8
