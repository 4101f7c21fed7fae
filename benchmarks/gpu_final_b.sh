#!/usr/bin/env bash
# Final GPU run, part B (issue 3): activation kernels vs NVIDIA's, whole BigVGAN-24k models, fp32 accuracy.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 60 python3 -m tts_compile bench --device cuda --model bigvgan-24k --dtype float32 --no-tf32 \
  --mode cudagraphs --no-cudnn-benchmark --lengths 100,1000 --json "$OUT/vocoder_b.json" 2> "$OUT/bv_fp32.log"
timeout 420 python3 benchmarks/activation_gpu.py --nvidia-wheel .whl/bigvgan-2.4.1-py3-none-any.whl \
  --json "$OUT/activation.json" 2> "$OUT/activation.log" | grep -v "^\[\|g++\|nvcc"
grep -h "failed\|degraded\|continuing\|Error" "$OUT"/*.log | cut -c1-250 | head -5
