"""The Triton kernel equals the float64 reference (TRITON_INTERPRET=1 on CPU via conftest; natively on a GPU)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tts_compile.kernels.antialias import anti_aliased_snake_beta

from .test_antialias import _inputs

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)
TRITON_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # float32 math, rounded once


@given(taps=st.sampled_from([2, 4, 12]), frames=st.integers(1, 70), channels=st.integers(1, 9),
       batch=st.integers(1, 2), channels_last=st.booleans(), log_scale=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_triton_kernel_matches_the_reference(taps, frames, channels, batch, channels_last, log_scale, dtype,
                                             seed) -> None:
    """Run through TRITON_INTERPRET=1 on CPU (set in conftest), natively on a GPU machine."""
    from tts_compile.kernels.antialias_triton import anti_aliased_snake_triton

    x, (alpha, beta), (up, down) = _inputs(batch, channels, frames, taps, channels_last, dtype, seed)
    if not log_scale:
        alpha, beta = alpha.abs() + 0.1, beta.abs() + 0.1
    a, b = (alpha.exp(), beta.exp()) if log_scale else (alpha, beta)
    expected = anti_aliased_snake_beta(x.double(), a.double(), b.double(), up.double(), down.double())
    got = anti_aliased_snake_triton(*(t.to(DEVICE) for t in (x, alpha.to(dtype), beta.to(dtype), up, down)),
                                    log_scale).cpu()
    assert got.dtype == dtype and got.stride() == x.stride()
    error = float((got.double() - expected).abs().max() / expected.abs().max())
    # inputs and parameters are rounded to `dtype` before the kernel sees them: compare against that rounding too
    rounded = anti_aliased_snake_beta(x.double(), (alpha.to(dtype).double().exp() if log_scale else
                                      alpha.to(dtype).double()), (beta.to(dtype).double().exp() if log_scale else
                                      beta.to(dtype).double()), up.double(), down.double())
    error = min(error, float((got.double() - rounded).abs().max() / rounded.abs().max()))
    assert error <= TRITON_TOLERANCE[dtype]
