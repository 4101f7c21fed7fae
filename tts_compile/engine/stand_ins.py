"""The engine over the project's stand-in models (random weights, tiny): runs anywhere, on the CPU, without
GPT-SoVITS; the audio is noise, but every stage and every path of the engine runs. With a character-level frontend
(`segments`) and a voice of random prompt features (`voice`), for tests, the CLI and a server without a config."""

from __future__ import annotations

import re

import torch

from ..gpt_sovits.models.dit import DiTConfig, build_flow_matching
from ..gpt_sovits.models.t2s import build_t2s
from ..gpt_sovits.models.vits import VITSConfig, build_vits
from ..gpt_sovits.versions import version as version_of
from ..models import build_model
from .config import EngineConfig
from .engine import Engine
from .request import Segment, Voice

PHONES = 39  # phone ids 1..39: the stand-in T2S reads 40, the stand-in synthesizer 50
MELS = 32  # the tiny vocoders' mel bins, and the stand-in CFM's
PUNCTUATION = "。，、；：？！.,;:?!\n"


def models(version: str, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
           ) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module | None]:
    """(T2S, synthesizer, vocoder or None) of `version`'s shapes, on `device` in `dtype`."""
    shape = version_of(version)
    t2s = build_t2s(seed=seed)
    vits = build_vits(VITSConfig(version=version, features=24), seed=seed + 1)
    vocoder = None
    if shape.renderer == "cfm":
        vits.cfm = build_flow_matching(DiTConfig(mel_dim=MELS, text_dim=24), seed=seed + 2)
        vocoder = build_model("bigvgan-tiny" if version == "v3" else "hifigan-tiny", seed=seed + 3)
    return tuple(m if m is None else m.to(device, dtype) for m in (t2s, vits, vocoder))


def engine(version: str = "v2ProPlus", seed: int = 0, config: EngineConfig | None = None,
           device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **options) -> Engine:
    """An engine over the stand-ins of `version`, on `device` in `dtype`."""
    return Engine.from_models(version, *models(version, seed, device, dtype), config, **options)


def voice(version: str, seed: int = 0, prompt: bool = True) -> Voice:
    """A voice of random prompt tokens, phones, BERT features and references, in the stand-ins' shapes (without
    `prompt`: no prompt tokens, phones or features, upstream's no-prompt mode)."""
    gen = torch.Generator().manual_seed(seed)
    config = VITSConfig(version=version)
    phones = torch.randint(1, PHONES + 1, (6,), generator=gen)
    pro = "Pro" in version
    tokens, bert = torch.randint(0, 64, (8,), generator=gen), 0.1 * torch.randn(1024, 6, generator=gen)
    if not prompt:
        tokens, phones, bert = tokens[:0], phones[:0], bert[:, :0]
    return Voice(prompt_tokens=tokens, prompt_phones=phones, prompt_bert=bert,
                 refer=(torch.rand(1, config.spec_bins, 30, generator=gen),),
                 sv_emb=(torch.randn(1, config.sv_dim, generator=gen),) if pro else None,
                 mel=torch.rand(1, MELS, 40, generator=gen) * 2 - 1 if version in ("v3", "v4") else None)


def segments(text: str) -> list[Segment]:
    """A character-level frontend: the text cut after punctuation, each character a phone (its code point folded
    into the stand-ins' phone ids) with BERT features drawn from its code point."""
    pieces = [p.strip() for p in re.split(f"(?<=[{re.escape(PUNCTUATION)}])", text) if p.strip()]
    return [Segment(torch.tensor([ord(c) % PHONES + 1 for c in piece]),
                    torch.stack([0.1 * torch.randn(1024, generator=torch.Generator().manual_seed(ord(c)))
                                 for c in piece], 1)) for piece in pieces]
