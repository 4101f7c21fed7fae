"""GPT-SoVITS integration: `optimize_pipeline` for upstream's `TTS` pipeline, and its parts for the models alone:
`optimize_t2s` (T2S decode), `optimize_cfm` (v3/v4 flow matching), `optimize_sovits` (VITS decoder).

Nothing here imports GPT-SoVITS: the functions work on the objects a user already has.
"""

from .cfm import OptimizedCFM, optimize_cfm, restore_cfm
from .pipeline import PipelineOptimizer, optimize_pipeline, optimize_sovits
from .t2s import T2SAccelerator, optimize_t2s, restore_t2s

__all__ = ["PipelineOptimizer", "optimize_pipeline", "optimize_sovits", "optimize_cfm", "restore_cfm",
           "OptimizedCFM", "optimize_t2s", "restore_t2s", "T2SAccelerator"]
