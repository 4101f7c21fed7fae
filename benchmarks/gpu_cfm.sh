#!/usr/bin/env bash
# GPU run 13 (issue 6): upstream CFM.inference eager vs optimize_cfm (inductor blocks + captured loop, and
# captured loop of eager blocks), fp16 windows as TTS.py sends them, fp32 parity; CFM parity tests.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpt_sovits -k cfm 2>&1 | tail -3
timeout 400 python3 benchmarks/cfm_gpu.py --json "$OUT/cfm.json" 2> "$OUT/cfm.log" | cat
grep -v "^optimize_cfm" "$OUT/cfm.log" | grep -v "^\[" | tail -14
