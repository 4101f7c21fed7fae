"""`optimize_bert`: the BERT features of GPT-SoVITS's text frontend (`TextPreprocessor.get_bert_feature`), captured.

Upstream runs the 24-layer Chinese BERT eagerly once per text segment, launch-bound whatever the segment's length
(6.8 ms per segment on an H200 in fp16, 1.1 ms as one CUDA graph), and computes its masked-LM head, which it never
reads. Here the tokens (upstream's tokenizer, on the CPU as upstream calls it) are padded to a length bucket with an
attention mask of zeros over the padding, and the encoder alone (`base_model`, no head) runs as one graph per bucket.
A padded key gets an additive mask far below every score (weight exactly 0) and positions are absolute, so each real
token computes upstream's function; the third-to-last hidden state then goes to phones as upstream's does (token
`i + 1` repeated `word2ph[i]` times). Numerics differ only where a kernel sees the longer axis.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.buckets import Ladder
from ..core.config import OptimizeConfig
from .config import PipelineConfig
from .stage import Stage, attach, detach

logger = logging.getLogger(__name__)

LADDER = Ladder.half_octaves(16, 512)  # tokens with [CLS] and [SEP]; BERT's positions end at 512
LAYER = -3  # upstream reads hidden_states[-3]


def _hidden(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor) -> torch.Tensor:
    """The hidden state upstream reads (B, tokens, width), of the encoder without the masked-LM head."""
    out = encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                  output_hidden_states=True)
    return out.hidden_states[LAYER]


class OptimizedBert(Stage):
    """What `optimize_bert` installed on a `TextPreprocessor`: its `get_bert_feature`."""

    name = "optimize_bert"
    argument = "text_preprocessor"
    expected = "GPT-SoVITS TextPreprocessor (bert_model, tokenizer, get_bert_feature)"
    methods = ("get_bert_feature",)
    draws = False  # BERT draws no random numbers: its calls need not wait for the renders' generators

    def __init__(self, preprocessor: Any, config: PipelineConfig) -> None:
        super().__init__(preprocessor, config)
        self.preprocessor = preprocessor

    @classmethod
    def lacks(cls, module: Any) -> list[str]:
        missing = [name for name in ("bert_model", "tokenizer", "get_bert_feature") if not hasattr(module, name)]
        return missing or ([] if isinstance(module.bert_model, nn.Module) else ["a bert_model module"])

    @classmethod
    def weights_of(cls, module: Any) -> nn.Module:
        return module.bert_model

    def get_bert_feature(self, text: str, word2ph: list) -> torch.Tensor:
        """Upstream's signature and result: (width, phones) features of `text`, one row per phone."""
        fits = isinstance(text, str) and isinstance(word2ph, (list, tuple)) and len(word2ph) == len(text) > 0 and \
            all(isinstance(n, int) and n >= 0 for n in word2ph)
        inputs = self.preprocessor.tokenizer(text, return_tensors="pt") if fits else None
        problem = self._problem(word2ph, inputs) if fits else \
            "word2ph is not one count >= 0 per character of a non-empty text"
        return self.serve("get_bert_feature", (text, word2ph), problem, lambda *_: self._feature(inputs, word2ph))

    def _problem(self, word2ph: list, inputs: Any) -> str | None:
        tokens = inputs["input_ids"].shape[-1]
        if tokens > LADDER.largest:
            return f"{tokens} tokens: past the largest bucket ({LADDER.largest})"
        if tokens - 2 < len(word2ph):
            return f"{tokens - 2} tokens between [CLS] and [SEP] for {len(word2ph)} characters"
        return None

    def _feature(self, inputs: Any, word2ph: list) -> torch.Tensor:
        ids = inputs["input_ids"]
        tokens = ids.shape[-1]
        size = LADDER.fit(tokens)
        padded = [F.pad(t, (0, size - tokens)).to(self.device) for t in (
            ids, inputs["attention_mask"], inputs.get("token_type_ids", torch.zeros_like(ids)))]
        encoder = getattr(self.weights, "base_model", self.weights)
        hidden = self.run_graph(("bert", size), functools.partial(_hidden, encoder), padded,
                                f"BERT at {size} tokens")
        res = hidden[0, 1:1 + len(word2ph)].cpu()
        return res.repeat_interleave(torch.tensor(word2ph), dim=0).T


def optimize_bert(text_preprocessor: Any, config: OptimizeConfig | None = None, **options: Any) -> Any:
    """Patch a GPT-SoVITS `TextPreprocessor` in place: `get_bert_feature` keeps its signature and result, its BERT
    runs as one captured graph per padded token bucket. The handle is `text_preprocessor.tts_compile`."""
    attach(OptimizedBert, text_preprocessor, config, options)
    return text_preprocessor


def restore_bert(text_preprocessor: Any) -> Any:
    """Undo `optimize_bert`: upstream's own `get_bert_feature` again."""
    return detach(text_preprocessor, OptimizedBert)
