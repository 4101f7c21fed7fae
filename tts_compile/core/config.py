"""`OptimizeConfig`: the options every optimized stage shares, validated on construction, loadable from YAML.

Precedence: keyword arguments > `tts_infer.yaml` > the defaults below. In `tts_infer.yaml` the seed's top-level
keys `use_vocoder_optimization` and `vocoder_chunk_size` map to `enabled` and `chunk_size`; every other field lives
in a top-level `tts_compile:` section (upstream GPT-SoVITS rewrites the file on each weight load and keeps unknown
top-level keys, but drops unknown keys inside `custom:`). The section is shared by every config class of
tts_compile: a subclass (such as `gpt_sovits.PipelineConfig`) declares more fields, and loading a base class leaves
those keys to it. The environment variable `TTS_COMPILE_DISABLE=1` forces eager everywhere; it is read here and
nowhere else.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar, Union

logger = logging.getLogger(__name__)

DISABLE_ENV = "TTS_COMPILE_DISABLE"
COMPILE_MODES = ("reduce-overhead", "max-autotune", "default", "cudagraphs", "eager")
SWITCHES = ("auto", "on", "off")
ACTIVATIONS = ("auto", "on", "inductor", "off")
DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")
FALLBACKS = ("eager", "raise")
WARMUPS = ("startup", "lazy")
SEED_KEYS = {"use_vocoder_optimization": "enabled", "vocoder_chunk_size": "chunk_size"}
SECTION = "tts_compile"
C = TypeVar("C", bound="OptimizeConfig")


class ConfigError(ValueError):
    """An option has a bad value or an unknown name; the message says which and what is allowed."""


def doc(text: str) -> dict[str, str]:
    """A field's documentation, kept in its metadata: meaning, default, valid values and cost."""
    return {"doc": text}


@dataclass(frozen=True)
class OptimizeConfig:
    """Options of every optimized stage. Each field documents its meaning, default, valid values and cost."""

    enabled: bool = field(default=True, metadata=doc(
        "Run the optimized path. False: every call goes straight to the eager module (nothing is compiled)."))
    chunk_size: int = field(default=500, metadata=doc(
        "Mel frames kept from the longest window (>= 1). Larger: fewer windows and less recomputed context, "
        "but more memory per call and a longer capture. Ignored when `buckets` is given."))
    context: Union[int, str] = field(default="auto", metadata=doc(
        "Frames of context on each inner side of a window (int >= 0), or 'auto': the measured receptive field "
        "plus a margin. Too small a value breaks exactness; `verify` catches it at warm-up."))
    buckets: Union[tuple[int, ...], None] = field(default=None, metadata=doc(
        "Window lengths in frames, context included (each > 2 * context). None: chunk_size, chunk_size/2, ... "
        "down to about one context. Each length costs one capture per batch size (memory and warm-up time)."))
    max_batch: int = field(default=4, metadata=doc(
        "Most windows in one call (>= 1), used only for windows short enough that a batch holds no more "
        "frames than the longest window. Batching helps launch-bound short windows; memory stays bounded."))
    compile_mode: str = field(default="reduce-overhead", metadata=doc(
        "'reduce-overhead': inductor compiles the (pass-rewritten) vocoder once for all window lengths, and each "
        "bucket is replayed as a CUDA graph (no graphs on CPU); 'max-autotune': the same with autotuned kernels "
        "(longer compile); 'default': inductor without graphs; 'cudagraphs': CUDA graphs of the rewritten module "
        "without inductor (seconds to start; with fused_activation='inductor', inductor compiles the activation "
        "alone); 'eager': the same windows and buckets with the untouched module (a reference and a debugging "
        "aid). The GPT-SoVITS stages capture CUDA graphs in every graph mode and compile only what each "
        "names itself."))
    fused_activation: str = field(default="auto", metadata=doc(
        "Anti-aliased Snake/SnakeBeta activations (BigVGAN) as one fused op: a Triton kernel on CUDA, an exact "
        "polyphase torch function elsewhere. 'auto' and 'on': unless compile_mode is 'eager'; 'inductor': that "
        "polyphase function compiled by inductor, which generates the fused kernel (no hand-written kernel): traced "
        "into the whole-model compile, or with 'cudagraphs' compiled on its own (BigVGAN-24k on an H200: cold start "
        "81 s with 'cudagraphs', 451 s with 'reduce-overhead'); not with 'eager'; 'off': never."))
    channels_last: str = field(default="auto", metadata=doc(
        "Run Conv1d layers as channels-last conv2d, which skips cuDNN's layout transposes around every "
        "convolution. 'auto': on CUDA, unless compile_mode is 'eager'; 'on': everywhere; 'off': never."))
    cudnn_benchmark: bool = field(default=True, metadata=doc(
        "Let cuDNN time its algorithms for every captured shape during warm-up; the graph keeps the fastest. "
        "Costs start-up time (H100: ~3 s per bucket for the v4 vocoder, ~7 s for BigVGAN-24k) and is not kept "
        "across restarts. The GPT-SoVITS SoVITS decode times them whatever this says: cuDNN's heuristics run one "
        "v2ProPlus decoder convolution as a 22 ms kernel (0.1 ms timed)."))
    dtype: str = field(default="auto", metadata=doc(
        "'auto' keeps the module's dtype; 'float32' | 'float16' | 'bfloat16' | 'float64' converts the module in "
        "place (like module.half()) before optimizing. Inputs must then come in that dtype."))
    fallback: str = field(default="eager", metadata=doc(
        "When the optimized path fails (compile, capture, verification or a call that the original module serves "
        "correctly): 'eager' logs one warning and serves every later call from the original module; 'raise' "
        "raises an OptimizationError instead. A call's own bad input raises for that call and never falls back."))
    warmup: str = field(default="startup", metadata=doc(
        "'startup': compile and capture every bucket inside optimize_vocoder (seconds to minutes, see the "
        "benchmark); 'lazy': on the first call."))
    cache_dir: Union[str, None] = field(default=None, metadata=doc(
        "Directory for the persistent compile caches: inductor's, and Triton's for the T2S kernels in its triton/ "
        "folder (a restart then skips most of the compile: the engine was ready in 15-17 s cold and 3-5 s with "
        "Triton's cache warm on an H200). None: torch's and Triton's defaults. Process-wide: set through "
        "TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR, each unless already set."))
    n_mels: Union[int, None] = field(default=None, metadata=doc(
        "Expected mel bins. None: the input channels of the module's first convolution (required for a plain "
        "function unless warmup() gets an example)."))
    verify: bool = field(default=True, metadata=doc(
        "After warm-up, compare the optimized output with the eager module on a random mel spanning several "
        "windows; a mismatch beyond tolerance triggers the fallback. Costs one eager call at start-up."))
    progress: bool = field(default=True, metadata=doc(
        "Show a progress bar on stderr during warm-up when stderr is a terminal."))

    def __post_init__(self) -> None:
        check_bool(self, "enabled", "verify", "progress", "cudnn_benchmark")
        check_int(self, "chunk_size", "max_batch", minimum=1)
        check_choice(self, "compile_mode", COMPILE_MODES)
        check_choice(self, "fused_activation", ACTIVATIONS)
        if self.fused_activation == "inductor" and self.compile_mode == "eager":
            allowed = [m for m in COMPILE_MODES if m != "eager"]
            raise ConfigError("fused_activation='inductor' is invalid with compile_mode='eager' (the untouched "
                              f"module): expected compile_mode one of {allowed}")
        check_choice(self, "channels_last", SWITCHES)
        check_choice(self, "dtype", DTYPES)
        check_choice(self, "fallback", FALLBACKS)
        check_choice(self, "warmup", WARMUPS)
        if self.context != "auto" and not _is_int(self.context, minimum=0):
            raise ConfigError(f"context={self.context!r} is invalid: expected 'auto' or an int >= 0")
        if self.n_mels is not None and not _is_int(self.n_mels, minimum=1):
            raise ConfigError(f"n_mels={self.n_mels!r} is invalid: expected None or an int >= 1")
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ConfigError(f"cache_dir={self.cache_dir!r} is invalid: expected None or a path")
        if self.buckets is not None:
            object.__setattr__(self, "buckets", _check_buckets(self.buckets))
            if self.context != "auto" and self.buckets[0] <= 2 * self.context:
                raise ConfigError(f"buckets={list(self.buckets)} is invalid with context={self.context}: every "
                                  f"window length must be > 2 * context = {2 * self.context}")

    def replace(self: C, **changes: Any) -> C:
        """A copy with `changes` applied (validated like the constructor; names this class lacks rejected, even a
        subclass's: a keyword option is never silently ignored)."""
        _reject_unknown(changes, {f.name for f in fields(self)}, "options key")
        return from_mapping({**dataclasses.asdict(self), **changes}, type(self))


def field_docs(config_class: type[OptimizeConfig] = OptimizeConfig) -> dict[str, str]:
    """Each option's documentation, for `--help` texts and docs/configuration.md; with its subclasses' options."""
    return {f.name: f.metadata["doc"] for cls in _family(config_class) for f in fields(cls)}


def from_mapping(values: Mapping[str, Any], config_class: type[C] = OptimizeConfig, *,
                 source: str = "options") -> C:
    """Build a `config_class` from a mapping, rejecting unknown keys with the closest valid ones. Keys that a
    subclass of `config_class` declares are left to it (the YAML section is shared)."""
    own = [f.name for f in fields(config_class)]
    _reject_unknown(values, {f.name for cls in _family(config_class) for f in fields(cls)}, f"{source} key")
    return config_class(**{k: v for k, v in values.items() if k in own})


def _reject_unknown(names: Iterable[str], known: set[str], what: str) -> None:
    """Raise ConfigError for names outside `known`, each with the closest valid one."""
    unknown = sorted(set(names) - known)
    if unknown:
        hints = {k: difflib.get_close_matches(k, sorted(known), n=1) for k in unknown}
        hint = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in hints.items() if m)
        raise ConfigError(f"unknown {what}(s) {unknown}{' (' + hint + ')' if hint else ''}; valid keys are "
                          f"{sorted(known)}")


def load_config(path: str | os.PathLike | None = None, *, config_class: type[C] = OptimizeConfig,
                **overrides: Any) -> C:
    """The config from a `tts_infer.yaml` (seed keys + `tts_compile:` section), then `overrides` on top."""
    _reject_unknown(overrides, {f.name for f in fields(config_class)}, "options key")
    values: dict[str, Any] = read_yaml(Path(path)) if path is not None else {}
    return from_mapping({**values, **overrides}, config_class)


def disabled_by_environment() -> bool:
    """True when TTS_COMPILE_DISABLE is set to a true value (1/true/yes/on); logged by the caller."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def read_yaml(path: Path) -> dict[str, Any]:
    """tts_compile's keys of a `tts_infer.yaml`: the section merged with the seed keys."""
    data = _parse(path)
    _warn_misplaced(path, data)
    section = data.get(SECTION) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: '{SECTION}:' must be a mapping, got {type(section).__name__}")
    values = dict(section)
    for seed_key, name in SEED_KEYS.items():
        if seed_key in data:
            if name in values and values[name] != data[seed_key]:
                raise ConfigError(f"{path}: {seed_key}={data[seed_key]!r} contradicts {SECTION}.{name}="
                                  f"{values[name]!r}; set it in one place")
            values[name] = data[seed_key]
    return values


def _parse(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _warn_misplaced(path: Path, data: dict[str, Any]) -> None:
    """Our keys where upstream drops them (under `custom:`), and top-level keys that look like a misspelling of
    ours: both would otherwise be ignored without a word."""
    ours = [*SEED_KEYS, SECTION]
    custom = data.get("custom")
    if isinstance(custom, dict):
        misplaced = sorted(set(custom) & set(ours))
        if misplaced:
            logger.warning("%s: %s under 'custom:' are ignored (GPT-SoVITS drops unknown keys there on every "
                           "weight load); move them to the top level", path, misplaced)
    for key in data:
        match = difflib.get_close_matches(str(key), ours, n=1, cutoff=0.8)
        if match and key not in ours:
            logger.warning("%s: top-level key %r is not one of tts_compile's and is ignored; did you mean %r?",
                           path, key, match[0])


def _family(config_class: type[OptimizeConfig]) -> list[type[OptimizeConfig]]:
    """`config_class` and every subclass of it that is defined (their fields share the YAML section)."""
    family, todo = [], [config_class]
    while todo:
        cls = todo.pop(0)
        if cls not in family:
            family.append(cls)
            todo.extend(cls.__subclasses__())
    return family


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_bool(config: Any, *names: str) -> None:
    """Each named field is True or False."""
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{name}={getattr(config, name)!r} is invalid: expected true or false")


def check_int(config: Any, *names: str, minimum: int) -> None:
    """Each named field is an int >= `minimum` (not a bool)."""
    for name in names:
        if not _is_int(getattr(config, name), minimum):
            raise ConfigError(f"{name}={getattr(config, name)!r} is invalid: expected an int >= {minimum}")


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    """The named field is one of `choices`."""
    if getattr(config, name) not in choices:
        raise ConfigError(f"{name}={getattr(config, name)!r} is invalid: expected one of {list(choices)}")


def _check_buckets(buckets: Any) -> tuple[int, ...]:
    if isinstance(buckets, (str, bytes)) or not hasattr(buckets, "__iter__"):
        raise ConfigError(f"buckets={buckets!r} is invalid: expected None or a list of window lengths (ints >= 1)")
    lengths = tuple(buckets)
    if not lengths or not all(_is_int(n, minimum=1) for n in lengths):
        raise ConfigError(f"buckets={buckets!r} is invalid: expected a non-empty list of ints >= 1")
    return tuple(sorted(set(lengths)))
