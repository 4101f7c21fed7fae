"""An autoregressive text-to-semantic model with the interface of GPT-SoVITS's `Text2SemanticDecoder`.

Written from the published facts (docs: gpt-sovits-upstream.md 2.1-2.5), not from upstream's code, so CI can test
the T2S accelerator without a GPT-SoVITS checkout: the attribute names the accelerator reads (`ar_text_embedding`,
`bert_proj`, `ar_text_position`, `ar_audio_embedding`, `ar_audio_position` with `x_scale`, `alpha`, `pe`,
`h.layers` of post-norm `nn.TransformerEncoderLayer`, `ar_predict_layer`, `num_head`, `EOS`), tiny sizes, and
upstream's decode entry points written the slow, obvious way: every step re-runs the whole sequence through
`nn.TransformerEncoder` with the prefix mask (no cache), and samples with gather/scatter as upstream does. It is
the reference the accelerator is tested against. `load_t2s_checkpoint` builds it at full size from upstream's T2S
checkpoint (`config` and `weight`), so `optimize_t2s` can start from a `.ckpt` without upstream's code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..chunks import THRESHOLD, Chunker

MAX_STEPS = 1500
EARLY_STEPS = 11


class TokenEmbedding(nn.Module):
    """Token ids (B, L) -> (B, L, dim)."""

    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)

    @property
    def weight(self) -> torch.Tensor:
        """The embedding table (upstream's TTS reads it: `ar_audio_embedding.weight`)."""
        return self.word_embeddings.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(ids)


class SinePosition(nn.Module):
    """x + alpha * sinusoidal table[:L] (x_scale 1, a learnable scalar alpha), the table kept as `pe` (1, P, dim)."""

    def __init__(self, dim: int, positions: int = 4000) -> None:
        super().__init__()
        self.x_scale = 1.0
        self.alpha = nn.Parameter(torch.ones(1))
        position = torch.arange(positions, dtype=torch.float32)[:, None]
        angle = position * torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
        self.pe = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(1)[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.pe = self.pe.to(device=x.device, dtype=x.dtype)
        return x * self.x_scale + self.alpha * self.pe[:, : x.size(1)]


class T2SModel(nn.Module):
    """Phones (default vocabulary 40) and BERT features (1024-d) -> semantic tokens (default 64 + EOS); tiny by
    default (the tests' random-weight stand-in), any size from a checkpoint."""

    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2, vocab: int = 65, phones: int = 40) -> None:
        super().__init__()
        self.model_dim, self.num_head, self.EOS = dim, heads, vocab - 1
        self.bert_proj = nn.Linear(1024, dim)
        self.ar_text_embedding = TokenEmbedding(dim, phones)
        self.ar_text_position = SinePosition(dim)
        self.ar_audio_embedding = TokenEmbedding(dim, vocab)
        self.ar_audio_position = SinePosition(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=False)
        self.h = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ar_predict_layer = nn.Linear(dim, vocab, bias=False)

    @torch.inference_mode()
    def infer_panel_naive(self, x, x_lens, prompts, bert_feature, top_k=-100, top_p=100, early_stop_num=-1,
                          temperature=1.0, repetition_penalty=1.35, **kwargs) -> Iterator[tuple[torch.Tensor, int]]:
        """Yields `(prompt + tokens (1, L), idx)` once: the EOS token dropped, or every token at early stop / cap.
        Without a prompt (upstream's prompt-free decode) the tokens are int32 and idx is 0."""
        steps = self._steps(x, prompts, bert_feature, top_k, top_p, early_stop_num, temperature, repetition_penalty)
        if kwargs.get("streaming_mode"):  # upstream's chunks (`chunks.Chunker`), each one as soon as it is cut
            chunker = Chunker([] if prompts is None else prompts[0].tolist(), kwargs.get("chunk_length", 24),
                              kwargs.get("mute_emb_sim_matrix"), kwargs.get("chunk_split_thershold", THRESHOLD))
            for tokens, _, stop, eos in steps:
                for chunk, final in chunker.step(int(tokens[0, -1]), stop, eos):
                    yield (None if chunk is None else torch.tensor([chunk], dtype=tokens.dtype,
                                                                   device=tokens.device)), final
            return
        *_, (tokens, idx, _, eos) = steps
        yield tokens[:, :-1] if eos else tokens, 0 if prompts is None else idx

    def infer_panel(self, *args, **kwargs) -> tuple[torch.Tensor, int]:
        return next(self.infer_panel_naive(*args, **kwargs))

    @torch.inference_mode()
    def infer_panel_batch_infer(self, x, x_lens, prompts, bert_feature, top_k=-100, top_p=100, early_stop_num=-1,
                                temperature=1.0, repetition_penalty=1.35, **kwargs) -> tuple[list, list]:
        """Upstream's batched decode: each row's text embedded on its own and left-padded to `max_len` (padding
        never attended), all rows sampled together (one noise row per unfinished row), a row leaving the batch at
        its stop with `y[:-1]`. Without prompts, row by row through `infer_panel_naive`, as upstream."""
        if prompts is None:
            results = [next(self.infer_panel_naive(row[None], None, None, feature[None], top_k, top_p, early_stop_num,
                                                   temperature, repetition_penalty))
                       for row, feature in zip(x, bert_feature)]
            return [y[0] for y, _ in results], [idx for _, idx in results]
        width = int(kwargs.get("max_len", max(len(row) for row in x)))
        text = torch.stack([F.pad(self._text(row[None], feature[None]), (0, 0, width - len(row), 0))[0]
                            for row, feature in zip(x, bert_feature)])
        padding = torch.tensor([width - len(row) for row in x])
        alive, y = list(range(len(x))), prompts
        rows, indices = [None] * len(x), [None] * len(x)
        for idx in range(MAX_STEPS):
            audio = self.ar_audio_position(self.ar_audio_embedding(y))
            logits = self._last_logits(torch.cat((text[alive], audio), dim=1), width, padding[alive])
            if idx < EARLY_STEPS:
                logits = logits[:, :-1]
            token = _sample(logits, y, top_k, top_p, temperature, repetition_penalty)
            y = torch.cat((y, token), dim=1)
            capped = (early_stop_num != -1 and y.shape[1] - prompts.shape[1] > early_stop_num) or idx == MAX_STEPS - 1
            done = (torch.argmax(logits, dim=-1) == self.EOS) | (token[:, 0] == self.EOS) | capped
            for i in done.nonzero()[:, 0].tolist():
                rows[alive[i]], indices[alive[i]] = y[i, :-1], idx
            keep = (~done).nonzero()[:, 0]
            alive, y = [alive[i] for i in keep.tolist()], y[keep]
            if not alive:
                return rows, indices
        raise AssertionError("unreachable: the loop stops at the cap")

    def _text(self, x: torch.Tensor, bert: torch.Tensor) -> torch.Tensor:
        return self.ar_text_position(self.ar_text_embedding(x) + self.bert_proj(bert.transpose(1, 2)))

    def _steps(self, x, prompts, bert, top_k, top_p, early_stop_num, temperature, penalty):
        """The one-row decode, step by step: (prompt + tokens so far (1, L), idx, stopped, on EOS) after each."""
        text = self._text(x, bert)
        y = prompts if prompts is not None else torch.zeros(x.shape[0], 0, dtype=torch.int, device=x.device)
        n_text, prefix = text.shape[1], y.shape[1]
        for idx in range(MAX_STEPS):
            audio = self.ar_audio_position(self.ar_audio_embedding(y))
            logits = self._last_logits(torch.cat((text, audio), dim=1), n_text)
            if idx < EARLY_STEPS:
                logits = logits[:, :-1]
            token = _sample(logits, y, top_k, top_p, temperature, penalty)
            y = torch.cat((y, token), dim=1)
            stop = (early_stop_num != -1 and y.shape[1] - prefix > early_stop_num) or idx == MAX_STEPS - 1
            eos = bool(torch.argmax(logits, dim=-1)[0] == self.EOS or token[0, 0] == self.EOS)
            yield y, idx, stop or eos, eos
            if stop or eos:
                return

    def _last_logits(self, xy: torch.Tensor, n_text: int, padding: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the last row; text rows see the text, audio rows the text and the audio up to themselves; no
        row sees the first `padding[b]` columns of its batch row b."""
        length = xy.shape[1]
        rows, columns = torch.arange(length)[:, None], torch.arange(length)[None, :]
        masked = (columns >= n_text) & ((rows < n_text) | (columns > rows))  # True = not attended
        pad = None if padding is None else (torch.arange(length)[None, :] < padding[:, None]).to(xy.device)
        return self.ar_predict_layer(self.h(xy, mask=masked.to(xy.device), src_key_padding_mask=pad)[:, -1])


def _sample(logits, previous, top_k, top_p, temperature, penalty) -> torch.Tensor:
    """Upstream's order: penalty (gather/scatter in place), top-p, temperature, top-k, softmax, exponential race."""
    if penalty != 1.0:
        score = torch.gather(logits, 1, previous.long())
        logits.scatter_(1, previous.long(), torch.where(score < 0, score * penalty, score / penalty))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    logits = logits / max(temperature, 1e-5)
    pivot = torch.topk(logits, min(top_k, logits.size(-1)))[0][:, -1:]
    probs = F.softmax(torch.where(logits < pivot, -float("inf"), logits), dim=-1)
    return torch.argmax(probs / torch.empty_like(probs).exponential_(1), dim=-1, keepdim=True).int()  # as upstream


def build_t2s(*, seed: int = 0, **sizes: int) -> T2SModel:
    """A stand-in T2S on the CPU in float32, eval mode, weights drawn from `seed` (logits of order 1-10, so that
    top-k, penalties and temperature all change the draw)."""
    torch.manual_seed(seed)
    model = T2SModel(**sizes)
    with torch.no_grad():
        model.ar_predict_layer.weight.mul_(8.0)
    return model.eval()


def load_t2s_checkpoint(source: str | os.PathLike | Mapping[str, Any]) -> T2SModel:
    """Upstream's T2S checkpoint (a `.ckpt` path or its loaded dict: `config["model"]` with hidden_dim, head,
    n_layer, vocab_size, phoneme_vocab_size, EOS; `weight` with the decoder's tensors under `model.`) as a
    `T2SModel` on the CPU in float32, eval mode. Move it with `.to(device, dtype)`."""
    checkpoint = source if isinstance(source, Mapping) else torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping) or not {"config", "weight"} <= checkpoint.keys():
        raise ValueError(f"source: a GPT-SoVITS T2S checkpoint has 'config' and 'weight'; {source!r} has "
                         f"{sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__}")
    sizes = checkpoint["config"].get("model", {})
    needed = ("hidden_dim", "embedding_dim", "head", "n_layer", "vocab_size", "phoneme_vocab_size", "EOS")
    missing = [name for name in needed if name not in sizes]
    if missing or sizes["embedding_dim"] != sizes["hidden_dim"]:
        raise ValueError(f"source: config['model'] needs {', '.join(needed)} with embedding_dim == hidden_dim; "
                         f"missing {missing}, got {({k: sizes.get(k) for k in needed})}")
    model = T2SModel(dim=sizes["hidden_dim"], heads=sizes["head"], layers=sizes["n_layer"], vocab=sizes["vocab_size"],
                     phones=sizes["phoneme_vocab_size"])
    model.EOS = int(sizes["EOS"])
    state = {key[len("model."):]: value for key, value in checkpoint["weight"].items() if key.startswith("model.")}
    missing = [key for key in model.state_dict() if key not in state]
    if missing:
        raise ValueError(f"source: the checkpoint's weight lacks {len(missing)} of the decoder's tensors, e.g. "
                         f"model.{missing[0]}")
    model.load_state_dict({key: state[key] for key in model.state_dict()})
    return model.eval()
