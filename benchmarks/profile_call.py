"""Where does one optimized call spend its time? Host (Python, launches) vs device, with a profiler table.

Usage (GPU machine, repo root): python benchmarks/profile_call.py [model] [frames] [mode]
Mode `eager` runs the optimized path's windows and passes (fused activation, channels-last) without graphs, so
the profiler sees each kernel of what a captured call replays.
"""

import statistics
import sys
import time

import torch

from tts_compile import optimize_vocoder
from tts_compile.models import MODELS, build_model

name = sys.argv[1] if len(sys.argv) > 1 else "hifigan-v4"
frames = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
mode = sys.argv[3] if len(sys.argv) > 3 else "cudagraphs"
model = build_model(name).cuda().half()
passes = {"fused_activation": "on", "channels_last": "on"} if mode == "eager" else {}
vocoder = optimize_vocoder(model, compile_mode=mode, verify=False, **passes)
mel = torch.randn(1, MODELS[name].n_mels, frames, device="cuda", dtype=torch.float16)
with torch.inference_mode():
    for _ in range(3):
        vocoder(mel)
    torch.cuda.synchronize()
    wall, host = [], []
    for _ in range(20):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        vocoder(mel)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        host.append(1e3 * (t1 - t0))
        wall.append(1e3 * (time.perf_counter() - t0))
    print(f"{name} T={frames} {mode}: wall {statistics.median(wall):.2f} ms, host (enqueue) "
          f"{statistics.median(host):.2f} ms")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        vocoder(mel)
        torch.cuda.synchronize()
    events = prof.key_averages()
    print("device total %.2f ms" % (sum(e.self_device_time_total for e in events) / 1e3))
    for key, label in (("self_cpu_time_total", "host"), ("self_device_time_total", "device")):
        print(f"--- top {label} (self)")
        for e in sorted(events, key=lambda e: -getattr(e, key))[:20]:
            print(f"{getattr(e, key) / 1e3:8.3f} ms {e.count:5d}x {e.key[:100]}")
