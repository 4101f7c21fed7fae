#!/usr/bin/env bash
# Native kernel tests, a profile of one optimized call, kernel and model comparisons with NVIDIA's kernel.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 150 python3 -m pytest -q -p no:cacheprovider -x tests/kernels 2>&1 | grep -E "passed|failed|Error|error" | head -5
timeout 90 python3 benchmarks/profile_call.py hifigan-v4 1000 cudagraphs 2> "$OUT/profile.log"
timeout 330 python3 benchmarks/activation_gpu.py --nvidia-wheel .whl/bigvgan-2.4.1-py3-none-any.whl \
  --modes cudagraphs --json "$OUT/activation.json" 2> "$OUT/activation.log" | grep -v "^\[\|g++\|nvcc"
grep -h "ready in\|verified\|failed\|Error" "$OUT/activation.log" | cut -c1-200 | tail -5
