"""GPT-SoVITS's T2S transformer (post-norm `nn.TransformerEncoderLayer`s) over a static KV cache, in plain torch,
and one decode step as the `tts_compile::t2s_decode_step` op (Triton kernels on CUDA: `t2s_triton`).

A layer's weights are the 14-tuple (qkv w, b, out w, b, norm1 w, b, eps, ffn1 w, b, ffn2 w, b, norm2 w, b, eps);
caches are (layers, cache rows, heads, capacity, head_dim), written in place at the positions being computed. In a
decode step row r lives in cache row slot[r], writes column pos[r] and attends columns start[r]..pos[r] (a
left-padded batch shares one pos and its row r's first start[r] columns are padding; an engine's rows each have
their own pos and slot).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TENSORS_PER_LAYER = 12  # the 14-tuple without its two eps values


def layer(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor, w: tuple,
          heads: int) -> torch.Tensor:
    """One post-norm layer on x (B, L, d); K/V of the L positions `pos` written into the caches (B, H, cap, hd);
    `visible` (B, 1, L, cap) marks the cache columns each row attends to."""
    batch, length, dim = x.shape
    q, k_new, v_new = F.linear(x, w[0], w[1]).chunk(3, dim=-1)
    k.index_copy_(2, pos, k_new.view(batch, length, heads, -1).transpose(1, 2))
    v.index_copy_(2, pos, v_new.view(batch, length, heads, -1).transpose(1, 2))
    q = q.view(batch, length, heads, -1).transpose(1, 2)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=visible).transpose(1, 2).reshape(batch, length, dim)
    return _after_attention(x, attn, w)


def _after_attention(x: torch.Tensor, attn: torch.Tensor, w: tuple) -> torch.Tensor:
    """The rest of a post-norm layer: out projection, residual and norm, then the ReLU FFN, residual and norm."""
    dim = x.shape[-1]
    x = F.layer_norm(x + F.linear(attn, w[2], w[3]), (dim,), w[4], w[5], w[6])
    return F.layer_norm(x + F.linear(F.relu(F.linear(x, w[7], w[8])), w[9], w[10]), (dim,), w[11], w[12], w[13])


def stack(layers: list[tuple], heads: int, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
          visible: torch.Tensor) -> torch.Tensor:
    """All layers; k, v: (layers, B, H, cap, hd)."""
    for i, w in enumerate(layers):
        x = layer(x, k[i], v[i], pos, visible, w, heads)
    return x


def flatten(layers: list[tuple]) -> tuple[list[torch.Tensor], list[float]]:
    """The op's form of `layers`: the tensors and the eps values, each in layer order."""
    tensors = [t for w in layers for t in (*w[:6], *w[7:13])]
    return tensors, [e for w in layers for e in (w[6], w[13])]


def unflatten(weights: list[torch.Tensor], eps: list[float]) -> list[tuple]:
    """Inverse of `flatten`."""
    groups = [weights[i : i + TENSORS_PER_LAYER] for i in range(0, len(weights), TENSORS_PER_LAYER)]
    return [(*g[:6], eps[2 * i], *g[6:], eps[2 * i + 1]) for i, g in enumerate(groups)]


def prefix_visible(columns: torch.Tensor, positions: torch.Tensor, n_text: int | torch.Tensor) -> torch.Tensor:
    """The prefill's attention mask (positions, columns) over a prefix of `n_text` text positions then prompt tokens:
    every position sees all of the text, a prompt position also the prompt up to itself (upstream's masks)."""
    return (columns < n_text) | ((columns >= n_text) & (columns <= positions) & (positions >= n_text))


def visible_columns(columns: torch.Tensor, pos: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The decode step's attention mask (rows, 1, 1, capacity): columns start[r]..pos[r] of `columns`."""
    return ((columns[None] <= pos[:, None]) & (columns[None] >= start[:, None]))[:, None, None, :]


def row_layer(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor,
              visible: torch.Tensor, w: tuple, heads: int) -> torch.Tensor:
    """One post-norm layer on one position per row, x (rows, 1, d): row r's K/V written at column pos[r] of cache
    row slot[r] (caches: cache rows, H, cap, hd), its attention over that cache row where `visible`."""
    rows, _, dim = x.shape
    q, k_new, v_new = F.linear(x, w[0], w[1]).chunk(3, dim=-1)
    k[slot, :, pos] = k_new.view(rows, heads, -1)
    v[slot, :, pos] = v_new.view(rows, heads, -1)
    q = q.view(rows, 1, heads, -1).transpose(1, 2)
    attn = F.scaled_dot_product_attention(q, k[slot], v[slot], attn_mask=visible).transpose(1, 2).reshape(rows, 1, dim)
    return _after_attention(x, attn, w)


def decode_step_reference(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, start: torch.Tensor,
                          slot: torch.Tensor, layers: list[tuple], predict_weight: torch.Tensor,
                          predict_bias: torch.Tensor | None) -> torch.Tensor:
    """x (rows, dim), row r at cache row slot[r] and column pos[r], attending from column start[r] -> logits (rows,
    vocab); K/V written at each row's column."""
    heads = k.shape[2]
    visible = visible_columns(torch.arange(k.shape[3], device=x.device), pos, start)
    out = x[:, None]
    for i, w in enumerate(layers):
        out = row_layer(out, k[i], v[i], pos, slot, visible, w, heads)
    return F.linear(out[:, 0], predict_weight, predict_bias)


@torch.library.custom_op("tts_compile::t2s_decode_step", mutates_args=("k", "v"))
def t2s_decode_step(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, start: torch.Tensor,
                    slot: torch.Tensor, weights: list[torch.Tensor], eps: list[float], predict_weight: torch.Tensor,
                    predict_bias: torch.Tensor | None, invariant: bool = False) -> torch.Tensor:
    """One decode step through every layer and the logits projection (`flatten` gives weights and eps): Triton
    kernels on CUDA (`invariant`: one arithmetic for every number of rows), `decode_step_reference` elsewhere."""
    return decode_step_reference(x, k, v, pos, start, slot, unflatten(weights, eps), predict_weight, predict_bias)


@t2s_decode_step.register_kernel("cuda")
def _t2s_decode_step_cuda(x, k, v, pos, start, slot, weights, eps, predict_weight, predict_bias, invariant=False):
    from .t2s_triton import decode_step_triton

    return decode_step_triton(x, k, v, pos, start, slot, unflatten(weights, eps), predict_weight, predict_bias,
                              invariant)


@t2s_decode_step.register_fake
def _t2s_decode_step_fake(x, k, v, pos, start, slot, weights, eps, predict_weight, predict_bias, invariant=False):
    return x.new_empty(x.shape[0], predict_weight.shape[0])
