#!/usr/bin/env bash
# Vocoder measurements on the GPU machine (issue 2): run from the repo root; writes JSON and logs under $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
CACHE=/tmp/tts_compile_cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
bench() { python3 -m tts_compile bench --device cuda --cache-dir "$CACHE" --json "$OUT/vocoder.json" "$@"; }
# fp16: a cold start (empty cache), then a restart with the cache warm, with a one-hour mel (337 500 frames)
TORCH_LOGS=recompiles bench --model bigvgan-24k --dtype float16 --lengths 100,500,1000,4000 2> "$OUT/bigvgan_cold.log"
bench --model bigvgan-24k --dtype float16 --lengths 1000,337500 --max-eager-frames 4000 2> "$OUT/bigvgan_warm.log"
TORCH_LOGS=recompiles bench --model hifigan-v4 --dtype float16 --lengths 100,500,1000,4000 2> "$OUT/v4_cold.log"
bench --model hifigan-v4 --dtype float16 --lengths 1000,360000 --max-eager-frames 4000 2> "$OUT/v4_warm.log"
# fp32 accuracy and speed
bench --model bigvgan-24k --dtype float32 --lengths 100,1000,4000 2> "$OUT/bigvgan_fp32.log"
bench --model hifigan-v4 --dtype float32 --lengths 100,1000,4000 2> "$OUT/v4_fp32.log"
grep -h "ready in\|verified\|probed\|failed" "$OUT"/*.log | cut -c1-220
grep -c "Recompiling" "$OUT/bigvgan_cold.log" "$OUT/v4_cold.log"
