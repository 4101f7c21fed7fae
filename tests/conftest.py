"""Shared fixtures: tiny built-in models, fixed seeds, a hypothesis profile that fits a 2-core CI machine. Without a
GPU, Triton kernels run through Triton's interpreter, switched on before Triton is first imported."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tts_compile.models import MODELS, build_model

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("dev", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY = ("bigvgan-tiny", "hifigan-tiny", "vits-tiny")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_disable_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTS_COMPILE_DISABLE", raising=False)


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    return build_model(name, seed=seed)


def conditioning(name: str, batch: int = 1, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gin = getattr(MODELS[name].config, "gin_channels", 0)
    return {"g": torch.randn(batch, gin, 1, dtype=dtype)} if gin else {}


def mel_for(name: str, frames: int, batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, MODELS[name].n_mels, frames, dtype=dtype)
