"""Token-chunk streams (api_v2's `streaming_mode` 2 and 3; for v3/v4 too, which upstream cannot stream): a
segment's audio in chunks cut from its tokens while it decodes, each chunk rendered as soon as it is cut, so the
first audio comes after a few tokens.

Where a chunk ends follows upstream's rule (`gpt_sovits.chunks`, docs: gpt-sovits-upstream.md 3.2): every
`min_tokens` tokens, or with `mute_cuts` at the first place past `min_tokens` where two tokens sound like silence
(their codebook rows' cosine similarity to the mute token's above `THRESHOLD`, as `TTS.run` sets it); v3/v4 also cut
a chunk that would outgrow one CFM window. Unlike upstream's mode 2, a chunk ends at its cut: upstream hands the
tokens after a cut out twice, and `TTS.run` decodes them twice. Each chunk's noise is drawn from the request's
seed, the segment and the chunk alone.
* v1-v2ProPlus (`render_chunk`): the synthesizer's `decode_streaming` of the segment's tokens up to the chunk's end,
  the chunk and `overlap` tokens before it kept (short chunks reach back to 10 tokens), their first latent frames
  crossfaded with the previous chunk's; the audio joins the previous chunk's where they overlap (`join`), the shared
  tail held back until the next chunk, as `TTS.run` joins them.
* v3/v4 (`render_chunk_cfm`): `decode_encp` of the tokens so far, the chunk's features and `OVERLAP` frames before
  them as one CFM window after the voice's prompt (the non-streamed path's windows are ~7 s; these are the chunk's
  length, padded to a bucket), the mel faded in over the previous chunk's held-back frames, and the vocoder's
  stream, which emits each sample once its context is in (exact against vocoding the joined mel at once).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core.buckets import Ladder
from ..gpt_sovits.chunks import CHECK_TOKENS
from ..gpt_sovits.versions import Version
from ..vocoder.stream import MelStream
from .render import OVERLAP, SPEC_MAX, SPEC_MIN
from .request import Params, Request, Segment, TokenChunks, Voice

MUTE_TOKEN = 486  # upstream's mute token, every version (TTS_Config.mute_tokens; modulo a stand-in's codebook)
THRESHOLD = 0.0  # cosine similarity above which a token sounds like silence (TTS.run's chunk_split_thershold)
SHORT_CHUNK = 10  # tokens: a shorter chunk keeps more tokens before it (TTS.run)
SEARCH = 320  # samples the join searches for the best offset (TTS.run's sola_algorithm)
WINDOWS = Ladder.half_octaves(32, 1000)  # v3/v4: a chunk's CFM window (after the prompt), in frames


@dataclass(frozen=True)
class ChunkJob:
    """Render the next chunk of `request`, a token-chunk stream."""

    request: Request


def mute_similarity(t2s_model: nn.Module) -> list[float]:
    """Each token's codebook row's cosine similarity to the mute token's, as upstream computes it."""
    codebook = t2s_model.ar_audio_embedding.word_embeddings.weight.detach().float()
    return F.cosine_similarity(codebook[MUTE_TOKEN % len(codebook)][None], codebook, dim=-1).cpu().tolist()


class Cutter:
    """Where a segment's chunks end, fed its tokens as they come: `feed(tokens so far)` returns the new cuts (token
    counts), upstream's rule over the tokens alone."""

    def __init__(self, chunks: TokenChunks, mute: list[float] | None, longest: int | None = None) -> None:
        self.min_tokens, self.mute = chunks.min_tokens, mute if chunks.mute_cuts else None
        self.longest = longest  # v3/v4: a chunk is cut at this many tokens whatever the rule says (a CFM window)
        self.cut, self.read = 0, 0  # the last cut, the tokens looked at

    def feed(self, tokens: list[int]) -> list[int]:
        cuts = []
        for self.read in range(self.read + 1, len(tokens) + 1):
            since = self.read - self.cut
            if self.longest is not None and since >= self.longest:
                self.cut = self.read
                cuts.append(self.cut)
                continue
            if self.mute is None:
                if since >= self.min_tokens:
                    self.cut = self.read
                    cuts.append(self.cut)
                continue
            if since < self.min_tokens + CHECK_TOKENS:
                continue
            score = [-1.0 if s < 0 else s for s in (self.mute[t] - THRESHOLD for t in tokens[self.cut:self.read])]
            pairs = [a + b for a, b in zip(score, score[1:])] + score[-1:]  # a token and the next one
            best = max(range(len(pairs)), key=pairs.__getitem__)
            if pairs[best] >= 0 and best + 1 >= self.min_tokens:
                self.cut += best + 1
                cuts.append(self.cut)
        return cuts


@dataclass
class CfmChunks:
    """v3/v4 streams: the voice's prompt conditioning (features, ge, mel), the previous chunk's last mel frames not
    vocoded yet (the next chunk fades in over them), and the vocoder's stream."""

    fea_ref: torch.Tensor
    ge: torch.Tensor
    mel2: torch.Tensor
    vocoder: MelStream
    tail: torch.Tensor | None = None


@dataclass
class SegmentChunks:
    """One segment of a stream: its tokens so far, the cuts not rendered yet, the previous chunk's latent and audio
    (what the next chunk joins), whether its tokens are all in."""

    cutter: Cutter
    tokens: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # cuts to render, in order
    rendered: int = 0  # tokens rendered
    chunks: int = 0  # chunks rendered
    latent: torch.Tensor | None = None  # the previous chunk's latent frames (1, hidden, frames)
    latent_tokens: int = 0  # the tokens they cover
    audio: torch.Tensor | None = None  # the previous chunk's audio
    held: int = 0  # its last samples, not handed out yet (the next chunk fades in over them)
    cfm: CfmChunks | None = None  # v3/v4
    complete: bool = False

    def tensors(self) -> list[torch.Tensor]:
        """The device tensors earlier chunks left for the next one to read."""
        cfm = self.cfm
        found = [self.latent, self.audio] + ([] if cfm is None else
                                             [cfm.fea_ref, cfm.ge, cfm.mel2, cfm.tail, cfm.vocoder.buffer])
        return [t for t in found if t is not None]

    def next_end(self) -> int | None:
        """The end of the next chunk to render (the last one's: every token, once complete); None if none is due."""
        if self.ends:
            return self.ends[0]
        return len(self.tokens) if self.complete else None


class ChunkStream:
    """A stream's chunks across its segments: fed tokens by the decode loop, rendered in order by one render job at
    a time (each chunk needs the previous one's latent and audio)."""

    def __init__(self, chunks: TokenChunks, mute: list[float] | None, segments: int,
                 longest: int | None = None) -> None:
        self.config = chunks
        self.segments = [SegmentChunks(Cutter(chunks, mute, longest)) for _ in range(segments)]
        self.current = 0  # the segment being rendered
        self.delivered = 0  # pieces handed out
        self.busy = False  # a render job holds it
        self.lock = threading.Lock()

    def feed(self, index: int, tokens: list[int], complete: bool) -> None:
        """Segment `index`'s tokens so far (all of them when `complete`)."""
        with self.lock:
            segment = self.segments[index]
            segment.tokens = tokens
            segment.ends += [end for end in segment.cutter.feed(tokens) if end < len(tokens) or not complete]
            segment.complete = complete

    def claim(self) -> bool:
        """Whether a render job should start now (a chunk is due and no job holds the stream); marks it held."""
        with self.lock:
            if self.busy or self.current >= len(self.segments) or self.segments[self.current].next_end() is None:
                return False
            self.busy = True
            return True

    def release(self) -> None:
        with self.lock:
            self.busy = False

    def due(self) -> tuple[int, SegmentChunks, int, bool] | None:
        """(segment index, its state, the chunk's end, whether it is the segment's last) of the next chunk."""
        with self.lock:
            if self.current >= len(self.segments):
                return None
            segment = self.segments[self.current]
            end = segment.next_end()
            if end is None:
                return None
            return self.current, segment, end, not segment.ends and segment.complete

    def rendered(self, end: int, last: bool) -> None:
        """The due chunk is out: on to the next chunk, or the next segment after its last."""
        with self.lock:
            segment = self.segments[self.current]
            if segment.ends:
                segment.ends.pop(0)
            segment.rendered, segment.chunks = end, segment.chunks + 1
            if last:
                segment.latent = segment.audio = None
                self.current += 1

    @property
    def finished(self) -> bool:
        return self.current >= len(self.segments)


def render_chunk(vits: nn.Module, voice: Voice, params: Params, segment: Segment, state: SegmentChunks, end: int,
                 last: bool, overlap: int) -> torch.Tensor:
    """The audio (samples,) a stream hands out for the segment's chunk ending at token `end`: decoded with the
    previous chunk's latent, joined to its audio; `state` keeps this chunk's latent and audio for the next."""
    device = next(vits.parameters()).device
    start, first = state.rendered, state.latent is None
    if end == start:  # nothing after the last cut: what the last chunk held back
        held = torch.zeros(0, device=device) if state.audio is None else state.audio
        return held[held.shape[-1] - state.held:]
    chunk = end - start
    reach = overlap if first else overlap + max(0, SHORT_CHUNK - chunk)  # tokens decoded again in front
    kept = end if first else min(end, chunk + reach)
    frames = None if first or reach == 0 else \
        state.latent[:, :, state.latent.shape[-1] - reach * state.latent.shape[-1] // state.latent_tokens:]
    codes = torch.tensor(state.tokens[:end], device=device).view(1, 1, -1)
    sv_emb = list(voice.sv_emb) if voice.sv_emb is not None else None
    audio, latent, _ = vits.decode_streaming(codes, segment.phones.to(device)[None], list(voice.refer),
                                             noise_scale=params.noise_scale, speed=params.speed, sv_emb=sv_emb,
                                             result_length=None if first else kept, overlap_frames=frames,
                                             padding_length=0)
    audio = audio[0, 0]
    per_token = audio.shape[-1] / kept
    if reach > overlap:  # the tokens a short chunk reached back for are not heard again
        audio = audio[audio.shape[-1] - int((overlap + chunk) * per_token):]
    size = min(math.ceil(overlap * per_token), audio.shape[-1])  # samples neighbouring chunks share
    out = audio if first else join(state.audio, audio, size)
    state.latent, state.latent_tokens, state.audio = latent, kept, audio
    state.held = 0 if last else size
    return out[: out.shape[-1] - state.held]


def longest_chunk(version: Version) -> int:
    """v3/v4: the most tokens one chunk's CFM window holds (the window less the prompt and the shared frames)."""
    return int((version.cfm_window - version.cfm_prompt - OVERLAP) / version.masked_per_token)


def warm_chunks(version: Version) -> list[int]:
    """v3/v4: tokens of a stream's first chunk whose CFM window meets each window bucket (`WINDOWS`) a chunk of up
    to `longest_chunk` tokens meets; `Engine.prepare` renders them (the window follows the voice's prompt: each
    voice's own)."""
    per_token = 2 * version.upsample  # CFM frames per token at speed 1
    largest = WINDOWS.fit(int(longest_chunk(version) * per_token) + OVERLAP) or WINDOWS.largest
    return [int(size / per_token) for size in WINDOWS.sizes if size <= largest]


def render_chunk_cfm(vits: nn.Module, vocoder: nn.Module, version: Version, voice: Voice, params: Params,
                     segment: Segment, state: SegmentChunks, end: int, last: bool, overlap: int) -> torch.Tensor:
    """v3/v4: the audio (samples,) of the segment's chunk ending at token `end`: `decode_encp` of the tokens so far,
    the chunk's features (and `OVERLAP` frames before them) as one CFM window after the voice's prompt, padded to a
    window bucket with zero features as upstream pads its last window; its mel faded in over the previous chunk's
    held-back frames, its own last ones held back, and the rest through the vocoder's stream (frames whose context
    is not in yet come with a later chunk). `overlap` (tokens) is the decode path's: the mel overlap is upstream's."""
    device = next(vits.parameters()).device
    refer = voice.refer[0]
    if state.cfm is None:
        fea_ref, ge = vits.decode_encp(voice.prompt_tokens.to(device)[None, None],
                                       voice.prompt_phones.to(device)[None], refer)
        frames = min(voice.mel.shape[2], fea_ref.shape[2], version.cfm_prompt)
        state.cfm = CfmChunks(fea_ref[:, :, fea_ref.shape[2] - frames:], ge,
                              voice.mel[:, :, voice.mel.shape[2] - frames:].to(fea_ref.dtype),
                              MelStream(vocoder.optimizer))
    cfm, start = state.cfm, state.rendered
    if end == start:  # nothing after the last cut: the held-back frames
        return _vocode(cfm, cfm.tail, last)
    codes = torch.tensor(state.tokens[:end], device=device).view(1, 1, -1)
    feats = vits.decode_encp(codes, segment.phones.to(device)[None], refer, cfm.ge, params.speed)[0]
    total = feats.shape[2]
    begin = round(start * total / end)  # the chunk's first frame
    shared = 0 if cfm.tail is None else min(OVERLAP, begin, cfm.tail.shape[1])
    window = feats[:, :, begin - shared:]
    real = window.shape[2]
    size = WINDOWS.fit(real) or real
    fea = torch.cat([cfm.fea_ref, F.pad(window, (0, size - real))], 2).transpose(2, 1)
    spec = vits.cfm.inference(fea, torch.LongTensor([fea.size(1)]).to(device), cfm.mel2, params.sample_steps,
                              inference_cfg_rate=0)
    mel = spec[0, :, spec.shape[2] - size:][:, :real]
    if shared:
        ramp = torch.linspace(0, 1, shared + 2, device=device, dtype=mel.dtype)[1:-1]
        mel = torch.cat([cfm.tail[:, cfm.tail.shape[1] - shared:] * (1 - ramp) + mel[:, :shared] * ramp,
                         mel[:, shared:]], 1)
    hold = 0 if last else min(OVERLAP, mel.shape[1])
    cfm.tail = mel[:, mel.shape[1] - hold:]
    return _vocode(cfm, mel[:, : mel.shape[1] - hold], last)


def _vocode(cfm: CfmChunks, mel: torch.Tensor | None, last: bool) -> torch.Tensor:
    """The vocoder stream's audio (samples,) for normalised mel frames (mels, n) pushed now; all of it when `last`."""
    pieces = []
    if mel is not None and mel.shape[1]:
        pieces.append(cfm.vocoder.push(((mel + 1) / 2 * (SPEC_MAX - SPEC_MIN) + SPEC_MIN)[None]))
    if last:
        pieces.append(cfm.vocoder.close())
    pieces = [p[0, 0] for p in pieces if p is not None]
    return torch.cat(pieces) if pieces else torch.zeros(0, device=cfm.ge.device)


def join(previous: torch.Tensor, current: torch.Tensor, size: int) -> torch.Tensor:
    """`current` from where it best continues `previous`'s last `size` samples (the offset, within `SEARCH`, whose
    window correlates best with them, normalised by the window's energy), its first `size` samples faded in over
    `previous`'s last ones with a Hann window."""
    if size == 0 or current.shape[-1] < size or previous.shape[-1] < size:
        return current
    tail, head = previous[-size:].float(), current[: size + SEARCH].float()
    correlation = F.conv1d(head.view(1, 1, -1), tail.view(1, 1, -1)).view(-1)
    energy = F.conv1d(head.view(1, 1, -1) ** 2, torch.ones_like(tail).view(1, 1, -1)).view(-1) + 1e-8
    offset = int((correlation / energy.sqrt()).argmax())
    out = current[offset:].float().clone()
    window = torch.hann_window(2 * size, device=out.device)
    n = min(size, out.shape[-1])
    out[:n] = window[:n] * out[:n] + window[size: size + n] * tail[:n]
    return out.to(current.dtype)
