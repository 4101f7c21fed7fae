"""The T2S sampling step (`t2s_sample`) as one Triton program over the whole vocabulary row.

Torch's results are reproduced operation by operation: elementwise results rounded to the model dtype where torch
rounds them, divisions and `exp` as torch computes them (`div_rn` and libdevice's `expf`: Triton's defaults are
approximate), reductions in float32. Top-k needs the k-th largest score: it is found by a binary search over the
scores' order-preserving integer keys (one counting pass per bit of the model dtype, any k), not a sort. Ties go to
the lowest column, as torch's argmax. A program per sampled row; a dependent launch as the layers' (`t2s_triton`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .t2s_sample import BLOCK, NUM_WARPS, Embedding, Sampling
from .t2s_triton import dependent_launch, wait_for_previous


@triton.jit
def _ordered(v, dtype: tl.constexpr, BITS: tl.constexpr):
    """int64 keys ordered as the values v (each exact in `dtype`, BITS wide; +0 and -0 equal)."""
    if BITS == 16:
        bits = v.to(dtype).to(tl.int16, bitcast=True).to(tl.int64)
        magnitude = bits & 0x7FFF
    else:
        bits = v.to(tl.int32, bitcast=True).to(tl.int64)
        magnitude = bits & 0x7FFFFFFF
    return tl.where(v == 0.0, 0, tl.where(bits < 0, -magnitude - 1, bits))


@triton.jit
def _divide(a, b):
    """a / b correctly rounded (b a positive scalar or a tensor like a)."""
    return tl.div_rn(a, tl.zeros_like(a) + b)


@triton.jit
def _sample_kernel(logits_ptr, seen_ptr, q_ptr, alive_ptr, tokens_ptr, eos_ptr, step_ptr, prefix_ptr, prompt_ptr,
                   position_ptr, x_ptr, weight_ptr, pe_ptr, alpha_ptr, n_cols, vocab, max_steps, top_k, penalty,
                   temperature, x_scale, eos_id, DIM: tl.constexpr, PENALTY: tl.constexpr, LIBDEVICE: tl.constexpr,
                   KEY_BITS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Program i samples row alive[i] against noise row i."""
    wait_for_previous(PDL)
    dtype = x_ptr.dtype.element_ty
    i = tl.program_id(0)
    r = tl.load(alive_ptr + i)
    logits_ptr += r * vocab
    seen_ptr += r * vocab
    q_ptr += i * n_cols
    cols = tl.arange(0, BLOCK)
    valid = cols < n_cols
    logits = tl.load(logits_ptr + cols, mask=valid, other=0.0).to(tl.float32)
    if PENALTY:
        seen = tl.load(seen_ptr + cols, mask=valid, other=0) != 0
        scaled = tl.where(logits < 0, logits * penalty, _divide(logits, penalty))
        logits = tl.where(seen, scaled.to(dtype).to(tl.float32), logits)
    penalised_top = tl.argmax(tl.where(valid, logits, -float("inf")), 0, tie_break_left=True)
    scores = _divide(logits, temperature).to(dtype).to(tl.float32)

    # top-k: the largest key with at least k scores >= it is the k-th largest score
    keys = _ordered(scores, dtype, KEY_BITS)
    low = tl.full((), -(1 << (KEY_BITS - 1)), tl.int64)
    high = tl.full((), (1 << (KEY_BITS - 1)) - 1, tl.int64)
    for _ in range(KEY_BITS):
        middle = (low + high + 1) >> 1  # floor: the search closes in KEY_BITS halvings
        enough = tl.sum((valid & (keys >= middle)).to(tl.int32), 0) >= top_k
        low = tl.where(enough, middle, low)
        high = tl.where(enough, high, middle - 1)
    kept = tl.where(valid & (keys >= low), scores, -float("inf"))

    shifted = kept - tl.max(kept, 0)
    if LIBDEVICE:  # compiled: libdevice's correctly rounded expf, as torch's softmax
        exps = libdevice.exp(shifted)
    else:  # the interpreter (numpy) has no libdevice
        exps = tl.exp(shifted)
    probs = _divide(exps, tl.sum(exps, 0)).to(dtype).to(tl.float32)
    q = tl.load(q_ptr + cols, mask=valid, other=1.0).to(tl.float32)
    race = tl.where(valid, _divide(probs, q).to(dtype).to(tl.float32), -1.0)
    token = tl.argmax(race, 0, tie_break_left=True)
    stop = (token == eos_id) | ((n_cols > eos_id) & (penalised_top == eos_id))

    step = tl.load(step_ptr + r)
    tl.store(tokens_ptr + r * max_steps + step, token.to(tl.int64))
    tl.store(eos_ptr + r * max_steps + step, stop)
    tl.store(seen_ptr + token, 1)
    dims = tl.arange(0, DIM)
    row = tl.load(weight_ptr + token * DIM + dims).to(tl.float32)
    pe = tl.load(pe_ptr + (tl.load(prompt_ptr) + step) * DIM + dims).to(dtype).to(tl.float32)
    alpha = tl.load(alpha_ptr).to(tl.float32)
    embedded = (row * x_scale).to(dtype).to(tl.float32) + (alpha * pe).to(dtype).to(tl.float32)
    tl.store(x_ptr + r * DIM + dims, embedded.to(dtype))
    tl.store(position_ptr, tl.load(prefix_ptr) + step)  # the same value from every program
    tl.store(step_ptr + r, step + 1)


def sample_triton(logits: torch.Tensor, seen: torch.Tensor, q: torch.Tensor, alive: torch.Tensor,
                  tokens: torch.Tensor, eos: torch.Tensor, step: torch.Tensor, prefix: torch.Tensor,
                  prompt: torch.Tensor, position: torch.Tensor, x: torch.Tensor, embedding: Embedding, eos_id: int,
                  s: Sampling) -> None:
    """`sample_reference`'s function in one launch, a program per sampled row (top-p 1 only; contiguous buffers; dim
    a power of two)."""
    dim, vocab = x.shape[-1], q.shape[1]
    if s.top_p < 1.0 or vocab > BLOCK or dim & (dim - 1):
        raise ValueError(f"sample_triton: top_p={s.top_p} (needs 1), vocabulary {vocab} (at most {BLOCK}), "
                         f"dim {dim} (a power of two)")
    if not all(t.is_contiguous() for t in (logits, seen, q, tokens, eos, x)):
        raise ValueError("sample_triton: logits, seen, q, tokens, eos and x must be contiguous")
    _sample_kernel[(len(alive),)](logits, seen, q, alive, tokens, eos, step, prefix, prompt, position, x,
                                  embedding.weight, embedding.pe, embedding.alpha, vocab, logits.shape[1],
                                  tokens.shape[1], min(s.top_k, vocab), s.repetition_penalty,
                                  max(s.temperature, 1e-5), embedding.x_scale, eos_id, DIM=dim,
                                  PENALTY=s.repetition_penalty != 1.0, LIBDEVICE=logits.is_cuda,
                                  KEY_BITS=8 * x.element_size(), BLOCK=BLOCK, num_warps=NUM_WARPS,
                                  **dependent_launch(x))
