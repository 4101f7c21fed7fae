#!/usr/bin/env bash
# GPU runs 18-19 (issue 5; run 19 without --profile, EOS row zeroed): upstream T2S decode eager and upstream's CUDAGraphRunner vs optimize_t2s with the Triton
# layers and with torch ops in the captured step, fp16, 250 tokens after a 60 + 75 prefix; token parity, host
# syncs; per-kernel device time of the uncaptured kernel step.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
timeout 500 python3 benchmarks/t2s_gpu.py --variants kernels,torch --json "$OUT/t2s.json" \
  --profile "$OUT/t2s_profile.txt" 2> "$OUT/t2s.log" | cat
grep -v "^use early\|^T2S\|^Infer Speed\|^Loading" "$OUT/t2s.log" | cut -c1-300 | tail -14
