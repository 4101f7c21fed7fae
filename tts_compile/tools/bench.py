"""The benchmark behind `python -m tts_compile bench`: eager vs optimized, side by side, in one process.

Per mel length: median eager and optimized time after warm-up, speed-up, x-realtime, max |difference|, peak
memory of each; once per run: start-up time (probe + compile + capture + verify). Timings synchronize the device
around each call. CPU numbers show that the machinery works; only GPU ratios are performance claims.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..models import MODELS, build_model
from ..vocoder import optimize_vocoder

logger = logging.getLogger(__name__)

DEFAULT_LENGTHS = (100, 500, 1000, 4000)


@dataclass
class Row:
    """One mel length: times in milliseconds, memory in MiB, `max_abs_diff` against the eager output."""

    frames: int
    audio_s: float
    eager_ms: float | None
    optimized_ms: float
    speedup: float | None
    x_realtime: float
    max_abs_diff: float | None
    eager_peak_mib: float | None
    optimized_peak_mib: float | None


@dataclass
class Report:
    """A whole benchmark run, as printed and as written to JSON."""

    model: str
    device: str
    device_type: str  # "cuda" or "cpu": only GPU rows are performance claims
    dtype: str
    compile_mode: str
    startup_s: float
    held_mib: float | None  # device memory the optimizer keeps between calls: graph pool and static buffers
    rows: list[Row] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        held = "" if self.held_mib is None else f", {self.held_mib:.0f} MiB held by the optimizer"
        lines = [f"{self.model} on {self.device}, {self.dtype}, mode {self.compile_mode}: start-up "
                 f"{self.startup_s:.1f} s (probe + compile + capture + verify){held}",
                 f"{'frames':>8} {'audio s':>8} {'eager ms':>9} {'opt ms':>8} {'speedup':>8} {'xRT':>7} "
                 f"{'max|diff|':>10} {'eager MiB':>10} {'opt MiB':>8}"]
        if self.device_type != "cuda":
            lines.append("(CPU: these rows show that the optimized path runs and matches eager; speed-ups are claims "
                         "about GPUs only, see benchmarks/results)")
        for r in self.rows:
            lines.append(f"{r.frames:>8} {r.audio_s:>8.2f} {_fmt(r.eager_ms, '9.2f')} {r.optimized_ms:>8.2f} "
                         f"{_fmt(r.speedup, '8.2f')} {r.x_realtime:>7.0f} {_fmt(r.max_abs_diff, '10.1e')} "
                         f"{_fmt(r.eager_peak_mib, '10.0f')} {_fmt(r.optimized_peak_mib, '8.0f')}")
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, ">" + spec)


def run(model: str = "bigvgan-tiny", *, device: str = "cpu", dtype: str = "float32",
        lengths: Sequence[int] = DEFAULT_LENGTHS, repeats: int = 5, max_eager_frames: int = 20000,
        seed: int = 0, tf32: bool = True, **options: Any) -> Report:
    """Benchmark one built-in model; `options` go to `optimize_vocoder` (compile_mode, chunk_size, ...).

    `tf32=False` turns TF32 off for this process, so float32 means float32 for eager and optimized alike."""
    torch.manual_seed(seed)
    if not tf32:  # otherwise leave torch's own defaults (TF32 on for cuDNN, off for matmuls)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dev, dt = torch.device(device), getattr(torch, dtype)
    vocoder = build_model(model, seed=seed).to(dev, dt)
    preset = MODELS[model]
    example = _conditioning(preset.config, dev, dt)
    reserved = _reserved(dev)
    started = time.perf_counter()
    optimized = optimize_vocoder(vocoder, example_kwargs=example, **options)
    _sync(dev)
    startup = time.perf_counter() - started
    held = (_reserved(dev) - reserved) / 2**20 if dev.type == "cuda" else None
    report = Report(model, _device_name(dev), dev.type, dtype, optimized.optimizer.mode, startup, held,
                    environment=_environment())
    for frames in lengths:
        mel = torch.randn(1, preset.n_mels, frames, device=dev, dtype=dt)
        with_eager = frames <= max_eager_frames
        row = _measure(vocoder, optimized, mel, example, preset.config.hop, preset.sample_rate,
                       repeats if with_eager else 1, with_eager)
        if held is not None:
            row.optimized_peak_mib += held
        report.rows.append(row)
    report.stats = {k: v for k, v in optimized.optimization_stats().items() if not isinstance(v, tuple)}
    return report


def _measure(eager, optimized, mel, example, hop, sample_rate, repeats, with_eager) -> Row:
    with torch.inference_mode():
        opt_out, opt_ms, opt_peak = timed(lambda: optimized(mel, **example), mel.device, repeats)
        audio_s = mel.shape[-1] * hop / sample_rate
        if not with_eager:
            return Row(mel.shape[-1], audio_s, None, opt_ms, None, audio_s / (opt_ms / 1e3), None, None, opt_peak)
        ref_out, eager_ms, eager_peak = timed(lambda: eager(mel, **example), mel.device, repeats)
    diff = float((opt_out.float() - ref_out.float()).abs().max())
    return Row(mel.shape[-1], audio_s, eager_ms, opt_ms, eager_ms / opt_ms, audio_s / (opt_ms / 1e3), diff,
               eager_peak, opt_peak)


def timed(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[torch.Tensor, float, float]:
    """Output, median milliseconds over `repeats` after one warm-up call, and peak memory (MiB) of one call."""
    out = fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    return out, statistics.median(times), peak


def _conditioning(config: Any, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gin = getattr(config, "gin_channels", 0)
    return {"g": torch.randn(1, gin, 1, device=device, dtype=dtype)} if gin else {}


def _reserved(device: torch.device) -> int:
    """Reserved device memory after returning unused cached blocks (what the process really holds)."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'x86'})"


def _environment() -> dict[str, str]:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda or ""
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def write_json(report: Report, path: str | Path, command: str) -> None:
    """Append `report` (with the command that produced it) to a JSON list at `path`."""
    path = Path(path)
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append({**dataclasses.asdict(report), "command": command})
    path.write_text(json.dumps(runs, indent=1))
