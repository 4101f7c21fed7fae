"""`VocoderOptimizer`: the engine behind every form of `optimize_vocoder`.

A call plans windows for each item (`core.buckets`), runs them bucket by bucket through the runner and writes each
window's kept part into the output. The result equals the eager, unchunked call to floating-point tolerance. Before
it serves, every set-up (first use in any form, a rebuild after a weight change, a degrade) is verified against the
eager module on a mel spanning several windows, and every bucket on its capture example; anything that goes wrong
in the optimized path is served by the eager module (`core.guard`), and after an inductor failure the optimizer
continues once without inductor.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..core import verify
from ..core.buckets import Bucket, Window, group, plan
from ..core.config import OptimizeConfig
from ..core.guard import Guard, InputError
from ..core.progress import ProgressBar
from ..core.rng import DRAWS, private_generator
from ..core.runner import Execution, uses_inductor
from ..core.weights import structural_copy
from . import setup as setup_
from .conditioning import Conditioning
from .inputs import check_finite, check_layout, check_lengths, check_mel
from .setup import EagerCall, Setup
from .stream import stream

logger = logging.getLogger(__name__)

COUNTERS = ("windows", "rebuilds", "degraded", "verifications", "verify_ms")


class VocoderOptimizer:
    """Windows, buckets, captures and verification for one vocoder module or function."""

    def __init__(self, eager: EagerCall, module: nn.Module | None, config: OptimizeConfig, name: str) -> None:
        self._eager = eager
        self._module = module
        self.config = config
        self.name = name
        self.guard = Guard(name, config, COUNTERS, recover=self._degrade)
        self.mode = config.compile_mode  # "cudagraphs" after an inductor failure
        self._setup: Setup | None = None
        self._lock = threading.RLock()
        if config.dtype != "auto" and module is not None:
            module.to(getattr(torch, config.dtype))

    @property
    def setup(self) -> Setup | None:
        """The optimized path in force (None before the first set-up and after a degrade)."""
        return self._setup

    # ----------------------------------------------------------------------------------------- public verbs
    def __call__(self, mel: torch.Tensor, *args: Any, lengths: Any = None, **kwargs: Any) -> torch.Tensor:
        check_layout(mel)  # input errors first, in both paths: a bad request raises and changes nothing
        item_lengths = check_lengths(lengths, mel)
        cond = Conditioning.of(args, kwargs, mel.shape[0])
        return self.guard.call("a call", lambda: self._optimized_call(mel, item_lengths, cond),
                               lambda: self._eager_call(mel, item_lengths, cond))

    def eager(self, mel: torch.Tensor, *args: Any, lengths: Any = None, **kwargs: Any) -> torch.Tensor:
        """The eager module's own output; per item when `lengths` is given (zero after each item's end)."""
        check_layout(mel)
        return self._eager_call(mel, check_lengths(lengths, mel), Conditioning.of(args, kwargs, mel.shape[0]))

    def warmup(self, example: torch.Tensor | None = None, **example_kwargs: Any) -> None:
        """Set up, compile, capture every bucket and verify now (for calls made with `example_kwargs`)."""
        if self.guard.active:
            self.guard.attempt("warm-up", lambda: self._warmup(example, example_kwargs))

    def stream(self, pieces: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        """Audio for mel `pieces` as they arrive (`stream.stream`)."""
        return stream(self, pieces, args, kwargs)

    def optimization_stats(self) -> dict[str, Any]:
        """Counters (calls, optimized, eager, uncovered, fallbacks, windows, rebuilds, degraded, verifications and
        their milliseconds; once set up: captures and their milliseconds, in all and by kind, replays, runs, direct)
        and the setup (context, buckets, hop, receptive field, compile mode, failure)."""
        stats = self.guard.counters()
        setup = self._setup
        if setup is not None:
            with setup.runner.lock:  # a capture may add a kind meanwhile
                stats.update(setup.runner.counters, capture_ms_by_kind=dict(setup.runner.capture_ms_by_kind))
            stats.update(context=setup.buckets.context, buckets=setup.buckets.lengths, hop=setup.field.hop,
                         receptive_field=(setup.field.left, setup.field.right))
        stats["compile_mode"] = self.mode
        return stats

    # ------------------------------------------------------------------------------------------- setup
    def _setup_for(self, mel: torch.Tensor, cond: Conditioning) -> Setup:
        """The setup for the module's current state: built, captured (warmup="startup") and verified on first use,
        and again when its weights moved, were cast or were loaded in place."""
        with self._lock:
            setup = self._setup
            if setup is not None and setup.fingerprint == setup_.fingerprint(self._module):
                return setup
        with DRAWS, self._lock:  # it may capture: as in `_capture_all`
            setup = self._setup
            if setup is None or setup.fingerprint != setup_.fingerprint(self._module):
                if setup is not None:
                    self.guard.count("rebuilds")
                    logger.info("%s: weights changed (moved, cast or loaded in place): optimizing again", self.name)
                self._setup = None
                setup = setup_.build(self.name, self._eager, self._module, self.config,
                                     Execution.of(self.mode, setup_.device_dtype(self._module, mel)[0]), mel,
                                     cond.first_item())
                if self.config.warmup == "startup":
                    self._capture_all(setup, cond)
                if self.config.verify:
                    self._verify(setup, cond)
                setup.wider.clear()  # copies made for verification's second opinion
                self._setup = setup
            return setup

    def _warmup(self, example: torch.Tensor | None, example_kwargs: Mapping[str, Any]) -> None:
        mel = example if example is not None else setup_.example_mel(self.name, self._module, self.config)
        cond = Conditioning.of((), example_kwargs, mel.shape[0])
        self._capture_all(self._setup_for(mel, cond), cond)

    def _degrade(self, what: str, exc: BaseException) -> bool:
        """After an inductor failure (the eager module having answered the same call), continue without inductor:
        CUDA graphs of the rewritten module. Once."""
        if not uses_inductor(self.mode):
            return False
        logger.warning("%s: %s failed with compile_mode=%r (%s: %s); continuing with 'cudagraphs' (no inductor)",
                       self.name, what, self.mode, type(exc).__name__, exc)
        with self._lock:
            self.mode, self._setup = "cudagraphs", None
            self.guard.count("degraded")
        return True

    # ------------------------------------------------------------------------------------------- capture
    def _capture_all(self, setup: Setup, cond: Conditioning) -> None:
        with DRAWS, self._lock:  # DRAWS before this lock, the order of calls on the shared generators (`Runner._graph`)
            todo = [b for b in setup.buckets.buckets() if not setup.runner.has(_key(cond, b))]
            if not todo:
                return
            started, memory = time.perf_counter(), _reserved(setup.device)
            with ProgressBar(len(todo), f"tts_compile: capturing {self.name}", self.config.progress) as bar:
                for bucket in todo:
                    self._capture(setup, cond, bucket)
                    bar.advance(f"{bucket.batch}x{bucket.length}")
            logger.info("%s: %d buckets ready in %.1f s, %+.0f MiB on %s", self.name, len(todo),
                        time.perf_counter() - started, (_reserved(setup.device) - memory) / 2**20, setup.device)

    def _capture(self, setup: Setup, cond: Conditioning, bucket: Bucket) -> None:
        with DRAWS, self._lock:  # as in `_capture_all`
            key = _key(cond, bucket)
            if setup.runner.has(key):
                return
            example = torch.randn(bucket.batch, setup.n_mels, bucket.length, device=setup.device, dtype=setup.dtype,
                                  generator=private_generator(setup.device))
            inputs = [example, *cond.for_items([0] * bucket.batch)]
            seconds = setup.runner.prepare(key, self._call(setup, cond), inputs)
            if self.config.verify:
                args, kwargs = cond.signature.rebuild(inputs[1:])
                with torch.inference_mode():
                    expected = self._eager(self._module, example, *args, **kwargs)
                self._compare(setup, f"bucket {bucket.batch}x{bucket.length}", setup.runner.run(key, inputs),
                              expected, example, args, kwargs)
            logger.info("%s: bucket %dx%d ready in %.2f s", self.name, bucket.batch, bucket.length, seconds)

    def _call(self, setup: Setup, cond: Conditioning) -> Callable[..., torch.Tensor]:
        """The (compiled) function of one conditioning signature: `call(mel, *tensors) -> audio`. A new signature is
        first tried on the eager module: arguments it rejects are the caller's mistake, not a reason to compile."""
        signature = cond.signature
        key = signature.key()
        if key not in setup.calls:
            self._check_signature(setup, cond)
            eager, module = self._eager, setup.target

            def call(mel: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
                args, kwargs = signature.rebuild(tensors)
                return eager(module, mel, *args, **kwargs)

            setup.calls[key] = setup.runner.compiled(key, call)
        return setup.calls[key]

    def _check_signature(self, setup: Setup, cond: Conditioning) -> None:
        mel = torch.zeros(1, setup.n_mels, setup.buckets.lengths[0], device=setup.device, dtype=setup.dtype)
        args, kwargs = cond.call_args([0])
        try:
            with torch.inference_mode():
                self._eager(self._module, mel, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the module raises for these arguments
            slots = [f"argument {s}" if isinstance(s, int) else s for s in (*cond.signature.slots,
                                                                             *dict(cond.signature.constants))]
            raise InputError(f"{self.name} rejects this call's extra arguments {slots or '(none)'}: "
                             f"{type(exc).__name__}: {exc}") from exc

    def _verify(self, setup: Setup, cond: Conditioning) -> None:
        """Compare with the eager module on a random mel that needs several windows, of uneven spacing, with the
        first item's conditioning."""
        frames = 2 * setup.buckets.lengths[-1] + setup.buckets.lengths[0] // 2 + 1
        mel = torch.randn(1, setup.n_mels, frames, device=setup.device, dtype=setup.dtype,
                          generator=private_generator(setup.device))
        one = Conditioning(cond.signature, tuple(t[:1] for t in cond.tensors))
        args, kwargs = one.call_args([0])
        with torch.inference_mode():
            expected = self._eager(self._module, mel, *args, **kwargs)
            got = self._vocode(setup, mel, [frames], one)
        try:
            error = self._compare(setup, f"{frames} frames", got, expected, mel, args, kwargs)
        except verify.VerificationError as exc:
            raise verify.VerificationError(f"{exc}; is context={setup.buckets.context} below the receptive "
                                           "field?") from None
        logger.info("%s: verified on %d frames: max |optimized - eager| = %.1e of peak", self.name, frames, error)

    def _compare(self, setup: Setup, what: str, got: torch.Tensor, expected: torch.Tensor, mel: torch.Tensor,
                 args: Sequence[Any], kwargs: Mapping[str, Any]) -> float:
        """`core.verify.compare` of an optimized output with the eager one, counted and timed; past the tolerance a
        wider copy of the module (kept for the set-up) gives the second opinion."""
        started = time.perf_counter()
        try:
            return verify.compare(f"{self.name}: {what}", got, expected, setup.device,
                                  lambda dtype: self._wider(setup, dtype, mel, args, kwargs))
        finally:
            self.guard.count("verifications")
            self.guard.count("verify_ms", round(1e3 * (time.perf_counter() - started)))

    def _wider(self, setup: Setup, dtype: torch.dtype, mel: torch.Tensor, args: Sequence[Any],
               kwargs: Mapping[str, Any]) -> torch.Tensor:
        """The eager output of a `dtype` copy of the module (verification's second opinion)."""
        if self._module is None:
            raise TypeError("a plain function has no module to copy")
        if dtype not in setup.wider:
            setup.wider[dtype] = structural_copy(self._module, share_weights=False).to(dtype)
        return self._eager(setup.wider[dtype], mel.to(dtype), *_cast(args, dtype),
                           **dict(zip(kwargs, _cast(kwargs.values(), dtype))))

    # ------------------------------------------------------------------------------------------- execution
    def _optimized_call(self, mel: torch.Tensor, lengths: list[int], cond: Conditioning) -> torch.Tensor:
        setup = self._setup_for(mel, cond)
        check_mel(mel, setup.n_mels, setup.field.hop, setup.dtype, setup.device)
        check_finite("mel", mel)
        started = time.perf_counter()
        out = self._vocode(setup, mel, lengths, cond)
        logger.debug("%s: %s frames in %.1f ms", self.name, lengths, 1e3 * (time.perf_counter() - started))
        return out

    def _eager_call(self, mel: torch.Tensor, lengths: list[int], cond: Conditioning) -> torch.Tensor:
        check_finite("mel", mel)
        if lengths == [mel.shape[-1]] * mel.shape[0]:
            args, kwargs = cond.signature.rebuild(cond.tensors)
            return self._eager(self._module, mel, *args, **kwargs)
        out = None
        for i, n in enumerate(lengths):
            c_args, c_kwargs = cond.call_args([i])
            audio = self._eager(self._module, mel[i : i + 1, :, :n], *c_args, **c_kwargs)
            if out is None:
                hop = audio.shape[-1] // n
                out = audio.new_zeros(mel.shape[0], *audio.shape[1:-1], mel.shape[-1] * hop)
            out[i, ..., : audio.shape[-1]] = audio[0]
        return out

    def _vocode(self, setup: Setup, mel: torch.Tensor, lengths: list[int], cond: Conditioning) -> torch.Tensor:
        out = mel.new_zeros(mel.shape[0], *setup.field.out_dims, mel.shape[-1] * setup.field.hop)
        windows, short = [], []
        for item, n in enumerate(lengths):
            planned = plan(setup.buckets, keep=(0, n), span=(0, n), total=n, item=item)
            (short.append(item) if planned is None else windows.extend(planned))
        self._execute(setup, mel, 0, windows, out, 0, cond)
        for item in short:  # shorter than every window: run unchunked, at its own length, never padded
            inputs = [mel[item : item + 1, :, : lengths[item]], *cond.for_items([item])]
            audio = setup.runner.direct(self._call(setup, cond), inputs)
            out[item, ..., : audio.shape[-1]] = audio[0]
        return out

    def _execute(self, setup: Setup, mel: torch.Tensor, offset: int, windows: Sequence[Window],
                 out: torch.Tensor, out_offset: int, cond: Conditioning) -> None:
        """Run `windows` (absolute frames; `mel` starts at frame `offset`) and write their kept parts into `out`
        (which starts at frame `out_offset`)."""
        hop = setup.field.hop
        self.guard.count("windows", len(windows))
        for bucket, batch in group(windows, setup.buckets):
            key = _key(cond, bucket)
            if not setup.runner.has(key):
                self._capture(setup, cond, bucket)
            x = torch.stack([mel[w.item, :, w.start - offset : w.stop - offset] for w in batch])
            y = setup.runner.run(key, [x, *cond.for_items([w.item for w in batch])])
            for j, w in enumerate(batch):
                kept = y[j, ..., (w.keep_start - w.start) * hop : (w.keep_stop - w.start) * hop]
                out[w.item, ..., (w.keep_start - out_offset) * hop : (w.keep_stop - out_offset) * hop] = kept

    def stream_step(self, buffer: torch.Tensor, offset: int, done: int, total: int | None,
                    cond: Conditioning) -> tuple[torch.Tensor | None, int]:
        """Audio for the frames of `buffer` (which starts at frame `offset`) past `done` that are final now (all of
        them once the item's length `total` is known), and the new `done`."""
        setup = self._setup_for(buffer, cond)
        check_mel(buffer, setup.n_mels, setup.field.hop, setup.dtype, setup.device)
        check_finite("mel", buffer)
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


def _key(cond: Conditioning, bucket: Bucket) -> Hashable:
    return cond.signature.key(), bucket.batch, bucket.length


def _cast(values: Iterable[Any], dtype: torch.dtype) -> list[Any]:
    return [v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in values]


def _reserved(device: torch.device) -> int:
    return torch.cuda.memory_reserved(device) if device.type == "cuda" else 0
