"""Fused anti-aliased SnakeBeta on the GPU (issue 3): per-layer kernels, then whole BigVGAN-24k models, fp16.

Per layer shape of BigVGAN-24k for a 1000-frame mel: the torch activation (two depthwise convolutions around
SnakeBeta), our Triton kernel (NCL and channels-last input), NVIDIA's fused CUDA kernel (built here from the
`bigvgan` wheel's own sources, never committed): median time and achieved GB/s (input read + output written).
Then whole models, one run: eager, eager with NVIDIA's kernel in every activation (what `use_cuda_kernel=True`
does), and optimize_vocoder. Usage (repo root, GPU machine):
    python benchmarks/activation_gpu.py --nvidia-wheel .whl/bigvgan-2.4.1-py3-none-any.whl --json $OUT/activation.json
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
import zipfile
from pathlib import Path

import torch
from torch import nn

from tts_compile import optimize_vocoder
from tts_compile.kernels import anti_aliased_snake, downsampler_band
from tts_compile.models import build_model
from tts_compile.models.bigvgan import AntiAliasedSnakeBeta

DEV, DT, N_MELS = "cuda", torch.float16, 100
STAGES = [(768, 4), (384, 16), (192, 32), (96, 64), (48, 128), (24, 256)]  # channels, samples per mel frame


def median_ms(fn, repeats=20) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def build_nvidia(wheel: str):
    """NVIDIA's anti_alias_activation_cuda extension from the wheel, sm_90 only (CUDA 13 has no sm_70)."""
    scratch = Path("/tmp/nvidia_bigvgan")
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("bigvgan/alias_free_activation/"):
                z.extract(name, scratch)
    load_py = scratch / "bigvgan/alias_free_activation/cuda/load.py"
    text = re.sub(r'"arch=compute_\d+,code=sm_\d+"', '"arch=compute_90,code=sm_90"', load_py.read_text())
    load_py.write_text(text)
    (scratch / "bigvgan/__init__.py").write_text("")
    sys.path.insert(0, str(scratch))
    from bigvgan.alias_free_activation.cuda import load

    started = time.perf_counter()
    ext = load.load()
    print(f"NVIDIA kernel built in {time.perf_counter() - started:.0f} s")
    return ext


class NvidiaActivation(nn.Module):
    """Our activation module's parameters through NVIDIA's fused kernel (contiguous NCL input)."""

    def __init__(self, act: AntiAliasedSnakeBeta, ext) -> None:
        super().__init__()
        self.act, self.ext = act, ext
        self.fir = act.fir.to(DT).view(1, 1, -1)

    def forward(self, x):
        return self.ext.forward(x.contiguous(), self.fir, self.fir, self.act.log_alpha, self.act.log_beta)


def swap_nvidia(model, ext):
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, AntiAliasedSnakeBeta):
                setattr(parent, name, NvidiaActivation(child, ext))
    return model


def layers(ext, frames: int) -> list[dict]:
    rows = []
    for channels, rate in STAGES:
        act = AntiAliasedSnakeBeta(channels).to(DEV)
        with torch.no_grad():
            act.log_alpha.normal_(0, 0.3)
            act.log_beta.normal_(0, 0.3)
        act = act.to(DT)
        x = torch.randn(1, channels, frames * rate, device=DEV, dtype=DT)
        x_cl = x.transpose(1, 2).contiguous().transpose(1, 2)
        up = act.fir.float()
        band = downsampler_band(up)
        with torch.inference_mode():
            ref = AntiAliasedSnakeBeta(channels).to(DEV).double()
            ref.load_state_dict({k: v.double() for k, v in act.state_dict().items()})
            expected = ref(x.double())
            variants = {
                "torch": lambda: act(x),
                "triton": lambda: anti_aliased_snake(x, act.log_alpha, act.log_beta, up, up, band, None, True),
                "triton_cl": lambda: anti_aliased_snake(x_cl, act.log_alpha, act.log_beta, up, up, band, None, True),
            }
            if ext is not None:
                fir = act.fir.view(1, 1, -1)
                variants["nvidia"] = lambda: ext.forward(x, fir, fir, act.log_alpha, act.log_beta)
            bytes_moved = 2 * x.numel() * x.element_size()
            row = {"channels": channels, "samples": x.shape[-1]}
            for name, fn in variants.items():
                ms = median_ms(fn)
                row[f"{name}_ms"] = ms
                row[f"{name}_GBps"] = bytes_moved / ms / 1e6
                row[f"{name}_max_abs_vs_fp64"] = float((fn().double() - expected).abs().max())
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def models(ext, lengths, modes, save) -> list[dict]:
    eager = build_model("bigvgan-24k").to(DEV, DT)
    contenders = {"eager": eager}
    if ext is not None:
        contenders["nvidia_kernel_eager"] = swap_nvidia(eager, ext)
    for mode in modes:
        started = time.perf_counter()
        contenders[f"optimized_{mode}"] = optimize_vocoder(eager, compile_mode=mode, cache_dir="/tmp/tts_compile_cache")
        print(f"optimize_vocoder({mode}) start-up {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    with torch.inference_mode():
        for frames in lengths:
            mel = torch.randn(1, N_MELS, frames, device=DEV, dtype=DT)
            reference = eager(mel)
            row = {"frames": frames}
            for name, model in contenders.items():
                row[f"{name}_ms"] = median_ms(lambda: model(mel), 10)
                row[f"{name}_max_abs_diff"] = float((model(mel).float() - reference.float()).abs().max())
            rows.append(row)
            save(rows)
            print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
    for mode in modes:
        stats = contenders[f"optimized_{mode}"].optimization_stats()
        print(mode, {k: stats[k] for k in ("failure", "captures", "replays", "fallbacks")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nvidia-wheel", default=None)
    parser.add_argument("--json", default="activation.json")
    parser.add_argument("--lengths", default="100,500,1000,4000")
    parser.add_argument("--modes", default="cudagraphs,reduce-overhead")
    args = parser.parse_args()
    print(torch.__version__, torch.cuda.get_device_name())
    ext = build_nvidia(args.nvidia_wheel) if args.nvidia_wheel else None
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "float16",
              "command": " ".join(sys.argv), "layers_T1000": layers(ext, 1000)}
    Path(args.json).write_text(json.dumps(result, indent=1))

    def save(rows):
        result["models"] = rows
        Path(args.json).write_text(json.dumps(result, indent=1))

    models(ext, [int(n) for n in args.lengths.split(",")], args.modes.split(","), save)


if __name__ == "__main__":
    main()
