#!/usr/bin/env bash
# GPU run 55 (issue 2): BigVGAN-24k without the hand-written activation kernel. fused_activation=inductor: the
# polyphase activation compiled by inductor, on its own (cudagraphs mode) or inside the whole-model compile
# (reduce-overhead). Eager in the same process; JSON and logs under $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; RUN=${RUN:-55}
bench() {  # label, timeout, extra flags
  local label=$1 limit=$2; shift 2
  echo "== $label"
  timeout "$limit" python3 -m tts_compile bench --model bigvgan-24k --device cuda --dtype float16 \
    --lengths 100,500,1000,4000 --fused-activation inductor --json "$OUT/bigvgan_run${RUN}_$label.json" "$@" \
    2> "$OUT/bigvgan_run${RUN}_$label.log" | tail -6
  grep -h "optimizing\|buckets ready\|verified\|float32 copy\|failed\|degrad\|Error" "$OUT/bigvgan_run${RUN}_$label.log" | cut -c1-300 | head -6
}
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_antialias.py 2>&1 | tail -1
bench regional 240 --mode cudagraphs
bench whole 480 --mode reduce-overhead --cache-dir /tmp/ttsc
