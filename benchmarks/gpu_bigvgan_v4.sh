#!/usr/bin/env bash
# GPU runs 51-52 (issues 2, 3): native kernel and pass tests, BigVGAN-24k against NVIDIA's kernel (one process), and
# the v4 vocoder's issue-2 rows. MODE picks the v4 compile mode (run 51: cudagraphs, run 52: reduce-overhead).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; RUN=${RUN:-52}; MODE=${MODE:-reduce-overhead}
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -1
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/kernels tests/passes -k "not spills and not t2s" 2>&1 | grep -E "passed|failed|Error|assert" | head -8
timeout 260 python3 benchmarks/activation_gpu.py --nvidia-wheel .whl/bigvgan-2.4.1-py3-none-any.whl \
  --modes cudagraphs --json "$OUT/activation_run$RUN.json" 2> "$OUT/activation_run$RUN.log" | grep -v "^\[\|g++\|nvcc\|channels="
grep -h "float32 copy\|failed\|Error" "$OUT"/*.log | grep -v "g++\|nvcc" | cut -c1-250 | head -5
timeout 150 python3 -m tts_compile bench --model hifigan-v4 --device cuda --dtype float16 --mode "$MODE" \
  --lengths 100,500,1000,4000 --json "$OUT/v4_run$RUN.json" 2>&1 | tail -7
