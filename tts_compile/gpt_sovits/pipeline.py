"""`optimize_pipeline`: tts_compile on an upstream GPT-SoVITS `TTS` pipeline, kept in place across weight switches.

Every version gets its T2S decode (`tts.t2s_model.model`, `optimize_t2s`) accelerated. Per version: v3/v4 get
`tts.vocoder` optimized (BigVGAN, the v4 vocoder), their flow-matching loop `tts.vits_model.cfm.inference` captured
(`optimize_cfm`) and its conditioning `tts.vits_model.decode_encp` captured stage by stage (`optimize_sovits`);
v1/v2/v2Pro/v2ProPlus get `tts.vits_model.decode` captured stage by stage, its decoder `dec` included
(`optimize_sovits`). Every version's text frontend gets its BERT captured (`tts.text_preprocessor`, `optimize_bert`).
Vocoders are swapped for `OptimizedVocoder` modules with the original's call signature, and the
CFM, T2S and SoVITS keep their methods' signatures, so upstream's `TTS.run`, `using_vocoder_synthesis`, the batched
path and api_v2 run unchanged. `init_vits_weights` and `init_t2s_weights` (api_v2's /set_sovits_weights and
/set_gpt_weights, and upstream's reload after a failed request) are wrapped to re-apply optimization to the new
models. `tts.use_vocoder_optimization = False` switches every optimized stage to its eager module at the next call
(the seed's debug switch); `True` switches back.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..core.config import OptimizeConfig, load_config
from ..vocoder import OptimizedVocoder, optimize_vocoder
from .bert import optimize_bert
from .cfm import optimize_cfm
from .config import PipelineConfig, pipeline_config
from .sovits import optimize_sovits
from .stage import Stage, attach_or_leave, detach
from .t2s import optimize_t2s
from .versions import version as version_of

logger = logging.getLogger(__name__)

SWITCH = "use_vocoder_optimization"  # attribute on the TTS object, read at every call
HANDLE = "tts_compile"  # attribute on the TTS object holding its PipelineOptimizer
RELOADERS = ("init_vits_weights", "init_t2s_weights")  # upstream methods that replace the models wrapped here


class PipelineOptimizer:
    """What `optimize_pipeline` installed on one `TTS` object (also reachable as `tts.tts_compile`)."""

    def __init__(self, tts: Any, config: PipelineConfig) -> None:
        self._tts = weakref.ref(tts)
        self.config = config
        self.stages: dict[str, Any] = {}  # name -> its optimizer (the vocoder's VocoderOptimizer or a Stage)

    def enabled(self) -> bool:
        """The runtime switch: `tts.use_vocoder_optimization` (default True)."""
        tts = self._tts()
        return tts is not None and bool(getattr(tts, SWITCH, True))

    def apply(self) -> None:
        """Optimize the stages of the pipeline's current version (a no-op for stages already optimized)."""
        tts = self._tts()
        if tts is None:
            return
        version = getattr(getattr(tts, "configs", None), "version", None)
        start = time.perf_counter()
        try:
            self.stages = self._optimize(tts, version)
        except Exception as exc:  # the pipeline must keep working: upstream's own modules stay in place
            if self.config.fallback == "raise":
                raise
            logger.warning("optimize_pipeline: %s: %s; GPT-SoVITS %s runs upstream's eager path", type(exc).__name__,
                           exc, version)
            self.stages = {}
            return
        if self.stages:
            logger.info("optimize_pipeline: GPT-SoVITS %s, optimized %s in %.1f s", version,
                        ", ".join(self.stages), time.perf_counter() - start)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per stage: the optimizer's counters (calls, replays, fallbacks, failure)."""
        return {name: stage.optimization_stats() for name, stage in self.stages.items()}

    def _optimize(self, tts: Any, version: str | None) -> dict[str, Any]:
        wanted = [name for name in version_of(version).stages if self._wanted(name)]
        optimizers = {
            "t2s_model.model": lambda: self._attached("T2S", optimize_t2s, lambda: tts.t2s_model.model),
            "vits_model": lambda: self._attached("SoVITS", optimize_sovits, lambda: tts.vits_model),
            "vits_model.cfm": lambda: self._attached("CFM", optimize_cfm, lambda: tts.vits_model.cfm),
            "vocoder": lambda: self._vocoder(tts, version),
        }
        stages = {name: optimizers[name]() for name in wanted}
        if self.config.bert and getattr(tts, "text_preprocessor", None) is not None:
            stages["text_preprocessor"] = self._attached("BERT", optimize_bert, lambda: tts.text_preprocessor)
        stages = {name: stage for name, stage in stages.items() if stage is not None}
        for stage in stages.values():
            stage.guard.switch = self.enabled
        return stages

    def _wanted(self, stage: str) -> bool:
        """Whether the config asks for `stage` (the vocoder follows `enabled` alone)."""
        return {"t2s_model.model": self.config.t2s, "vits_model": self.config.sovits,
                "vits_model.cfm": self.config.cfm}.get(stage, True)

    def _vocoder(self, tts: Any, version: str) -> Any:
        if getattr(tts, "vocoder", None) is None:
            raise ValueError(f"version {version} but tts.vocoder is None")
        if not isinstance(tts.vocoder, OptimizedVocoder):
            tts.vocoder = optimize_vocoder(tts.vocoder, config=self.config)
        return tts.vocoder.optimizer

    def _attached(self, label: str, optimize: Callable[..., Any], module: Callable[[], Any]) -> Stage | None:
        return attach_or_leave("optimize_pipeline", label, optimize, module, self.config)


def optimize_pipeline(tts: Any, config: OptimizeConfig | str | os.PathLike | None = None,
                      **options: Any) -> PipelineOptimizer:
    """Optimize an upstream `TTS` pipeline in place and keep it optimized across weight switches.

    `config`: an `OptimizeConfig`, a path to a `tts_infer.yaml`, or None for the pipeline's own config file
    (`tts.configs.configs_path`, read for the seed keys and the `tts_compile:` section). `options` override it.
    Returns the `PipelineOptimizer` (also `tts.tts_compile`); calling again re-applies with the new config.
    """
    resolved = _resolve(tts, config, options)
    existing = getattr(tts, HANDLE, None)
    if isinstance(existing, PipelineOptimizer):
        existing.config = resolved
        _unwrap(tts)
        existing.apply()
        return existing
    handle = PipelineOptimizer(tts, resolved)
    setattr(tts, HANDLE, handle)
    if not hasattr(tts, SWITCH):
        setattr(tts, SWITCH, True)
    for name in RELOADERS:
        if callable(getattr(tts, name, None)):
            setattr(tts, name, _reapplying(getattr(tts, name), handle))
    handle.apply()
    return handle


def _reapplying(method: Any, handle: PipelineOptimizer) -> Any:
    @functools.wraps(method)
    def reload_and_optimize(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        handle.apply()
        return result

    return reload_and_optimize


def _unwrap(tts: Any) -> None:
    """Put the eager modules back (before re-applying with a new config)."""
    if isinstance(getattr(tts, "vocoder", None), OptimizedVocoder):
        tts.vocoder = tts.vocoder.module
    vits = getattr(tts, "vits_model", None)
    t2s = getattr(getattr(tts, "t2s_model", None), "model", None)
    for module in (vits, getattr(vits, "cfm", None), t2s):
        if isinstance(module, nn.Module):
            detach(module)
    if getattr(tts, "text_preprocessor", None) is not None:
        detach(tts.text_preprocessor)


def _resolve(tts: Any, config: Any, options: dict[str, Any]) -> PipelineConfig:
    if isinstance(config, OptimizeConfig):
        return pipeline_config(config, options)
    if config is None:
        path = getattr(getattr(tts, "configs", None), "configs_path", None)
        config = path if path is not None and Path(path).is_file() else None
    return load_config(config, config_class=PipelineConfig, **options)
