"""What the vocoder optimizer derives from a module at one (device, dtype, weights) state: the receptive field, the
windows, the pass-rewritten copy it runs and the runner that compiles and captures it."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping

import torch
from torch import nn

from ..core.buckets import BucketSet
from ..core.caches import use_cache_dir
from ..core.config import ConfigError, OptimizeConfig
from ..core.guard import InputError
from ..core.receptive import ReceptiveField, detect_n_mels, probe, probe_module
from ..core.runner import Execution, Runner
from ..core.weights import weights_fingerprint
from ..passes import optimized_copy

logger = logging.getLogger(__name__)

EagerCall = Callable[..., torch.Tensor]  # eager(module_or_None, mel, *args, **kwargs) -> audio


@dataclass
class Setup:
    """The optimized path for one module state: `target` is what it calls (a weight-sharing, pass-rewritten copy of
    the module, or the module itself), `calls` the compiled callable per conditioning signature."""

    n_mels: int
    device: torch.device
    dtype: torch.dtype
    field: ReceptiveField
    buckets: BucketSet
    runner: Runner
    target: nn.Module | None
    fingerprint: tuple[Any, ...]
    calls: dict[Hashable, Callable[..., torch.Tensor]] = field(default_factory=dict)
    wider: dict[torch.dtype, nn.Module] = field(default_factory=dict)  # verification's second opinion, while set up


def fingerprint(module: nn.Module | None) -> tuple[Any, ...]:
    """The module's weights fingerprint; a function is set up once, from its first input."""
    return () if module is None else weights_fingerprint(module)


def device_dtype(module: nn.Module | None, mel: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Where and in which precision the vocoder runs: its first floating-point parameter's, else the mel's."""
    if module is not None:
        param = next((p for p in module.parameters() if p.is_floating_point()), None)
        if param is not None:
            return param.device, param.dtype
    return mel.device, mel.dtype


def build(name: str, eager: EagerCall, module: nn.Module | None, config: OptimizeConfig, execution: Execution,
          mel: torch.Tensor, first_item: Mapping[int | str, Any]) -> Setup:
    """Probe, plan and prepare the optimized path for `module` as it is now; `first_item` are the conditioning
    arguments of one item, keyed by slot."""
    device, dtype = device_dtype(module, mel)
    n_mels = config.n_mels or (detect_n_mels(module) if module is not None else None) or mel.shape[1]
    field_ = _probe(name, eager, module, n_mels, device, dtype, first_item)
    context = field_.context() if config.context == "auto" else config.context
    buckets = _bucket_set(config, context)
    use_cache_dir(config.cache_dir)
    target, passes = _target(module, config, execution, device)
    logger.info(
        "optimizing %s: %s on %s, mode %s, receptive field -%d/+%d frames (context %d), hop %d, windows %s, "
        "%d buckets, passes %s", name, str(dtype).replace("torch.", ""), device, execution.mode, field_.left,
        field_.right, context, field_.hop, list(buckets.lengths), len(buckets.buckets()), passes)
    runner = Runner(execution, device, config.cudnn_benchmark)
    return Setup(n_mels, device, dtype, field_, buckets, runner, target, fingerprint(module))


def example_mel(name: str, module: nn.Module | None, config: OptimizeConfig) -> torch.Tensor:
    """A one-frame mel of the module's bins, device and dtype: what warm-up sets up from without an example."""
    if module is None:
        raise InputError("warmup() of an optimized function needs an example mel: warmup(example=mel)")
    n_mels = config.n_mels or detect_n_mels(module)
    if n_mels is None:
        raise InputError(f"cannot tell how many mel bins {name} expects: pass n_mels=... or an example")
    device, dtype = device_dtype(module, torch.empty(0))
    return torch.zeros(1, n_mels, 1, device=device, dtype=dtype)


def slot_call(eager: EagerCall, module: nn.Module | None, mel: torch.Tensor, **slots: Any) -> torch.Tensor:
    """The eager call with extra arguments keyed by slot (positional index or keyword name)."""
    args = [slots.pop(i) for i in sorted(k for k in slots if isinstance(k, int))]
    return eager(module, mel, *args, **slots)


def _probe(name: str, eager: EagerCall, module: nn.Module | None, n_mels: int, device: torch.device,
           dtype: torch.dtype, kwargs: Mapping[int | str, Any]) -> ReceptiveField:
    started = time.perf_counter()
    forward = functools.partial(slot_call, eager)
    if module is not None:
        field_ = probe_module(module, n_mels, forward=forward, kwargs=kwargs)
    else:
        field_ = probe(functools.partial(forward, None), n_mels, device=device, dtype=dtype, kwargs=kwargs)
    logger.info("%s: receptive field probed in %.1f s", name, time.perf_counter() - started)
    return field_


def _bucket_set(config: OptimizeConfig, context: int) -> BucketSet:
    try:
        if config.buckets is not None:
            return BucketSet(config.buckets, context, config.max_batch)
        return BucketSet.from_chunk_size(config.chunk_size, context, config.max_batch)
    except ValueError as exc:
        raise ConfigError(f"buckets={config.buckets!r}: {exc}") from exc


def _target(module: nn.Module | None, config: OptimizeConfig, execution: Execution,
            device: torch.device) -> tuple[nn.Module | None, dict[str, Any]]:
    """The module the optimized path runs: the original, or a weight-sharing copy rewritten by passes. After an
    inductor failure (`execution` degraded to 'cudagraphs'), inline activations are dropped with inductor."""
    inline = config.fused_activation == "inductor" and execution.mode == config.compile_mode
    fuse = inline or config.fused_activation == "on" or (config.fused_activation == "auto" and execution.rewrite)
    channels_last = config.channels_last == "on" or (
        config.channels_last == "auto" and device.type == "cuda" and execution.rewrite)
    if module is None or not (fuse or channels_last):
        return module, {}
    return optimized_copy(module, channels_last=channels_last, fuse_activations=fuse, inline_activations=inline)
