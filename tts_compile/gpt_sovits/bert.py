"""`optimize_bert`: the BERT features of GPT-SoVITS's text frontend (`TextPreprocessor.get_bert_feature`), captured.

Upstream runs the 24-layer Chinese BERT eagerly once per text segment, launch-bound whatever the segment's length
(6.8 ms per segment on an H200 in fp16, 1.1 ms as one CUDA graph), and computes its masked-LM head, which it never
reads. Here the tokens (upstream's tokenizer, on the CPU as upstream calls it) are padded to a length bucket with an
attention mask of zeros over the padding, and the encoder alone (`base_model`, no head) runs as one graph per bucket.
A padded key gets an additive mask far below every score (weight exactly 0) and positions are absolute, so each real
token computes upstream's function; the third-to-last hidden state then goes to phones as upstream's does (token
`i + 1` repeated `word2ph[i]` times). Numerics differ only where a kernel sees the longer axis.

`features` answers several texts (one request's segments) in one call: rows padded to a power of two, each row its
own text (BERT mixes nothing across rows), so a request pays one launch-bound encoder pass instead of one a segment.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.buckets import Ladder
from ..core.config import OptimizeConfig
from .config import PipelineConfig
from .stage import Stage, attach, detach

logger = logging.getLogger(__name__)

LADDER = Ladder.half_octaves(16, 512)  # tokens with [CLS] and [SEP]; BERT's positions end at 512
ROWS = Ladder.powers_of_two(1, 16)  # texts in one `features` call; more go in several calls
LAYER = -3  # upstream reads hidden_states[-3]
Item = tuple[str, list]  # (text, word2ph): the arguments of one `get_bert_feature` call


def _hidden(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor) -> torch.Tensor:
    """The hidden state upstream reads (B, tokens, width), of the encoder without the masked-LM head."""
    out = encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                  output_hidden_states=True)
    return out.hidden_states[LAYER]


class OptimizedBert(Stage):
    """What `optimize_bert` installed on a `TextPreprocessor`: its `get_bert_feature`, and `features` for several
    texts in one call."""

    name = "optimize_bert"
    argument = "text_preprocessor"
    expected = "GPT-SoVITS TextPreprocessor (bert_model, tokenizer, get_bert_feature)"
    methods = ("get_bert_feature",)
    draws = False  # BERT draws no random numbers: its calls need not wait for the renders' generators

    def __init__(self, preprocessor: Any, config: PipelineConfig) -> None:
        super().__init__(preprocessor, config)
        self.preprocessor = preprocessor
        get = self.original["get_bert_feature"]
        self.original["features"] = lambda items: tuple(get(text, word2ph) for text, word2ph in items)

    @classmethod
    def lacks(cls, module: Any) -> list[str]:
        missing = [name for name in ("bert_model", "tokenizer", "get_bert_feature") if not hasattr(module, name)]
        return missing or ([] if isinstance(module.bert_model, nn.Module) else ["a bert_model module"])

    @classmethod
    def weights_of(cls, module: Any) -> nn.Module:
        return module.bert_model

    def get_bert_feature(self, text: str, word2ph: list) -> torch.Tensor:
        """Upstream's signature and result: (width, phones) features of `text`, one row per phone."""
        return self.features([(text, word2ph)])[0]

    def features(self, items: Sequence[Item]) -> tuple[torch.Tensor, ...]:
        """`get_bert_feature(text, word2ph)` of each item, the encoder run once for up to `ROWS.largest` of them;
        upstream's method per item when one of them is not covered (with upstream's own error, if it raises)."""
        items = list(items)
        inputs = self._tokens(items)
        problems = [p for p in (self._problem(text, w2p, x) for (text, w2p), x in zip(items, inputs)) if p]
        problem = problems[0] if problems else None if items else "no texts"
        return self.serve("features", (items,), problem, lambda _: self._features(items, inputs))

    def _tokens(self, items: list[Item]) -> list[dict[str, list[int]] | None]:
        """Upstream's tokenizer's ids of each text (one tokenizer call for all), None for an item whose arguments
        are not upstream's shape."""
        fits = [isinstance(text, str) and isinstance(word2ph, (list, tuple)) and len(word2ph) == len(text) > 0 and
                all(isinstance(n, int) and n >= 0 for n in word2ph) for text, word2ph in items]
        texts = [text for (text, _), ok in zip(items, fits) if ok]
        encoded = self.preprocessor.tokenizer(texts) if texts else {}
        each = iter([{name: encoded[name][i] for name in encoded} for i in range(len(texts))])
        return [next(each) if ok else None for ok in fits]

    @staticmethod
    def _problem(text: str, word2ph: list, inputs: dict[str, list[int]] | None) -> str | None:
        if inputs is None:
            return "word2ph is not one count >= 0 per character of a non-empty text"
        tokens = len(inputs["input_ids"])
        if tokens > LADDER.largest:
            return f"{tokens} tokens: past the largest bucket ({LADDER.largest})"
        if tokens - 2 < len(word2ph):
            return f"{tokens - 2} tokens between [CLS] and [SEP] for {len(word2ph)} characters"
        return None

    def _features(self, items: list[Item], inputs: list[dict]) -> tuple[torch.Tensor, ...]:
        """The items' features, `ROWS.largest` texts per encoder call."""
        step = ROWS.largest
        return tuple(feature for start in range(0, len(items), step)
                     for feature in self._batch(items[start:start + step], inputs[start:start + step]))

    def _batch(self, items: list[Item], inputs: list[dict]) -> list[torch.Tensor]:
        """One encoder call for up to `ROWS.largest` texts: (rows, tokens) padded to their buckets, a padding
        row holding [CLS] alone (a row of no keys at all is not softmax's to answer)."""
        lengths = [len(x["input_ids"]) for x in inputs]
        rows, size = ROWS.fit(len(items)), LADDER.fit(max(lengths))
        # ids, mask, types: (rows, size)
        padded = [torch.zeros(rows, size, dtype=torch.long) for _ in range(3)]
        padded[0][:, 0], padded[1][:, 0] = inputs[0]["input_ids"][0], 1
        for row, (x, n) in enumerate(zip(inputs, lengths)):
            for buffer, name in zip(padded, ("input_ids", "attention_mask", "token_type_ids")):
                buffer[row, :n] = torch.tensor(x[name]) if name in x else 0
        encoder = getattr(self.weights, "base_model", self.weights)
        hidden = self.run_graph(("bert", rows, size), functools.partial(_hidden, encoder),
                                [t.to(self.device) for t in padded], f"BERT at {rows} x {size} tokens")
        # hidden: (rows, size, width) -> each item's characters, one row per character
        hidden = hidden.cpu()
        return [hidden[row, 1:1 + len(word2ph)].repeat_interleave(torch.tensor(word2ph), dim=0).T
                for row, (_, word2ph) in enumerate(items)]


def optimize_bert(text_preprocessor: Any, config: OptimizeConfig | None = None, **options: Any) -> Any:
    """Patch a GPT-SoVITS `TextPreprocessor` in place: `get_bert_feature` keeps its signature and result, its BERT
    runs as one captured graph per padded token bucket. The handle is `text_preprocessor.tts_compile`."""
    attach(OptimizedBert, text_preprocessor, config, options)
    return text_preprocessor


def restore_bert(text_preprocessor: Any) -> Any:
    """Undo `optimize_bert`: upstream's own `get_bert_feature` again."""
    return detach(text_preprocessor, OptimizedBert)
