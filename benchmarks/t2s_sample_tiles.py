"""Time the fused T2S sampling launch per warp count (issue 5), fp16, GPT-SoVITS's vocabulary (1025): 100 launches
captured in one CUDA graph, median of 20 replays. Usage (GPU): python benchmarks/t2s_sample_tiles.py"""

from __future__ import annotations

import json
import statistics
import sys

import torch

from tests.kernels.test_t2s_sample import _buffers
from tts_compile.kernels import t2s_sample_triton
from tts_compile.kernels.t2s_sample import Sampling

LAUNCHES = 100


def time_launches(warps: int) -> float:
    t2s_sample_triton.NUM_WARPS = warps
    buffers, embedding = _buffers(1025, 1025, 512, torch.float16, 0, 3.0)
    buffers["tokens"] = torch.zeros(1, 2 * LAUNCHES + 200, dtype=torch.long, device="cuda")
    buffers["eos"] = torch.zeros(1, 2 * LAUNCHES + 200, dtype=torch.bool, device="cuda")
    buffers["step"].zero_()
    sampling = Sampling(15, 1.0, 1.0, 1.35)
    def run() -> None:
        t2s_sample_triton.sample_triton(**buffers, embedding=embedding, eos_id=1024, s=sampling)

    run()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(LAUNCHES):
            run()
    times = []
    for _ in range(20):
        buffers["step"].zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / LAUNCHES)
    return statistics.median(times)


if __name__ == "__main__":
    result = {warps: time_launches(warps) for warps in (2, 4, 8, 16)}
    print("\n".join(f"num_warps {w}: {us:.2f} us per launch" for w, us in result.items()))
    with open(sys.argv[1] if len(sys.argv) > 1 else "sample_tiles.json", "w") as out:
        json.dump(result, out)
