"""tts_compile: make GPT-SoVITS-style TTS inference fast without changing its audio.

Public API: `optimize_vocoder` (instance, class decorator or function), `OptimizeConfig` and `load_config`, the
wrapper type `OptimizedVocoder`, and the errors `ConfigError` and `OptimizationError`. GPT-SoVITS's pipeline and
stages: `tts_compile.gpt_sovits`.
"""

import logging

from .core.config import ConfigError, OptimizeConfig, load_config
from .core.guard import OptimizationError
from .engine import config as _engine_config  # noqa: F401 - every config class shares the YAML section (core.config)
from .vocoder import OptimizedVocoder, optimize_vocoder

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["optimize_vocoder", "OptimizeConfig", "load_config", "OptimizedVocoder", "ConfigError",
           "OptimizationError"]
__version__ = "0.1.0"
