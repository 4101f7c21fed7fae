"""The serving engine: many GPT-SoVITS requests at once on one GPU (continuous batching of the T2S decode, rendering
beside it), each request's audio depending on its own inputs and seed only.

    engine = Engine.from_pipeline(tts)                  # or stand_ins.engine("v2ProPlus") anywhere
    handle = engine.submit(voice, segments, Params(seed=7))
    audio, sample_rate = handle.result()                # or: await handle
"""

from .config import EngineConfig
from .engine import Engine
from .request import (
    Cancelled,
    DeadlinePassed,
    EngineClosed,
    Handle,
    Params,
    QueueFull,
    Segment,
    Status,
    TokenChunks,
    Voice,
)

__all__ = ["Engine", "EngineConfig", "Handle", "Params", "Segment", "Voice", "TokenChunks", "Status", "QueueFull",
           "Cancelled", "DeadlinePassed", "EngineClosed"]
