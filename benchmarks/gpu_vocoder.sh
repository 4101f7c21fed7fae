#!/usr/bin/env bash
# Vocoder measurements on the GPU machine (issue 2): run from the repo root; writes JSON and logs under $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
CACHE=/tmp/tts_compile_cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
bench() { python3 -m tts_compile bench --device cuda --dtype float16 --cache-dir "$CACHE" --json "$OUT/vocoder.json" "$@"; }
# cold start (empty cache), then a restart with the cache warm and a one-hour mel (337 500 frames at 93.75 fps)
TORCH_LOGS=recompiles bench --model bigvgan-24k --lengths 100,500,1000,4000 2> "$OUT/bigvgan_cold.log"; tail -3 "$OUT/bigvgan_cold.log"
bench --model bigvgan-24k --lengths 100,1000,4000,337500 --max-eager-frames 4000 2> "$OUT/bigvgan_warm.log"
TORCH_LOGS=recompiles bench --model hifigan-v4 --lengths 100,500,1000,4000 2> "$OUT/v4_cold.log"; tail -3 "$OUT/v4_cold.log"
grep -c "Recompiling" "$OUT/bigvgan_cold.log" "$OUT/v4_cold.log"
