"""GPT-SoVITS integration: `optimize_pipeline` for upstream's `TTS` pipeline, `optimize_sovits` for its VITS model.

Nothing here imports GPT-SoVITS: the functions work on the objects a user already has.
"""

from .pipeline import PipelineOptimizer, optimize_pipeline, optimize_sovits

__all__ = ["PipelineOptimizer", "optimize_pipeline", "optimize_sovits"]
