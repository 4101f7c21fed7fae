"""`EngineConfig`: the engine's options, on top of the GPT-SoVITS stages' (`PipelineConfig`); the same YAML section."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.config import ConfigError, check_bool, check_int, doc
from ..gpt_sovits.config import PipelineConfig


@dataclass(frozen=True)
class EngineConfig(PipelineConfig):
    """Options of the serving engine. Each field documents its meaning, default, valid values and cost."""

    queue_size: int = field(default=256, metadata=doc(
        "Requests the engine holds at most, waiting or in progress (>= 1); a submission beyond it is rejected at "
        "once with QueueFull (a server answers 503). Memory: the requests' inputs only."))
    max_rows: int = field(default=64, metadata=doc(
        "T2S rows (text segments) decoded at once (>= 1), each with its own KV cache row; a step is captured per "
        "rows bucket (1, 2, 4, ... up to this). More rows: more throughput under load, more KV memory (see "
        "kv_budget_gib) and more captures at start-up."))
    kv_capacity: int = field(default=2048, metadata=doc(
        "Positions of one row's KV cache (>= 64): its prefix (phones and prompt tokens) plus the tokens it may "
        "decode; a row stops at it as at upstream's 1500-token cap. The 24-layer fp16 model takes 48 KiB per "
        "position and row (96 MiB per row at 2048)."))
    kv_budget_gib: float = field(default=4.0, metadata=doc(
        "GiB of KV caches at most (> 0): the rows are min(max_rows, budget / one row's cache), so memory stays "
        "bounded whatever the load (about 40 rows of 2048 positions in 4 GiB for the full-size model)."))
    render_workers: int = field(default=2, metadata=doc(
        "Threads that turn finished requests' tokens into audio (SoVITS decode, or CFM and vocoder), each on its "
        "own CUDA stream beside the T2S loop's (>= 1). Where every module that draws noise is a stage, renders run "
        "at once, each drawing its seed's noise from its own generators; otherwise they take turns on the shared "
        "ones. Two keep the GPU busy (H100, v2ProPlus, 64 callers: 36-39 req/s with two or four)."))
    warm_tokens: int = field(default=1024, metadata=doc(
        "Tokens of the longest request whose render buckets `Engine.prepare(voice)` captures and verifies before "
        "serving (>= 0; the server prepares with its first voice before it is ready): 109 renders at 1024 tokens "
        "(v2ProPlus, H100: 59 s cold, 39 s with warm caches). A longer request, or one at another speed, noise "
        "scale or CFM step count, captures and verifies its bucket at first sight."))
    g2p_workers: int = field(default=2, metadata=doc(
        "The server over upstream's pipeline: processes that run the text frontend's G2P (jieba, pypinyin, G2PW), "
        "so that a long text's G2P holds neither the GIL of the T2S loop nor other requests' G2P; a request's BERT "
        "then runs once for all its segments (>= 0; 0: G2P in the request's thread, one segment at a time). Each "
        "process holds upstream's text frontend (G2PW's model included: about 1 GiB of memory) and starts with "
        "the server (seconds)."))
    first_alone: bool = field(default=True, metadata=doc(
        "From the moment a stream's first render is queued until it is done, the T2S loop and renders not begun yet "
        "wait (at most 0.1 s): the first audio has the GPU to itself. H100, v2ProPlus, token-chunk streams, toggled "
        "on one engine: first audio p50 / p95 0.028-0.029 / 0.032-0.033 s against 0.053-0.061 / 0.065-0.068 s to one "
        "caller, 0.083-0.084 / 0.248-0.252 against 0.116-0.129 / 0.280-0.288 s at 16 callers, the streams' "
        "throughput unchanged. A load of whole requests only has nothing to wait for."))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "queue_size", "max_rows", "render_workers", minimum=1)
        check_bool(self, "first_alone")
        check_int(self, "warm_tokens", "g2p_workers", minimum=0)
        check_int(self, "kv_capacity", minimum=64)
        if not isinstance(self.kv_budget_gib, (int, float)) or isinstance(self.kv_budget_gib, bool) or \
                not self.kv_budget_gib > 0:
            raise ConfigError(f"kv_budget_gib={self.kv_budget_gib!r} is invalid: expected a number > 0")
