"""Rendering: finished segments' tokens into audio, by version, through the (optimized) upstream modules.

v1-v2ProPlus (`DecodeRenderer`): each segment is decoded alone, as api_v2 decodes it (`batch_size` 1), by one
`SynthesizerTrn.decode` of its tokens and phones with the voice's references; finished segments of one bucket, of
any requests, share one padded `decode_rows` call of a fixed rows count per bucket, so a segment's audio depends on
its own inputs and seed only. v3/v4 (`CFMRenderer`): `decode_encp` of the voice's prompt and of every segment of a
job, the features cut into CFM windows of the version's length with the prompt's features and mel in front and
`OVERLAP` frames shared by neighbours, all of a job's windows in one batched `cfm.inference`, the windows' mels
joined (the shared frames cross-faded linearly, in mel space), one vocoder call, the audio cut back into segments
(upstream's parallel path). Each segment's audio then leaves as upstream's `audio_postprocess` hands it out
(`fragment`): scaled to a peak of 1 where it exceeds it, followed by `fragment_interval` seconds of silence.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.rng import own_rng
from ..gpt_sovits.sovits import DecodeRow, OptimizedSoVITS
from ..gpt_sovits.stage import HANDLE
from ..gpt_sovits.versions import Version
from .request import Params, Request, Segment, Voice

OVERLAP = 12  # CFM frames shared by neighbouring windows (upstream's overlapped_len)
SPEC_MIN, SPEC_MAX = -12, 2  # the range upstream normalises mels to [-1, 1] with


@dataclass(frozen=True)
class Job:
    """Segments `indices` of `request` rendered together, their noise drawn from `seed`; jobs of one `bucket` may
    share a call (None: alone)."""

    request: Request
    indices: tuple[int, ...]
    seed: int
    bucket: Hashable | None = None

    @property
    def inputs(self) -> tuple[Voice, Params, list[Segment], list[list[int]]]:
        request = self.request
        return (request.voice, request.params, [request.segments[i] for i in self.indices],
                [request.tokens[i] for i in self.indices])


class Renderer(abc.ABC):
    """Turns jobs into audio. `per_segment`: every segment is its own job as soon as its tokens are done (else a
    request not streamed is one job once all are); `bucket` and `rows` say which jobs share a call and how many rows
    that call is padded to."""

    per_segment = False

    def bucket(self, request: Request, indices: tuple[int, ...]) -> Hashable | None:
        return None

    def rows(self, bucket: Hashable) -> int:
        return 1

    @abc.abstractmethod
    def render(self, jobs: Sequence[Job]) -> list[list[torch.Tensor]]:
        """Per job, its segments' audio (samples,) each, on the models' device."""


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Draws inside come from `seed` alone. Upstream's modules draw from the default generators, which every thread
    shares: a render holds them (`DRAWS`), seeded, until it leaves, and puts them back as they were."""
    with own_rng(device):
        torch.manual_seed(seed)
        yield


def fragment(audio: torch.Tensor, interval: float, sample_rate: int) -> torch.Tensor:
    """A segment's audio as upstream's `audio_postprocess` gives it: divided by its peak where that exceeds 1, then
    `interval` seconds of silence."""
    peak = float(audio.abs().max()) if audio.numel() else 0.0
    if peak > 1:
        audio = audio / peak
    return torch.cat([audio, audio.new_zeros(int(sample_rate * interval))])


class DecodeRenderer(Renderer):
    """v1-v2ProPlus: one decode per segment; through `OptimizedSoVITS.decode_rows` where the stage is attached,
    `rows(bucket)` rows per call (about `frames` padded frames: launch-bound decodes batch almost for free, long ones
    stay alone), else upstream's decode under `seeded`."""

    per_segment = True

    def __init__(self, vits: nn.Module, max_rows: int, frames: int) -> None:
        self.vits, self.max_rows, self.frames = vits, max_rows, frames
        stage = vits.__dict__.get(HANDLE)
        self.stage = stage if isinstance(stage, OptimizedSoVITS) else None
        self.device = next(vits.parameters()).device

    def bucket(self, request: Request, indices: tuple[int, ...]) -> Hashable | None:
        if self.stage is None:
            return None
        [index] = indices
        return self.stage.row_bucket(len(request.tokens[index]), len(request.segments[index].phones),
                                     request.params.speed)

    def rows(self, bucket: Hashable) -> int:
        fit = max(1, min(self.max_rows, self.frames // bucket[2]))
        return 1 << (fit.bit_length() - 1)  # a power of two: few sizes, few graphs

    def render(self, jobs: Sequence[Job]) -> list[list[torch.Tensor]]:
        if jobs[0].bucket is None:
            [job] = jobs
            with seeded(job.seed, self.device):
                return [[render_decode(self.vits, *job.inputs)]]
        rows = []
        for job in jobs:
            voice, params, [segment], [tokens] = job.inputs
            rows.append(DecodeRow(torch.tensor(tokens, device=self.device).view(1, 1, -1),
                                  segment.phones.to(self.device)[None], list(voice.refer),
                                  None if voice.sv_emb is None else list(voice.sv_emb), params.noise_scale,
                                  params.speed, job.seed))
        return [[audio[0, 0]] for audio in self.stage.decode_rows(rows, self.rows(jobs[0].bucket))]


class CFMRenderer(Renderer):
    """v3/v4: a request's segments (or a stream's one) in one job: `render_cfm` under `seeded`."""

    def __init__(self, vits: nn.Module, vocoder: nn.Module, version: Version) -> None:
        self.vits, self.vocoder, self.version = vits, vocoder, version
        self.device = next(vits.parameters()).device

    def render(self, jobs: Sequence[Job]) -> list[list[torch.Tensor]]:
        [job] = jobs
        with seeded(job.seed, self.device):
            return [render_cfm(self.vits, self.vocoder, self.version, *job.inputs)]


def render_decode(vits: nn.Module, voice: Voice, params: Params, segments: Sequence[Segment],
                  tokens: list[list[int]]) -> torch.Tensor:
    """v1-v2ProPlus: audio (samples,) of these segments' tokens, in one decode."""
    device = next(vits.parameters()).device
    codes = torch.tensor([t for row in tokens for t in row], device=device).view(1, 1, -1)
    phones = torch.cat([s.phones for s in segments]).to(device)[None]
    sv_emb = list(voice.sv_emb) if voice.sv_emb is not None else None
    audio = vits.decode(codes, phones, list(voice.refer), noise_scale=params.noise_scale, speed=params.speed,
                        sv_emb=sv_emb)
    return audio[0, 0]


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
    hop = audio.shape[-1] // mel.shape[-1]  # samples per mel frame: the segments' audio is cut where their mels meet
    cuts = [f.shape[2] * hop for f in feats[:-1]]
    return list(audio.split([*cuts, audio.shape[-1] - sum(cuts)]))


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
