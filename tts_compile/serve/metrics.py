"""The server's Prometheus metrics (`/metrics`, prometheus_client's text format), in a registry of its own: requests
by route and status, latency, first-audio and frontend histograms, and the engine's state and its render stages'
counters (calls served optimized or eager, fallbacks) read at every scrape."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENGINE_COUNTERS = ("submitted", "rejected", "finished", "failed", "cancelled", "steps", "renders")
ENGINE_GAUGES = ("requests", "queued", "rows", "max_rows")
STAGE_COUNTERS = ("calls", "optimized", "eager", "fallbacks")


class Metrics:
    """What `/metrics` reports; `engine` gives the engine (None while it warms up)."""

    def __init__(self, engine: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tts_requests", "HTTP requests answered, by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("tts_request_seconds", "Seconds from a request's arrival to its last byte",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.first_audio = Histogram("tts_first_audio_seconds", "Seconds from a request's arrival to its first "
                                     "audio bytes", ["route"], buckets=BUCKETS, registry=self.registry)
        self.frontend = Histogram("tts_frontend_seconds", "Seconds of a new text's frontend, by part: g2p (text to "
                                  "phones, every segment) and bert (one call for all segments)", ["part"],
                                  buckets=BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(engine))


class _EngineCollector:
    def __init__(self, engine: Callable[[], Any]) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine()
        if engine is None:
            return
        stats, stages = engine.stats(), engine.stage_stats()
        for name in STAGE_COUNTERS:
            family = CounterMetricFamily(f"tts_stage_{name}", f"render stage counter: {name} (the optimizer's)",
                                         labels=["stage"])
            for stage, counters in stages.items():
                family.add_metric([stage], counters.get(name, 0))
            yield family
        for name in ENGINE_COUNTERS:
            yield CounterMetricFamily(f"tts_engine_{name}", f"engine counter: {name}", value=stats[name])
        for name in ENGINE_GAUGES:
            yield GaugeMetricFamily(f"tts_engine_{name}", f"engine state now: {name}", value=stats[name])
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            yield GaugeMetricFamily("tts_gpu_memory_allocated_bytes", "GPU memory held by tensors",
                                    value=torch.cuda.memory_allocated())
            yield GaugeMetricFamily("tts_gpu_memory_reserved_bytes", "GPU memory reserved by PyTorch's allocator",
                                    value=torch.cuda.memory_reserved())
