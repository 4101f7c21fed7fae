"""Rendering: a finished request's tokens into audio, by version, through the (optimized) upstream modules.

v1-v2ProPlus (`render_decode`): one `SynthesizerTrn.decode` of all the job's segments' tokens and phones with the
voice's references, the audio cut back into segments where their tokens meet (upstream's parallel path). v3/v4
(`render_cfm`): `decode_encp` of the voice's prompt and of every segment, the features cut into CFM windows of the
version's length with the prompt's features and mel in front and `OVERLAP` frames shared by neighbours, all of a
job's windows in one batched `cfm.inference`, the windows' mels joined (the shared frames cross-faded linearly, in
mel space), one vocoder call, the audio cut back into segments. A job is a whole request, or one segment of a
stream; its noise is its seed's alone (`seeded`). Each segment's audio then leaves as upstream's `audio_postprocess`
hands it out (`fragment`): scaled to a peak of 1 where it exceeds it, then `fragment_interval` seconds of silence.
(Decoding finished segments of several requests in one padded call was measured slower, not faster: the decode is
compute-bound at these lengths on an H200; benchmarks/results/2026-12-06-h200-batched-renders.md.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.rng import own_draws, own_rng
from ..gpt_sovits.sovits import LADDERS
from ..gpt_sovits.versions import Version
from .request import Params, Request, Segment, Voice

OVERLAP = 12  # CFM frames shared by neighbouring windows (upstream's overlapped_len)
SPEC_MIN, SPEC_MAX = -12, 2  # the range upstream normalises mels to [-1, 1] with
# Phones per token of the renders the start-up warm-up covers: speech has ~0.3-0.7 (5 tokens per Chinese character of
# ~2 phones); a stream's chunk encodes its whole segment's phones with the tokens so far, up to STREAM_PHONES_PER_TOKEN.
PHONES_PER_TOKEN, STREAM_PHONES_PER_TOKEN = (0.25, 1.0), 4.0


@dataclass(frozen=True)
class Job:
    """Segments `indices` of `request` rendered together, their noise drawn from `seed`."""

    request: Request
    indices: tuple[int, ...]
    seed: int

    @property
    def inputs(self) -> tuple[Voice, Params, list[Segment], list[list[int]]]:
        request = self.request
        return (request.voice, request.params, [request.segments[i] for i in self.indices],
                [request.tokens[i] for i in self.indices])


class Renderer:
    """Turns a job into its segments' audio, each (samples,) on `device`: `audio(voice, params, segments, tokens)`
    (`render_decode` or `render_cfm`) under `seeded`, so the job's noise is its seed's alone. `chunk`, where the
    version streams token chunks (`streaming.render_chunk`), renders one chunk the same way. `own_draws`: every
    module that draws is a stage (`from_models` checks), so renders draw from their thread's own generators and run
    at once; otherwise each holds the shared ones throughout."""

    def __init__(self, audio: Callable[[Voice, Params, list[Segment], list[list[int]]], list[torch.Tensor]],
                 device: torch.device, chunk: Callable[..., torch.Tensor] | None = None,
                 own_draws: bool = False) -> None:
        self.audio, self.device, self.chunk, self.own_draws = audio, device, chunk, own_draws

    def render(self, job: Job) -> list[torch.Tensor]:
        return self.audio_of(job.seed, *job.inputs)

    def audio_of(self, seed: int, voice: Voice, params: Params, segments: list[Segment],
                 tokens: list[list[int]]) -> list[torch.Tensor]:
        """The segments' audio from their tokens, the noise drawn from `seed` alone."""
        with seeded(seed, self.device, self.own_draws):
            return self.audio(voice, params, segments, tokens)

    def render_chunk(self, seed: int, *args: Any) -> torch.Tensor:
        with seeded(seed, self.device, self.own_draws):
            return self.chunk(*args)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device, own: bool = False) -> Iterator[None]:
    """Draws inside come from `seed` alone. With `own`, from generators of the thread's own (`core.rng.own_draws`);
    otherwise upstream's modules draw from the default generators, which every thread shares: the render holds them
    (`DRAWS`), seeded, until it leaves, and puts them back as they were."""
    if own:
        with own_draws(seed, device):
            yield
        return
    with own_rng(device):
        torch.manual_seed(seed)
        yield


def warm_shapes(tokens: int, phones: int, streams: bool, version: Version) -> list[tuple[int, int]]:
    """(tokens, phones) of renders that together meet every bucket a render of up to `tokens` tokens and `phones`
    phones meets at speed 1 with `PHONES_PER_TOKEN` (up to `STREAM_PHONES_PER_TOKEN` with `streams`): each
    text-encoder bucket, each frame bucket of the flow and decoder (v3/v4: of the conditioning stack) and, v3/v4,
    each count of CFM windows; largest first, so the shared graph memory is sized once."""
    ladders, low = LADDERS, PHONES_PER_TOKEN[0]
    high = STREAM_PHONES_PER_TOKEN if streams else PHONES_PER_TOKEN[1]
    top = ladders["tokens"].fit(tokens) or ladders["tokens"].largest
    shapes, previous = set(), 0
    for bucket in (t for t in ladders["tokens"].sizes if t <= top):
        least = ladders["phones"].fit(int((previous + 1) * low))
        most = min(ladders["phones"].fit(int(bucket * high)), ladders["phones"].fit(phones))
        shapes |= {(bucket, p) for p in ladders["phones"].sizes if least <= p <= most}
        previous = bucket
    shapes |= {(frames // 2, frames // 4) for frames in ladders["frames"].sizes if frames // 2 <= top}  # 2 per token
    if version.renderer == "cfm":  # tokens in steps shorter than the shortest stride between windows
        step = int((version.cfm_window - version.cfm_prompt - OVERLAP) / (2 * version.upsample))
        shapes |= {(t, t // 2) for t in range(step, top + 1, step)}
    return sorted(shapes, reverse=True)


def fragment(audio: torch.Tensor, interval: float, sample_rate: int) -> torch.Tensor:
    """A segment's audio as upstream's `audio_postprocess` gives it: divided by its peak where that exceeds 1, then
    `interval` seconds of silence."""
    peak = float(audio.abs().max()) if audio.numel() else 0.0
    if peak > 1:
        audio = audio / peak
    return torch.cat([audio, audio.new_zeros(int(sample_rate * interval))])


def render_decode(vits: nn.Module, voice: Voice, params: Params, segments: Sequence[Segment],
                  tokens: list[list[int]]) -> list[torch.Tensor]:
    """v1-v2ProPlus: each segment's audio (samples,), from one decode of all their tokens."""
    device = next(vits.parameters()).device
    codes = torch.tensor([t for row in tokens for t in row], device=device).view(1, 1, -1)
    phones = torch.cat([s.phones for s in segments]).to(device)[None]
    sv_emb = list(voice.sv_emb) if voice.sv_emb is not None else None
    audio = vits.decode(codes, phones, list(voice.refer), noise_scale=params.noise_scale, speed=params.speed,
                        sv_emb=sv_emb)[0, 0]
    return cut(audio, [len(row) for row in tokens])


def render_cfm(vits: nn.Module, vocoder: nn.Module, version: Version, voice: Voice, params: Params,
               segments: Sequence[Segment], tokens: list[list[int]]) -> list[torch.Tensor]:
    """v3/v4: each segment's audio (samples,), from one CFM call over all their windows and one vocoder call."""
    device = next(vits.parameters()).device
    refer = voice.refer[0]
    fea_ref, ge = vits.decode_encp(voice.prompt_tokens.to(device)[None, None], voice.prompt_phones.to(device)[None],
                                   refer)
    frames = min(voice.mel.shape[2], fea_ref.shape[2], version.cfm_prompt)
    mel2, fea_ref = voice.mel[:, :, voice.mel.shape[2] - frames:], fea_ref[:, :, fea_ref.shape[2] - frames:]
    chunk = version.cfm_window - frames
    feats = [vits.decode_encp(torch.tensor(row, device=device).view(1, 1, -1), s.phones.to(device)[None], refer, ge,
                              params.speed)[0] for row, s in zip(tokens, segments)]
    joined = torch.cat(feats, 2)
    windows = cfm_windows(joined, chunk)
    fea = torch.cat([fea_ref.expand(windows.shape[0], -1, -1), windows], 2).transpose(2, 1)
    spec = vits.cfm.inference(fea, torch.LongTensor([fea.size(1)]).to(device), mel2.to(fea.dtype),
                              params.sample_steps, inference_cfg_rate=0)[:, :, -chunk:]
    mel = join_windows(spec)[:, OVERLAP: OVERLAP + joined.shape[2]]
    mel = (mel + 1) / 2 * (SPEC_MAX - SPEC_MIN) + SPEC_MIN
    audio = vocoder(mel[None])[0, 0]
    return cut(audio, [f.shape[2] for f in feats])


def cut(audio: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """`audio` of inputs of these `lengths` (tokens or frames) joined, cut back into each one's part where their
    lengths meet (proportionally: exact where each input unit makes the same samples, as upstream's cut)."""
    ends = [round(sum(lengths[:i + 1]) * audio.shape[-1] / sum(lengths)) for i in range(len(lengths))]
    return list(audio.split([end - start for start, end in zip([0, *ends], ends)]))


def cfm_windows(feats: torch.Tensor, chunk: int) -> torch.Tensor:
    """The features (1, C, T) after `OVERLAP` zero frames, cut into windows (W, C, chunk) that start `chunk -
    OVERLAP` frames apart; the last one zero-padded."""
    padded = F.pad(feats, (OVERLAP, 0))
    starts = range(0, max(padded.shape[2] - OVERLAP, 1), chunk - OVERLAP)
    return torch.cat([F.pad(padded[:, :, s: s + chunk], (0, chunk - padded[:, :, s: s + chunk].shape[2]))
                      for s in starts], 0)


def join_windows(spec: torch.Tensor) -> torch.Tensor:
    """Windows (W, mels, chunk) that overlap by `OVERLAP` frames as one mel (mels, frames), the shared frames
    cross-faded linearly."""
    ramp = torch.linspace(0, 1, OVERLAP + 2, device=spec.device, dtype=spec.dtype)[1:-1]
    out = spec[0]
    for window in spec[1:]:
        shared = out[:, -OVERLAP:] * (1 - ramp) + window[:, :OVERLAP] * ramp
        out = torch.cat([out[:, :-OVERLAP], shared, window[:, OVERLAP:]], 1)
    return out
