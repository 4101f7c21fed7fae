"""Triton kernels for one T2S decode step: GPT-SoVITS's post-norm transformer, a few rows, five launches a layer.

At batch 1 a step is latency-bound: cuBLAS, SDPA and the layer norms cost ~14 launches per layer, each a few
microseconds of mostly idle GPU (H100 profile, benchmarks/results/2026-11-25-h100-t2s-profile.txt). Here a layer is

    qkv     [LN2 of the previous layer's sum] -> x @ Wqkv^T + b, K and V also written into the caches at `pos`
    attend  softmax(q K^T / sqrt(hd)) V over cache columns start[row]..pos, one program per (row, head)
    out     attn @ Wo^T + bo + x                       (the pre-LN1 sum)
    ffn1    LN1 -> h;  relu(h @ W1^T + b1)             (program 0 also stores h: the residual of ffn2)
    ffn2    f @ W2^T + b2 + h                          (the pre-LN2 sum, normalised by its consumer)

A layer norm is recomputed by every program of the launch that consumes it (a row is 512 values), so it costs no
launch; the last one runs in the logits projection. With one row a program reduces its weight tile against the row
on the CUDA cores; with `DOT_ROWS` rows or more (a batch) it multiplies the tile with all rows at once on the tensor
cores (`tl.dot` over 16 padded rows). Products accumulate in float32 and round once to the model dtype; the order of
additions differs from cuBLAS's, so results agree with the torch reference to rounding.

Every launch is a programmatic dependent launch (`PDL`, Hopper and later): it lets the next launch start at once, and
loads its read-only weights before it waits for the previous launch to finish (`gdc_wait`), so a layer's weight
loads overlap the launch before it. Everything a launch reads from an earlier launch, and every store, comes after
its wait, so the order of results is the order of launches.

Rows and caches: step row r lives in cache row slot[r] (so rows can join and leave a running batch without moving
any cache), writes column pos[r] and attends columns start[r]..pos[r] (a left-padded batch shares one pos; an
engine's rows each have their own). The tensor-core form takes any number of rows in blocks of `DOT_BLOCK_M`, each
row's arithmetic the same whatever the other rows are (`invariant` makes one row take it too: batch invariance).

Assumptions (checked by `decode_step_triton`): at most ROWS rows for the CUDA-core form, contiguous weights of a
post-norm layer, caches (cache rows, heads, capacity, head_dim) per layer, `pos`, `start` and `slot` one int64 per
row.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

ROWS = 16  # most rows of the CUDA-core form (each program loops over them: its weight tile is loaded once)
# Tiles from a sweep on an H100 (docs/lab-log.md): 388 us per 24-layer step at batch 1
ELEMENTS = 4096  # weight elements per program: BLOCK_N = ELEMENTS // K output columns (8 for K = 512)
NUM_WARPS = 4
BLOCK_T = 512  # cache columns per attention iteration (one or two for a TTS segment)
ATTENTION_WARPS = 4  # with dependent launches (H200): 278 vs 285 us per step at 1 row, 480 vs 495 at 8
PDL = True  # programmatic dependent launches on Hopper and later (a switch for measuring without them)
DOT_ROWS = 2  # rows from which the linear launches use `tl.dot`
DOT_BLOCK_M = 16  # rows of a `tl.dot` tile (its smallest size); more rows take more row blocks
# The `tl.dot` tiles from the H200 sweep at 8 rows (docs/lab-log.md): 640 us per
# 24-layer step; 32 output columns 764 us, 512-long chunks 667 us
DOT_BLOCK_N = 16  # output columns per program of the `tl.dot` form
DOT_BLOCK_K = 2048  # reduction chunk of the `tl.dot` form without a layer norm (with one: the whole row)


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """With programmatic dependent launch: let the next launch start, then wait until the previous one is done."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


@triton.jit
def _linear_kernel(x_ptr, w_ptr, b_ptr, out_ptr, res_ptr, norm_w_ptr, norm_b_ptr, normed_ptr, k_ptr, v_ptr, pos_ptr,
                   slot_ptr, n, eps, heads, capacity, K: tl.constexpr, ROWS: tl.constexpr,
                   NORM: tl.constexpr, BIAS: tl.constexpr, RELU: tl.constexpr, RESIDUAL: tl.constexpr,
                   QKV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   PDL: tl.constexpr):
    """out (ROWS, n) = [LN](x) @ W^T [+ b] [relu] [+ res]; with QKV the K and V thirds also go into the caches.
    A program holds its whole [BLOCK_N, K] weight tile (every load in flight at once: at batch 1 the time is load
    latency, not bandwidth) and reuses it for every row."""
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    col_mask, k_mask = rn < n, rk < K
    w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
    if BIAS:
        bias = tl.load(b_ptr + rn, mask=col_mask, other=0.0).to(tl.float32)
    if NORM:
        gamma = tl.load(norm_w_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)
        beta = tl.load(norm_b_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)
    wait_for_previous(PDL)
    w = w.to(tl.float32)  # products of 16-bit values are exact in float32
    for m in tl.static_range(ROWS):
        x = tl.load(x_ptr + m * K + rk, mask=k_mask, other=0.0)
        if NORM:  # torch's layer_norm formula in float32, rounded to the model dtype
            centred = tl.where(k_mask, x.to(tl.float32) - tl.sum(x.to(tl.float32), 0) / K, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 0) / K + eps)
            x = (centred * rstd * gamma + beta).to(w_ptr.dtype.element_ty)
            if pid == 0:
                tl.store(normed_ptr + m * K + rk, x, mask=k_mask)
        acc = tl.sum(w * x.to(tl.float32)[None, :], 1)
        if BIAS:
            acc += bias
        if RELU:
            acc = tl.maximum(acc, 0.0)
        if RESIDUAL:
            acc += tl.load(res_ptr + m * n + rn, mask=col_mask, other=0.0).to(tl.float32)
        y = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + m * n + rn, y, mask=col_mask)
        if QKV:  # columns [dim, 2 dim) are K, [2 dim, 3 dim) V, each stored at cache[slot, head, pos, d]
            dim, slot, pos = n // 3, tl.load(slot_ptr + m), tl.load(pos_ptr + m)
            _cache_store(k_ptr, y, slot, rn - dim, dim, pos, heads, capacity, col_mask, HEAD_DIM)
            _cache_store(v_ptr, y, slot, rn - 2 * dim, dim, pos, heads, capacity, col_mask, HEAD_DIM)


@triton.jit
def _linear_rows_kernel(x_ptr, w_ptr, b_ptr, out_ptr, res_ptr, norm_w_ptr, norm_b_ptr, normed_ptr, k_ptr, v_ptr,
                        pos_ptr, slot_ptr, rows, n, eps, heads, capacity, K: tl.constexpr, NORM: tl.constexpr,
                        BIAS: tl.constexpr, RELU: tl.constexpr, RESIDUAL: tl.constexpr, QKV: tl.constexpr,
                        HEAD_DIM: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """`_linear_kernel`'s function for a block of BLOCK_M rows (program axis 1) at once: a [BLOCK_N, K] weight tile
    times the [BLOCK_M, K] input on the tensor cores (float32 accumulation; `IEEE`: float32 inputs multiplied
    exactly, not as TF32). With NORM the whole row is one chunk (K <= BLOCK_K), normalised in registers."""
    pid = tl.program_id(0)
    dtype = w_ptr.dtype.element_ty
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask, col_mask = rm < rows, rn < n
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in tl.static_range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_mask = rk < K
        if PDL:  # the weights first: the first chunk's are in flight while the previous launch finishes
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
            if k0 == 0:
                wait_for_previous(PDL)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        if NORM:  # torch's layer_norm formula in float32, rounded to the model dtype, as `_linear_kernel`
            x = x.to(tl.float32)
            centred = tl.where(k_mask[None, :], x - (tl.sum(x, 1) / K)[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / K + eps)
            gamma = tl.load(norm_w_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)
            beta = tl.load(norm_b_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)
            x = (centred * rstd[:, None] * gamma[None, :] + beta[None, :]).to(dtype)
            if pid == 0:
                tl.store(normed_ptr + rm[:, None] * K + rk[None, :], x, mask=row_mask[:, None] & k_mask[None, :])
        if not PDL:  # plain launches: weights after the input (H200, 8 rows: weights first made the FFN's
            # second launch 47.6 instead of ~5 us; this order ran the step in 640 us)
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    if BIAS:
        acc += tl.load(b_ptr + rn, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    mask = row_mask[:, None] & col_mask[None, :]
    if RESIDUAL:
        acc += tl.load(res_ptr + rm[:, None] * n + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    y = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rm[:, None] * n + rn[None, :], y, mask=mask)
    if QKV:
        dim = n // 3
        slot = tl.load(slot_ptr + rm, mask=row_mask, other=0)[:, None]
        pos = tl.load(pos_ptr + rm, mask=row_mask, other=0)[:, None]
        _cache_store(k_ptr, y, slot, (rn - dim)[None, :], dim, pos, heads, capacity, mask, HEAD_DIM)
        _cache_store(v_ptr, y, slot, (rn - 2 * dim)[None, :], dim, pos, heads, capacity, mask, HEAD_DIM)


@triton.jit
def _cache_store(cache_ptr, y, row, col, dim, pos, heads, capacity, mask, HEAD_DIM: tl.constexpr):
    """Columns 0 <= col < dim of y (a K or V third) into cache row `row` (cache: rows, heads, capacity, HEAD_DIM) at
    column `pos`; row, pos and col broadcast against y."""
    offset = ((row * heads + col // HEAD_DIM) * capacity + pos) * HEAD_DIM + col % HEAD_DIM
    tl.store(cache_ptr + offset, y, mask=mask & (col >= 0) & (col < dim))


@triton.jit
def _attend_kernel(qkv_ptr, k_ptr, v_ptr, pos_ptr, start_ptr, slot_ptr, out_ptr, heads, capacity, scale,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, PDL: tl.constexpr):
    """out[row, head] = softmax(q k^T * scale) v over the columns start[row]..pos[row] of cache row slot[row]
    (online softmax, float32)."""
    wait_for_previous(PDL)
    row, head = tl.program_id(0), tl.program_id(1)
    dim = heads * HEAD_DIM
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(qkv_ptr + row * 3 * dim + head * HEAD_DIM + d, mask=d_mask, other=0.0).to(tl.float32) * scale
    length = tl.load(pos_ptr + row) + 1
    base = (tl.load(slot_ptr + row) * heads + head) * capacity * HEAD_DIM
    top = tl.full([1], float("-inf"), tl.float32)  # running max of the scores
    total = tl.zeros([1], dtype=tl.float32)  # running sum of exp(score - top)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    t0 = tl.load(start_ptr + row)
    while t0 < length:  # not `range`: Triton's interpreter cannot take a loaded bound there
        t = t0 + tl.arange(0, BLOCK_T)
        mask = (t < length)[:, None] & d_mask[None, :]
        keys = tl.load(k_ptr + base + t[:, None] * HEAD_DIM + d[None, :], mask=mask, other=0.0).to(tl.float32)
        scores = tl.where(t < length, tl.sum(keys * q[None, :], 1), float("-inf"))
        new_top = tl.maximum(top, tl.max(scores, 0))
        p = tl.exp(scores - new_top)
        rescale = tl.exp(top - new_top)
        values = tl.load(v_ptr + base + t[:, None] * HEAD_DIM + d[None, :], mask=mask, other=0.0).to(tl.float32)
        acc = acc * rescale + tl.sum(p[:, None] * values, 0)
        total = total * rescale + tl.sum(p, 0)
        top = new_top
        t0 += BLOCK_T
    tl.store(out_ptr + row * dim + head * HEAD_DIM + d, (acc / total).to(out_ptr.dtype.element_ty), mask=d_mask)


@functools.cache
def _hopper_or_later(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (9, 0)


def dependent_launch(t: torch.Tensor) -> dict:
    """The launch options of a programmatic dependent launch (`PDL` on, a Hopper or later GPU): the kernel's `PDL`
    constexpr and Triton's `launch_pdl`; plain launches elsewhere (Triton's interpreter among them)."""
    on = PDL and t.is_cuda and _hopper_or_later(t.device)
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


def _linear(x, w, b, out, *, res=None, norm=None, normed=None, qkv=None, relu=False, dot=False) -> None:
    """Launch `_linear_kernel` (one row) or `_linear_rows_kernel` (`dot`, or several rows): out = [LN](x) @ w^T [+ b]
    [relu] [+ res]; norm = (weight, bias, eps); qkv = (k cache, v cache, pos, slot) of the layer."""
    rows, k = x.shape
    n = w.shape[0]
    k_cache, v_cache, pos, slot = qkv if qkv is not None else (out, out, out, out)
    heads = k_cache.shape[1] if qkv is not None else 1
    capacity, head_dim = (k_cache.shape[2], k_cache.shape[3]) if qkv is not None else (1, 1)
    norm_w, norm_b, eps = norm if norm is not None else (x, x, 0.0)
    if dot or rows >= DOT_ROWS:
        whole = max(16, triton.next_power_of_2(k))  # a layer norm needs its whole row in one chunk
        block_k = whole if norm is not None else min(whole, DOT_BLOCK_K)
        _linear_rows_kernel[(triton.cdiv(n, DOT_BLOCK_N), triton.cdiv(rows, DOT_BLOCK_M))](
            x, w, b if b is not None else w, out, res if res is not None else out, norm_w, norm_b,
            normed if normed is not None else out, k_cache, v_cache, pos, slot, rows, n, eps, heads, capacity, K=k,
            NORM=norm is not None, BIAS=b is not None, RELU=relu, RESIDUAL=res is not None, QKV=qkv is not None,
            HEAD_DIM=head_dim, IEEE=w.dtype == torch.float32, BLOCK_M=DOT_BLOCK_M, BLOCK_N=DOT_BLOCK_N,
            BLOCK_K=block_k, num_warps=NUM_WARPS, **dependent_launch(x))
        return
    block_k = triton.next_power_of_2(k)
    block_n = max(1, ELEMENTS // block_k)
    _linear_kernel[(triton.cdiv(n, block_n),)](
        x, w, b if b is not None else w, out, res if res is not None else out, norm_w, norm_b,
        normed if normed is not None else out, k_cache, v_cache, pos, slot, n, eps, heads, capacity, K=k, ROWS=rows,
        NORM=norm is not None, BIAS=b is not None, RELU=relu, RESIDUAL=res is not None, QKV=qkv is not None,
        HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=NUM_WARPS, **dependent_launch(x))


def _attend(qkv, k_cache, v_cache, pos, start, slot, out) -> None:
    heads, capacity, head_dim = k_cache.shape[1:]
    _attend_kernel[(qkv.shape[0], heads)](qkv, k_cache, v_cache, pos, start, slot, out, heads, capacity,
                                          head_dim ** -0.5, HEAD_DIM=head_dim,
                                          BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_T=BLOCK_T,
                                          num_warps=ATTENTION_WARPS, **dependent_launch(qkv))


def decode_step_triton(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, start: torch.Tensor,
                       slot: torch.Tensor, layers: list[tuple], predict_weight: torch.Tensor,
                       predict_bias: torch.Tensor | None, invariant: bool = False) -> torch.Tensor:
    """x (rows, dim): the embedded tokens; k, v (layers, cache rows, heads, capacity, hd); row r writes column pos[r]
    of cache row slot[r] and attends its columns start[r]..pos[r]; `invariant`: the tensor-core form for one row
    too, so a row's arithmetic never depends on how many rows there are.
    `layers`: per layer (qkv w, b, out w, b, norm1 w, b, eps, ffn1 w, b, ffn2 w, b, norm2 w, b, eps).
    Returns the logits (rows, vocab) of the last layer's normalised output."""
    rows, dim = x.shape
    dot = invariant or rows >= DOT_ROWS
    if (not dot and rows > ROWS) or k.shape[0] != len(layers) or any(t.shape != (rows,) for t in (pos, start, slot)):
        raise ValueError(f"decode_step_triton: x {tuple(x.shape)}, caches {tuple(k.shape)}, pos {tuple(pos.shape)}, "
                         f"start {tuple(start.shape)} and slot {tuple(slot.shape)} do not fit (one cache per layer, "
                         f"one position, start and slot per row; at most {ROWS} rows without `invariant`)")
    if not all(t.is_contiguous() for w in layers for t in w if isinstance(t, torch.Tensor)) or \
            not (k.is_contiguous() and v.is_contiguous()):
        raise ValueError("decode_step_triton: weights and caches must be contiguous")
    new = x.new_empty
    qkv, attn, s, h = new(rows, 3 * dim), new(rows, dim), new(rows, dim), new(rows, dim)
    f, normed = new(rows, layers[0][7].shape[0]), new(rows, dim)
    xn, norm = x.contiguous(), None  # the layer's (normalised) input, and the LN that makes it from `s`
    for i, (qkv_w, qkv_b, out_w, out_b, n1_w, n1_b, eps1, w1, b1, w2, b2, n2_w, n2_b, eps2) in enumerate(layers):
        if norm is not None:
            xn = normed
        _linear(s if norm is not None else xn, qkv_w, qkv_b, qkv, norm=norm, normed=xn, qkv=(k[i], v[i], pos, slot),
                dot=dot)
        _attend(qkv, k[i], v[i], pos, start, slot, attn)
        _linear(attn, out_w, out_b, s, res=xn, dot=dot)
        _linear(s, w1, b1, f, norm=(n1_w, n1_b, eps1), normed=h, relu=True, dot=dot)
        _linear(f, w2, b2, s, res=h, dot=dot)
        norm = (n2_w, n2_b, eps2)
    logits = new(rows, predict_weight.shape[0])
    _linear(s, predict_weight, predict_bias, logits, norm=norm, normed=h, dot=dot)
    return logits
