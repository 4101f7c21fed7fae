#!/usr/bin/env bash
# GPU runs 14-15 (issue 5): upstream T2S decode eager vs optimize_t2s (captured step of plain torch ops; run 14 also
# timed --modes reduce-overhead and ran the T2S tests), fp16, token parity, host syncs, a per-kernel profile.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpt_sovits -k t2s 2>&1 | tail -3
timeout 420 python3 benchmarks/t2s_gpu.py --json "$OUT/t2s.json" --profile "$OUT/t2s_profile.txt" 2> "$OUT/t2s.log" | cat
grep -v "^use early\|^T2S" "$OUT/t2s.log" | cut -c1-400 | tail -12
