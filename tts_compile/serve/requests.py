"""api_v2's `/tts` parameters, read from a query string or a JSON body and checked: what a request asks for, or an
`InputError` naming the parameter, its value and what is allowed (the server answers 400 with it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..core.guard import InputError
from ..engine import Params, TokenChunks
from ..engine.request import MAX_CHUNK_TOKENS
from .audio import MEDIA_TYPES

# name: (type, api_v2's default); api_v2's other parameters (batching, fragment and parallel options) are accepted
# and have no effect: the engine batches across requests itself
PARAMETERS: dict[str, tuple[type, Any]] = {
    "text": (str, None), "text_lang": (str, None), "ref_audio_path": (str, None), "prompt_lang": (str, None),
    "prompt_text": (str, ""), "top_k": (int, 15), "top_p": (float, 1.0), "temperature": (float, 1.0),
    "text_split_method": (str, "cut5"), "speed_factor": (float, 1.0), "seed": (int, -1), "media_type": (str, "wav"),
    "streaming_mode": (int, 0), "repetition_penalty": (float, 1.35), "sample_steps": (int, 32),
    "super_sampling": (bool, False), "overlap_length": (int, 2), "min_chunk_length": (int, 16),
    "aux_ref_audio_paths": (list, None), "voice_name": (str, None),
    "batch_size": (int, 1), "batch_threshold": (float, 0.75), "split_bucket": (bool, True),
    "fragment_interval": (float, 0.3), "parallel_infer": (bool, True),
}
SPEED = (0.25, 4.0)
MAX_AUX = 8  # auxiliary references per request


@dataclass(frozen=True)
class Synthesis:
    """One checked request: the text, where its voice comes from (a registered `voice_name`, or a reference path
    with its transcript), the engine's parameters and how the audio goes back."""

    text: str
    text_lang: str
    split_method: str
    params: Params
    media_type: str
    streaming_mode: int
    voice_name: str | None = None
    ref_audio_path: str | None = None
    prompt_text: str = ""
    prompt_lang: str = ""
    aux_ref_audio_paths: tuple[str, ...] = ()  # more references whose timbre is averaged in (v1-v2ProPlus)
    chunks: TokenChunks | None = None  # streaming_mode 2 and 3: token chunks

    @property
    def stream(self) -> bool:
        return self.streaming_mode > 0


def parse(raw: Mapping[str, Any], languages: tuple[str, ...], split_methods: tuple[str, ...], max_text: int,
          timeout_s: float | None, cached_voice: bool = False) -> Synthesis:
    """A request's parameters checked as api_v2 checks them (and more: ranges, types, lengths). `cached_voice`: the
    voice is `voice_name` (registered) instead of `ref_audio_path` and `prompt_lang`."""
    values = {name: default if raw.get(name) is None else _typed(name, raw[name], kind)
              for name, (kind, default) in PARAMETERS.items()}
    required = ("voice_name", "text", "text_lang") if cached_voice else ("ref_audio_path", "text", "text_lang",
                                                                          "prompt_lang")
    for name in required:
        if values.get(name) in (None, ""):
            raise InputError(f"{name} is required")
    text = values["text"]
    if len(text) > max_text:
        raise InputError(f"text is {len(text)} characters long: at most {max_text} are allowed")
    lang, prompt_lang = values["text_lang"].lower(), (values.get("prompt_lang") or "").lower()
    for name, value in (("text_lang", lang), ("prompt_lang", prompt_lang)):
        if (value or name == "text_lang") and value not in languages:
            raise InputError(f"{name}={value!r} is not supported: expected one of {', '.join(languages)}")
    _one_of("text_split_method", values["text_split_method"], split_methods)
    _one_of("media_type", values["media_type"], tuple(MEDIA_TYPES))
    _one_of("streaming_mode", values["streaming_mode"], (0, 1, 2, 3))
    if values["super_sampling"]:
        raise InputError("super_sampling=True is not supported by this server: expected false")
    aux = tuple(values["aux_ref_audio_paths"] or ())
    if len(aux) > MAX_AUX or not all(isinstance(path, str) and path for path in aux):
        raise InputError(f"aux_ref_audio_paths={list(aux)!r} is invalid: expected at most {MAX_AUX} paths")
    for name, low in (("min_chunk_length", 1), ("overlap_length", 0)):
        if not low <= values[name] <= MAX_CHUNK_TOKENS:
            raise InputError(f"{name}={values[name]} is invalid: expected an int in [{low}, {MAX_CHUNK_TOKENS}]")
    chunks = TokenChunks(values["min_chunk_length"], values["overlap_length"], values["streaming_mode"] == 2)
    speed = check_speed("speed_factor", values["speed_factor"])
    seed = values["seed"]
    if seed != -1 and not 0 <= seed < 2**63:
        raise InputError(f"seed={seed} is invalid: expected -1 (random) or an int in [0, 2**63)")
    params = Params(top_k=values["top_k"], top_p=values["top_p"], temperature=values["temperature"],
                    repetition_penalty=values["repetition_penalty"], speed=speed,
                    sample_steps=values["sample_steps"], fragment_interval=values["fragment_interval"],
                    seed=None if seed == -1 else seed, timeout_s=timeout_s)
    return Synthesis(text, lang, values["text_split_method"], params, values["media_type"], values["streaming_mode"],
                     values["voice_name"], values["ref_audio_path"], values.get("prompt_text") or "", prompt_lang, aux,
                     chunks if values["streaming_mode"] in (2, 3) else None)


def check_speed(name: str, value: Any) -> float:
    """`value` as a speed factor; InputError naming `name` outside SPEED's range or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not SPEED[0] <= value <= SPEED[1]:
        raise InputError(f"{name}={value!r} is invalid: expected a number from {SPEED[0]} to {SPEED[1]}")
    return float(value)


def _typed(name: str, value: Any, kind: type) -> Any:
    """`value` (a query string's text or a JSON value) as `kind`; InputError naming the parameter otherwise."""
    try:
        if isinstance(value, bool) and kind in (int, float) and name != "streaming_mode":
            raise ValueError
        if name == "streaming_mode" and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"  # api_v2 takes a bool or an int here
        if kind is bool or (name == "streaming_mode" and isinstance(value, bool)):
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                value = value.lower() in ("true", "1")
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError
            return int(value) if name == "streaming_mode" else bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            result = float(value)
            if not math.isfinite(result):
                raise ValueError
            return result
        if kind is list:
            return value if isinstance(value, list) else [value]
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, "a list")
        raise InputError(f"{name}={value!r} is invalid: expected {expected}") from None


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not supported: expected one of {', '.join(map(str, allowed))}")
