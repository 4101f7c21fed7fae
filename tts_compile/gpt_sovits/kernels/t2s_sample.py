"""One T2S sampling step on the device: GPT-SoVITS's sampling of the next token from the last logits, its EOS flags,
and the next step's input (the token's embedding at its audio position), in plain torch (`sample_reference`) and as
one Triton launch on CUDA (`t2s_sample_triton`; about 25 small torch launches otherwise).

Upstream's order and arithmetic (docs: gpt-sovits-upstream.md 2.4-2.5): repetition penalty on the columns seen so far
(`score < 0 ? score * p : score / p`, from the unpenalised scores), top-p when < 1, division by the temperature,
top-k (columns below the k-th largest value masked, ties kept), softmax, and the race `argmax(probs / q)` against
`q`, the step's `exponential_` draw, which the caller makes with torch (so the random stream is upstream's). The step
stops when the sample or the penalised argmax is EOS. Every elementwise result is rounded to the model dtype where
torch rounds it; reductions run in float32 as torch's do.

Buffers (R rows, mutated in place): the step samples the rows `alive` (n,), row `alive[i]` racing against `q[i]`
(upstream draws one row of noise per unfinished row); other rows are left as they are. For a sampled row r,
`tokens` / `eos` (R, steps) get the sample and its stop flag at `step[r]`; `seen` (R, vocab) marks the sample; `x`
(R, dim) becomes `embedding[token] * x_scale + alpha * pe[prompt + step[r]]`; `position` = prefix + step[r], the
cache column the layers write (the same for every sampled row); `step[r]` advances by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLOCK = 2048  # columns per program: GPT-SoVITS's vocabulary (1025) padded to a power of two
FUSED_DTYPES = (torch.float16, torch.float32)  # GPT-SoVITS's T2S runs in one of these
NUM_WARPS = 8  # H100, fp16, 16 search passes: 2 / 4 / 8 / 16 warps 25.4 / 16.4 / 12.0 / 10.7 us


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one call (Python values: a captured step bakes them in, one graph per set)."""

    top_k: int
    top_p: float
    temperature: float
    repetition_penalty: float


@dataclass(frozen=True)
class Embedding:
    """The audio token embedding and its sine positions: `weight` (vocab, dim), `pe` (1, positions, dim), `alpha`
    (1,) and `x_scale`."""

    weight: torch.Tensor
    pe: torch.Tensor
    alpha: torch.Tensor
    x_scale: float


def probabilities(logits: torch.Tensor, seen: torch.Tensor, s: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalised logits, probabilities) of (rows, vocab) logits: penalty, top-p, temperature, top-k, softmax."""
    if s.repetition_penalty != 1.0:
        p = s.repetition_penalty
        logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
    scores = logits
    if s.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        drop = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > s.top_p
        drop[:, 0] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    scores = scores / max(s.temperature, 1e-5)
    pivot = torch.topk(scores, min(s.top_k, scores.size(-1)))[0][:, -1:]
    return logits, F.softmax(torch.where(scores < pivot, -float("inf"), scores), dim=-1)


def sample_reference(logits: torch.Tensor, seen: torch.Tensor, q: torch.Tensor, alive: torch.Tensor,
                     tokens: torch.Tensor, eos: torch.Tensor, step: torch.Tensor, prefix: torch.Tensor,
                     prompt: torch.Tensor, position: torch.Tensor, x: torch.Tensor, embedding: Embedding, eos_id: int,
                     s: Sampling) -> None:
    """The sampling step in torch ops over the first `q.shape[1]` columns of the rows `alive`."""
    vocab = q.shape[1]
    penalised, probs = probabilities(logits.index_select(0, alive)[:, :vocab], seen.index_select(0, alive)[:, :vocab],
                                     s)
    token = torch.argmax(probs / q, dim=-1)
    stop = token == eos_id
    if vocab > eos_id:
        stop |= torch.argmax(penalised, dim=-1) == eos_id
    steps = step.index_select(0, alive)
    tokens.index_put_((alive, steps), token)
    eos.index_put_((alive, steps), stop)
    seen.index_put_((alive, token), torch.ones_like(stop))
    pe = embedding.pe[0].index_select(0, prompt + steps).to(x.dtype)
    x.index_copy_(0, alive, F.embedding(token, embedding.weight) * embedding.x_scale + embedding.alpha * pe)
    position.copy_(prefix + steps[:1])
    step.index_add_(0, alive, torch.ones_like(steps))


def sample(logits: torch.Tensor, seen: torch.Tensor, q: torch.Tensor, alive: torch.Tensor, tokens: torch.Tensor,
           eos: torch.Tensor, step: torch.Tensor, prefix: torch.Tensor, prompt: torch.Tensor, position: torch.Tensor,
           x: torch.Tensor, embedding: Embedding, eos_id: int, s: Sampling, fused: bool) -> None:
    """The sampling step: one Triton launch when `fused` (CUDA, float16 or float32, top-p 1, vocabulary <= BLOCK),
    torch ops otherwise (bfloat16: the launch's embedding differed from torch's in the last bit on the H100)."""
    args = (logits, seen, q, alive, tokens, eos, step, prefix, prompt, position, x, embedding, eos_id, s)
    if fused and logits.is_cuda and x.dtype in FUSED_DTYPES and s.top_p >= 1.0 and q.shape[1] <= BLOCK:
        from .t2s_sample_triton import sample_triton

        sample_triton(*args)
    else:
        sample_reference(*args)
