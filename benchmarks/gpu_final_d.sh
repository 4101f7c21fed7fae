#!/usr/bin/env bash
# GPU run D (issue 3, kernel at the swept tile): native kernel tests, activation vs NVIDIA, whole BigVGAN-24k,
# and a per-kernel device-time breakdown of one optimized call (compile_mode eager: same windows and passes).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels -k "not spills" 2>&1 | grep -E "passed|failed|Error|assert" | head -8
timeout 330 python3 benchmarks/activation_gpu.py --nvidia-wheel .whl/bigvgan-2.4.1-py3-none-any.whl \
  --modes cudagraphs --json "$OUT/activation.json" 2> "$OUT/activation.log" | grep -v "^\[\|g++\|nvcc"
timeout 90 python3 benchmarks/profile_call.py bigvgan-24k 1000 eager > "$OUT/profile_bigvgan_1000.txt" 2>&1
head -40 "$OUT/profile_bigvgan_1000.txt" | cut -c1-160
grep -h "failed\|degraded\|continuing\|Error" "$OUT"/*.log | cut -c1-250 | head -5
