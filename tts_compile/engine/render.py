"""Rendering: a finished request's tokens into audio, by version, through the (optimized) upstream modules.

v1-v2ProPlus: one `SynthesizerTrn.decode` of all segments' tokens and phones with the voice's references (TTS.run's
parallel path). v3/v4: `decode_encp` of the voice's prompt and of every segment, the features cut into CFM windows of
the version's length with the prompt's features and mel in front and `OVERLAP` frames shared by neighbours, all of a
request's windows in one batched `cfm.inference`, the windows' mels joined (the shared frames cross-faded linearly,
in mel space) and one vocoder call. The engine renders a whole request, or one segment of a stream, under `seeded`:
the noise of both paths is the request's seed's alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.rng import own_rng
from ..gpt_sovits.versions import Version
from .request import Params, Segment, Voice

OVERLAP = 12  # CFM frames shared by neighbouring windows (upstream's overlapped_len)
SPEC_MIN, SPEC_MAX = -12, 2  # the range upstream normalises mels to [-1, 1] with


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Draws inside come from `seed` alone. Upstream's modules draw from the default generators, which every thread
    shares: a render holds them (`DRAWS`), seeded, until it leaves, and puts them back as they were."""
    with own_rng(device):
        torch.manual_seed(seed)
        yield


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
               segments: Sequence[Segment], tokens: list[list[int]]) -> torch.Tensor:
    """v3/v4: audio (samples,) of these segments' tokens (CFM windows, then the vocoder)."""
    device = next(vits.parameters()).device
    refer = voice.refer[0]
    fea_ref, ge = vits.decode_encp(voice.prompt_tokens.to(device)[None, None], voice.prompt_phones.to(device)[None],
                                   refer)
    frames = min(voice.mel.shape[2], fea_ref.shape[2], version.cfm_prompt)
    mel2, fea_ref = voice.mel[:, :, voice.mel.shape[2] - frames:], fea_ref[:, :, fea_ref.shape[2] - frames:]
    chunk = version.cfm_window - frames
    feats = torch.cat([vits.decode_encp(torch.tensor(row, device=device).view(1, 1, -1), s.phones.to(device)[None],
                                        refer, ge, params.speed)[0] for row, s in zip(tokens, segments)], 2)
    windows = cfm_windows(feats, chunk)
    fea = torch.cat([fea_ref.expand(windows.shape[0], -1, -1), windows], 2).transpose(2, 1)
    spec = vits.cfm.inference(fea, torch.LongTensor([fea.size(1)]).to(device), mel2.to(fea.dtype),
                              params.sample_steps, inference_cfg_rate=0)[:, :, -chunk:]
    mel = join_windows(spec)[:, OVERLAP: OVERLAP + feats.shape[2]]
    mel = (mel + 1) / 2 * (SPEC_MAX - SPEC_MIN) + SPEC_MIN
    return vocoder(mel[None])[0, 0]


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
