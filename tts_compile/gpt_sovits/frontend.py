"""An upstream `TTS` pipeline's own text frontend and reference encoders, in the shapes the engine takes: text ->
segments (phones and BERT features: the steps of `text_preprocessor.preprocess`) and a reference recording with its
transcript -> a voice's fields (SSL prompt tokens, spectrogram, v2Pro's speaker embedding, v3/v4's prompt mel; the
engine's `Voice`, which sits a layer above), each computed by the pipeline's own methods and functions, so the
features are upstream's. Upstream's pipeline keeps state between
these calls (its prompt cache, BERT on one device), so calls are serialized.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..core.guard import InputError
from .upstream import HOME, use_upstream


class PipelineFrontend:
    """The frontend and reference encoders of upstream's `TTS` pipeline `tts`."""

    def __init__(self, tts: Any) -> None:
        self.tts = tts
        self.version: str = tts.configs.version
        self.languages: tuple[str, ...] = tuple(tts.configs.languages)
        self._module = sys.modules[type(tts).__module__]  # upstream's TTS.py: mel functions, resample, splits
        self._lock = threading.Lock()

    def load_weights(self, kind: str, path: str) -> None:
        """Upstream's own loading of new GPT (`gpt`: T2S) or SoVITS (`sovits`) weights into the pipeline; a SoVITS
        file may change the version (and so the languages)."""
        with self._lock:
            load = self.tts.init_t2s_weights if kind == "gpt" else self.tts.init_vits_weights
            load(path)
            self.version, self.languages = self.tts.configs.version, tuple(self.tts.configs.languages)

    def segments(self, text: str, lang: str, split_method: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The text cut by `split_method` into segments, each one's phones (L,) and BERT features (1024, L), as
        `text_preprocessor.preprocess` makes them, one segment per hold of the pipeline: a short text waits for one
        segment of a long one, not for all of it."""
        pre = self.tts.text_preprocessor
        with self._lock:
            pieces = pre.pre_seg_text(pre.replace_consecutive_punctuation(text), lang, split_method)
        segments = []
        for piece in pieces:
            with self._lock, torch.inference_mode():
                phones, bert, norm_text = pre.segment_and_extract_feature_for_text(piece, lang, self.version)
            if phones is not None and norm_text != "":
                segments.append((torch.as_tensor(phones, dtype=torch.long), bert.detach()))
        if not segments:
            raise InputError(f"text={text[:40]!r} has nothing to speak in language {lang!r}")
        return segments

    def voice(self, ref_audio: bytes, prompt_text: str, prompt_lang: str) -> dict[str, Any]:
        """A voice's fields (the engine's `Voice`'s) from a reference recording's bytes and its transcript, as
        `TTS.run` prepares a new `ref_audio_path` and `prompt_text` (an empty transcript: upstream's no-prompt mode,
        v1-v2ProPlus); InputError for a recording upstream refuses (not 3-10 s, unreadable)."""
        prompted = bool(prompt_text.strip())
        if not prompted and self.version in ("v3", "v4"):
            raise InputError(f"prompt_text is required with {self.version}: the reference recording's transcript")
        tts = self.tts
        with self._reference(ref_audio) as path:
            if prompted:
                self._upstream(tts._set_prompt_semantic, path, field="ref_audio")
            spec, sv_emb = self._timbre_of(path, "ref_audio")
            if not prompted:  # upstream's no-prompt mode: the reference's timbre only
                empty = torch.zeros(0, dtype=torch.long)
                return _voice(empty, empty, torch.zeros(1024, 0, dtype=spec.dtype), spec, sv_emb)
            tokens = tts.prompt_cache["prompt_semantic"].detach()
            raw, rate = tts.prompt_cache["raw_audio"], tts.prompt_cache["raw_sr"]
            text = self._prompt_text(prompt_text, prompt_lang)
            phones, bert, _ = tts.text_preprocessor.segment_and_extract_feature_for_text(text, prompt_lang,
                                                                                         self.version)
            mel = self._prompt_mel(raw, rate) if self.version in ("v3", "v4") else None
        return _voice(tokens.flatten(), torch.as_tensor(phones, dtype=torch.long), bert.detach(), spec, sv_emb, mel)

    def timbre(self, ref_audio: bytes) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An auxiliary reference's spectrogram and (v2Pro) speaker embedding, as `TTS.run` reads its
        `aux_ref_audio_paths`."""
        with self._reference(ref_audio) as path:
            spec, sv_emb = self._timbre_of(path, "aux_ref_audio_paths")
        return spec, None if sv_emb is None else sv_emb[0]

    @contextlib.contextmanager
    def _reference(self, ref_audio: bytes) -> Iterator[str]:
        """A recording's bytes as a file upstream's methods can read, the pipeline held meanwhile."""
        with tempfile.TemporaryDirectory() as folder, self._lock, torch.inference_mode():
            path = os.path.join(folder, "reference.wav")
            Path(path).write_bytes(ref_audio)
            yield path

    def _timbre_of(self, path: str, field: str) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The reference spectrogram (`_get_ref_spec`) and, for v2Pro, its speaker embedding, of a recording."""
        spec, audio_16k = self._upstream(self.tts._get_ref_spec, path, field=field)
        sv_emb = (self.tts.sv_model.compute_embedding3(audio_16k),) if getattr(self.tts, "is_v2pro", False) else None
        return spec, sv_emb

    @staticmethod
    def _upstream(method: Any, path: str, field: str) -> Any:
        """`method(path)`; InputError naming `field` for a recording upstream refuses (not 3-10 s, unreadable)."""
        try:
            return method(path)
        except (OSError, RuntimeError, ValueError, EOFError) as exc:
            raise InputError(f"{field}: upstream cannot use this recording: {exc}") from None

    def _prompt_text(self, text: str, lang: str) -> str:
        """The transcript as `TTS.run` reads it: an end of sentence added where it has none."""
        text = text.strip("\n")
        if text[-1] not in self._module.splits:
            text += "." if lang == "en" else "。"
        return text

    def _prompt_mel(self, raw: torch.Tensor, rate: int) -> torch.Tensor:
        """v3/v4's prompt mel of the reference at the vocoder's rate, normalised (`norm_spec`) as `TTS.run` does."""
        module, device = self._module, self.tts.configs.device
        audio = raw.to(device).float()
        if audio.shape[0] == 2:
            audio = audio.mean(0, keepdim=True)
        target = 24000 if self.version == "v3" else 32000
        if rate != target:
            audio = module.resample(audio, rate, target, device)
        mel = module.mel_fn(audio) if self.version == "v3" else module.mel_fn_v4(audio)
        return module.norm_spec(mel)


def _voice(tokens: torch.Tensor, phones: torch.Tensor, bert: torch.Tensor, spec: torch.Tensor,
           sv_emb: tuple[torch.Tensor, ...] | None, mel: torch.Tensor | None = None) -> dict[str, Any]:
    return {"prompt_tokens": tokens, "prompt_phones": phones, "prompt_bert": bert, "refer": (spec,), "sv_emb": sv_emb,
            "mel": mel}


def load_pipeline(config_path: str | os.PathLike) -> Any:
    """Upstream's `TTS` pipeline from a `tts_infer.yaml`, its code from `GPT_SOVITS_HOME` (or, unset, the current
    directory when it is a GPT-SoVITS checkout, where api_v2 runs)."""
    root = None if os.environ.get(HOME) else Path.cwd()
    try:
        use_upstream(root)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; run from a GPT-SoVITS checkout or set {HOME}") from None
    from TTS_infer_pack.TTS import TTS, TTS_Config  # upstream's own, from the user's checkout

    return TTS(TTS_Config(str(config_path)))


def split_methods() -> tuple[str, ...]:
    """Upstream's text split methods (`cut0` ... `cut5`), once its code is on the path."""
    from TTS_infer_pack.text_segmentation_method import get_method_names

    return tuple(get_method_names())
