"""The GPT-SoVITS versions: per version, what renders audio after the T2S decode, and the shapes of its stages.

Adding a version is one row here (and, if it brings a new kind of stage, that stage).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Version:
    """One GPT-SoVITS version. `renderer` is "decode" (v1-v2ProPlus: `SynthesizerTrn.decode` turns tokens into
    audio) or "cfm" (v3/v4: `decode_encp` conditions a flow-matching model whose mel a vocoder renders)."""

    name: str
    synthesizer: str  # upstream's class of `TTS.vits_model`
    renderer: str
    sample_rate: int
    cfm_window: int | None = None  # frames of one CFM window (upstream's T_chunk)
    cfm_prompt: int | None = None  # prompt mel frames at most in a window (upstream's T_ref)
    upsample: float | None = None  # decode_encp: encoder frames -> CFM frames (nearest, upstream's scale factor)
    masked_per_token: float | None = None  # decode_encp: frames of the WN stack's mask per token (before speed)

    @property
    def stages(self) -> tuple[str, ...]:
        """The optimized stages, as `optimize_pipeline` names them."""
        audio = ("vocoder", "vits_model", "vits_model.cfm") if self.renderer == "cfm" else ("vits_model",)
        return (*audio, "t2s_model.model")


VERSIONS = {v.name: v for v in (
    Version("v1", "SynthesizerTrn", "decode", 32000),
    Version("v2", "SynthesizerTrn", "decode", 32000),
    Version("v2Pro", "SynthesizerTrn", "decode", 32000),
    Version("v2ProPlus", "SynthesizerTrn", "decode", 32000),
    Version("v3", "SynthesizerTrnV3", "cfm", 24000, cfm_window=934, cfm_prompt=468, upsample=1.875,
            masked_per_token=3.875),
    Version("v4", "SynthesizerTrnV3", "cfm", 48000, cfm_window=1000, cfm_prompt=500, upsample=2, masked_per_token=4),
)}


def version(name: object) -> Version:
    """The version named `name`; a ValueError listing the known ones otherwise."""
    if name not in VERSIONS:
        raise ValueError(f"unknown GPT-SoVITS version {name!r}; expected one of {', '.join(VERSIONS)}")
    return VERSIONS[name]
