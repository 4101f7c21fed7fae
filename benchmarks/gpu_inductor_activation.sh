#!/usr/bin/env bash
# GPU runs 55-58 (issue 2): BigVGAN-24k without the hand-written activation kernel. fused_activation=inductor: the
# polyphase activation compiled by inductor on its own, the module captured as CUDA graphs (cudagraphs mode). Eager
# in the same process; JSON and logs under $OUT. Run 55 also tried the whole-model compile (reduce-overhead): 450 s
# to compile, stopped by its time limit. Run 56 measured a reverted variant (AMP fold + unbacked batch).
# Run 58: STEPS="fp16 fp16_restart", batch compiled size-oblivious (one graph for batch 1 and batched windows).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; RUN=${RUN:-57}
bench() {  # label, timeout, extra flags
  local label=$1 limit=$2; shift 2
  echo "== $label"
  timeout "$limit" python3 -m tts_compile bench --model bigvgan-24k --device cuda --fused-activation inductor \
    --mode cudagraphs --json "$OUT/bigvgan_run${RUN}_$label.json" "$@" 2> "$OUT/bigvgan_run${RUN}_$label.log" | tail -5
  grep -h "buckets ready\|verified\|float32 copy\|failed\|degrad\|Error" "$OUT/bigvgan_run${RUN}_$label.log" \
    | cut -c1-300 | head -4
}
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_antialias.py 2>&1 | tail -1
STEPS=${STEPS:-"fp16 fp16_restart fp32"}
[[ $STEPS == *fp16* ]] && bench fp16 240 --dtype float16 --lengths 100,500,1000,4000 --cache-dir /tmp/ttsc
[[ $STEPS == *fp16_restart* ]] && bench fp16_restart 120 --dtype float16 --lengths 100 --cache-dir /tmp/ttsc \
  --no-cudnn-benchmark --repeats 3
[[ $STEPS == *fp32* ]] && bench fp32 240 --dtype float32 --no-tf32 --lengths 100,1000
