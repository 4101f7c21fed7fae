"""The engine's T2S sampling: upstream's rule with every parameter per row, and random numbers that depend on a
row's own seed and step only.

Upstream samples a batch with one set of parameters and one draw of torch's global generator, so a row's tokens
depend on what else is in the batch. Here each row has its own top_k, top_p, temperature and repetition penalty
(device tensors: one captured step serves any mix), and its exponential race noise is a counter-based hash of
(row seed, step, column): the same distribution as upstream's `exponential_` draw, not the same numbers, and a
request decodes the same tokens alone or amid any others (batch invariance). Integer arithmetic only, so the
numbers are the same on every device.

Upstream's order and arithmetic are kept (docs: gpt-sovits-upstream.md 2.4-2.5): the repetition penalty on the
columns seen so far (`score < 0 ? score * p : score / p`), top-p where < 1, division by max(temperature, 1e-5),
top-k, softmax in the model dtype, `argmax(probs / q)`; EOS cannot be sampled in a row's first `EARLY_STEPS` steps;
a row stops when the sample or the penalised argmax is EOS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..gpt_sovits.t2s import EARLY_STEPS

_MASK = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x < 2**32 held in int64, without overflowing it."""
    return (x * (c & 0xFFFF) + ((x * (c >> 16)) & 0xFFFF) * 65536) & _MASK


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A full-avalanche 32-bit integer hash (Wellons' lowbias32) of x < 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_exponential(seed: torch.Tensor, step: torch.Tensor, columns: int) -> torch.Tensor:
    """Exponential(1) noise (rows, columns), float32: element (r, c) a function of (seed[r], step[r], c) alone."""
    row = _hash32(_hash32(_hash32(seed & _MASK) ^ ((seed >> 32) & _MASK)) ^ (step & _MASK))
    column = torch.arange(columns, device=seed.device, dtype=torch.int64)
    bits = _hash32(_hash32(row[:, None] ^ column[None]) ^ row[:, None])
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1), 24 exact bits
    return -torch.log(uniform)


def row_seed(seed: int, index: int) -> int:
    """The seed of a request's `index`-th row (segment), from the request's seed: a 62-bit integer."""
    mixed = _hash32(torch.tensor([seed & _MASK, (seed >> 32) & _MASK, index & _MASK]))
    return int(mixed[0]) << 30 ^ int(mixed[1]) << 15 ^ int(mixed[2])


def sample_rows(logits: torch.Tensor, seen: torch.Tensor, q: torch.Tensor, step: torch.Tensor, top_k: torch.Tensor,
                top_p: torch.Tensor, temperature: torch.Tensor, penalty: torch.Tensor, eos: int,
                nucleus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(token (rows,), stop (rows,)) from logits (rows, vocab) in the model dtype; seen (rows, vocab) the columns of
    each row's prompt and tokens so far; q the rows' noise; per-row parameters as (rows,) tensors. `nucleus` False
    skips top-p, which changes nothing for rows whose top_p is 1 (a step without such rows saves two passes)."""
    dtype = logits.dtype
    early = (step < EARLY_STEPS)[:, None] & (torch.arange(logits.shape[1], device=logits.device) == eos)[None]
    logits = logits.masked_fill(early, -float("inf"))
    p = penalty[:, None]
    penalised = torch.where(seen, torch.where(logits < 0, logits.float() * p, logits.float() / p).to(dtype), logits)
    scores = penalised
    if nucleus:
        ordered, order = torch.sort(penalised, dim=-1, descending=True)
        drop = (torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > top_p[:, None]) & (top_p < 1.0)[:, None]
        drop[:, 0] = False
        scores = penalised.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    scores = (scores.float() / temperature.clamp(min=1e-5)[:, None]).to(dtype)
    k = top_k.clamp(1, scores.shape[1])[:, None] - 1
    pivot = torch.sort(scores, dim=-1, descending=True)[0].gather(1, k)
    probs = F.softmax(torch.where(scores < pivot, -float("inf"), scores), dim=-1)
    token = torch.argmax(probs / q.to(dtype), dim=-1)
    stop = (token == eos) | (torch.argmax(penalised, dim=-1) == eos)
    return token, stop
