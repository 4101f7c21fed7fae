"""A small VITS synthesizer with the interface of GPT-SoVITS v1/v2/v2Pro/v2ProPlus's `SynthesizerTrn` at inference,
and its v3/v4 sibling (`SynthesizerTrnV3`) that turns the same text encoder's output into CFM conditioning features.

Written from the published facts (VITS, Kim et al. 2021; docs: gpt-sovits-upstream.md 3.1), not from upstream's
code, so CI can test the SoVITS accelerator without a GPT-SoVITS checkout. Kept from upstream: the submodules
`decode` composes (`quantizer.decode`, `enc_p` with its six outputs and speed interpolation, `flow(..., reverse=True)`,
`dec(z, g=ge)`, `ref_enc(spec, mask)`, and for v2Pro `sv_emb`, `prelu`, `ge_to512`; v3/v4: `bridge`, `wns1`), their
masks (attention scores of padded keys filled with -1e4, convolutions reading `x * mask`), `decode`'s order of
operations and noise draw, `decode_streaming`'s cut and sine crossfade (docs: gpt-sovits-upstream.md 3.2) and
`decode_encp`'s frame arithmetic (3.3). Sizes are tiny;
weights are random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...models.hifigan import HiFiGANConfig, HiFiGANGenerator

MASKED_SCORE = -1e4  # attention score of a padded key (upstream's value)


@dataclass(frozen=True)
class VITSConfig:
    """Sizes of the stand-in (upstream: ssl 768, hidden 192, latent 192, spec 1025 of which v2+ read 704,
    gin 512 (v2Pro 1024), MRTE 512, sv 20480, codebook 1024, 4 flows)."""

    ssl_dim: int = 32
    hidden: int = 32
    latent: int = 16
    heads: int = 2
    spec_bins: int = 40
    ref_bins: int = 32
    gin: int = 24
    mrte: int = 24
    sv_dim: int = 48
    codebook: int = 64
    symbols: int = 50
    flows: int = 2
    features: int = 20  # v3/v4: CFM conditioning channels (upstream 512)
    version: str = "v2"


def _mask(lengths: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, size): 1 on each item's first `lengths` frames."""
    return (torch.arange(size, device=lengths.device)[None] < lengths[:, None]).unsqueeze(1).to(dtype)


class Attention(nn.Module):
    """Multi-head attention over (B, C, T) features; `mask` (B, 1, T, S) zero where a key is padding."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Conv1d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, ch, t = x.shape
        split = lambda h: h.view(b, self.heads, ch // self.heads, -1).transpose(2, 3)
        q, k, v = split(self.q(x)), split(self.k(c)), split(self.v(c))
        scores = (q / math.sqrt(ch // self.heads)) @ k.transpose(2, 3)
        weights = F.softmax(scores.masked_fill(mask == 0, MASKED_SCORE), dim=-1)
        return self.o((weights @ v).transpose(2, 3).reshape(b, ch, t))


class FFN(nn.Module):
    """Two kernel-3 convolutions, each reading its input masked (zeros past the end, as unpadded zero padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_1 = nn.Conv1d(channels, 2 * channels, 3, padding=1)
        self.conv_2 = nn.Conv1d(2 * channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv_2(F.relu(self.conv_1(x * mask)) * mask) * mask


class Encoder(nn.Module):
    """Post-norm transformer layers (attention, kernel-3 convolutional FFN), masked like VITS's encoder."""

    def __init__(self, channels: int, heads: int, layers: int = 1) -> None:
        super().__init__()
        self.attn = nn.ModuleList(Attention(channels, heads) for _ in range(layers))
        self.ffn = nn.ModuleList(FFN(channels) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(2 * layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pair = mask.unsqueeze(2) * mask.unsqueeze(-1)
        x = x * mask
        for i, (attn, ffn) in enumerate(zip(self.attn, self.ffn)):
            x = self._norm(2 * i, x + attn(x, x, pair))
            x = self._norm(2 * i + 1, x + ffn(x, mask))
        return x * mask

    def _norm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Layer norm over channels at each frame."""
        return self.norms[i](x.transpose(1, 2)).transpose(1, 2)


class TextEncoder(nn.Module):
    """SSL features + phones -> prior (m, logs); upstream's `enc_p` interface and return value."""

    def __init__(self, c: VITSConfig) -> None:
        super().__init__()
        self.out_channels = c.latent
        self.ssl_proj = nn.Conv1d(c.ssl_dim, c.hidden, 1)
        self.encoder_ssl = Encoder(c.hidden, c.heads)
        self.text_embedding = nn.Embedding(c.symbols, c.hidden)
        self.encoder_text = Encoder(c.hidden, c.heads)
        self.c_pre, self.text_pre = nn.Conv1d(c.hidden, c.mrte, 1), nn.Conv1d(c.hidden, c.mrte, 1)
        self.cross = Attention(c.mrte, c.heads)
        self.c_post = nn.Conv1d(c.mrte, c.hidden, 1)
        self.encoder2 = Encoder(c.hidden, c.heads)
        self.proj = nn.Conv1d(c.hidden, 2 * c.latent, 1)

    def forward(self, y, y_lengths, text, text_lengths, ge, speed=1, result_length=None, overlap_frames=None,
                padding_length=None):
        y_mask = _mask(y_lengths, y.size(2), y.dtype)
        y = self.encoder_ssl(self.ssl_proj(y * y_mask) * y_mask, y_mask)
        text_mask = _mask(text_lengths, text.size(1), y.dtype)
        text = self.encoder_text(self.text_embedding(text).transpose(1, 2) * text_mask, text_mask)
        ssl = self.c_pre(y * y_mask)
        cross = self.cross(ssl * y_mask, self.text_pre(text * text_mask) * text_mask,
                           text_mask.unsqueeze(2) * y_mask.unsqueeze(-1))
        y = self.c_post((cross + ssl + ge) * y_mask) * y_mask
        if padding_length:  # streaming: frames past the real tokens dropped before the last encoder
            y, y_mask = y[:, :, :-padding_length], y_mask[:, :, :-padding_length]
        y = self.encoder2(y, y_mask)
        if result_length is not None:  # streaming: only the last frames go on
            y, y_mask = y[:, :, -result_length:], y_mask[:, :, -result_length:]
        if overlap_frames is not None:  # and their first frames crossfade with the previous chunk's last ones
            n = overlap_frames.shape[-1]
            window = torch.sin(torch.arange(2 * n, device=y.device) * torch.pi / (2 * n))
            y[:, :, :n] = window[:n].view(1, 1, -1) * y[:, :, :n] + window[n:].view(1, 1, -1) * overlap_frames
        y_, y_mask_ = y, y_mask
        if speed != 1:
            y = F.interpolate(y, size=int(y.shape[-1] / speed) + 1, mode="linear")
            y_mask = F.interpolate(y_mask, size=y.shape[-1], mode="nearest")
        m, logs = torch.split(self.proj(y) * y_mask, self.out_channels, dim=1)
        return y, m, logs, y_mask, y_, y_mask_


class Coupling(nn.Module):
    """Mean-only affine coupling: the second half shifted by a masked dilated-conv net of the first half and g,
    then the channels flipped (VITS's ResidualCouplingLayer + Flip)."""

    def __init__(self, c: VITSConfig) -> None:
        super().__init__()
        half = c.latent // 2
        self.pre = nn.Conv1d(half, c.hidden, 1)
        self.convs = nn.ModuleList(nn.Conv1d(c.hidden, c.hidden, 5, dilation=d, padding=2 * d) for d in (1, 2))
        self.cond = nn.Conv1d(c.gin, c.hidden, 1)
        self.post = nn.Conv1d(c.hidden, half, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor, reverse: bool = True) -> torch.Tensor:
        if not reverse:
            raise NotImplementedError("the stand-in flow only runs in reverse (inference)")
        x = torch.flip(x, [1])
        x0, x1 = x.chunk(2, dim=1)
        h = self.pre(x0) * mask
        for conv in self.convs:
            h = (h + torch.tanh(conv(h) + self.cond(g))) * mask
        return torch.cat((x0, (x1 - self.post(h) * mask) * mask), dim=1)


class Flow(nn.Module):
    def __init__(self, c: VITSConfig) -> None:
        super().__init__()
        self.flows = nn.ModuleList(Coupling(c) for _ in range(c.flows))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor, reverse: bool = True) -> torch.Tensor:
        for flow in reversed(self.flows):
            x = flow(x, mask, g, reverse)
        return x


class StyleEncoder(nn.Module):
    """Reference spectrogram (B, bins, T) -> style vector (B, gin, 1): masked convolution, masked mean."""

    def __init__(self, c: VITSConfig) -> None:
        super().__init__()
        self.in_dim = c.ref_bins if c.version != "v1" else c.spec_bins
        self.conv = nn.Conv1d(self.in_dim, c.gin, 5, padding=2)
        self.fc = nn.Linear(c.gin, c.gin)

    def forward(self, spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(spec)) * mask
        return self.fc(h.sum(-1) / mask.sum(-1))[..., None]


def _style(ref_enc: StyleEncoder, refer: torch.Tensor, version: str) -> torch.Tensor:
    """Style vector of one whole reference spectrogram (v2+ read its first `in_dim` bins)."""
    mask = torch.ones(1, 1, refer.size(2), device=refer.device, dtype=refer.dtype)
    return ref_enc((refer if version == "v1" else refer[:, :ref_enc.in_dim]) * mask, mask)


class Codebook(nn.Module):
    """One-level residual quantizer's decode: codes (1, B, T) -> features (B, ssl_dim, T)."""

    def __init__(self, c: VITSConfig) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.empty(c.codebook, c.ssl_dim))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes[0], self.embed).transpose(1, 2)


class VITSSynthesizer(nn.Module):
    """`decode(codes, text, refer, noise_scale, speed, sv_emb)` -> audio (1, 1, frames * hop), as upstream."""

    def __init__(self, c: VITSConfig) -> None:
        super().__init__()
        self.version = c.version
        self.semantic_frame_rate = "25hz"
        self.is_v2pro = c.version in ("v2Pro", "v2ProPlus")
        self.quantizer = Codebook(c)
        self.enc_p = TextEncoder(c)
        self.flow = Flow(c)
        self.ref_enc = StyleEncoder(c)
        self.dec = HiFiGANGenerator(HiFiGANConfig(
            in_channels=c.latent, upsample_rates=(4, 2), upsample_kernel_sizes=(8, 4), upsample_initial_channel=16,
            resblock_kernel_sizes=(3,), resblock_dilations=((1, 3),), gin_channels=c.gin, final_bias=False))
        if self.is_v2pro:
            self.sv_emb = nn.Linear(c.sv_dim, c.gin)
            self.prelu = nn.PReLU(num_parameters=c.gin)
            self.ge_to512 = nn.Linear(c.gin, c.mrte)

    def reference(self, refer: torch.Tensor, sv_emb: torch.Tensor | None) -> torch.Tensor:
        """Style vector of one reference spectrogram (+ the speaker embedding for v2Pro)."""
        ge = _style(self.ref_enc, refer, self.version)
        if self.is_v2pro:
            ge += self.sv_emb(sv_emb).unsqueeze(-1)
            ge = self.prelu(ge)
        return ge

    @torch.no_grad()
    def decode(self, codes, text, refer, noise_scale=0.5, speed=1, sv_emb=None):
        return self._synthesize(codes, text, refer, noise_scale, speed, sv_emb)[0]

    @torch.no_grad()
    def decode_streaming(self, codes, text, refer, noise_scale=0.5, speed=1, sv_emb=None, result_length=None,
                         overlap_frames=None, padding_length=None):
        """`decode` of a stream's tokens so far: (audio of the last `result_length` tokens only, their latent
        frames with the first ones crossfaded with `overlap_frames`, its mask)."""
        return self._synthesize(codes, text, refer, noise_scale, speed, sv_emb, result_length, overlap_frames,
                                padding_length)

    def _synthesize(self, codes, text, refer, noise_scale, speed, sv_emb, result_length=None, overlap_frames=None,
                    padding_length=None):
        if isinstance(refer, list):
            ge = torch.stack([self.reference(r, sv_emb[i] if self.is_v2pro else None)
                              for i, r in enumerate(refer)], 0).mean(0)
        else:
            ge = self.reference(refer, sv_emb)
        y_lengths = torch.tensor([codes.size(2) * 2], device=codes.device)
        text_lengths = torch.tensor([text.size(-1)], device=text.device)
        quantized = self.quantizer.decode(codes)
        quantized = F.interpolate(quantized, size=int(quantized.shape[-1] * 2), mode="nearest")
        ge_text = self.ge_to512(ge.transpose(2, 1)).transpose(2, 1) if self.is_v2pro else ge
        _, m_p, logs_p, y_mask, y_, y_mask_ = self.enc_p(
            quantized, y_lengths, text, text_lengths, ge_text, speed,
            result_length=None if result_length is None else 2 * result_length, overlap_frames=overlap_frames,
            padding_length=None if padding_length is None else 2 * padding_length)
        z_p = m_p + torch.randn_like(m_p) * torch.exp(logs_p) * noise_scale
        z = self.flow(z_p, y_mask, g=ge, reverse=True)
        return self.dec((z * y_mask)[:, :, :], g=ge), y_, y_mask_


class WNEncoder(nn.Module):
    """`wns1`: 1x1 in, gated dilated kernel-5 convolutions conditioned on g with residuals, 1x1 out; every layer's
    output masked to `x_lengths`. Returns (features * mask, mask) as upstream's `Encoder`."""

    def __init__(self, c: VITSConfig, layers: int = 2) -> None:
        super().__init__()
        self.pre, self.proj = nn.Conv1d(c.features, c.hidden, 1), nn.Conv1d(c.hidden, c.features, 1)
        self.convs = nn.ModuleList(nn.Conv1d(c.hidden, 2 * c.hidden, 5, padding=2) for _ in range(layers))
        self.cond = nn.Conv1d(c.gin, 2 * c.hidden * layers, 1)

    def forward(self, x: torch.Tensor, x_lengths: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _mask(x_lengths, x.size(2), x.dtype)
        x = self.pre(x) * mask
        for conv, cond in zip(self.convs, self.cond(g).chunk(len(self.convs), dim=1)):
            tanh, sigmoid = (conv(x) + cond).chunk(2, dim=1)
            x = (x + torch.tanh(tanh) * torch.sigmoid(sigmoid)) * mask
        return self.proj(x) * mask, mask


class V3Synthesizer(nn.Module):
    """`decode_encp(codes, text, refer, ge=None, speed=1)` -> (CFM features (1, features, frames), ge), as upstream's
    v3/v4 `SynthesizerTrnV3`: 2 encoder frames per token, upsampled by 1.875 (v3) or 2 (v4), the WN stack masked to
    3.875 (v3) or 4 (v4) frames per token (divided by speed, plus one, when speed != 1)."""

    def __init__(self, c: VITSConfig) -> None:
        super().__init__()
        self.version = c.version
        self.semantic_frame_rate = "25hz"
        self.quantizer = Codebook(c)
        self.enc_p = TextEncoder(c)
        self.ref_enc = StyleEncoder(c)
        self.bridge = nn.Sequential(nn.Conv1d(c.hidden, c.features, 1), nn.LeakyReLU())
        self.wns1 = WNEncoder(c)

    @torch.no_grad()
    def decode_encp(self, codes, text, refer, ge=None, speed=1):
        if ge is None:
            ge = _style(self.ref_enc, refer, self.version)
        tokens = codes.size(2)
        per_token, upsample = (3.875, 1.875) if self.version == "v3" else (4, 2)
        frames = int(tokens * per_token) if speed == 1 else int(tokens * per_token / speed) + 1
        quantized = F.interpolate(self.quantizer.decode(codes), scale_factor=2, mode="nearest")
        y = self.enc_p(quantized, torch.tensor([2 * tokens], device=codes.device), text,
                       torch.tensor([text.size(-1)], device=text.device), ge, speed)[0]
        fea = F.interpolate(self.bridge(y), scale_factor=upsample, mode="nearest")
        return self.wns1(fea, torch.tensor([frames], device=codes.device), ge)[0], ge


def build_vits(config: VITSConfig = VITSConfig(), *, seed: int = 0) -> VITSSynthesizer | V3Synthesizer:
    """A stand-in synthesizer (v3/v4: its `decode_encp` sibling) on the CPU in float32, eval mode, weights drawn
    from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    model = V3Synthesizer(config) if config.version in ("v3", "v4") else VITSSynthesizer(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.02, generator=generator)
            else:
                parameter.normal_(0.0, 1.0 / math.sqrt(max(parameter[0].numel(), 1)), generator=generator)
    return model.eval()
