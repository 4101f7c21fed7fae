"""The Triton kernel equals the float64 reference (TRITON_INTERPRET=1 on CPU via conftest; natively on a GPU)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from tts_compile.kernels.antialias import anti_aliased_snake_beta, downsampler_band

from .test_antialias import _inputs

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")
tl = triton.language
kt = pytest.importorskip("tts_compile.kernels.antialias_triton")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)
TRITON_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # float32 math, rounded once


@given(taps=st.sampled_from([2, 4, 12]), frames=st.integers(1, 150), channels=st.integers(1, 40),
       batch=st.integers(1, 2), channels_last=st.booleans(), log_scale=st.booleans(), with_bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_triton_kernel_matches_the_reference(taps, frames, channels, batch, channels_last, log_scale, with_bias,
                                             dtype, seed) -> None:
    """Run through TRITON_INTERPRET=1 on CPU (set in conftest), natively on a GPU machine."""
    from tts_compile.kernels.antialias_triton import anti_aliased_snake_triton

    # the interpreter rounds float32 -> bfloat16 by truncation, the kernel's bias add then differs from torch's by
    # an ulp: that case runs natively only
    assume(not (INTERPRETED and with_bias and dtype == torch.bfloat16))
    x, (alpha, beta), (up, down) = _inputs(batch, channels, frames, taps, channels_last, dtype, seed)
    if not log_scale:
        alpha, beta = alpha.abs() + 0.1, beta.abs() + 0.1
    a, b = (alpha.exp(), beta.exp()) if log_scale else (alpha, beta)
    bias = (torch.randn(channels, generator=torch.Generator().manual_seed(seed + 1)) * 2).to(dtype)
    x_in = x + bias[:, None] if with_bias else x  # the kernel's input: the bias add as torch rounds it
    expected = anti_aliased_snake_beta(x_in.double(), a.double(), b.double(), up.double(), down.double())
    band = downsampler_band(down)
    got = anti_aliased_snake_triton(*(t.to(DEVICE) for t in (x, alpha.to(dtype), beta.to(dtype), up, down, band)),
                                    log_scale, bias.to(DEVICE) if with_bias else None).cpu()
    assert got.dtype == dtype and got.stride() == x.stride()
    error = float((got.double() - expected).abs().max() / expected.abs().max())
    # inputs and parameters are rounded to `dtype` before the kernel sees them: compare against that rounding too
    rounded = anti_aliased_snake_beta(x_in.double(), (alpha.to(dtype).double().exp() if log_scale else
                                      alpha.to(dtype).double()), (beta.to(dtype).double().exp() if log_scale else
                                      beta.to(dtype).double()), up.double(), down.double())
    error = min(error, float((got.double() - rounded).abs().max() / rounded.abs().max()))
    assert error <= TRITON_TOLERANCE[dtype]


@triton.jit
def _sin_squared_kernel(u_ptr, out_ptr, alpha, n, BLOCK: tl.constexpr):
    """SnakeBeta with beta = 1, minus u: the kernel's sin^2(alpha u)."""
    offsets = tl.arange(0, BLOCK)
    u = tl.load(u_ptr + offsets, mask=offsets < n)
    tl.store(out_ptr + offsets, kt._snake(u, alpha, 1.0) - u, mask=offsets < n)


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e5])
def test_polynomial_sine_is_float32_accurate(scale) -> None:
    """The kernel's sine (reduction by a two-part pi, odd polynomial) against float64 sin of the same float32
    argument alpha u, up to |alpha u| = 1e5: SnakeBeta's sin^2 term within 4e-6."""
    g = torch.Generator().manual_seed(7)
    u = torch.rand(4096, generator=g) * 2 - 1
    alpha = 1.7 * scale
    got = torch.empty_like(u, device=DEVICE)
    _sin_squared_kernel[(1,)](u.to(DEVICE), got, alpha, u.numel(), BLOCK=4096)
    argument = (u * torch.tensor(alpha)).double()  # float32 product, as the kernel forms it
    assert float((got.cpu().double() - argument.sin().pow(2)).abs().max()) <= 4e-6


_PTXAS_REPORT = """
import subprocess, sys, tempfile
from pathlib import Path
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tts_compile.kernels import antialias_triton as kt

dtype, channels_last, tiles = sys.argv[1], sys.argv[2] == "1", [tuple(map(int, t.split("x"))) for t in sys.argv[3:]]
left, right = kt.halo(12)
pointers = {name: "*" + dtype for name in ("x_ptr", "out_ptr", "alpha_ptr", "beta_ptr", "bias_ptr")}
scalars = {name: "i32" for name in ("channels", "frames", "sx_b", "sx_c", "sx_t", "so_b", "so_c", "so_t")}
unit = ("sx_c", "so_c") if channels_last else ("sx_t", "so_t")  # what Triton specialises for such inputs
ptxas = Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"
for block_c, block_t in tiles:
    constexprs = {"TAPS": 12, "LOG_SCALE": True, "BLOCK_C": block_c, "BLOCK_T": block_t, "HALO_LEFT": left,
                  "HALO": left + right, "HALF": dtype == "fp16", "HAS_BIAS": True}
    signature = {**pointers, "up_ptr": "*fp32", "down_ptr": "*fp32", "band_ptr": "*fp16", **scalars,
                 **dict.fromkeys(constexprs, "constexpr")}
    source = ASTSource(fn=kt._anti_aliased_snake_kernel, signature=signature,
                       constexprs={**constexprs, **dict.fromkeys(unit, 1)})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": kt.NUM_WARPS})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(compiled.asm["ptx"])
        run = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", "k.ptx", "-o", "k.cubin"], cwd=tmp,
                             capture_output=True, text=True)
    if run.returncode:
        sys.exit("ptxas failed: " + run.stdout + run.stderr)
    spills = [line.strip() for line in (run.stdout + run.stderr).splitlines() if "spill" in line]
    print(f"{block_c}x{block_t}:", *spills)
"""


def _spill_report(dtype: str, channels_last: bool, tiles) -> dict[str, str]:
    """Compile the kernel for sm_90a (no GPU needed) in a process without the interpreter; ptxas's spill line
    per tile."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = [f"{c}x{t}" for c, t in tiles]
    run = subprocess.run([sys.executable, "-c", _PTXAS_REPORT, dtype, str(int(channels_last)), *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return dict(line.split(":", 1) for line in run.stdout.splitlines() if ":" in line)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_every_tile_compiles_for_hopper_without_spills(channels_last: bool, dtype: str) -> None:
    """A spilling tile ran ~20x slower on an H100 (docs/lab-log.md): keep every tile the launcher picks clean."""
    from tts_compile.kernels.antialias_triton import tile

    tiles = sorted({tile(c) for c in (2, 3, 24, 48, 96, 768)})
    report = _spill_report(dtype, channels_last, tiles)
    assert len(report) == len(tiles)
    for name, spills in report.items():
        assert "0 bytes spill stores, 0 bytes spill loads" in spills, (name, spills)
