"""The server over an upstream-shaped `TTS` pipeline (`serve --config`): the backend reads the pipeline's own
frontend and reference methods as `TTS.run` does. Upstream's real frontend needs pretrained BERT, HuBERT and G2P
models that cannot be had here; this pipeline has upstream's attributes and methods over the stand-in models, so the
wiring (what is called, with what, and how its answers become a request's audio) is what these tests hold."""

from __future__ import annotations

import io
import json
import threading
import time
import wave
from types import SimpleNamespace

import httpx
import pytest
import torch

from tests.serve.conftest import AUTH, hold_steps, reference, running
from tts_compile.engine import EngineConfig, Params, stand_ins
from tts_compile.gpt_sovits.models.vits import VITSConfig
from tts_compile.serve import Pipeline

splits = {"，", "。", "？", "！", ",", ".", "?", "!"}  # read by the backend from the pipeline's module, as upstream's
LANGUAGES = ["auto", "en", "zh", "ja"]


class Preprocessor:
    """`TextPreprocessor`'s methods the backend calls, over the stand-ins' character frontend; calls recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def replace_consecutive_punctuation(self, text):
        return text

    def pre_seg_text(self, text, lang, method):
        self.calls.append(("preprocess", text, lang, method))
        return [piece for piece in text.replace("！", "！|").replace("。", "。|").split("|") if piece]

    def segment_and_extract_feature_for_text(self, text, lang, version):
        self.calls.append(("segment", text, lang, version))
        if "☃" in text:  # a character upstream's G2P has no phones for
            raise KeyError("☃")
        segment = stand_ins.segments(text)[0]
        return segment.phones.tolist(), segment.bert, text


class TTS:
    """Upstream's `TTS` attributes and reference methods, over the stand-in models of v2ProPlus."""

    def __init__(self) -> None:
        t2s, vits, _ = stand_ins.models("v2ProPlus")
        self.configs = SimpleNamespace(version="v2ProPlus", languages=LANGUAGES, device="cpu", configs_path=None,
                                       t2s_weights_path="s1.ckpt", vits_weights_path="s2.pth")
        self.t2s_model, self.vits_model, self.vocoder = SimpleNamespace(model=t2s), vits, None
        self.loads: list[str] = []
        self.text_preprocessor, self.is_v2pro, self.prompt_cache = Preprocessor(), True, {}
        bins, dim = VITSConfig(version="v2ProPlus").spec_bins, VITSConfig(version="v2ProPlus").sv_dim
        self.sv_model = SimpleNamespace(compute_embedding3=lambda audio: torch.full((1, dim), float(audio.mean())))
        self.bins = bins

    def init_t2s_weights(self, path: str) -> None:
        """New modules, as upstream builds them (the old ones stay with whoever holds them)."""
        self.loads.append(path)
        self.configs.t2s_weights_path = path
        self.t2s_model = SimpleNamespace(model=stand_ins.models("v2ProPlus", seed=len(self.loads) * 10)[0])

    def init_vits_weights(self, path: str) -> None:
        self.loads.append(path)
        self.configs.vits_weights_path = path
        self.vits_model = stand_ins.models("v2ProPlus", seed=len(self.loads) * 10)[1]

    def _read(self, path: str) -> torch.Tensor:
        with wave.open(path) as f:
            frames, rate = f.readframes(f.getnframes()), f.getframerate()
        audio = torch.frombuffer(bytearray(frames), dtype=torch.int16).float() / 32768
        if not 3 <= audio.numel() / rate <= 10:
            raise OSError("参考音频在3~10秒范围外，请更换！")
        return audio

    def _set_prompt_semantic(self, path: str) -> None:
        audio = self._read(path)
        self.prompt_cache["prompt_semantic"] = (audio[:8].abs() * 1000).long() % 64

    def _get_ref_spec(self, path: str):
        audio = self._read(path)
        self.prompt_cache["raw_audio"], self.prompt_cache["raw_sr"] = audio[None], 32000
        return torch.rand(1, self.bins, 30, generator=torch.Generator().manual_seed(int(audio.numel()))), audio[None]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tts = TTS()
    backend = Pipeline(tts, EngineConfig(compile_mode="eager", max_rows=8), methods=("cut0", "cut5"))
    with running(tmp_path_factory.mktemp("voices"), backend) as live:
        live.tts = tts
        with httpx.Client(base_url=live.url, timeout=60) as client:
            live.client = client
            yield live


def test_a_voice_and_a_request_go_through_the_pipelines_own_methods(live) -> None:
    client, tts = live.client, live.tts
    answer = client.post("/voices", data={"name": "alice", "prompt_text": "你好", "prompt_lang": "zh"},
                         files={"ref_audio": ("a.wav", reference(), "audio/wav")}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert ("segment", "你好。", "zh", "v2ProPlus") in tts.text_preprocessor.calls  # the end of sentence added
    text = "今天天气很好！我们去公园吧。"
    tts_answer = client.post("/tts_with_cached_voice", json={"voice_name": "alice", "text": text, "text_lang": "zh",
                                                              "text_split_method": "cut0", "seed": 4})
    assert tts_answer.status_code == 200, tts_answer.text
    assert ("preprocess", text, "zh", "cut0") in tts.text_preprocessor.calls
    assert tts.text_preprocessor.calls[-1] == ("segment", "我们去公园吧。", "zh", "v2ProPlus")
    calls = len(tts.text_preprocessor.calls)
    again = client.post("/tts_with_cached_voice", json={"voice_name": "alice", "text": text, "text_lang": "zh",
                                                         "text_split_method": "cut0", "seed": 4})
    assert again.content == tts_answer.content and len(tts.text_preprocessor.calls) == calls  # segments kept
    voice = live.state.voices.get("alice")
    assert voice.sv_emb is not None and voice.prompt_tokens.dtype == torch.long
    direct = live.backend.engine.submit(voice, live.backend.segments(text, "zh", "cut0"), Params(seed=4)).result(60)
    with wave.open(io.BytesIO(tts_answer.content)) as f:
        assert f.getframerate() == direct[1] and f.getnframes() == direct[0].numel()


def test_a_reference_upstream_refuses_is_a_400(live) -> None:
    answer = live.client.post("/voices", data={"name": "bad", "prompt_lang": "zh", "prompt_text": "你好"},
                              files={"ref_audio": ("r.wav", reference(12.0), "audio/wav")}, headers=AUTH)
    assert answer.status_code == 400 and "upstream cannot use this recording" in answer.json()["message"]


def test_an_empty_transcript_is_upstreams_no_prompt_mode(live) -> None:
    """No prompt tokens are extracted and no transcript read: the voice is the reference's timbre alone."""
    calls = len(live.tts.text_preprocessor.calls)
    answer = live.client.post("/voices", data={"name": "timbre", "prompt_lang": "zh", "prompt_text": ""},
                              files={"ref_audio": ("r.wav", reference(5.0), "audio/wav")}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    voice = live.state.voices.get("timbre")
    assert voice.prompt_tokens.numel() == voice.prompt_phones.numel() == voice.prompt_bert.shape[1] == 0
    assert len(live.tts.text_preprocessor.calls) == calls and voice.sv_emb is not None
    tts = live.client.post("/tts_with_cached_voice", json={"voice_name": "timbre", "text": "好。", "text_lang": "zh"})
    assert tts.status_code == 200


def test_text_the_frontend_refuses_is_that_requests_400(live) -> None:
    body = {"voice_name": "alice", "text_lang": "zh"}
    refused = live.client.post("/tts_with_cached_voice", json={**body, "text": "你好☃。"})
    assert refused.status_code == 400
    assert refused.json()["message"].startswith("text='你好☃。' cannot be read in language 'zh': KeyError")
    assert live.client.post("/tts_with_cached_voice", json={**body, "text": "好。"}).status_code == 200


def test_the_pipelines_languages_and_split_methods_are_the_allowed_ones(live) -> None:
    body = {"ref_audio_path": "alice/ref.wav", "prompt_lang": "zh", "prompt_text": "你好", "text": "好。"}
    korean = live.client.post("/tts", json={**body, "text_lang": "ko"})
    assert korean.status_code == 400 and "expected one of auto, en, zh, ja" in korean.json()["message"]
    cut3 = live.client.post("/tts", json={**body, "text_lang": "zh", "text_split_method": "cut3"})
    assert cut3.status_code == 400 and "expected one of cut0, cut5" in cut3.json()["message"]


def test_weights_switch_mid_load_in_flight_requests_finish_on_the_old(live, tmp_path) -> None:
    """A request held in the old engine while new GPT weights load finishes with the old weights' audio; requests
    after the switch get the new weights' (the same as submitting to the new engine directly)."""
    client, backend = live.client, live.backend
    body = {"voice_name": "alice", "text": "今天天气很好！", "text_lang": "zh", "seed": 21}
    before = client.post("/tts_with_cached_voice", json=body).content
    old = backend.engine
    gate = hold_steps(old)
    box = []
    caller = threading.Thread(target=lambda: box.append(client.post("/tts_with_cached_voice", json=body)))
    caller.start()
    while not old.stats()["requests"]:
        time.sleep(0.01)
    weights = tmp_path / "new-s1.ckpt"
    weights.write_bytes(b"weights")
    switched = client.get("/set_gpt_weights", params={"weights_path": str(weights)}, headers=AUTH)
    assert switched.json() == {"message": "success"} and backend.engine is not old
    gate.set()
    caller.join(60)
    assert box[0].status_code == 200 and box[0].content == before
    after = client.post("/tts_with_cached_voice", json=body).content
    voice = live.state.voices.get("alice")
    direct = backend.engine.submit(voice, backend.segments(body["text"], "zh", "cut5"), Params(seed=21)).result(60)
    assert after != before and (len(after) - 44) // 2 == direct[0].numel()
    deadline = time.monotonic() + 30
    while old._threads[0].is_alive() and time.monotonic() < deadline:  # the old engine drained and closed
        time.sleep(0.05)
    assert not old._threads[0].is_alive()


def test_new_sovits_weights_prepare_registered_voices_again(live, tmp_path) -> None:
    client, tts = live.client, live.tts
    body = {"voice_name": "alice", "text": "好。", "text_lang": "zh", "seed": 1}
    assert client.post("/tts_with_cached_voice", json=body).status_code == 200
    prepared = sum(call[1] == "你好。" for call in tts.text_preprocessor.calls)
    weights = tmp_path / "new-s2.pth"
    weights.write_bytes(b"weights")
    assert client.get("/set_sovits_weights", params={"weights_path": str(weights)}, headers=AUTH).status_code == 200
    assert client.post("/tts_with_cached_voice", json=body).status_code == 200
    assert sum(call[1] == "你好。" for call in tts.text_preprocessor.calls) == prepared + 1
    meta = json.loads((live.state.voices.directory / "alice" / "voice.json").read_text())
    assert meta["weights"] == str(weights)


def test_auxiliary_references_go_through_the_pipelines_reference_method(live) -> None:
    (live.state.voices.directory / "aux.wav").write_bytes(reference(6.0, pitch=0.3))
    body = {"ref_audio_path": "alice/ref.wav", "prompt_lang": "zh", "prompt_text": "你好", "text": "好。",
            "text_lang": "zh", "aux_ref_audio_paths": ["aux.wav"]}
    assert live.client.post("/tts", json=body).status_code == 200
    voice = live.state.voices.reference("alice/ref.wav", "你好", "zh", ("aux.wav",))
    assert len(voice.refer) == 2 and len(voice.sv_emb) == 2
    assert voice.sv_emb[1][0, 0] == pytest.approx(float(live.tts._read(str(live.state.voices.directory / "aux.wav"))
                                                        .mean()))

