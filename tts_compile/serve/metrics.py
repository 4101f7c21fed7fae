"""The server's Prometheus metrics (`/metrics`, prometheus_client's text format), in a registry of its own: requests
by route and status, latency and first-audio histograms, and the engine's state read at every scrape."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENGINE_COUNTERS = ("submitted", "rejected", "finished", "failed", "cancelled", "steps", "renders")
ENGINE_GAUGES = ("requests", "queued", "rows", "max_rows")


class Metrics:
    """What `/metrics` reports; `stats` reads the engine (None while it warms up)."""

    def __init__(self, stats: Callable[[], dict | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tts_requests", "HTTP requests answered, by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("tts_request_seconds", "Seconds from a request's arrival to its last byte",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.first_audio = Histogram("tts_first_audio_seconds", "Seconds from a request's arrival to its first "
                                     "audio bytes", ["route"], buckets=BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(stats))


class _EngineCollector:
    def __init__(self, stats: Callable[[], dict | None]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        if stats is None:
            return
        for name in ENGINE_COUNTERS:
            yield CounterMetricFamily(f"tts_engine_{name}", f"engine counter: {name}", value=stats[name])
        for name in ENGINE_GAUGES:
            yield GaugeMetricFamily(f"tts_engine_{name}", f"engine state now: {name}", value=stats[name])
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            yield GaugeMetricFamily("tts_gpu_memory_allocated_bytes", "GPU memory held by tensors",
                                    value=torch.cuda.memory_allocated())
            yield GaugeMetricFamily("tts_gpu_memory_reserved_bytes", "GPU memory reserved by PyTorch's allocator",
                                    value=torch.cuda.memory_reserved())
