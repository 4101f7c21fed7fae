"""What the server needs beside the engine: a text frontend (text -> segments) and voice preparation (reference
audio and its text -> `Voice`). `StandIns` is the built-in one: the stand-in models with random weights on the CPU, a
character-level frontend, voices drawn from the reference's bytes (noise, but every stage and endpoint runs)."""

from __future__ import annotations

import hashlib
import io
import wave

from ..core.guard import InputError
from ..engine import Engine, EngineConfig, Segment, Voice, stand_ins

# api_v2's names: the languages of v2 and later (v1 has fewer) and its text split methods
LANGUAGES = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")
SPLIT_METHODS = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")
REFERENCE_SECONDS = (3.0, 10.0)  # upstream's limits on a reference's length


class Backend:
    """The models behind the server: `engine`, `segments` (the frontend) and `voice` (a reference prepared)."""

    engine: Engine
    version: str
    languages: tuple[str, ...] = LANGUAGES
    split_methods: tuple[str, ...] = SPLIT_METHODS
    description: str = ""

    def segments(self, text: str, lang: str, split_method: str) -> list[Segment]:
        """The text's segments (phones and BERT features); InputError when it has nothing to speak."""
        raise NotImplementedError

    def voice(self, ref_audio: bytes, prompt_text: str, prompt_lang: str) -> Voice:
        """A voice from a reference recording (a WAV file's bytes) and its transcript; InputError when unusable."""
        raise NotImplementedError

    def close(self) -> None:
        self.engine.close()


class StandIns(Backend):
    """The stand-in models of `version` (random weights) on the CPU, float32."""

    def __init__(self, version: str = "v2ProPlus", config: EngineConfig | None = None) -> None:
        self.version = version
        self.engine = stand_ins.engine(version, config=config)
        self.description = f"the built-in stand-in models of GPT-SoVITS {version} (random weights: the audio is noise)"

    def segments(self, text: str, lang: str, split_method: str) -> list[Segment]:
        if not any(c.isalnum() for c in text):
            raise InputError(f"text={text[:40]!r} has nothing to speak (no letters or digits)")
        return stand_ins.segments(text)

    def voice(self, ref_audio: bytes, prompt_text: str, prompt_lang: str) -> Voice:
        seconds = wav_seconds(ref_audio)
        low, high = REFERENCE_SECONDS
        if not low <= seconds <= high:
            raise InputError(f"ref_audio is {seconds:.1f} s long: expected {low:g} to {high:g} s")
        digest = hashlib.sha256(ref_audio + prompt_text.encode() + prompt_lang.encode()).digest()
        return stand_ins.voice(self.version, seed=int.from_bytes(digest[:7], "little"))


def wav_seconds(data: bytes) -> float:
    """The length of a WAV file's audio; InputError when the bytes are not a readable PCM WAV."""
    try:
        with wave.open(io.BytesIO(data)) as f:
            if f.getnframes() == 0 or f.getframerate() <= 0:
                raise InputError("ref_audio: the WAV file holds no audio")
            return f.getnframes() / f.getframerate()
    except (wave.Error, EOFError) as exc:
        raise InputError(f"ref_audio: not a readable PCM WAV file ({exc})") from None
