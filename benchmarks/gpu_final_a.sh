#!/usr/bin/env bash
# Final GPU run, part A (issue 2): native kernel tests, the vocoder benchmark for both models and modes.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. HYPOTHESIS_PROFILE=dev
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
CACHE=/tmp/tts_compile_cache
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | grep -E "passed|failed|Error" | head -3
bench() { local t=$1; shift; timeout "$t" python3 -m tts_compile bench --device cuda --cache-dir "$CACHE" \
  --json "$OUT/vocoder.json" "$@"; }
bench 100 --model hifigan-v4 --dtype float16 --mode cudagraphs --lengths 100,500,1000,4000 2> "$OUT/v4_cg.log"
bench 150 --model hifigan-v4 --dtype float16 --mode reduce-overhead --lengths 100,500,1000,4000 2> "$OUT/v4_ro.log"
bench 110 --model bigvgan-24k --dtype float16 --mode cudagraphs --lengths 100,500,1000,4000 2> "$OUT/bv_cg.log"
bench 90 --model bigvgan-24k --dtype float16 --mode cudagraphs --no-cudnn-benchmark \
  --lengths 100,1000,4000,337500 --max-eager-frames 4000 2> "$OUT/bv_cg_restart.log"
bench 60 --model hifigan-v4 --dtype float32 --no-tf32 --mode cudagraphs --lengths 100,1000,4000 2> "$OUT/v4_fp32.log"
grep -h "failed\|degraded\|continuing" "$OUT"/*.log | cut -c1-250 | head -5
