"""`optimize_sovits`: GPT-SoVITS v1/v2/v2Pro/v2ProPlus's `SynthesizerTrn.decode` with its stages captured.

Upstream's `decode` is launch-bound (~35 ms on an H100 whether it decodes 25 or 250 tokens): a reference encoder, a
relative-attention text encoder, a coupling flow and the HiFi-GAN decoder, each hundreds of small launches from
Python. Here each stage is a replayed CUDA graph:
* reference embedding `ge` (`ref_enc`, plus `sv_emb` and PReLU for v2Pro, averaged over several references): one
  graph per reference shape, exact (a service reuses its voices' references, so these shapes repeat);
* text encoder: one graph per (tokens, phones) bucket. Code features and phones are padded up to the bucket; the
  masks are built inside the graph from the true lengths, so every real frame computes upstream's function: attention
  gives a padded key the score -1e4 (weight exactly 0) and every convolution reads `x * mask` (zeros past the end, as
  the unpadded call's zero padding);
* flow: one graph per frame bucket. The noise is drawn by the same `randn` call as upstream's `randn_like(m_p)`
  (shape, dtype, device, order) and padded outside the graph; speed != 1 interpolates the encoder output between the
  two graphs exactly as upstream does;
* decoder `dec`: `optimize_vocoder`'s windows (the decoder has no masks: padding would change the last samples).
Numerics differ from upstream's only where a kernel sees a longer (padded) axis and reduces in another order.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import OptimizeConfig
from ..vocoder import OptimizedVocoder, optimize_vocoder
from .accelerator import HANDLE, GraphAccelerator, install, resolve_config, uninstall
from .rng import RngState

logger = logging.getLogger(__name__)

PARTS = ("decode", "dec", "enc_p", "flow", "quantizer", "ref_enc", "version", "semantic_frame_rate")
SMALLEST = {"tokens": 32, "phones": 16, "frames": 64}  # smallest bucket per padded axis
LARGEST_TOKENS = 4096  # longer decodes (upstream concatenates a request's sentences) run upstream's own path


def bucket(n: int, smallest: int) -> int:
    """The smallest length >= n on the grid smallest * 2**(k/2), each rounded up to a multiple of 8 (two buckets per
    octave: at most ~41% padding)."""
    k = 0
    while (size := 8 * math.ceil(smallest * 2 ** (k / 2) / 8)) < n:
        k += 1
    return size


def _reference(vits: nn.Module, listed: bool, count: int, *tensors: torch.Tensor) -> torch.Tensor:
    """`ge` as upstream's decode computes it from `count` references (then their v2Pro speaker embeddings)."""
    ges = []
    for i, refer in enumerate(tensors[:count]):
        mask = torch.ones(1, 1, refer.size(2), dtype=refer.dtype, device=refer.device)  # upstream: the full length
        spec = refer if vits.version == "v1" else refer[:, :vits.ref_enc.in_dim]
        ge = vits.ref_enc(spec * mask, mask)
        if vits.is_v2pro:
            ge += vits.sv_emb(tensors[count + i]).unsqueeze(-1)
            ge = vits.prelu(ge)
        ges.append(ge)
    return torch.stack(ges, 0).mean(0) if listed else ges[0]


def _features(vits: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Code features at the encoder's frame rate (B, ssl, frames), as upstream computes them. Eager, outside the
    graphs: upstream's quantizer makes a tensor from a Python number, a host-to-device copy no graph can capture."""
    quantized = vits.quantizer.decode(codes)
    if vits.semantic_frame_rate == "25hz":
        quantized = F.interpolate(quantized, size=int(quantized.shape[-1] * 2), mode="nearest")
    return quantized


def _encode(vits: nn.Module, features: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor,
            ge: torch.Tensor) -> torch.Tensor:
    """The text encoder's output before the speed change (B, hidden, frames); lengths = [frames, phones, ...]."""
    ge_text = vits.ge_to512(ge.transpose(2, 1)).transpose(2, 1) if vits.is_v2pro else ge
    return vits.enc_p(features, lengths[0:1], text, lengths[1:2], ge_text)[4]


def _flow(vits: nn.Module, noise_scale: float, y: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor,
          ge: torch.Tensor) -> torch.Tensor:
    """Prior, sample and reverse flow on (B, hidden, frames): upstream's z * y_mask; lengths[2] = frames."""
    mask = (torch.arange(y.size(-1), device=y.device)[None] < lengths[2:3, None]).unsqueeze(1).to(y.dtype)
    m, logs = torch.split(vits.enc_p.proj(y) * mask, vits.enc_p.out_channels, dim=1)
    z_p = m + noise * torch.exp(logs) * noise_scale
    return vits.flow(z_p, mask, g=ge, reverse=True) * mask


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.pad(x, (0, size - x.size(-1)))


class OptimizedSoVITS(GraphAccelerator):
    """What `optimize_sovits` installed on one `SynthesizerTrn`: its `decode`, counters, and the runtime switch."""

    name = "optimize_sovits"
    methods = ("decode",)

    def __init__(self, vits: nn.Module, config: OptimizeConfig) -> None:
        super().__init__(vits, config, ("calls", "eager"))
        self.vits = vits

    def decode(self, codes: torch.Tensor, text: torch.Tensor, refer: Any, noise_scale: float = 0.5, speed: float = 1,
               sv_emb: Any = None) -> torch.Tensor:
        """Upstream's signature and result: audio (1, 1, samples) from codes (1, 1, tokens) and phones (1, phones)."""
        self.counters["calls"] += 1
        args = (codes, text, refer, noise_scale, speed, sv_emb)
        reason = self._ineligible(*args)
        if reason or not self.active:
            if reason:
                logger.debug("optimize_sovits: upstream's decode: %s", reason)
            self.counters["eager"] += 1
            return self.original["decode"](*args)
        rng = RngState(self.device)
        try:
            with torch.no_grad():
                return self._decode(*args)
        except Exception as exc:
            rng.restore()  # upstream then draws the noise this call drew
            return self.serve_upstream(exc, lambda: self.original["decode"](*args))

    def _ineligible(self, codes: Any, text: Any, refer: Any, noise_scale: Any, speed: Any, sv_emb: Any) -> str | None:
        """Why a call goes to upstream's own decode (an input it would reject, or one outside the buckets)."""
        refs = refer if isinstance(refer, list) else [refer]
        if not all(isinstance(t, torch.Tensor) and t.device == self.device for t in (codes, text, *refs)):
            return f"codes, text and refer are not all tensors on {self.device}"
        if codes.dim() != 3 or codes.shape[:2] != (1, 1) or text.dim() != 2 or text.size(0) != 1:
            return f"codes {tuple(codes.shape)} / text {tuple(text.shape)}: expected (1, 1, tokens) / (1, phones)"
        if not refs or any(r.dim() != 3 or r.size(0) != 1 for r in refs):
            return "refer: expected a (1, bins, frames) spectrogram or a non-empty list of them"
        if self.vits.is_v2pro:
            speakers = sv_emb if isinstance(refer, list) else [sv_emb]
            if not isinstance(speakers, (list, tuple)) or len(speakers) < len(refs) or not all(
                    isinstance(t, torch.Tensor) and t.device == self.device for t in speakers[:len(refs)]):
                return f"v2Pro needs a speaker embedding on {self.device} for each of the {len(refs)} references"
        if not 0 < codes.size(-1) <= LARGEST_TOKENS or text.size(-1) == 0:
            return f"{codes.size(-1)} tokens, {text.size(-1)} phones: outside 1..{LARGEST_TOKENS} tokens, >= 1 phone"
        if not isinstance(noise_scale, numbers.Real) or not isinstance(speed, numbers.Real) or speed <= 0:
            return f"noise_scale={noise_scale!r}, speed={speed!r}: expected real numbers, speed > 0"
        return None

    def _decode(self, codes: torch.Tensor, text: torch.Tensor, refer: Any, noise_scale: float, speed: float,
                sv_emb: Any) -> torch.Tensor:
        vits = self.vits
        listed = isinstance(refer, list)
        refs = refer if listed else [refer]
        speakers = ([sv_emb[i] for i in range(len(refs))] if listed else [sv_emb]) if vits.is_v2pro else []
        inputs = (*refs, *speakers)
        ge = self.run_graph(("ge", listed, *((t.shape, t.dtype) for t in inputs)),
                       functools.partial(_reference, vits, listed, len(refs)), inputs,
                       f"reference embedding of {len(refs)} x {refs[0].size(-1)} frames")
        features = _features(vits, codes)
        tokens, frames, phones = codes.size(-1), features.size(-1), text.size(-1)
        out = frames if speed == 1 else int(frames / speed) + 1
        lengths = torch.tensor([frames, phones, out], device=self.device)
        padded = (bucket(tokens, SMALLEST["tokens"]) * frames // tokens, bucket(phones, SMALLEST["phones"]))
        y = self.run_graph(("enc", *padded, ge.shape, ge.dtype), functools.partial(_encode, vits),
                      (_pad(features, padded[0]), _pad(text, padded[1]), lengths, ge),
                      f"text encoder at {padded[0]} frames x {padded[1]} phones")[..., :frames]
        if speed != 1:
            y = F.interpolate(y.contiguous(), size=out, mode="linear")
        noise = torch.randn((1, vits.enc_p.out_channels, out), dtype=y.dtype, device=self.device)
        size = bucket(out, SMALLEST["frames"])
        z = self.run_graph(("flow", size, float(noise_scale), ge.shape, ge.dtype),
                      functools.partial(_flow, vits, float(noise_scale)),
                      (_pad(y, size), lengths, _pad(noise, size), ge), f"flow at {size} frames")
        return vits.dec(z[..., :out].contiguous(), g=ge)


def optimize_sovits(vits_model: nn.Module, config: OptimizeConfig | None = None, **options: Any) -> nn.Module:
    """Optimize a v1/v2/v2Pro/v2ProPlus `SynthesizerTrn` in place: `decode` keeps its signature and result and runs its
    stages as captured graphs; the decoder `dec` becomes an `OptimizedVocoder`. The handle (`OptimizedSoVITS`:
    optimization_stats, switch) is `vits_model.tts_compile`. Returns `vits_model`."""
    config = resolve_config(config, options)
    missing = [name for name in PARTS if not hasattr(vits_model, name)]
    if missing or not isinstance(vits_model.dec, nn.Module):
        raise TypeError(f"vits_model: expected a GPT-SoVITS SynthesizerTrn ({', '.join(PARTS)}); "
                        f"{type(vits_model).__name__} lacks {', '.join(missing) or 'a dec module'}")
    start = time.perf_counter()
    if not isinstance(vits_model.dec, OptimizedVocoder):
        vits_model.dec = optimize_vocoder(vits_model.dec, config=config,
                                          example_kwargs=_conditioning_example(vits_model.dec))
    if not isinstance(getattr(vits_model, HANDLE, None), OptimizedSoVITS):
        install(OptimizedSoVITS(vits_model, config), vits_model)
        logger.info("optimize_sovits: %s %s (%s) ready in %.2f s; shapes are captured on first sight",
                    type(vits_model).__name__, vits_model.version, config.compile_mode, time.perf_counter() - start)
    return vits_model


def restore_sovits(vits_model: nn.Module) -> nn.Module:
    """Undo `optimize_sovits`: upstream's own `decode` and decoder again."""
    if isinstance(getattr(vits_model, "dec", None), OptimizedVocoder):
        vits_model.dec = vits_model.dec.module
    return uninstall(vits_model, OptimizedSoVITS)


def _conditioning_example(dec: nn.Module) -> dict[str, Any]:
    """Warm-up conditioning for the decoder: g of shape (1, gin_channels, 1) when it has a `cond` convolution."""
    cond = getattr(dec, "cond", None)
    if not isinstance(cond, nn.Conv1d):
        return {}
    weight = cond.weight
    return {"g": torch.zeros(1, cond.in_channels, 1, device=weight.device, dtype=weight.dtype)}
