#!/usr/bin/env bash
# Issue 2+3 GPU run: native kernel tests, kernel and model comparisons, then the library benchmark. Logs to $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tail -3
timeout 330 python3 benchmarks/activation_gpu.py --nvidia-wheel .whl/bigvgan-2.4.1-py3-none-any.whl \
  --json "$OUT/activation.json" 2> "$OUT/activation.log"
grep -h "ready in\|verified\|failed\|start-up" "$OUT/activation.log" | cut -c1-200 | tail -8
bench() { timeout 150 python3 -m tts_compile bench --device cuda --dtype float16 --json "$OUT/vocoder.json" "$@"; }
bench --model hifigan-v4 --mode cudagraphs --lengths 100,500,1000,4000 2> "$OUT/v4_cg.log"
bench --model hifigan-v4 --mode cudagraphs --no-cudnn-benchmark --lengths 100,1000,4000 2> "$OUT/v4_cg_nobench.log"
