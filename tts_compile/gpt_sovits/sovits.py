"""`optimize_sovits`: GPT-SoVITS v1/v2/v2Pro/v2ProPlus's `SynthesizerTrn.decode`, and v3/v4's
`SynthesizerTrnV3.decode_encp`, with their stages captured.

Upstream's `decode` is launch-bound (~35 ms on an H100 whether it decodes 25 or 250 tokens): a reference encoder, a
relative-attention text encoder, a coupling flow and the HiFi-GAN decoder, each hundreds of small launches from
Python. Here each stage is a replayed CUDA graph:
* reference embedding `ge` (`ref_enc`, plus `sv_emb` and PReLU for v2Pro, averaged over several references): one
  graph per reference shape, exact (a service reuses its voices' references, so these shapes repeat);
* text encoder: one graph per (tokens, phones) bucket. Code features and phones are padded up to the bucket; the
  masks are built inside the graph from the true lengths, so every real frame computes upstream's function: attention
  gives a padded key the score -1e4 (weight exactly 0) and every convolution reads `x * mask` (zeros past the end, as
  the unpadded call's zero padding);
* flow and decoder `dec`: one graph per frame bucket. The noise is drawn by the same `randn` call as upstream's
  `randn_like(m_p)` (shape, dtype, device, order; inside `own_draws`, from the thread's generator) and padded
  outside the graph; speed != 1 interpolates the encoder
  output between the two graphs exactly as upstream does. The decoder runs as a `PaddedDecoder`: each convolution's
  input zeroed past its stage's true length, so padding changes no real sample.
`decode_streaming` (a stream's chunk: every token so far encoded, only the last chunk's frames decoded, their first
frames crossfaded with the previous chunk's latent) runs the same graphs: the text encoder's bucket for the tokens
so far, then the chunk's frames cut, crossfaded and stretched as upstream does between the graphs, and the flow and
decoder graph of the chunk's frame bucket.
v3/v4's `decode_encp` (the CFM's conditioning, once for the prompt and once per segment) shares the reference and
text-encoder graphs, then runs bridge, nearest upsampling and the masked WN stack as one graph per frame bucket (the
upsampling keeps upstream's scale factor, so each real frame reads the source frame it reads unpadded).
Numerics differ from upstream's only where a kernel sees a longer (padded) axis and reduces in another order.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.buckets import Ladder
from ..core.config import OptimizeConfig
from ..core.rng import own_generator
from ..core.weights import weights_fingerprint
from .config import PipelineConfig
from .decoder import PaddedDecoder, decoder_problem
from .stage import Stage, attach, detach
from .versions import VERSIONS

logger = logging.getLogger(__name__)

PARTS = ("decode", "dec", "enc_p", "flow", "quantizer", "ref_enc", "version", "semantic_frame_rate")
V3_PARTS = ("decode_encp", "enc_p", "bridge", "wns1", "quantizer", "ref_enc", "version", "semantic_frame_rate")
LARGEST_TOKENS = 4096  # longer decodes (upstream concatenates a request's sentences) run upstream's own path
MIN_SPEED = 0.25  # slower speeds stretch past the largest frame bucket: upstream's own path
# The padded axes: half-octave ladders from the smallest bucket up to what LARGEST_TOKENS (2 code frames per token
# at 25 Hz) and MIN_SPEED allow; at most ~41% padding.
LADDERS = {"tokens": Ladder.half_octaves(32, LARGEST_TOKENS), "phones": Ladder.half_octaves(16, LARGEST_TOKENS),
           "frames": Ladder.half_octaves(64, int(2 * LARGEST_TOKENS / MIN_SPEED) + 1)}


def _reference(vits: nn.Module, listed: bool, count: int, *tensors: torch.Tensor) -> torch.Tensor:
    """`ge` as upstream's decode computes it from `count` references (then their v2Pro speaker embeddings)."""
    ges = []
    for i, refer in enumerate(tensors[:count]):
        mask = torch.ones(1, 1, refer.size(2), dtype=refer.dtype, device=refer.device)  # upstream: the full length
        spec = refer if vits.version == "v1" else refer[:, :vits.ref_enc.in_dim]
        ge = vits.ref_enc(spec * mask, mask)
        if getattr(vits, "is_v2pro", False):
            ge += vits.sv_emb(tensors[count + i]).unsqueeze(-1)
            ge = vits.prelu(ge)
        ges.append(ge)
    return torch.stack(ges, 0).mean(0) if listed else ges[0]


def _features(vits: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Code features at the encoder's frame rate (B, ssl, frames), as upstream computes them. Eager, outside the
    graphs: upstream's quantizer makes a tensor from a Python number, a host-to-device copy no graph can capture and
    one that waits for the stream to drain, so it runs before the graphs are queued."""
    quantized = vits.quantizer.decode(codes)
    if vits.semantic_frame_rate == "25hz":
        quantized = F.interpolate(quantized, size=int(quantized.shape[-1] * 2), mode="nearest")
    return quantized


def _encode(vits: nn.Module, features: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor,
            ge: torch.Tensor) -> torch.Tensor:
    """The text encoder's output before the speed change (B, hidden, frames); lengths = [frames, phones, ...]."""
    ge_text = vits.ge_to512(ge.transpose(2, 1)).transpose(2, 1) if getattr(vits, "is_v2pro", False) else ge
    return vits.enc_p(features, lengths[0:1], text, lengths[1:2], ge_text)[4]


def _flow(vits: nn.Module, noise_scale: float, y: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor,
          ge: torch.Tensor) -> torch.Tensor:
    """Prior, sample and reverse flow on (B, hidden, frames): upstream's z * y_mask; lengths[2] = frames."""
    mask = (torch.arange(y.size(-1), device=y.device)[None] < lengths[2:3, None]).unsqueeze(1).to(y.dtype)
    m, logs = torch.split(vits.enc_p.proj(y) * mask, vits.enc_p.out_channels, dim=1)
    z_p = m + noise * torch.exp(logs) * noise_scale
    return vits.flow(z_p, mask, g=ge, reverse=True) * mask


def _synthesize(vits: nn.Module, decoder: PaddedDecoder, noise_scale: float, y: torch.Tensor, lengths: torch.Tensor,
                noise: torch.Tensor, ge: torch.Tensor) -> torch.Tensor:
    """Flow and decoder: audio (1, 1, samples) of the padded frames; lengths[2:] = the decoder's true lengths."""
    return decoder(_flow(vits, noise_scale, y, lengths, noise, ge), lengths[2:], ge)


def _conditioning(vits: nn.Module, y: torch.Tensor, lengths: torch.Tensor, ge: torch.Tensor) -> torch.Tensor:
    """v3/v4 `decode_encp` after the text encoder: bridge, nearest upsampling at upstream's scale (so each frame reads
    the source frame it reads unpadded), the WN stack masked to lengths[2] frames."""
    fea = F.interpolate(vits.bridge(y), scale_factor=VERSIONS[vits.version].upsample, mode="nearest")
    return vits.wns1(fea, lengths[2:3], ge)[0]


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.pad(x, (0, size - x.size(-1)))


def _stretched(frames: int, speed: float) -> int:
    """Frames after upstream's speed change."""
    return frames if speed == 1 else int(frames / speed) + 1


def _request_problem(device: torch.device, codes: Any, text: Any, speed: Any) -> str | None:
    """Why codes, phones or speed keep a call off the staged path (an input upstream rejects, or one outside the
    buckets)."""
    if not all(isinstance(t, torch.Tensor) and t.device == device for t in (codes, text)):
        return f"codes and text are not both tensors on {device}"
    if codes.dim() != 3 or codes.shape[:2] != (1, 1) or text.dim() != 2 or text.size(0) != 1:
        return f"codes {tuple(codes.shape)} / text {tuple(text.shape)}: expected (1, 1, tokens) / (1, phones)"
    if not 0 < codes.size(-1) <= LARGEST_TOKENS or not 0 < text.size(-1) <= LADDERS["phones"].largest:
        return (f"{codes.size(-1)} tokens, {text.size(-1)} phones: outside 1..{LARGEST_TOKENS} tokens, "
                f"1..{LADDERS['phones'].largest} phones")
    if not isinstance(speed, numbers.Real) or speed < MIN_SPEED:
        return f"speed={speed!r}: the buckets hold speeds >= {MIN_SPEED}"
    return None


def _spectrograms_problem(device: torch.device, refs: list[Any]) -> str | None:
    """Why the reference spectrograms keep a call off the staged path."""
    if not refs or not all(isinstance(r, torch.Tensor) and r.device == device and r.dim() == 3 and r.size(0) == 1
                           for r in refs):
        return f"refer: expected a (1, bins, frames) spectrogram on {device} or a non-empty list of them"
    return None


def _streaming_problem(device: torch.device, vits: nn.Module, codes: torch.Tensor, result_length: Any,
                       overlap_frames: Any, padding_length: Any) -> str | None:
    """Why `decode_streaming`'s own arguments keep a call off the staged path (codes already checked)."""
    if result_length is not None and (not isinstance(result_length, int) or result_length < 0):
        return f"result_length={result_length!r}: expected None or an int >= 0"
    if padding_length:
        return f"padding_length={padding_length!r}: the staged path pads by itself (None or 0)"
    if overlap_frames is None:
        return None
    hidden, tokens = vits.enc_p.proj.in_channels, min(codes.size(-1), result_length or codes.size(-1))
    if not (isinstance(overlap_frames, torch.Tensor) and overlap_frames.device == device and
            overlap_frames.dim() == 3 and overlap_frames.shape[:2] == (1, hidden) and
            0 < overlap_frames.size(-1) <= tokens * (2 if vits.semantic_frame_rate == "25hz" else 1)):
        return f"overlap_frames: expected None or a (1, {hidden}, frames <= the kept frames) tensor on {device}"
    return None


class SoVITSStage(Stage):
    """The stages `decode` (v1-v2ProPlus) and `decode_encp` (v3/v4) share: reference embedding and text encoder as
    graphs over padded buckets."""

    name = "optimize_sovits"
    argument = "vits_model"
    max_graphs = 160  # the engine's warm-up (`Engine.prepare`): ~100 text-encoder and 11 decoder buckets at 1024 tokens
    cudnn_benchmark = True  # the decoder's convolutions: measured in benchmarks/results/2026-11-25-h100-sovits.md
    parts: tuple[str, ...] = ()

    def __init__(self, vits: nn.Module, config: PipelineConfig) -> None:
        super().__init__(vits, config)
        self.vits = vits

    @classmethod
    def lacks(cls, module: nn.Module) -> list[str]:
        return [name for name in cls.parts if not hasattr(module, name)]

    def _reference(self, refs: list[torch.Tensor], speakers: list[torch.Tensor], listed: bool) -> torch.Tensor:
        """`ge` of the references (and their v2Pro speaker embeddings) through the graph of their shapes."""
        inputs = (*refs, *speakers)
        return self.run_graph(("ge", listed, *((t.shape, t.dtype) for t in inputs)),
                              functools.partial(_reference, self.vits, listed, len(refs)), inputs,
                              f"reference embedding of {len(refs)} x {refs[0].size(-1)} frames")

    def _text_encoder(self, codes: torch.Tensor, features: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor,
                      ge: torch.Tensor, speed: float) -> torch.Tensor:
        """The text encoder's output (1, hidden, frames) from the code features through the graph of its (frames,
        phones) bucket, then stretched for `speed` as upstream does; lengths = [frames, phones, ...]."""
        tokens, frames, phones = codes.size(-1), features.size(-1), text.size(-1)
        padded = (LADDERS["tokens"].fit(tokens) * frames // tokens, LADDERS["phones"].fit(phones))
        y = self.run_graph(("enc", *padded, ge.shape, ge.dtype), functools.partial(_encode, self.vits),
                           (_pad(features, padded[0]), _pad(text, padded[1]), lengths, ge),
                           f"text encoder at {padded[0]} frames x {padded[1]} phones")[..., :frames]
        return y if speed == 1 else F.interpolate(y.contiguous(), size=_stretched(frames, speed), mode="linear")


class OptimizedSoVITS(SoVITSStage):
    """What `optimize_sovits` installed on a v1/v2/v2Pro/v2ProPlus `SynthesizerTrn`: its `decode`."""

    expected = f"GPT-SoVITS SynthesizerTrn ({', '.join(PARTS)})"
    methods = ("decode", "decode_streaming")  # the second where the module has it
    parts = PARTS
    # cuDNN's heuristics run one v2ProPlus decoder convolution ([384, 384, 7], dilation 5, channels-last, 5120 samples)
    # as a 22 ms kernel; timed, 0.1 ms (H200, benchmarks/results/2026-11-30-h200-decoder-*.json). cuDNN keeps its
    # first choice per shape for the process, so every run of the decoder's buckets, captured or not, times them.
    cudnn_heuristics_unsafe = True

    @classmethod
    def lacks(cls, module: nn.Module) -> list[str]:
        missing = super().lacks(module)
        return missing or ([] if isinstance(module.dec, nn.Module) else ["a dec module"])

    def __init__(self, vits: nn.Module, config: PipelineConfig) -> None:
        super().__init__(vits, config)
        self.decoder: PaddedDecoder | None = None
        self.decoder_problem = decoder_problem(vits.dec)
        self.channels_last = config.channels_last == "on" or (
            config.channels_last == "auto" and self.device.type == "cuda" and self.execution.rewrite)
        if self.decoder_problem:
            logger.warning("%s: the decoder runs upstream's module after the graphs: %s", self.name,
                           self.decoder_problem)

    def decode(self, codes: torch.Tensor, text: torch.Tensor, refer: Any, noise_scale: float = 0.5, speed: float = 1,
               sv_emb: Any = None) -> torch.Tensor:
        """Upstream's signature and result: audio (1, 1, samples) from codes (1, 1, tokens) and phones (1, phones)."""
        args = (codes, text, refer, noise_scale, speed, sv_emb)
        return self.serve("decode", args, self._problem(*args), self._decode)

    def _problem(self, codes: Any, text: Any, refer: Any, noise_scale: Any, speed: Any, sv_emb: Any) -> str | None:
        refs = refer if isinstance(refer, list) else [refer]
        if problem := _request_problem(self.device, codes, text, speed) or _spectrograms_problem(self.device, refs):
            return problem
        if self.vits.is_v2pro:
            speakers = sv_emb if isinstance(refer, list) else [sv_emb]
            if not isinstance(speakers, (list, tuple)) or len(speakers) < len(refs) or not all(
                    isinstance(t, torch.Tensor) and t.device == self.device for t in speakers[:len(refs)]):
                return f"v2Pro needs a speaker embedding on {self.device} for each of the {len(refs)} references"
        return None if isinstance(noise_scale, numbers.Real) else f"noise_scale={noise_scale!r}: expected a number"

    def decode_streaming(self, codes: torch.Tensor, text: torch.Tensor, refer: Any, noise_scale: float = 0.5,
                         speed: float = 1, sv_emb: Any = None, result_length: int | None = None,
                         overlap_frames: torch.Tensor | None = None,
                         padding_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upstream's signature and result: a stream's chunk from all its codes so far, (audio of the last
        `result_length` tokens, their latent (1, hidden, frames) whose first frames crossfade with `overlap_frames`,
        its mask)."""
        args = (codes, text, refer, noise_scale, speed, sv_emb, result_length, overlap_frames, padding_length)
        problem = self._problem(*args[:6]) or _streaming_problem(self.device, self.vits, codes, *args[6:])
        return self.serve("decode_streaming", args, problem, self._decode_streaming)

    def _decode(self, codes: torch.Tensor, text: torch.Tensor, refer: Any, noise_scale: float, speed: float,
                sv_emb: Any) -> torch.Tensor:
        features = _features(self.vits, codes)  # waits for the stream (see _features): before any graph is queued
        return self._staged(codes, features, text, refer, noise_scale, speed, sv_emb)[0]

    def _decode_streaming(self, codes: torch.Tensor, text: torch.Tensor, refer: Any, noise_scale: float,
                          speed: float, sv_emb: Any, result_length: int | None, overlap_frames: torch.Tensor | None,
                          padding_length: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = _features(self.vits, codes)
        frames = features.size(-1)
        kept = min(frames, result_length * frames // codes.size(-1)) if result_length else frames  # upstream: y[-n:]
        audio, latent = self._staged(codes, features, text, refer, noise_scale, speed, sv_emb, kept, overlap_frames)
        return audio, latent, torch.ones((1, 1, kept), dtype=latent.dtype, device=self.device)

    def _staged(self, codes: torch.Tensor, features: torch.Tensor, text: torch.Tensor, refer: Any,
                noise_scale: float, speed: float, sv_emb: Any, kept: int | None = None,
                overlap: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(audio, None) of every frame (`decode`), or with `kept` (`decode_streaming`) (audio, latent) of the last
        `kept` frames of the text encoder's output, the latent's first frames crossfaded with `overlap`."""
        vits = self.vits
        listed = isinstance(refer, list)
        refs = refer if listed else [refer]
        speakers = ([sv_emb[i] for i in range(len(refs))] if listed else [sv_emb]) if vits.is_v2pro else []
        frames = features.size(-1)
        out = _stretched(frames if kept is None else kept, speed)
        decoder = self._padded_decoder()
        sizes = decoder.lengths(out) if decoder else [out]  # the decoder's true length per stage
        lengths = torch.tensor([frames, text.size(-1), *sizes], device=self.device)  # a host copy: waits too
        ge = self._reference(refs, speakers, listed)
        y = self._text_encoder(codes, features, text, lengths, ge, speed if kept is None else 1)
        latent = None
        if kept is not None:  # upstream's streaming encoder: cut, crossfade, then the speed change
            latent = y[..., frames - kept:].clone()  # the graph's output is rewritten by the next call
            if overlap is not None:
                n = overlap.size(-1)
                window = torch.sin(torch.arange(2 * n, device=self.device) * torch.pi / (2 * n))
                latent[..., :n] = window[:n].view(1, 1, -1) * latent[..., :n] + window[n:].view(1, 1, -1) * overlap
            y = latent if speed == 1 else F.interpolate(latent, size=out, mode="linear")
        noise = torch.randn((1, vits.enc_p.out_channels, out), dtype=y.dtype, device=self.device,
                            generator=own_generator(self.device))
        size = LADDERS["frames"].fit(out)
        inputs = (_pad(y, size), lengths, _pad(noise, size), ge)
        if decoder is None:
            z = self.run_graph(("flow", size, float(noise_scale), ge.shape, ge.dtype),
                               functools.partial(_flow, vits, float(noise_scale)), inputs, f"flow at {size} frames")
            return vits.dec(z[..., :out].contiguous(), g=ge), latent
        audio = self.run_graph(("decode", size, float(noise_scale), ge.shape, ge.dtype),
                               functools.partial(_synthesize, vits, decoder, float(noise_scale)), inputs,
                               f"flow and decoder at {size} frames")
        return audio[..., :sizes[-1]], latent

    def rebuild(self) -> None:
        self.decoder = None  # its channels-last weights are copies of the replaced ones

    def _padded_decoder(self) -> PaddedDecoder | None:
        """The decoder for `dec`'s current weights: built again, and its graphs dropped, when they moved or were
        loaded in place (its channels-last weights are copies); None for a decoder it cannot run."""
        if self.decoder_problem:
            return None
        with self._lock:
            if self.decoder is None or self.decoder.fingerprint != weights_fingerprint(self.vits.dec):
                if self.decoder is not None:
                    dropped = self.runner.discard(lambda key: key[0] == "decode")
                    logger.info("%s: decoder weights changed: %d graphs dropped", self.name, dropped)
                self.decoder = PaddedDecoder(self.vits.dec, self.channels_last)
            return self.decoder


class OptimizedSoVITSv3(SoVITSStage):
    """What `optimize_sovits` installed on a v3/v4 `SynthesizerTrnV3`: its `decode_encp`, the CFM's conditioning."""

    expected = f"GPT-SoVITS SynthesizerTrnV3 ({', '.join(V3_PARTS)})"
    methods = ("decode_encp",)
    parts = V3_PARTS

    def decode_encp(self, codes: torch.Tensor, text: torch.Tensor, refer: Any, ge: Any = None,
                    speed: float = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream's signature and result: (features (1, channels, frames), ge) from codes (1, 1, tokens), phones
        (1, phones) and a reference spectrogram (read only when `ge` is None)."""
        args = (codes, text, refer, ge, speed)
        return self.serve("decode_encp", args, self._problem(*args), self._decode_encp)

    def _problem(self, codes: Any, text: Any, refer: Any, ge: Any, speed: Any) -> str | None:
        if problem := _request_problem(self.device, codes, text, speed):
            return problem
        if ge is None:
            return _spectrograms_problem(self.device, [refer]) if isinstance(refer, torch.Tensor) else \
                f"refer: expected a (1, bins, frames) spectrogram, got {type(refer).__name__}"
        if not isinstance(ge, torch.Tensor) or ge.device != self.device or ge.dim() != 3 or ge.size(0) != 1:
            return f"ge: expected a (1, channels, 1) tensor on {self.device}"
        return None

    def _decode_encp(self, codes: torch.Tensor, text: torch.Tensor, refer: Any, ge: Any,
                     speed: float) -> tuple[torch.Tensor, torch.Tensor]:
        vits, shape = self.vits, VERSIONS[self.vits.version]
        features = _features(vits, codes)  # waits for the stream (see _features): before any graph is queued
        frames = features.size(-1)  # upstream's y_lengths: 2 per token (v3/v4 codes are 25 Hz)
        stretched = _stretched(frames, speed)
        out = math.floor(stretched * shape.upsample)  # nearest upsampling's length
        per_token = shape.masked_per_token * codes.size(-1)
        masked = min(out, int(per_token) if speed == 1 else int(per_token / speed) + 1)
        lengths = torch.tensor([frames, text.size(-1), masked], device=self.device)  # a host copy: waits too
        if ge is None:
            ge = self._reference([refer], [], listed=False)
        y = self._text_encoder(codes, features, text, lengths, ge, speed)
        size = LADDERS["frames"].fit(stretched)
        fea = self.run_graph(("wns", size, ge.shape, ge.dtype), functools.partial(_conditioning, vits),
                             (_pad(y, size), lengths, ge), f"conditioning stack at {size} frames")
        return fea[..., :out].contiguous(), ge


def optimize_sovits(vits_model: nn.Module, config: OptimizeConfig | None = None, **options: Any) -> nn.Module:
    """Optimize a GPT-SoVITS synthesizer in place, its methods keeping their signatures and results: a
    v1/v2/v2Pro/v2ProPlus `SynthesizerTrn`'s `decode` runs its stages, decoder included, as captured graphs; a v3/v4
    `SynthesizerTrnV3`'s `decode_encp` runs as captured graphs (shapes are captured on first sight). The handle
    (`optimization_stats`, `switch`) is `vits_model.tts_compile`. Returns `vits_model`."""
    v3 = getattr(VERSIONS.get(getattr(vits_model, "version", None)), "renderer", None) == "cfm"
    attach(OptimizedSoVITSv3 if v3 else OptimizedSoVITS, vits_model, config, options)
    return vits_model


def restore_sovits(vits_model: nn.Module) -> nn.Module:
    """Undo `optimize_sovits`: upstream's own `decode` or `decode_encp` again."""
    return detach(vits_model, SoVITSStage)
