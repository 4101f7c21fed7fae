"""A small flow-matching mel model with the interface of GPT-SoVITS v3/v4's `CFM` and its DiT estimator.

Written from the published facts (docs: gpt-sovits-upstream.md 3.3), not from upstream's code, so CI can test the
CFM accelerator without a GPT-SoVITS checkout. The structure the accelerator relies on is kept: the estimator's
call signature and return value in inference, the submodules it composes (`time_embed`, `d_embed`, `text_embed`,
`input_embed`, `rotary_embed`, `transformer_blocks`, `norm_out`, `proj_out`), a key mask built from `x_lens` and
passed as a boolean SDPA mask, and the Euler loop of `inference`. Sizes are tiny; weights are random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiTConfig:
    """Sizes of the stand-in (upstream v3/v4: dim 1024, depth 22, heads 16, text 512, mels 100)."""

    dim: int = 64
    depth: int = 2
    heads: int = 4
    mel_dim: int = 20
    text_dim: int = 24
    ff_mult: int = 2


class TimeEmbedding(nn.Module):
    """Sinusoidal features of a (B,) time (scale 1000) through an MLP: (B, dim)."""

    def __init__(self, dim: int, features: int = 32) -> None:
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        half = self.features // 2
        freqs = torch.exp(torch.arange(half, device=time.device) * (-math.log(10000) / (half - 1)))
        angles = 1000 * time.float()[:, None] * freqs[None]
        return self.mlp(torch.cat((angles.sin(), angles.cos()), dim=-1).to(time.dtype))


class TextEmbedding(nn.Module):
    """Conditioning features (B, T, text_dim) plus a fixed position table, through a depthwise-conv block."""

    def __init__(self, text_dim: int, max_positions: int = 4096) -> None:
        super().__init__()
        position = torch.arange(max_positions)[:, None] / torch.pow(10000, torch.arange(text_dim // 2) / text_dim)
        self.register_buffer("table", torch.cat((position.cos(), position.sin()), dim=-1), persistent=False)
        self.dwconv = nn.Conv1d(text_dim, text_dim, 7, padding=3, groups=text_dim)
        self.mix = nn.Linear(text_dim, text_dim)

    def forward(self, text: torch.Tensor, seq_len: int, drop_text: bool = False) -> torch.Tensor:
        text = torch.zeros_like(text) if drop_text else text
        text = text + self.table[:seq_len].to(text.dtype)
        return text + self.mix(F.gelu(self.dwconv(text.transpose(1, 2)).transpose(1, 2)))


class InputEmbedding(nn.Module):
    """Noisy mel, prompt mel and text features projected to the model width, plus a conv position term."""

    def __init__(self, mel_dim: int, text_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * mel_dim + text_dim, dim)
        self.conv = nn.Conv1d(dim, dim, 7, padding=3, groups=4)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text_embed: torch.Tensor,
                drop_audio_cond: bool = False) -> torch.Tensor:
        cond = torch.zeros_like(cond) if drop_audio_cond else cond
        x = self.proj(torch.cat((x, cond, text_embed), dim=-1))
        return x + F.mish(self.conv(x.transpose(1, 2))).transpose(1, 2)


class Rotary(nn.Module):
    """Rotary angles for the first `dim_head` channels of queries and keys: `(freqs (1, T, dim_head), 1.0)`."""

    def __init__(self, dim_head: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, dim_head, 2).float() / dim_head))

    def forward_from_seq_len(self, seq_len: int) -> tuple[torch.Tensor, float]:
        angles = torch.arange(seq_len, device=self.inv_freq.device).float()[:, None] * self.inv_freq[None]
        return torch.stack((angles, angles), dim=-1).flatten(1)[None], 1.0


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    width = freqs.shape[-1]
    head, rest = x[..., :width].float(), x[..., width:]
    pairs = head.unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.cat(((head * freqs.cos() + turned * freqs.sin()).to(x.dtype), rest), dim=-1)


class Block(nn.Module):
    """Adaptive-LayerNorm transformer block: 6-way modulation from the time embedding, attention, GELU-tanh FFN."""

    def __init__(self, dim: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.heads = heads
        self.modulation = nn.Linear(dim, 6 * dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(approximate="tanh"), nn.Linear(ff_mult * dim,
                                                                                                     dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self.modulation(F.silu(t))[:, None].chunk(6, dim=-1)
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale_a) + shift_a
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if rope is not None:
            q, k = _rotate(q, rope[0]), _rotate(k, rope[0])
        q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (q, k, v))
        key_mask = None if mask is None else mask[:, None, None, :].expand(-1, self.heads, q.shape[2], -1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask).transpose(1, 2).flatten(2)
        attn = self.out(attn)
        if mask is not None:
            attn = attn.masked_fill(~mask[..., None], 0.0)
        x = x + gate_a * attn
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale_f) + shift_f
        return x + gate_f * self.ff(h)


class FinalNorm(nn.Module):
    """LayerNorm modulated by the time embedding (scale, shift)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.modulation = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(F.silu(t))[:, None].chunk(2, dim=-1)
        return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


class DiT(nn.Module):
    """The estimator: velocity (B, T, mel_dim) of noisy mel x given prompt mel, text features, time and step size."""

    def __init__(self, config: DiTConfig = DiTConfig()) -> None:
        super().__init__()
        c = config
        self.time_embed, self.d_embed = TimeEmbedding(c.dim), TimeEmbedding(c.dim)
        self.text_embed = TextEmbedding(c.text_dim)
        self.input_embed = InputEmbedding(c.mel_dim, c.text_dim, c.dim)
        self.rotary_embed = Rotary(c.dim // c.heads)
        self.transformer_blocks = nn.ModuleList(Block(c.dim, c.heads, c.ff_mult) for _ in range(c.depth))
        self.long_skip_connection = None
        self.norm_out = FinalNorm(c.dim)
        self.proj_out = nn.Linear(c.dim, c.mel_dim)

    def forward(self, x0: torch.Tensor, cond0: torch.Tensor, x_lens: torch.Tensor, time: torch.Tensor,
                dt_base_bootstrap: torch.Tensor, text0: torch.Tensor, use_grad_ckpt: bool = False,
                drop_audio_cond: bool = False, drop_text: bool = False, infer: bool = False,
                text_cache: torch.Tensor | None = None, dt_cache: torch.Tensor | None = None):
        x, cond, text = x0.transpose(2, 1), cond0.transpose(2, 1), text0.transpose(2, 1)  # [B, T, C]
        seq_len = x.shape[1]
        mask = torch.arange(seq_len, device=x.device)[None] < x_lens.to(x.device)[:, None]  # [B, T]
        dt = dt_cache if infer and dt_cache is not None else self.d_embed(dt_base_bootstrap)
        t = self.time_embed(time) + dt
        text_embed = text_cache if infer and text_cache is not None else self.text_embed(text, seq_len, drop_text)
        h = self.input_embed(x, cond, text_embed, drop_audio_cond)
        rope = self.rotary_embed.forward_from_seq_len(seq_len)
        for block in self.transformer_blocks:
            h = block(h, t, mask=mask, rope=rope)
        out = self.proj_out(self.norm_out(h, t))
        return (out, text_embed, dt) if infer else out


class FlowMatching(nn.Module):
    """Euler sampling of a mel from noise, the prompt region held at zero (upstream's `CFM.inference` contract)."""

    def __init__(self, config: DiTConfig = DiTConfig()) -> None:
        super().__init__()
        self.in_channels = config.mel_dim
        self.estimator = DiT(config)
        self.use_conditioner_cache = True

    @torch.inference_mode()
    def inference(self, mu: torch.Tensor, x_lens: torch.Tensor, prompt: torch.Tensor, n_timesteps: int,
                  temperature: float = 1.0, inference_cfg_rate: float = 0) -> torch.Tensor:
        """mu: [B, T, text_dim], prompt: [B, mel_dim, P] -> mel [B, mel_dim, T]. Classifier-free guidance is
        not modelled (every GPT-SoVITS call site passes inference_cfg_rate=0)."""
        if inference_cfg_rate > 1e-5:
            raise NotImplementedError("FlowMatching: classifier-free guidance is not part of the stand-in")
        batch, frames = mu.shape[0], mu.shape[1]
        x = torch.randn([batch, self.in_channels, frames], device=mu.device, dtype=mu.dtype) * temperature
        p = prompt.shape[-1]
        cond = torch.zeros_like(x)
        cond[..., :p] = prompt[..., :p]
        x[..., :p] = 0
        mu = mu.transpose(2, 1)
        step = 1 / n_timesteps
        d = torch.ones(batch, device=x.device, dtype=mu.dtype) * step
        text_cache = dt_cache = None
        t = 0.0
        for _ in range(n_timesteps):
            time = torch.ones(batch, device=x.device, dtype=mu.dtype) * t
            v, text_emb, dt = self.estimator(x, cond, x_lens, time, d, mu, infer=True, text_cache=text_cache,
                                             dt_cache=dt_cache)
            if self.use_conditioner_cache:
                text_cache, dt_cache = text_emb, dt
            x = x + step * v.transpose(2, 1)
            t = t + step
            x[:, :, :p] = 0
        return x


def build_flow_matching(config: DiTConfig = DiTConfig(), *, seed: int = 0) -> FlowMatching:
    """A stand-in CFM on the CPU in float32, eval mode, weights drawn from `seed` (modulations scaled up so that
    every block changes its input noticeably, as in a trained model)."""
    generator = torch.Generator().manual_seed(seed)
    model = FlowMatching(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 1.0 / math.sqrt(parameter.shape[-1]), generator=generator)
    return model.eval()
