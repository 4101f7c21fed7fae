"""What the server needs beside the engine: a text frontend (text -> segments) and voice preparation (reference
audio and its text -> `Voice`). `Pipeline`: upstream's `TTS` pipeline (from a tts_infer.yaml), its own frontend,
reference encoders and models. `StandIns`: the stand-in models with random weights on the CPU, a character-level
frontend, voices drawn from the reference's bytes (noise, but every stage and endpoint runs anywhere)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import threading
import time
import wave
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..core.config import load_config
from ..core.guard import InputError
from ..engine import Engine, EngineConfig, Segment, Voice, stand_ins
from ..gpt_sovits.bert import optimize_bert
from ..gpt_sovits.frontend import Observe, PipelineFrontend, load_pipeline, split_methods
from ..gpt_sovits.stage import attach_or_leave
from .lru import ByteLRU, tensor_bytes

# api_v2's names: the languages of v2 and later (v1 has fewer) and its text split methods
LANGUAGES = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")
SPLIT_METHODS = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")
REFERENCE_SECONDS = (3.0, 10.0)  # upstream's limits on a reference's length
SEGMENT_CACHE_BYTES = 64 * 2**20  # texts' phones and BERT features kept (~16k phones of fp32 features)

logger = logging.getLogger(__name__)


class Backend:
    """The models behind the server: `engine`, `segments` (the frontend) and `voice` (a reference prepared)."""

    engine: Engine
    version: str
    languages: tuple[str, ...] = LANGUAGES
    split_methods: tuple[str, ...] = SPLIT_METHODS
    description: str = ""

    def __init__(self, drain_s: float = 300.0) -> None:
        self._segments: ByteLRU[list[Segment]] = ByteLRU(
            SEGMENT_CACHE_BYTES, lambda found: tensor_bytes(*(t for s in found for t in (s.phones, s.bert))),
            keep_oversized=False)
        self._switch = SharedLock()
        self.drain_s = drain_s  # how long an engine replaced by a weight switch may take to finish what it holds
        self.loaded: dict[str, str] = {}  # "gpt" / "sovits" -> the weights file serving now (absent: built in)
        self.warm_voice: Voice | None = None  # the voice an engine's render buckets are prepared with (`prepare`)
        self._retiring: threading.Thread | None = None

    def serving(self) -> contextlib.AbstractContextManager:
        """Held while a request's voice and segments are prepared and it is submitted: a weight switch waits for
        these, and they for a switch, so no request mixes old and new weights."""
        return self._switch.shared()

    def cached_segments(self, text: str, lang: str, split_method: str, observe: Observe | None = None) -> list[Segment]:
        """`segments`, kept for texts seen lately (a service hears the same phrases again): at most
        `SEGMENT_CACHE_BYTES` of phones and features. A whole text, not its segments: a segment's BERT features
        depend (in their last bits) on the call that made them, so a text always gets the same ones."""
        key = (text, lang, split_method, self.version)
        if (found := self._segments.get(key)) is None:
            found = self.segments(text, lang, split_method, observe)
            self._segments.put(key, found)
        return found

    def segments(self, text: str, lang: str, split_method: str, observe: Observe | None = None) -> list[Segment]:
        """The text's segments (phones and BERT features); InputError when it has nothing to speak.
        `observe(part, seconds)` hears how long each part of the frontend took ("g2p", "bert")."""
        raise NotImplementedError

    def voice(self, ref_audio: bytes, prompt_text: str, prompt_lang: str) -> Voice:
        """A voice from a reference recording (a WAV file's bytes) and its transcript; InputError when unusable."""
        raise NotImplementedError

    def timbre(self, ref_audio: bytes) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An auxiliary reference's spectrogram and (v2Pro) speaker embedding: its timbre, averaged in."""
        raise NotImplementedError

    @property
    def weights(self) -> str:
        """What prepared voices depend on (the SoVITS weights): a voice prepared under other weights is stale."""
        return self.loaded.get("sovits", "built-in")

    def set_weights(self, kind: str, path: str) -> None:
        """Serve new GPT (`gpt`) or SoVITS (`sovits`) weights from now on: they load and a new engine warms up (its
        render buckets prepared with `warm_voice`) while requests already submitted go on in the old engine and new
        ones wait; then the new engine takes them and the old one finishes what it holds (at most `drain_s`; one old
        engine at a time). InputError when the file does not load (the old weights keep serving)."""
        if self._retiring is not None:
            self._retiring.join(self.drain_s)
        with self._switch.exclusive():
            engine = self._load(kind, path)
            if self.warm_voice is not None:
                prepare(engine, self.warm_voice)
            old, self.engine = self.engine, engine
            self.loaded[kind] = path
        self._retiring = threading.Thread(target=_retire, args=(old, self.drain_s), name="tts_compile-retire",
                                          daemon=True)
        self._retiring.start()
        logger.info("serve: %s weights %s loaded; new requests go to the new engine", kind, path)

    def _load(self, kind: str, path: str) -> Engine:
        """An engine over the models with `kind`'s weights read from `path`; InputError when they do not load."""
        raise NotImplementedError

    def close(self) -> None:
        self.engine.close()


def prepare(engine: Engine, voice: Voice) -> None:
    """`engine.prepare(voice)`; a failure is logged and leaves the buckets to the first requests (which then capture
    and verify them, as without it)."""
    try:
        engine.prepare(voice)
    except Exception:  # noqa: BLE001 - an optimization step: serving goes on without it
        logger.exception("serve: the engine's render buckets could not be prepared")


class Pipeline(Backend):
    """Upstream's `TTS` pipeline `tts`: the engine over its models, its frontend and reference encoders."""

    def __init__(self, tts: Any, config: EngineConfig | None = None,
                 methods: tuple[str, ...] | None = None, drain_s: float = 300.0) -> None:
        super().__init__(drain_s)
        self.config = config or EngineConfig()
        self.frontend = PipelineFrontend(tts, self.config.g2p_workers)
        if self.config.bert:
            attach_or_leave("serve", "BERT", optimize_bert, lambda: tts.text_preprocessor, self.config)
        self.version, self.languages = self.frontend.version, self.frontend.languages
        self.split_methods = methods or split_methods()
        self.engine = Engine.from_pipeline(tts, config)
        self.loaded = {kind: str(getattr(tts.configs, name, "?"))
                       for kind, name in (("gpt", "t2s_weights_path"), ("sovits", "vits_weights_path"))}

    @property
    def description(self) -> str:
        return f"GPT-SoVITS {self.version} ({self.loaded['gpt']}, {self.loaded['sovits']}) on {self.engine.device}"

    def _load(self, kind: str, path: str) -> Engine:
        """Upstream's own loading into the pipeline (a SoVITS file may change the version), then an engine over it."""
        try:
            self.frontend.load_weights(kind, path)
        except Exception as exc:  # noqa: BLE001 - whatever upstream's loading raises: the caller's file
            raise InputError(f"set_{kind}_weights: upstream cannot load {path!r}: {type(exc).__name__}: "
                             f"{exc}") from None
        engine = Engine.from_pipeline(self.frontend.tts, self.config)
        self.version, self.languages = self.frontend.version, self.frontend.languages
        return engine

    @classmethod
    def from_config(cls, path: str, config: EngineConfig | None = None) -> "Pipeline":
        """The pipeline that `tts_infer.yaml` at `path` describes (upstream's code from GPT_SOVITS_HOME)."""
        return cls(load_pipeline(path), config)

    def segments(self, text: str, lang: str, split_method: str, observe: Observe | None = None) -> list[Segment]:
        return [Segment(phones, bert) for phones, bert in self.frontend.segments(text, lang, split_method, observe)]

    def close(self) -> None:
        super().close()
        self.frontend.close()

    def voice(self, ref_audio: bytes, prompt_text: str, prompt_lang: str) -> Voice:
        return Voice(**self.frontend.voice(ref_audio, prompt_text, prompt_lang))

    def timbre(self, ref_audio: bytes) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.frontend.timbre(ref_audio)


class StandIns(Backend):
    """The stand-in models of `version` (random weights) on the CPU, float32."""

    def __init__(self, version: str = "v2ProPlus", config: EngineConfig | None = None) -> None:
        super().__init__()
        self.version, self.config = version, config
        self.models = stand_ins.models(version)  # (T2S, synthesizer, vocoder or None)
        self.engine = Engine.from_models(version, *self.models, config)
        self.description = f"the built-in stand-in models of GPT-SoVITS {version} (random weights: the audio is noise)"

    def _load(self, kind: str, path: str) -> Engine:
        """A state dict saved from the stand-ins' T2S (`gpt`) or synthesizer (`sovits`, v3/v4's CFM included)."""
        index = 0 if kind == "gpt" else 1
        models = list(self.models)
        models[index] = stand_ins.models(self.version)[index]
        try:
            models[index].load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - not a file, not a state dict, or another model's
            raise InputError(f"set_{kind}_weights: {path!r} is not a state dict of the stand-in "
                             f"{'T2S' if index == 0 else 'synthesizer'} of {self.version}: {type(exc).__name__}: "
                             f"{str(exc)[:200]}") from None
        engine = Engine.from_models(self.version, *models, self.config)
        self.models = tuple(models)
        return engine

    def segments(self, text: str, lang: str, split_method: str, observe: Observe | None = None) -> list[Segment]:
        if not any(c.isalnum() for c in text):
            raise InputError(f"text={text[:40]!r} has nothing to speak (no letters or digits)")
        start = time.perf_counter()
        found = stand_ins.segments(text)
        if observe is not None:
            observe("g2p", time.perf_counter() - start)
        return found

    def voice(self, ref_audio: bytes, prompt_text: str, prompt_lang: str) -> Voice:
        seconds = wav_seconds(ref_audio)
        low, high = REFERENCE_SECONDS
        if not low <= seconds <= high:
            raise InputError(f"ref_audio is {seconds:.1f} s long: expected {low:g} to {high:g} s")
        if not prompt_text.strip() and self.version in ("v3", "v4"):
            raise InputError(f"prompt_text is required with {self.version}: the reference recording's transcript")
        digest = hashlib.sha256(ref_audio + prompt_text.encode() + prompt_lang.encode()).digest()
        seed = int.from_bytes(digest[:7], "little")
        return stand_ins.voice(self.version, seed=seed, prompt=bool(prompt_text.strip()))

    def timbre(self, ref_audio: bytes) -> tuple[torch.Tensor, torch.Tensor | None]:
        voice = self.voice(ref_audio, "timbre", "")
        return voice.refer[0], None if voice.sv_emb is None else voice.sv_emb[0]


def builder(config_path: str | None, version: str = "v2ProPlus",
            queue_size: int | None = None) -> Callable[[], Backend]:
    """How the serve command (and each Ray Serve replica) builds its backend: upstream's pipeline from the
    `tts_infer.yaml` at `config_path` (its `tts_compile:` section read now: ConfigError for a bad one), or without
    one the stand-in models of `version` on the CPU."""
    queue = {} if queue_size is None else {"queue_size": queue_size}
    if config_path is not None:
        return functools.partial(Pipeline.from_config, config_path,
                                 load_config(config_path, config_class=EngineConfig, **queue))
    return functools.partial(StandIns, version, EngineConfig(compile_mode="eager", max_rows=8, **queue))


class SharedLock:
    """Many holders at once (`shared`), or one alone (`exclusive`); a waiting exclusive holder goes first."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._shared, self._exclusive = 0, False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._cv:
                self._shared -= 1
                self._cv.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cv.wait_for(lambda: self._shared == 0)
        try:
            yield
        finally:
            with self._cv:
                self._exclusive = False
                self._cv.notify_all()


def _retire(engine: Engine, seconds: float) -> None:
    """An engine that new requests no longer reach: its held requests finish, then it closes."""
    if not engine.drain(seconds):
        logger.warning("serve: the old engine still held requests after %.0f s; they fail", seconds)
    engine.close()


def wav_seconds(data: bytes) -> float:
    """The length of a WAV file's audio; InputError when the bytes are not a readable PCM WAV."""
    try:
        with wave.open(io.BytesIO(data)) as f:
            if f.getnframes() == 0 or f.getframerate() <= 0:
                raise InputError("ref_audio: the WAV file holds no audio")
            return f.getnframes() / f.getframerate()
    except (wave.Error, EOFError) as exc:
        raise InputError(f"ref_audio: not a readable PCM WAV file ({exc})") from None
