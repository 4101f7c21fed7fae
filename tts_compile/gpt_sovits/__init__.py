"""GPT-SoVITS integration: `optimize_pipeline` for upstream's `TTS` pipeline, and its parts for the models alone:
`optimize_t2s` (T2S decode), `optimize_cfm` (v3/v4 flow matching), `optimize_sovits` (v1-v2ProPlus decode, v3/v4
decode_encp), `optimize_bert` (the text frontend's BERT features); `PipelineConfig` their options, `VERSIONS` what
each GPT-SoVITS version runs.

Nothing here imports GPT-SoVITS: the functions work on the objects a user already has.
"""

from .bert import OptimizedBert, optimize_bert, restore_bert
from .cfm import OptimizedCFM, optimize_cfm, restore_cfm
from .config import PipelineConfig
from .pipeline import PipelineOptimizer, optimize_pipeline
from .sovits import OptimizedSoVITS, optimize_sovits, restore_sovits
from .t2s import T2SAccelerator, optimize_t2s, restore_t2s
from .versions import VERSIONS, Version

__all__ = ["PipelineConfig", "PipelineOptimizer", "optimize_pipeline", "optimize_sovits", "restore_sovits",
           "OptimizedSoVITS", "optimize_cfm", "restore_cfm", "OptimizedCFM", "optimize_t2s", "restore_t2s",
           "T2SAccelerator", "optimize_bert", "restore_bert", "OptimizedBert", "VERSIONS", "Version"]
