"""`OptimizeConfig`: every option of the vocoder optimizer, validated on construction, loadable from YAML.

Precedence: keyword arguments > `tts_infer.yaml` > the defaults below. In `tts_infer.yaml` the seed's top-level
keys `use_vocoder_optimization` and `vocoder_chunk_size` map to `enabled` and `chunk_size`; every other field lives
in a top-level `tts_compile:` section (upstream GPT-SoVITS rewrites the file on each weight load and keeps unknown
top-level keys, but drops unknown keys inside `custom:`). The environment variable `TTS_COMPILE_DISABLE=1` forces
eager everywhere; it is read here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Union

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


class ConfigError(ValueError):
    """An option has a bad value or an unknown name; the message says which and what is allowed."""


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class OptimizeConfig:
    """Options of `optimize_vocoder`. Each field documents its meaning, default, valid values and cost."""

    enabled: bool = field(default=True, metadata=_doc(
        "Run the optimized path. False: every call goes straight to the eager module (nothing is compiled)."))
    chunk_size: int = field(default=500, metadata=_doc(
        "Mel frames kept from the longest window (>= 1). Larger: fewer windows and less recomputed context, "
        "but more memory per call and a longer capture. Ignored when `buckets` is given."))
    context: Union[int, str] = field(default="auto", metadata=_doc(
        "Frames of context on each inner side of a window (int >= 0), or 'auto': the measured receptive field "
        "plus a margin. Too small a value breaks exactness; `verify` catches it at warm-up."))
    buckets: Union[tuple[int, ...], None] = field(default=None, metadata=_doc(
        "Window lengths in frames, context included (each > 2 * context). None: chunk_size, chunk_size/2, ... "
        "down to about one context. Each length costs one capture per batch size (memory and warm-up time)."))
    max_batch: int = field(default=4, metadata=_doc(
        "Most windows in one call (>= 1), used only for windows short enough that a batch holds no more "
        "frames than the longest window. Batching helps launch-bound short windows; memory stays bounded."))
    compile_mode: str = field(default="reduce-overhead", metadata=_doc(
        "'reduce-overhead': inductor compiles the (pass-rewritten) vocoder once for all window lengths, and each "
        "bucket is replayed as a CUDA graph (no graphs on CPU); 'max-autotune': the same with autotuned kernels "
        "(longer compile); 'default': inductor without graphs; 'cudagraphs': CUDA graphs of the rewritten module "
        "without inductor (seconds to start; with fused_activation='inductor', inductor compiles the activation "
        "alone); 'eager': the same windows and buckets with the untouched module "
        "(a reference and a debugging aid)."))
    fused_activation: str = field(default="auto", metadata=_doc(
        "Anti-aliased Snake/SnakeBeta activations (BigVGAN) as one fused op: a Triton kernel on CUDA, an exact "
        "polyphase torch function elsewhere. 'auto' and 'on': unless compile_mode is 'eager'; 'inductor': that "
        "polyphase function compiled by inductor, which generates the fused kernel (no hand-written kernel): traced "
        "into the whole-model compile, or with 'cudagraphs' compiled on its own (BigVGAN-24k on an H200: cold start "
        "81 s with 'cudagraphs', 451 s with 'reduce-overhead'); not with 'eager'; 'off': never."))
    channels_last: str = field(default="auto", metadata=_doc(
        "Run Conv1d layers as channels-last conv2d, which skips cuDNN's layout transposes around every "
        "convolution. 'auto': on CUDA, unless compile_mode is 'eager'; 'on': everywhere; 'off': never."))
    cudnn_benchmark: bool = field(default=True, metadata=_doc(
        "Let cuDNN time its algorithms for every captured shape during warm-up; the graph keeps the fastest. "
        "Costs start-up time (H100: ~3 s per bucket for the v4 vocoder, ~7 s for BigVGAN-24k) and is not kept "
        "across restarts; the gain is measured in benchmarks/results. optimize_sovits's decode times them whatever "
        "this says: cuDNN's heuristics run one v2ProPlus decoder convolution as a 22 ms kernel (0.1 ms timed)."))
    dtype: str = field(default="auto", metadata=_doc(
        "'auto' keeps the module's dtype; 'float32' | 'float16' | 'bfloat16' | 'float64' converts the module in "
        "place (like module.half()) before optimizing. Inputs must then come in that dtype."))
    fallback: str = field(default="eager", metadata=_doc(
        "On a compile, capture, verify or run failure: 'eager' logs one warning and serves every later call from "
        "the eager module; 'raise' raises instead."))
    warmup: str = field(default="startup", metadata=_doc(
        "'startup': compile and capture every bucket inside optimize_vocoder (seconds to minutes, see the "
        "benchmark); 'lazy': on the first call."))
    cache_dir: Union[str, None] = field(default=None, metadata=_doc(
        "Directory for inductor's persistent compile cache (a restart then skips most of the compile). None: "
        "torch's default. Process-wide: set through TORCHINDUCTOR_CACHE_DIR unless that is already set."))
    n_mels: Union[int, None] = field(default=None, metadata=_doc(
        "Expected mel bins. None: the input channels of the module's first convolution (required for a plain "
        "function unless warmup() gets an example)."))
    verify: bool = field(default=True, metadata=_doc(
        "After warm-up, compare the optimized output with the eager module on a random mel spanning several "
        "windows; a mismatch beyond tolerance triggers the fallback. Costs one eager call at start-up."))
    progress: bool = field(default=True, metadata=_doc(
        "Show a progress bar on stderr during warm-up when stderr is a terminal."))
    sovits: bool = field(default=True, metadata=_doc(
        "optimize_pipeline on GPT-SoVITS v1/v2/v2Pro/v2ProPlus: run `vits_model.decode` as captured stages (reference "
        "embedding, text encoder, flow and decoder `dec` over padded length buckets, the decoder masked per stage "
        "so padding changes no real sample); on v3/v4: `vits_model.decode_encp` (reference embedding, text encoder, "
        "conditioning stack) the same way. False: leave SoVITS eager (the v3/v4 vocoder still follows `enabled`)."))
    t2s: bool = field(default=True, metadata=_doc(
        "optimize_pipeline: decode T2S tokens with a static KV cache and a captured decode step (single rows and "
        "batches of up to 16 rows, with or without a prompt; streaming calls run upstream's loop). Memory: the "
        "cache, 50 MB per 1024 positions and row (rows padded to 1, 2, 4, 8 or 16) for the 24-layer fp16 model; "
        "buckets beyond 2 GiB of caches are dropped, least recently used first. False: leave T2S eager."))
    t2s_kernels: bool = field(default=True, metadata=_doc(
        "optimize_t2s on CUDA: run the decode step's layers as Triton kernels (five launches a layer instead of "
        "~14; float32 accumulation, rounding differs from cuBLAS in the last bits). False: torch ops (cuBLAS, "
        "SDPA). Without Triton, torch ops. No effect on CPU."))
    cfm: bool = field(default=True, metadata=_doc(
        "optimize_pipeline on GPT-SoVITS v3/v4: run the flow-matching loop (`vits_model.cfm`) compiled, each "
        "(batch, frames, steps) bucket captured as one CUDA graph on its second call (at most 8 per model; "
        "memory: one DiT forward's activations per bucket). False: leave the CFM eager."))

    def __post_init__(self) -> None:
        _check_bool(self, "enabled", "verify", "progress", "cudnn_benchmark", "sovits", "cfm", "t2s", "t2s_kernels")
        _check_int(self, "chunk_size", "max_batch", minimum=1)
        _check_choice(self, "compile_mode", COMPILE_MODES)
        _check_choice(self, "fused_activation", ACTIVATIONS)
        if self.fused_activation == "inductor" and self.compile_mode == "eager":
            allowed = [m for m in COMPILE_MODES if m != "eager"]
            raise ConfigError("fused_activation='inductor' is invalid with compile_mode='eager' (the untouched "
                              f"module): expected compile_mode one of {allowed}")
        _check_choice(self, "channels_last", SWITCHES)
        _check_choice(self, "dtype", DTYPES)
        _check_choice(self, "fallback", FALLBACKS)
        _check_choice(self, "warmup", WARMUPS)
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

    def replace(self, **changes: Any) -> "OptimizeConfig":
        """A copy with `changes` applied (validated like the constructor, unknown names rejected)."""
        return from_mapping({**dataclasses.asdict(self), **changes}, source="options")


def field_docs() -> dict[str, str]:
    """Each option's documentation, for `--help` texts and the README."""
    return {f.name: f.metadata["doc"] for f in fields(OptimizeConfig)}


def from_mapping(values: Mapping[str, Any], *, source: str = "options") -> OptimizeConfig:
    """Build a config from a mapping, rejecting unknown keys with the list of valid ones."""
    valid = [f.name for f in fields(OptimizeConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown {source} key(s) {unknown}; valid keys are {valid}")
    return OptimizeConfig(**values)


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> OptimizeConfig:
    """The config from a `tts_infer.yaml` (seed keys + `tts_compile:` section), then `overrides` on top."""
    values: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    return from_mapping({**values, **overrides}, source="options")


def disabled_by_environment() -> bool:
    """True when TTS_COMPILE_DISABLE is set to a true value (1/true/yes/on); logged by the caller."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    custom = data.get("custom")
    if isinstance(custom, dict):
        misplaced = sorted(set(custom) & (set(SEED_KEYS) | {SECTION}))
        if misplaced:
            logger.warning("%s: %s under 'custom:' are ignored (GPT-SoVITS drops unknown keys there on every "
                           "weight load); move them to the top level", path, misplaced)
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


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_bool(config: OptimizeConfig, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{name}={getattr(config, name)!r} is invalid: expected true or false")


def _check_int(config: OptimizeConfig, *names: str, minimum: int) -> None:
    for name in names:
        if not _is_int(getattr(config, name), minimum):
            raise ConfigError(f"{name}={getattr(config, name)!r} is invalid: expected an int >= {minimum}")


def _check_choice(config: OptimizeConfig, name: str, choices: tuple[str, ...]) -> None:
    if getattr(config, name) not in choices:
        raise ConfigError(f"{name}={getattr(config, name)!r} is invalid: expected one of {list(choices)}")


def _check_buckets(buckets: Any) -> tuple[int, ...]:
    if isinstance(buckets, (str, bytes)) or not hasattr(buckets, "__iter__"):
        raise ConfigError(f"buckets={buckets!r} is invalid: expected None or a list of window lengths (ints >= 1)")
    lengths = tuple(buckets)
    if not lengths or not all(_is_int(n, minimum=1) for n in lengths):
        raise ConfigError(f"buckets={buckets!r} is invalid: expected a non-empty list of ints >= 1")
    return tuple(sorted(set(lengths)))
