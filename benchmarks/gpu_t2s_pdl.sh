#!/usr/bin/env bash
# GPU run 38 (issue 5): programmatic dependent launches in the T2S step. The T2S kernel and parity tests natively;
# the step's tile sweep at 1 and 8 rows with PDL and the default tile without it; then the decode against upstream
# (one row and BATCH rows, fp16).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pytest -q -p no:cacheprovider tests/kernels/test_t2s_sample.py tests/kernels/test_t2s_decode.py \
  tests/gpt_sovits/test_t2s.py 2>&1 | tail -2
python3 -m pytest -q -p no:cacheprovider tests/gpt_sovits/test_upstream.py -k "t2s" 2>&1 | tail -2
for rows in 1 8; do
  timeout 150 python3 benchmarks/t2s_kernel_tiles.py --rows $rows --json "$OUT/tiles$rows-pdl.json" 2>&1 | tail -7
  timeout 60 python3 benchmarks/t2s_kernel_tiles.py --rows $rows --tiles 1 --no-pdl --json "$OUT/tiles$rows-plain.json" \
    2>&1 | tail -7
done
timeout 300 python3 benchmarks/t2s_gpu.py --variants kernels --batch "${BATCH:-8}" --json "$OUT/t2s.json" \
  2> "$OUT/t2s.log" | cat
grep -v "^use early\|^T2S\|^Infer Speed\|^Loading" "$OUT/t2s.log" | cut -c1-250 | tail -6
