"""Exploration (GPU): where eager vocoder time goes, and which variants make it faster. Notes in NOTES.md.

Variants, each timed eager and as one captured CUDA graph (fp16, medians after warm-up), with its max error
against an fp32 eager reference:
  base   eager model, cuDNN benchmark off      bench  cuDNN benchmark on
  cl     convolutions as channels-last conv2d  poly   anti-aliased activations as a compiled polyphase function
  cl+poly both
Usage: python benchmarks/explore_vocoder_gpu.py  (writes $OUT/explore.json)
"""

import copy
import json
import os
import statistics
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

from tts_compile.kernels.antialias import anti_aliased_snake_beta
from tts_compile.models import MODELS, build_model
from tts_compile.models.bigvgan import AntiAliasedSnakeBeta

DEV, DT = "cuda", torch.float16
RESULTS = {}


def med_ms(fn, n=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def graph_ms(fn, x):
    static = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn(static)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(static)
    ms = med_ms(g.replay, 20)
    del g
    return ms


class CLConv(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv, self.transposed = conv, isinstance(conv, nn.ConvTranspose1d)
        self.w4 = conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)

    def forward(self, x):
        c = self.conv
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        if self.transposed:
            y = F.conv_transpose2d(x4, self.w4, c.bias, (1, c.stride[0]), (0, c.padding[0]), (0, c.output_padding[0]),
                                   c.groups, (1, c.dilation[0]))
        else:
            y = F.conv2d(x4, self.w4, c.bias, (1, c.stride[0]), (0, c.padding[0]), (1, c.dilation[0]), c.groups)
        return y.squeeze(2)


def _act(x, la, lb, f):
    return anti_aliased_snake_beta(x, la.exp(), lb.exp(), f, f)


POLY = torch.compile(_act, dynamic=True)


class PolyAct(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.act, self.f = act, tuple(act.fir.float().tolist())

    def forward(self, x):
        return POLY(x, self.act.log_alpha, self.act.log_beta, self.f)


def swap(model, kind):
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if "cl" in kind and isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):
                setattr(mod, child_name, CLConv(child))
            if "poly" in kind and isinstance(child, AntiAliasedSnakeBeta):
                setattr(mod, child_name, PolyAct(child))
    return model


def profile(model, x, label):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        model(x)
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]
    total = sum(e.device_time_total for e in prof.key_averages())
    print(f"--- {label}: top CUDA kernels (total {total / 1e3:.1f} ms)")
    for e in rows:
        print(f"{e.device_time_total / 1e3:8.2f} ms {e.count:5d}x  {e.key[:90]}")
    RESULTS[f"profile {label}"] = [(e.key[:90], e.device_time_total / 1e3, e.count) for e in rows]


def explore(name, variants, lengths, graph_lengths):
    base32 = build_model(name).to(DEV)
    base = copy.deepcopy(base32).half()
    n_mels = MODELS[name].n_mels
    xs = {t: torch.randn(1, n_mels, t, device=DEV) for t in set(lengths) | set(graph_lengths)}
    with torch.inference_mode():
        ref = base32(xs[1000])
        profile(base, xs[1000].half(), f"{name} eager T=1000")
        for kind in variants:
            torch.backends.cudnn.benchmark = kind != "base"
            model = base if kind in ("base", "bench") else swap(base, kind)
            row = {}
            for t in lengths:
                row[f"eager {t}"] = med_ms(lambda: model(xs[t].half()), 5 if t >= 4000 else 10)
            for t in graph_lengths:
                row[f"graph {t}"] = graph_ms(model, xs[t].half())
            out = model(xs[1000].half()).float()
            row["max_abs_vs_fp32"] = float((out - ref).abs().max())
            row["peak"] = float(ref.abs().max())
            RESULTS[f"{name} {kind}"] = row
            print(f"{name:12s} {kind:8s} " + "  ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
    torch.backends.cudnn.benchmark = False


def cudagraph_trees_per_thread():
    """Does torch.compile(mode='reduce-overhead') re-record its graphs in a new thread?"""
    from torch._inductor import cudagraph_trees

    net = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 3, padding=1)).to(DEV)
    fn = torch.compile(net, mode="reduce-overhead")
    x = torch.randn(1, 8, 64, device=DEV)
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
    main_manager = id(cudagraph_trees.get_container(torch.cuda.current_device()).tree_manager)
    seen = {}

    def worker():
        with torch.inference_mode():
            t = time.perf_counter()
            fn(x)
            torch.cuda.synchronize()
            seen["first_call_ms"] = 1e3 * (time.perf_counter() - t)
            for _ in range(3):
                fn(x)
        seen["same_manager"] = id(cudagraph_trees.get_container(torch.cuda.current_device()).tree_manager) == main_manager

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    RESULTS["cudagraph_trees_thread"] = seen
    print("cudagraph trees in a new thread:", seen)


if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name())
    cudagraph_trees_per_thread()
    explore("hifigan-v4", ["base", "bench", "cl"], [100, 1000, 4000], [100, 528, 1000])
    explore("bigvgan-24k", ["base", "bench", "cl", "poly", "cl+poly"], [100, 1000, 4000], [100, 584, 1000])
    out = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out, "explore.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)
