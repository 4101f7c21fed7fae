"""The voice registry: references prepared once (`Backend.voice`), kept in memory in an LRU bounded by bytes, and
persisted under the voices directory (`<dir>/<name>/`: the reference, its transcript, the prepared tensors), so a
restart keeps them. Prepared tensors depend on the SoVITS weights (`weights()`): a voice prepared under others is
prepared again from its reference. The same directory is the only place a request's `ref_audio_path` may point to."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..core.guard import InputError
from ..engine import Voice
from .lru import ByteLRU, tensor_bytes

logger = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
Prepare = Callable[[bytes, str, str], Voice]  # (reference WAV bytes, prompt text, prompt language) -> Voice
Timbre = Callable[[bytes], tuple[torch.Tensor, torch.Tensor | None]]  # an auxiliary reference -> (spec, sv_emb)


class UnknownVoice(KeyError):
    """No voice of that name is registered (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Forbidden(PermissionError):
    """A reference path outside the voices directory (HTTP 403)."""


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    prompt_text: str
    prompt_lang: str
    created: float


class VoiceStore:
    """Registered voices under `directory`, prepared by `prepare`; at most `memory_bytes` of prepared tensors held."""

    def __init__(self, directory: str | Path, prepare: Prepare, memory_bytes: int = 512 * 2**20,
                 weights: Callable[[], str] = lambda: "", timbre: Timbre | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prepare, self.weights, self.timbre = prepare, weights, timbre
        self._lock = threading.Lock()
        self._held: ByteLRU[Voice] = ByteLRU(memory_bytes, _bytes, keep_oversized=True)
        self._generations: dict[str, int] = {}  # per name: registrations and deletions so far

    # ------------------------------------------------------------------------------------------ registered voices
    def register(self, name: str, ref_audio: bytes, prompt_text: str, prompt_lang: str) -> VoiceInfo:
        """Prepare and keep a voice (replacing one of the same name); InputError for a bad name or reference."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InputError(f"name={name!r} is invalid: expected 1-64 letters, digits, '_', '-' or '.', starting "
                             "with a letter or digit")
        weights = self.weights()
        voice = self.prepare(ref_audio, prompt_text, prompt_lang)
        info = VoiceInfo(name, prompt_text, prompt_lang, time.time())
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.directory))
        (staging / "ref.wav").write_bytes(ref_audio)
        _save(staging, info, weights, voice)
        target = self.directory / name
        with self._lock:
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
            self._forget(name)
            self._held.put(("voice", name, weights, _stamp(target)), voice)
        logger.info("voices: %s registered", name)
        return info

    def get(self, name: str) -> Voice:
        """A registered voice, from memory or from disk (prepared again from its reference if the weights changed);
        UnknownVoice when there is none of that name. A held copy serves only while the voice's files on disk are
        the ones it came from: another process sharing the directory (a replica) may have replaced or deleted it."""
        weights = self.weights()
        folder = self._folder(name)
        try:
            key = ("voice", name, weights, _stamp(folder))
        except FileNotFoundError:
            raise UnknownVoice(f"voice {name!r} is not registered") from None
        with self._lock:
            if (held := self._held.get(key)) is not None:
                return held
            generation = self._generations.get(name, 0)
        try:
            meta = json.loads((folder / "voice.json").read_text(encoding="utf-8"))
            if meta.get("weights") == weights:
                voice = _voice(torch.load(folder / "voice.pt", weights_only=True))
            else:
                info = _info(meta)
                voice = self.prepare((folder / "ref.wav").read_bytes(), info.prompt_text, info.prompt_lang)
                with self._lock:
                    if self._generations.get(name, 0) == generation:
                        _save(folder, info, weights, voice)
                logger.info("voices: %s prepared again for the weights now served", name)
            key = ("voice", name, weights, _stamp(folder))  # after a save of the voice prepared again
        except FileNotFoundError:
            raise UnknownVoice(f"voice {name!r} is not registered") from None
        with self._lock:
            current = self._generations.get(name, 0) == generation
            if current:
                self._held.put(key, voice)
        return voice if current else self.get(name)  # registered again or deleted meanwhile: read anew

    def infos(self) -> list[VoiceInfo]:
        """Every registered voice, by name."""
        infos = []
        for path in sorted(self.directory.glob("*/voice.json")):
            if NAME.fullmatch(path.parent.name):
                infos.append(_info(json.loads(path.read_text(encoding="utf-8"))))
        return infos

    def delete(self, name: str) -> None:
        """Forget a voice (memory and disk); UnknownVoice when there is none of that name."""
        folder = self._folder(name)
        with self._lock:
            if not (folder / "voice.json").exists():
                raise UnknownVoice(f"voice {name!r} is not registered")
            self._forget(name)
            shutil.rmtree(folder)
        logger.info("voices: %s deleted", name)

    # ------------------------------------------------------------------------------------------ reference paths
    def reference(self, path: str, prompt_text: str, prompt_lang: str, aux: tuple[str, ...] = ()) -> Voice:
        """The voice of a reference file inside the directory (prepared once per file version and transcript), with
        the timbre of the `aux` files (each read once per version) averaged in."""
        voice = self._cached(path, ("voice", prompt_text, prompt_lang),
                             lambda data: self.prepare(data, prompt_text, prompt_lang))
        if not aux:
            return voice
        if self.timbre is None:
            raise InputError("aux_ref_audio_paths: these models take one reference")
        timbres = [self._cached(extra, ("timbre",), self._timbre_voice, "aux_ref_audio_paths") for extra in aux]
        refer = voice.refer + tuple(t.refer[0] for t in timbres)
        sv_emb = None if voice.sv_emb is None else voice.sv_emb + tuple(t.sv_emb[0] for t in timbres)
        return Voice(voice.prompt_tokens, voice.prompt_phones, voice.prompt_bert, refer, sv_emb, voice.mel)

    def _timbre_voice(self, data: bytes) -> Voice:
        """An auxiliary reference's features as a voice's (only `refer` and `sv_emb` used), for the LRU."""
        spec, sv_emb = self.timbre(data)
        empty = torch.zeros(0, dtype=torch.long)
        return Voice(empty, empty, torch.zeros(0, 0), (spec,), None if sv_emb is None else (sv_emb,))

    def _cached(self, path: str, what: tuple, make: Callable[[bytes], Voice], field: str = "ref_audio_path") -> Voice:
        """`make(the file's bytes)`, kept per file version, `what` and the weights."""
        resolved = self.resolve(path, field)
        try:
            stat = resolved.stat()
        except OSError as exc:
            raise InputError(f"{field}={path!r} cannot be read: {exc.strerror}") from None
        key = ("path", str(resolved), stat.st_mtime_ns, stat.st_size, *what, self.weights())
        if (held := self._held.get(key)) is not None:
            return held
        voice = make(self.read(path, field))
        self._held.put(key, voice)
        return voice

    def read(self, path: str, field: str = "ref_audio_path") -> bytes:
        """The bytes of a file inside the directory; Forbidden outside it, InputError when it cannot be read."""
        try:
            return self.resolve(path, field).read_bytes()
        except OSError as exc:
            raise InputError(f"{field}={path!r} cannot be read: {exc.strerror}") from None

    def resolve(self, path: str, field: str = "ref_audio_path") -> Path:
        """`path` (relative to the directory, or absolute) resolved; Forbidden unless it lies inside the directory."""
        resolved = (self.directory / path).resolve()
        if not resolved.is_relative_to(self.directory):
            raise Forbidden(f"{field}={path!r} is outside the voices directory; reference audio must lie inside it")
        return resolved

    def _forget(self, name: str) -> None:
        """A registered voice replaced or deleted: its held copies dropped, its generation moved on (the lock held)."""
        self._generations[name] = self._generations.get(name, 0) + 1
        self._held.discard(lambda key: key[:2] == ("voice", name))

    def _folder(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise UnknownVoice(f"voice {name!r} is not registered")
        return self.directory / name


def _stamp(folder: Path) -> int:
    """When a voice's files were last written (FileNotFoundError when it has none)."""
    return (folder / "voice.json").stat().st_mtime_ns


def _bytes(voice: Voice) -> int:
    return tensor_bytes(voice.prompt_tokens, voice.prompt_phones, voice.prompt_bert, *voice.refer,
                        *(voice.sv_emb or ()), *(() if voice.mel is None else (voice.mel,)))


def _info(meta: dict) -> VoiceInfo:
    """A voice's `voice.json` as its info (the weights it was prepared under left out)."""
    return VoiceInfo(**{k: meta[k] for k in ("name", "prompt_text", "prompt_lang", "created")})


def _save(folder: Path, info: VoiceInfo, weights: str, voice: Voice) -> None:
    """A voice's tensors, then its transcript and the weights it was prepared under, into `folder`: each file
    written aside and moved in place, so a reader never sees half of one."""
    torch.save(_state(voice), folder / ".voice.pt")
    os.replace(folder / ".voice.pt", folder / "voice.pt")
    meta = {**asdict(info), "weights": weights}
    (folder / ".voice.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    os.replace(folder / ".voice.json", folder / "voice.json")


def _state(voice: Voice) -> dict:
    """The voice's tensors on the CPU, for `torch.save`."""
    cpu = voice.to(torch.device("cpu"), voice.prompt_bert.dtype)
    return {"prompt_tokens": cpu.prompt_tokens, "prompt_phones": cpu.prompt_phones, "prompt_bert": cpu.prompt_bert,
            "refer": list(cpu.refer), "sv_emb": None if cpu.sv_emb is None else list(cpu.sv_emb), "mel": cpu.mel}


def _voice(state: dict) -> Voice:
    return Voice(state["prompt_tokens"], state["prompt_phones"], state["prompt_bert"], tuple(state["refer"]),
                 None if state["sv_emb"] is None else tuple(state["sv_emb"]), state["mel"])
