"""`PipelineConfig`: the options of the GPT-SoVITS stages, on top of the vocoder options they share.

They live in the same `tts_compile:` section of `tts_infer.yaml` (see `core.config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..core.config import OptimizeConfig, check_bool, doc, load_config


@dataclass(frozen=True)
class PipelineConfig(OptimizeConfig):
    """Options of `optimize_pipeline` and its stages. Each field documents its meaning, default, valid values and
    cost."""

    sovits: bool = field(default=True, metadata=doc(
        "optimize_pipeline on GPT-SoVITS v1/v2/v2Pro/v2ProPlus: run `vits_model.decode` as captured stages (reference "
        "embedding, text encoder, flow and decoder `dec` over padded length buckets, the decoder masked per stage "
        "so padding changes no real sample); on v3/v4: `vits_model.decode_encp` (reference embedding, text encoder, "
        "conditioning stack) the same way. False: leave SoVITS eager (the v3/v4 vocoder still follows `enabled`)."))
    t2s: bool = field(default=True, metadata=doc(
        "optimize_pipeline: decode T2S tokens with a static KV cache and a captured decode step (single rows and "
        "batches of up to 16 rows, with or without a prompt; streaming calls run upstream's loop). Memory: the "
        "cache, 50 MB per 1024 positions and row (rows padded to 1, 2, 4, 8 or 16) for the 24-layer fp16 model; "
        "buckets beyond 2 GiB of caches are dropped, least recently used first. False: leave T2S eager."))
    t2s_kernels: bool = field(default=True, metadata=doc(
        "optimize_t2s on CUDA: run the decode step's layers as Triton kernels (five launches a layer instead of "
        "~14; float32 accumulation, rounding differs from cuBLAS in the last bits). False: torch ops (cuBLAS, "
        "SDPA). Without Triton, torch ops. No effect on CPU."))
    cfm: bool = field(default=True, metadata=doc(
        "optimize_pipeline on GPT-SoVITS v3/v4: run the flow-matching loop (`vits_model.cfm`) compiled, each "
        "(batch, frames, steps) bucket captured as one CUDA graph on its second call (at most 8 per model; "
        "memory: one DiT forward's activations per bucket). False: leave the CFM eager."))
    bert: bool = field(default=True, metadata=doc(
        "optimize_pipeline and the server: run the text frontend's BERT (`text_preprocessor.get_bert_feature`, "
        "once per Chinese text segment) as one captured graph per padded token bucket (16 to 512 tokens, masked), "
        "without the masked-LM head upstream computes and never reads; the server runs all of a request's segments "
        "in one call (rows padded to 1, 2, 4, 8 or 16: one graph per rows and tokens bucket met). False: leave it "
        "eager, one call per segment."))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool(self, "sovits", "t2s", "t2s_kernels", "cfm", "bert")


def pipeline_config(config: OptimizeConfig | None, options: dict[str, Any]) -> PipelineConfig:
    """`config` (any `OptimizeConfig`, its pipeline options defaulted) with keyword `options` applied, or the
    defaults with them."""
    if config is None:
        return load_config(config_class=PipelineConfig, **options)
    if not isinstance(config, PipelineConfig):
        config = PipelineConfig(**dataclasses.asdict(config))
    return config.replace(**options)
