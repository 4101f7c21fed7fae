"""An upstream `TTS` pipeline's own text frontend and reference encoders, in the shapes the engine takes: text ->
segments (phones and BERT features: the steps of `text_preprocessor.preprocess`) and a reference recording with its
transcript -> a voice's fields (SSL prompt tokens, spectrogram, v2Pro's speaker embedding, v3/v4's prompt mel; the
engine's `Voice`, which sits a layer above), each computed by the pipeline's own methods and functions, so the
features are upstream's. Upstream's pipeline keeps state between
these calls (its prompt cache, BERT on one device), so calls are serialized.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from ..core.guard import InputError
from .bert import Item, OptimizedBert
from .g2p import G2PPool, Spoken, Unplaced, g2p, upstream_preprocessor
from .stage import HANDLE
from .upstream import HOME, use_upstream

logger = logging.getLogger(__name__)
Observe = Callable[[str, float], None]  # (part of the frontend, seconds it took)


class PipelineFrontend:
    """The frontend and reference encoders of upstream's `TTS` pipeline `tts`."""

    def __init__(self, tts: Any, g2p_workers: int = 0, g2p_factory: Callable[[], Any] | None = None) -> None:
        """`g2p_workers` > 0: G2P in that many processes, each with a preprocessor from `g2p_factory` (default:
        upstream's `TextPreprocessor` without a BERT, from the checkout on the path)."""
        self.tts = tts
        self.version: str = tts.configs.version
        self.languages: tuple[str, ...] = tuple(tts.configs.languages)
        self._module = sys.modules[type(tts).__module__]  # upstream's TTS.py: mel functions, resample, splits
        self._lock = threading.Lock()
        self._pool = self._start_pool(g2p_factory, g2p_workers) if g2p_workers and self._bert_shape() else None

    def _start_pool(self, factory: Callable[[], Any] | None, workers: int) -> G2PPool | None:
        """The G2P workers, or None (G2P in the callers' threads, logged) when they cannot start. By default each
        has upstream's preprocessor from the checkout the pipeline came from (its GPT_SoVITS/TTS_infer_pack/TTS.py)."""
        factory = factory or functools.partial(upstream_preprocessor, str(Path(self._module.__file__).parents[2]))
        start = time.perf_counter()
        try:
            pool = G2PPool(factory, workers)
        except BrokenProcessPool as exc:
            logger.warning("frontend: the G2P workers did not start (%s); G2P runs in the callers' threads", exc)
            return None
        logger.info("frontend: %d G2P workers ready in %.1f s", workers, time.perf_counter() - start)
        return pool

    def close(self) -> None:
        """Stop the G2P workers."""
        if self._pool is not None:
            self._pool.close()

    def load_weights(self, kind: str, path: str) -> None:
        """Upstream's own loading of new GPT (`gpt`: T2S) or SoVITS (`sovits`) weights into the pipeline; a SoVITS
        file may change the version (and so the languages)."""
        with self._lock:
            load = self.tts.init_t2s_weights if kind == "gpt" else self.tts.init_vits_weights
            load(path)
            self.version, self.languages = self.tts.configs.version, tuple(self.tts.configs.languages)

    def segments(self, text: str, lang: str, split_method: str,
                 observe: Observe | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The text cut by `split_method` into segments, each one's phones (L,) and BERT features (width, L), as
        `text_preprocessor.preprocess` makes them: G2P one segment at a time (in the G2P workers, or one segment
        per hold of the pipeline: a short text waits for one segment of a long one, not for all of it), then the
        BERT of every segment in one call (`_bert`). `observe(part, seconds)` hears how long "g2p" and "bert" took."""
        pre, observe, start = self.tts.text_preprocessor, observe or (lambda part, seconds: None), time.perf_counter()
        with _text_errors(text, lang):
            with self._lock:
                pieces = pre.pre_seg_text(pre.replace_consecutive_punctuation(text), lang, split_method)
            shape = self._bert_shape()
            spoken = [found for piece in pieces if (found := self._g2p(piece, lang, shape)) is not None]
        observe("g2p", time.perf_counter() - start)
        if not spoken:
            raise InputError(f"text={text[:40]!r} has nothing to speak in language {lang!r}")
        items = [item for s in spoken if isinstance(s, Spoken) for item in s.calls.values()]
        start = time.perf_counter()
        with _text_errors(text, lang), self._lock, torch.inference_mode():
            features = iter(self._bert(items))
        if items:
            observe("bert", time.perf_counter() - start)
        return [(torch.as_tensor(s.phones, dtype=torch.long), s.features({n: next(features) for n in s.calls}))
                if isinstance(s, Spoken) else s for s in spoken]

    def _g2p(self, piece: str, lang: str, shape: tuple[int, torch.dtype] | None
             ) -> Spoken | tuple[torch.Tensor, torch.Tensor] | None:
        """A segment's G2P with its BERT calls recorded (`g2p`, BERT features of `shape`), or, where its BERT is
        not recorded (no BERT model, or a frontend that changes its features), its phones and features made
        upstream's way; None for a segment with nothing to speak."""
        pre = self.tts.text_preprocessor
        if shape is not None:
            try:
                if self._pool is not None:
                    return self._pool(piece, lang, self.version, *shape)
                with self._lock:
                    return g2p(pre, piece, lang, self.version, *shape)
            except (Unplaced, BrokenProcessPool) as exc:
                logger.warning("frontend: %s; the segment is made upstream's way", exc)
        with self._lock, torch.inference_mode():
            phones, bert, norm_text = pre.segment_and_extract_feature_for_text(piece, lang, self.version)
        return None if phones is None or norm_text == "" else (torch.as_tensor(phones, dtype=torch.long),
                                                                 bert.detach())

    def _bert_shape(self) -> tuple[int, torch.dtype] | None:
        """The width and dtype of the preprocessor's BERT features, or None when it has no BERT model."""
        model = getattr(self.tts.text_preprocessor, "bert_model", None)
        if not isinstance(model, torch.nn.Module) or not hasattr(self.tts.text_preprocessor, "get_bert_feature"):
            return None
        return model.config.hidden_size, next(model.parameters()).dtype

    def _bert(self, items: list[Item]) -> tuple[torch.Tensor, ...]:
        """`get_bert_feature` of each (text, word2ph): in one call where `optimize_bert` serves the preprocessor."""
        pre = self.tts.text_preprocessor
        stage = getattr(pre, HANDLE, None)
        if isinstance(stage, OptimizedBert):
            return stage.features(items)
        return tuple(pre.get_bert_feature(text, word2ph) for text, word2ph in items)

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


@contextlib.contextmanager
def _text_errors(text: str, lang: str) -> Iterator[None]:
    """Upstream's text frontend refusing a text (only punctuation or spaces, a character its G2P cannot read, a
    text its BERT cannot align with its characters) is the request's InputError, with upstream's reason."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever upstream's G2P raises for this text
        raise InputError(f"text={text[:40]!r} cannot be read in language {lang!r}: {type(exc).__name__}: "
                         f"{exc}") from None


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
