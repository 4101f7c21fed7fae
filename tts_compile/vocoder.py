"""`optimize_vocoder`: exact, bucketed, compiled chunked inference for any mel -> audio vocoder.

A call plans windows for each item (`tts_compile.buckets`), runs them bucket by bucket through the compiled
runner (`tts_compile.runner`) and writes each window's kept part into the output. The result equals the eager,
unchunked call to floating-point tolerance (the exactness contract, README "How it works"); anything that goes
wrong in the optimized path is logged once and served by the eager module instead (or raised, with
`fallback="raise"`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Sequence, TypeVar

import torch
from torch import nn

from ._copy import structural_copy, weights_fingerprint
from .buckets import Bucket, BucketSet, Window, group, plan
from .config import DISABLE_ENV, ConfigError, OptimizeConfig, disabled_by_environment
from .passes import optimized_copy
from .receptive import ReceptiveField, detect_n_mels, probe, probe_module
from .runner import INDUCTOR_MODES, ProgressBar, Runner

logger = logging.getLogger(__name__)

# Largest |optimized - eager| the warm-up check accepts, relative to the eager output's peak. Chunking is exact in
# real arithmetic; what remains is rounding from different kernels (fused ops, per-shape conv algorithms).
VERIFY_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
REFERENCE_MARGIN = 2.0  # past the tolerance, float16/bfloat16 may be this many times eager's own float32 distance
MAX_OUTPUT_SAMPLES = 2**31 - 1  # int32 indexing limit of many kernels: about 12 hours at 48 kHz
_RESERVED = ("stream", "warmup", "eager", "optimization_stats")
COUNTERS = ("calls", "windows", "eager_calls", "fallbacks", "rebuilds", "degraded")

EagerCall = Callable[..., torch.Tensor]  # eager(module_or_None, mel, *args, **kwargs) -> audio
T = TypeVar("T")


class OptimizationError(RuntimeError):
    """The optimized path failed and the config says `fallback="raise"`."""


class VerificationError(RuntimeError):
    """The optimized output differs from the eager module's by more than the tolerance."""


@dataclass(frozen=True)
class _Signature:
    """Where a call's extra arguments go: tensor slots (positional index or keyword) and constant values."""

    slots: tuple[int | str, ...]
    shapes: tuple[tuple[tuple[int, ...], torch.dtype], ...]  # per tensor, without its batch axis
    constants: tuple[tuple[int | str, Any], ...]
    n_args: int  # positional arguments after the mel

    def key(self) -> Hashable:
        return self.slots, self.shapes, tuple((slot, repr(value)) for slot, value in self.constants)

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> tuple[list[Any], dict[str, Any]]:
        values = dict(self.constants)
        values.update(zip(self.slots, tensors))
        return [values[i] for i in range(self.n_args)], {k: v for k, v in values.items() if isinstance(k, str)}


@dataclass(frozen=True)
class _Conditioning:
    """A call's extra arguments: tensors go to every window of their item, everything else passes unchanged."""

    signature: _Signature
    tensors: tuple[torch.Tensor, ...]  # [B or 1, ...]: per item, no time axis

    @classmethod
    def of(cls, args: Sequence[Any], kwargs: Mapping[str, Any], batch: int) -> "_Conditioning":
        slots, tensors, constants = [], [], []
        for slot, value in [*enumerate(args), *kwargs.items()]:
            if isinstance(value, torch.Tensor):
                _check_conditioning(slot, value, batch)
                slots.append(slot)
                tensors.append(value)
            else:
                constants.append((slot, value))
        shapes = tuple((tuple(t.shape[1:]), t.dtype) for t in tensors)
        return cls(_Signature(tuple(slots), shapes, tuple(constants), len(args)), tuple(tensors))

    def for_items(self, items: Sequence[int]) -> list[torch.Tensor]:
        """Each tensor's rows for `items`, stacked (a batch-1 tensor is shared by every item)."""
        rows = []
        for t in self.tensors:
            rows.append(t.expand(len(items), *t.shape[1:]) if t.shape[0] == 1 else t[list(items)])
        return rows

    def call_args(self, items: Sequence[int]) -> tuple[list[Any], dict[str, Any]]:
        return self.signature.rebuild(self.for_items(items))


@dataclass
class _Setup:
    """What the optimizer derived from the module at one (device, dtype, weight storage) state."""

    n_mels: int
    device: torch.device
    dtype: torch.dtype
    field: ReceptiveField
    buckets: BucketSet
    runner: Runner
    target: nn.Module | None  # what the optimized path calls: a weight-sharing, pass-rewritten copy of the module
    fingerprint: tuple[Any, ...]
    calls: dict[Hashable, Callable[..., torch.Tensor]]


class VocoderOptimizer:
    """The engine behind every form of `optimize_vocoder`: setup, planning, execution, streaming, fallback."""

    def __init__(self, eager: EagerCall, module: nn.Module | None, config: OptimizeConfig, name: str) -> None:
        self._eager = eager
        self._module = module
        self.config = config
        self.name = name
        self.mode = config.compile_mode  # may degrade to "cudagraphs" when inductor fails
        self.failure: str | None = None
        self._setup: _Setup | None = None
        self._lock = threading.RLock()
        self._counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._counter_lock = threading.Lock()
        self.switch: Callable[[], bool] = _always_on  # a runtime switch an integration reads per call
        if config.enabled and disabled_by_environment():
            logger.info("%s is set: %s runs eager", DISABLE_ENV, name)
        if config.dtype != "auto" and module is not None:
            module.to(getattr(torch, config.dtype))

    @property
    def active(self) -> bool:
        return self.config.enabled and self.failure is None and not disabled_by_environment() and self.switch()

    # ----------------------------------------------------------------------------------------- public verbs
    def __call__(self, mel: torch.Tensor, *args: Any, lengths: Any = None, **kwargs: Any) -> torch.Tensor:
        if self.active:
            out = self._attempt("a call", self._optimized_call, mel, args, lengths, kwargs)
            if out is not None:
                return out
        return self.eager(mel, *args, lengths=lengths, **kwargs)

    def eager(self, mel: torch.Tensor, *args: Any, lengths: Any = None, **kwargs: Any) -> torch.Tensor:
        """The eager module's own output; per item when `lengths` is given (zero after each item's end)."""
        self._count("eager_calls")
        if lengths is None:
            return self._eager(self._module, mel, *args, **kwargs)
        item_lengths = _check_lengths(lengths, mel)
        cond = _Conditioning.of(args, kwargs, mel.shape[0])
        out = None
        for i, n in enumerate(item_lengths):
            c_args, c_kwargs = cond.call_args([i])
            audio = self._eager(self._module, mel[i : i + 1, :, :n], *c_args, **c_kwargs)
            if out is None:
                hop = audio.shape[-1] // n
                out = audio.new_zeros(mel.shape[0], *audio.shape[1:-1], mel.shape[-1] * hop)
            out[i, ..., : audio.shape[-1]] = audio[0]
        return out

    def warmup(self, example: torch.Tensor | None = None, **example_kwargs: Any) -> None:
        """Compile and capture every bucket now (for calls made with `example_kwargs`), then verify."""
        if self.active:
            self._attempt("warm-up", self._warmup, example, example_kwargs)

    def stream(self, pieces: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        """Audio for mel `pieces` as they arrive: each frame is emitted once enough frames after it exist to
        compute it exactly. The concatenation equals the one-shot output of the concatenated pieces."""
        buffer, offset, done = None, 0, 0  # mel not yet dropped, its first frame's index, frames emitted
        for piece in pieces:
            buffer = piece if buffer is None else torch.cat([buffer, _check_piece(piece, buffer)], dim=-1)
            if self.active and buffer.shape[-1]:
                audio, done = self._attempt("a stream step", self._stream_step, buffer, offset, done, None, args,
                                            kwargs) or (None, done)
                if audio is not None:
                    yield audio
                keep_from = max(offset, done - self._setup.buckets.lengths[-1]) if self.active else offset
                buffer, offset = buffer[..., keep_from - offset :], keep_from
        if buffer is None:
            return
        end = offset + buffer.shape[-1]
        audio = None
        if self.active:
            audio, _ = self._attempt("a stream step", self._stream_step, buffer, offset, done, end, args,
                                     kwargs) or (None, done)
        if audio is None and done < end:  # disabled, or failed along the way: finish with the eager module
            full = self.eager(buffer, *args, **kwargs)
            audio = full[..., (done - offset) * (full.shape[-1] // buffer.shape[-1]) :]
        if audio is not None:
            yield audio

    def stats(self) -> dict[str, Any]:
        """Counters (calls, windows, eager_calls, fallbacks, rebuilds; once set up: captures, replays, runs, direct)
        and the setup (context, buckets, hop, receptive field, compile mode, failure)."""
        with self._counter_lock:
            stats: dict[str, Any] = dict(self._counters)
        setup = self._setup
        if setup is not None:
            stats.update(setup.runner.counters)
            stats.update(context=setup.buckets.context, buckets=setup.buckets.lengths, hop=setup.field.hop,
                         receptive_field=(setup.field.left, setup.field.right))
        stats["compile_mode"] = self.mode
        stats["failure"] = self.failure
        return stats

    # ------------------------------------------------------------------------------------------- setup
    def _setup_for(self, mel: torch.Tensor, args: Sequence[Any], kwargs: Mapping[str, Any]) -> _Setup:
        """The setup for the module's current state: built on first use, rebuilt when its weights moved."""
        with self._lock:
            setup = self._setup
            if setup is None or setup.fingerprint != self._fingerprint():
                if setup is not None:
                    self._count("rebuilds")
                    logger.info("%s: weights changed (moved, cast or loaded in place): optimizing again", self.name)
                with _own_rng(mel.device):
                    setup = self._setup = self._build(mel, args, kwargs)
            return setup

    def _fingerprint(self) -> tuple[Any, ...]:
        if self._module is None:
            return ()  # a function is set up once, from its first input
        return weights_fingerprint(self._module)

    def _build(self, mel: torch.Tensor, args: Sequence[Any], kwargs: Mapping[str, Any]) -> _Setup:
        device, dtype = self._device_dtype(mel)
        n_mels = self.config.n_mels or (detect_n_mels(self._module) if self._module is not None else None)
        n_mels = n_mels or mel.shape[1]
        first_item = {slot: v[:1] if isinstance(v, torch.Tensor) else v
                      for slot, v in [*enumerate(args), *kwargs.items()]}
        field = self._probe(n_mels, device, dtype, first_item)
        context = field.context() if self.config.context == "auto" else self.config.context
        buckets = self._bucket_set(context)
        _use_cache_dir(self.config.cache_dir)
        target, passes = self._target(device)
        logger.info(
            "optimizing %s: %s on %s, mode %s, receptive field -%d/+%d frames (context %d), hop %d, windows %s, "
            "%d buckets, passes %s", self.name, str(dtype).replace("torch.", ""), device, self.mode,
            field.left, field.right, context, field.hop, list(buckets.lengths), len(buckets.buckets()), passes)
        runner = Runner(self.mode, device, self.config.cudnn_benchmark)
        return _Setup(n_mels, device, dtype, field, buckets, runner, target, self._fingerprint(), {})

    def _target(self, device: torch.device) -> tuple[nn.Module | None, dict[str, Any]]:
        """The module the optimized path runs: the original, or a weight-sharing copy rewritten by passes."""
        cfg, plain = self.config, self.mode == "eager"
        inline = cfg.fused_activation == "inductor" and self.mode == cfg.compile_mode  # inductor failed: drop it
        fuse = inline or cfg.fused_activation == "on" or (cfg.fused_activation == "auto" and not plain)
        channels_last = cfg.channels_last == "on" or (
            cfg.channels_last == "auto" and device.type == "cuda" and not plain)
        if self._module is None or not (fuse or channels_last):
            return self._module, {}
        return optimized_copy(self._module, channels_last=channels_last, fuse_activations=fuse,
                              inline_activations=inline)

    def _device_dtype(self, mel: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        if self._module is not None:
            param = next((p for p in self._module.parameters() if p.is_floating_point()), None)
            if param is not None:
                return param.device, param.dtype
        return mel.device, mel.dtype

    def _probe(self, n_mels: int, device: torch.device, dtype: torch.dtype, kwargs: Mapping) -> ReceptiveField:
        started = time.perf_counter()
        if self._module is not None:
            field = probe_module(self._module, n_mels, forward=self._slot_eager, kwargs=kwargs)
        else:
            call = functools.partial(self._slot_eager, None)
            field = probe(call, n_mels, device=device, dtype=dtype, kwargs=kwargs)
        logger.info("%s: receptive field probed in %.1f s", self.name, time.perf_counter() - started)
        return field

    def _slot_eager(self, module: nn.Module | None, mel: torch.Tensor, **slots: Any) -> torch.Tensor:
        """The eager call with extra arguments keyed by slot (positional index or keyword name)."""
        args = [slots.pop(i) for i in sorted(k for k in slots if isinstance(k, int))]
        return self._eager(module, mel, *args, **slots)

    def _bucket_set(self, context: int) -> BucketSet:
        try:
            if self.config.buckets is not None:
                return BucketSet(self.config.buckets, context, self.config.max_batch)
            return BucketSet.from_chunk_size(self.config.chunk_size, context, self.config.max_batch)
        except ValueError as exc:
            raise ConfigError(f"buckets={self.config.buckets!r}: {exc}") from exc

    def _example_mel(self) -> torch.Tensor:
        if self._module is None:
            raise InputError("warmup() of an optimized function needs an example mel: warmup(example=mel)")
        n_mels = self.config.n_mels or detect_n_mels(self._module)
        if n_mels is None:
            raise InputError(f"cannot tell how many mel bins {self.name} expects: pass n_mels=... or an example")
        device, dtype = self._device_dtype(torch.empty(0))
        return torch.zeros(1, n_mels, 1, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------- capture
    def _capture_all(self, setup: _Setup, cond: _Conditioning) -> None:
        with self._lock:
            todo = [b for b in setup.buckets.buckets() if not setup.runner.has(self._key(cond, b))]
            if not todo:
                return
            started, memory = time.perf_counter(), _reserved(setup.device)
            bar = ProgressBar(len(todo), f"tts_compile: capturing {self.name}", self.config.progress)
            for bucket in todo:
                self._capture(setup, cond, bucket)
                bar.advance(f"{bucket.batch}x{bucket.length}")
            logger.info("%s: %d buckets ready in %.1f s, %+.0f MiB on %s", self.name, len(todo),
                        time.perf_counter() - started, (_reserved(setup.device) - memory) / 2**20, setup.device)

    def _capture(self, setup: _Setup, cond: _Conditioning, bucket: Bucket) -> None:
        with self._lock, _own_rng(setup.device):
            key = self._key(cond, bucket)
            if setup.runner.has(key):
                return
            example = torch.randn(bucket.batch, setup.n_mels, bucket.length, device=setup.device, dtype=setup.dtype)
            inputs = [example, *cond.for_items([0] * bucket.batch)]
            seconds = setup.runner.prepare(key, self._call(setup, cond.signature), inputs)
            logger.info("%s: bucket %dx%d ready in %.2f s", self.name, bucket.batch, bucket.length, seconds)

    def _call(self, setup: _Setup, signature: _Signature) -> Callable[..., torch.Tensor]:
        """The (compiled) function of one conditioning signature: `call(mel, *tensors) -> audio`."""
        key = signature.key()
        if key not in setup.calls:
            eager, module = self._eager, setup.target

            def call(mel: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
                args, kwargs = signature.rebuild(tensors)
                return eager(module, mel, *args, **kwargs)

            setup.calls[key] = setup.runner.compiled(key, call)
        return setup.calls[key]

    @staticmethod
    def _key(cond: _Conditioning, bucket: Bucket) -> Hashable:
        return cond.signature.key(), bucket.batch, bucket.length

    def _verify(self, setup: _Setup, example_kwargs: Mapping[str, Any]) -> None:
        """Compare with the eager module on a random mel that needs several windows, of uneven spacing."""
        frames = 2 * setup.buckets.lengths[-1] + setup.buckets.lengths[0] // 2 + 1
        with _own_rng(setup.device):
            mel = torch.randn(1, setup.n_mels, frames, device=setup.device, dtype=setup.dtype)
        with torch.inference_mode():
            expected = self._eager(self._module, mel, **example_kwargs)
            got = self._optimized_call(mel, (), None, example_kwargs)
        error = _relative_error(got, expected)
        tolerance = VERIFY_TOLERANCE[_effective_dtype(setup.dtype, setup.device)]
        if error > tolerance and not self._as_accurate_as_eager(mel, got, expected, example_kwargs):
            raise VerificationError(
                f"optimized output differs from eager by {error:.1e} of its peak (tolerance {tolerance:.0e}) on a "
                f"{frames}-frame mel; is context={setup.buckets.context} below the receptive field?")
        logger.info("%s: verified on %d frames: max |optimized - eager| = %.1e of peak", self.name, frames, error)

    def _as_accurate_as_eager(self, mel: torch.Tensor, got: torch.Tensor, expected: torch.Tensor,
                              kwargs: Mapping[str, Any]) -> bool:
        """float16/bfloat16 past the tolerance: is the optimized output within `REFERENCE_MARGIN` times eager's own
        distance from a float32 copy of the module? A model can amplify rounding so much that eager on windows
        already differs from eager on the whole input by the tolerance (random-weight BigVGAN, benchmarks/NOTES.md
        run 44); a context shorter than the receptive field still fails, its error does not shrink in float32."""
        if mel.dtype not in (torch.float16, torch.bfloat16) or self._module is None:
            return False
        try:
            module = structural_copy(self._module, share_weights=False).float()
            wide = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                    for k, v in kwargs.items()}
            with torch.inference_mode(), _without_tf32():
                reference = self._eager(module, mel.float(), **wide)
        except Exception as exc:  # the reference is a second opinion; without it the first one stands
            logger.debug("%s: no float32 reference for verification: %s", self.name, exc)
            return False
        ours, own = _relative_error(got, reference), _relative_error(expected, reference)
        logger.info("%s: optimized output is %.1e of peak from eager, past the %s tolerance; from a float32 copy "
                    "it is %.1e, eager itself %.1e (accepted up to %.0fx)", self.name, _relative_error(got, expected),
                    str(mel.dtype).replace("torch.", ""), ours, own, REFERENCE_MARGIN)
        return ours <= REFERENCE_MARGIN * own

    # ------------------------------------------------------------------------------------------- execution
    def _vocode(self, setup: _Setup, mel: torch.Tensor, lengths: list[int], cond: _Conditioning) -> torch.Tensor:
        self._count("calls")
        if self.config.warmup == "startup":
            self._capture_all(setup, cond)
        out = mel.new_zeros(mel.shape[0], *setup.field.out_dims, mel.shape[-1] * setup.field.hop)
        windows, short = [], []
        for item, n in enumerate(lengths):
            planned = plan(setup.buckets, keep=(0, n), span=(0, n), total=n, item=item)
            (short.append(item) if planned is None else windows.extend(planned))
        self._execute(setup, mel, 0, windows, out, 0, cond)
        for item in short:  # shorter than every window: run unchunked, at its own length, never padded
            inputs = [mel[item : item + 1, :, : lengths[item]], *cond.for_items([item])]
            audio = setup.runner.direct(self._call(setup, cond.signature), inputs)
            out[item, ..., : audio.shape[-1]] = audio[0]
        return out

    def _execute(self, setup: _Setup, mel: torch.Tensor, offset: int, windows: Sequence[Window],
                 out: torch.Tensor, out_offset: int, cond: _Conditioning) -> None:
        """Run `windows` (absolute frames; `mel` starts at frame `offset`) and write their kept parts into `out`
        (which starts at frame `out_offset`)."""
        hop = setup.field.hop
        self._count("windows", len(windows))
        for bucket, batch in group(windows, setup.buckets):
            key = self._key(cond, bucket)
            if not setup.runner.has(key):
                self._capture(setup, cond, bucket)
            x = torch.stack([mel[w.item, :, w.start - offset : w.stop - offset] for w in batch])
            y = setup.runner.run(key, [x, *cond.for_items([w.item for w in batch])])
            for j, w in enumerate(batch):
                kept = y[j, ..., (w.keep_start - w.start) * hop : (w.keep_stop - w.start) * hop]
                out[w.item, ..., (w.keep_start - out_offset) * hop : (w.keep_stop - out_offset) * hop] = kept

    def _stream_step(self, buffer, offset, done, total, args, kwargs) -> tuple[torch.Tensor | None, int]:
        """Audio for the frames of `buffer` that are final now (all of them once `total` is known)."""
        _check_layout(buffer)
        cond = _Conditioning.of(args, kwargs, buffer.shape[0])
        setup = self._setup_for(buffer, args, kwargs)
        _check_mel(buffer, setup)
        end = offset + buffer.shape[-1]
        keep_stop = end if total is not None else end - setup.buckets.context
        if keep_stop <= done:
            return None, done
        windows = [plan(setup.buckets, keep=(done, keep_stop), span=(offset, end), total=total, item=i)
                   for i in range(buffer.shape[0])]
        if windows[0] is None:  # no window fits yet; at the end, the whole (short) input runs unchunked
            return (None, done) if total is None else (self._vocode(setup, buffer, [end] * len(windows), cond), end)
        out = buffer.new_zeros(buffer.shape[0], *setup.field.out_dims, (keep_stop - done) * setup.field.hop)
        self._execute(setup, buffer, offset, [w for ws in windows for w in ws], out, done, cond)
        return out, keep_stop

    def _optimized_call(self, mel, args, lengths, kwargs) -> torch.Tensor:
        _check_layout(mel)  # input errors first: a bad request must never reach (and break) the setup
        item_lengths = _check_lengths(lengths, mel)
        cond = _Conditioning.of(args, kwargs, mel.shape[0])
        setup = self._setup_for(mel, args, kwargs)
        _check_mel(mel, setup)
        started = time.perf_counter()
        out = self._vocode(setup, mel, item_lengths, cond)
        logger.debug("%s: %s frames in %.1f ms", self.name, item_lengths, 1e3 * (time.perf_counter() - started))
        return out

    def _warmup(self, example: torch.Tensor | None, example_kwargs: Mapping[str, Any]) -> None:
        mel = example if example is not None else self._example_mel()
        setup = self._setup_for(mel, (), example_kwargs)
        self._capture_all(setup, _Conditioning.of((), example_kwargs, mel.shape[0]))
        if self.config.verify:
            self._verify(setup, example_kwargs)

    def _attempt(self, stage: str, fn: Callable[..., T], *args: Any) -> T | None:
        """`fn(*args)`, or None after a logged fallback. The caller's own mistakes (bad input, bad config)
        propagate: falling back would hide them."""
        try:
            return fn(*args)
        except (InputError, InputTypeError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the optimized path falls back
            if self._degrade(stage, exc):
                return self._attempt(stage, fn, *args)
            self._fail(stage, exc)
            return None

    def _degrade(self, stage: str, exc: BaseException) -> bool:
        """After an inductor failure, try once more without inductor (CUDA graphs of the rewritten module)."""
        if self.mode not in INDUCTOR_MODES or self.config.fallback == "raise":
            return False
        logger.warning("%s: %s failed with compile_mode=%r (%s: %s); continuing with 'cudagraphs' (no inductor)",
                       self.name, stage, self.mode, type(exc).__name__, exc)
        with self._lock:
            self.mode, self._setup = "cudagraphs", None
            self._count("degraded")
        return True

    def _count(self, name: str, n: int = 1) -> None:
        with self._counter_lock:
            self._counters[name] += n

    def _fail(self, stage: str, exc: BaseException) -> None:
        reason = f"{stage} failed: {type(exc).__name__}: {exc}"
        if self.config.fallback == "raise":
            raise OptimizationError(f"{self.name}: {reason}") from exc
        if self.failure is None:
            logger.warning("%s: %s; serving from the eager module from now on", self.name, reason)
            self.failure = reason
        self._count("fallbacks")


# ------------------------------------------------------------------------------------------------ validation
def _always_on() -> bool:
    return True


class InputError(ValueError):
    """A call's input is invalid (shape, mel bins, device, values, lengths)."""


class InputTypeError(TypeError):
    """A call's input has the wrong type or dtype."""


def _check_conditioning(slot: int | str, value: torch.Tensor, batch: int) -> None:
    name = f"argument {slot}" if isinstance(slot, int) else slot
    if value.ndim == 0 or value.shape[0] not in (1, batch):
        raise InputError(f"{name} has shape {tuple(value.shape)}: conditioning tensors need a batch axis of 1 or "
                         f"{batch} (the mel's batch) first")
    if value.ndim >= 3 and value.shape[-1] != 1:
        raise InputError(f"{name} has shape {tuple(value.shape)}: a time axis ({value.shape[-1]} frames) cannot be "
                         "split into windows; only per-item conditioning such as g: [B, C, 1] is supported")


def _check_piece(piece: Any, buffer: torch.Tensor) -> torch.Tensor:
    if not isinstance(piece, torch.Tensor) or piece.ndim != 3 or piece.shape[:2] != buffer.shape[:2]:
        shape = tuple(piece.shape) if isinstance(piece, torch.Tensor) else type(piece).__name__
        raise InputError(f"stream pieces must all have shape [{buffer.shape[0]}, {buffer.shape[1]}, frames]; "
                         f"got {shape}")
    return piece


def _check_layout(mel: Any) -> None:
    if not isinstance(mel, torch.Tensor):
        raise InputTypeError(f"mel must be a torch.Tensor, got {type(mel).__name__}")
    if mel.ndim != 3:
        hint = " (add a batch axis: mel.unsqueeze(0))" if mel.ndim == 2 else ""
        raise InputError(f"mel must have shape [batch, n_mels, frames], got {tuple(mel.shape)}{hint}")
    if mel.shape[0] == 0 or mel.shape[-1] == 0:
        raise InputError(f"mel is empty (shape {tuple(mel.shape)}): need at least one item and one frame")


def _check_mel(mel: torch.Tensor, setup: _Setup) -> None:
    if mel.shape[1] != setup.n_mels:
        raise InputError(f"mel has {mel.shape[1]} mel bins (shape {tuple(mel.shape)}); this vocoder expects "
                         f"n_mels={setup.n_mels}")
    if mel.shape[-1] * setup.field.hop > MAX_OUTPUT_SAMPLES:
        raise InputError(f"mel has {mel.shape[-1]} frames: the output would exceed {MAX_OUTPUT_SAMPLES} samples; "
                         "split it or use stream()")
    if mel.dtype != setup.dtype:
        raise InputTypeError(f"mel dtype {mel.dtype} does not match the vocoder's {setup.dtype}; cast it first "
                             f"(mel.to({setup.dtype}))")
    if mel.device != setup.device:
        raise InputError(f"mel is on {mel.device} but the vocoder runs on {setup.device}; move it first")
    if not bool(torch.isfinite(mel).all()):
        raise InputError(f"mel contains {int((~torch.isfinite(mel)).sum())} NaN or Inf values")


def _check_lengths(lengths: Any, mel: torch.Tensor) -> list[int]:
    batch, frames = mel.shape[0], mel.shape[-1]
    if lengths is None:
        return [frames] * batch
    values = lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)
    if len(values) != batch or not all(isinstance(n, int) and 1 <= n <= frames for n in values):
        raise InputError(f"lengths={values!r} is invalid: expected {batch} ints in [1, {frames}] (one per item)")
    return values


def _own_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Random draws of set-up (probes, capture examples) leave the caller's generators where they were: a seeded
    request draws the same numbers whether or not this call happened to set something up."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@contextlib.contextmanager
def _without_tf32() -> Iterator[None]:
    """float32 convolutions and matmuls at full precision (CUDA runs them in TF32 by default)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
    finally:
        matmul.allow_tf32 = saved


def _effective_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """float32 convolutions run in TF32 on CUDA unless turned off: a 10-bit mantissa, like float16."""
    tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    return torch.float16 if dtype == torch.float32 and device.type == "cuda" and tf32 else dtype


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    peak = max(float(expected.float().abs().max()), 1e-6)
    return float((got.float() - expected.float()).abs().max()) / peak


def _reserved(device: torch.device) -> int:
    return torch.cuda.memory_reserved(device) if device.type == "cuda" else 0


def _use_cache_dir(path: str | os.PathLike | None) -> None:
    """Point inductor's persistent cache at `path` (process-wide; an explicit environment setting wins)."""
    if path is None:
        return
    path = os.path.abspath(os.fspath(path))
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None:
        os.makedirs(path, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
        logger.info("compile cache: %s", path)
    elif os.path.abspath(current) != path:
        logger.warning("cache_dir=%s ignored: TORCHINDUCTOR_CACHE_DIR=%s is already set", path, current)


# ------------------------------------------------------------------------------------------------ public forms
class OptimizedVocoder(nn.Module):
    """A vocoder module or function wrapped by `optimize_vocoder`; call it like the original.

    Attributes the wrapper lacks are looked up on the wrapped module (`wrapper.remove_weight_norm()` works).
    `eager(...)` calls the original, `stream(pieces)` streams, `warmup()` compiles and captures now,
    `optimization_stats()` returns the counters.
    """

    def __init__(self, target: nn.Module | Callable[..., torch.Tensor], config: OptimizeConfig,
                 example_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(target, nn.Module):
            self.module = target
            eager, name = _call_module, type(target).__name__
        else:
            self.module = None
            eager, name = functools.partial(_call_function, target), getattr(target, "__name__", "vocoder")
        self.optimizer = VocoderOptimizer(eager, self.module, config, name)
        if isinstance(target, nn.Module) and config.warmup == "startup":
            self.optimizer.warmup(**dict(example_kwargs or {}))

    def forward(self, mel: torch.Tensor, *args: Any, lengths: Any = None, **kwargs: Any) -> torch.Tensor:
        return self.optimizer(mel, *args, lengths=lengths, **kwargs)

    def eager(self, mel: torch.Tensor, *args: Any, lengths: Any = None, **kwargs: Any) -> torch.Tensor:
        return self.optimizer.eager(mel, *args, lengths=lengths, **kwargs)

    def stream(self, pieces: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        return self.optimizer.stream(pieces, *args, **kwargs)

    def warmup(self, example: torch.Tensor | None = None, **example_kwargs: Any) -> "OptimizedVocoder":
        self.optimizer.warmup(example, **example_kwargs)
        return self

    def optimization_stats(self) -> dict[str, Any]:
        return self.optimizer.stats()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = self.__dict__.get("_modules", {}).get("module")
            if module is None:
                raise
            return getattr(module, name)


def _call_module(module: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    return module(*args, **kwargs)


def _call_function(fn: Callable[..., torch.Tensor], _: None, *args: Any, **kwargs: Any) -> torch.Tensor:
    return fn(*args, **kwargs)


def _optimize_class(cls: type[nn.Module], config: OptimizeConfig) -> type[nn.Module]:
    """A subclass of `cls` whose instances run the optimized path; capture happens at first use or warmup()."""
    clashes = [name for name in _RESERVED if hasattr(cls, name)]
    if clashes:
        raise TypeError(f"cannot decorate {cls.__name__}: it already defines {clashes}; wrap an instance instead "
                        "(optimize_vocoder(model))")
    original = cls.forward
    engines: "weakref.WeakKeyDictionary[nn.Module, VocoderOptimizer]" = weakref.WeakKeyDictionary()

    def optimizer(self: nn.Module) -> VocoderOptimizer:
        if self not in engines:  # kept outside the instance, so copying an instance never copies its engine
            engines[self] = VocoderOptimizer(functools.partial(_call_unbound, original), self, config, cls.__name__)
        return engines[self]

    @functools.wraps(original)
    def forward(self, mel, *args, lengths=None, **kwargs):
        return optimizer(self)(mel, *args, lengths=lengths, **kwargs)

    def warmup(self, example=None, **example_kwargs):
        optimizer(self).warmup(example, **example_kwargs)
        return self

    namespace = {
        "forward": forward,
        "eager": lambda self, mel, *a, lengths=None, **k: optimizer(self).eager(mel, *a, lengths=lengths, **k),
        "stream": lambda self, pieces, *a, **k: optimizer(self).stream(pieces, *a, **k),
        "warmup": warmup,
        "optimization_stats": lambda self: optimizer(self).stats(),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    return type(cls.__name__, (cls,), namespace)


def _call_unbound(forward: Callable[..., torch.Tensor], module: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    return forward(module, *args, **kwargs)


def optimize_vocoder(target: Any = None, *, config: OptimizeConfig | None = None,
                     example_kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """Make a vocoder fast without changing its output: an instance, an `nn.Module` class or a mel -> audio function.

    Returns an `OptimizedVocoder` for an instance or a function, and a subclass for a class. `options` are
    `OptimizeConfig` fields (they override `config`); `example_kwargs` are the conditioning arguments warm-up
    captures with (e.g. `{"g": torch.zeros(1, 512, 1)}` for a VITS decoder). Works bare (`@optimize_vocoder`)
    and with options (`@optimize_vocoder(chunk_size=250)`).
    """
    resolved = (config or OptimizeConfig()).replace(**options) if options else (config or OptimizeConfig())
    if target is None:
        return functools.partial(optimize_vocoder, config=resolved, example_kwargs=example_kwargs)
    if isinstance(target, type) and issubclass(target, nn.Module):
        return _optimize_class(target, resolved)
    if isinstance(target, nn.Module) or callable(target):
        return OptimizedVocoder(target, resolved, example_kwargs)
    raise TypeError(f"optimize_vocoder expects an nn.Module, an nn.Module class or a function, got "
                    f"{type(target).__name__}")
