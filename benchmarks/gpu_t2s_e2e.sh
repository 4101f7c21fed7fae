#!/usr/bin/env bash
# GPU runs 18-19 and 27 (issue 5): upstream T2S decode eager and upstream's CUDAGraphRunner vs optimize_t2s with the
# Triton layers (and, since run 27, the fused sampling launch) and with torch ops in the captured step, fp16, 250
# tokens after a 60 + 75 prefix; token parity, host syncs; per-kernel device time of the uncaptured kernel step.
# TESTS=1 first runs the T2S kernel tests natively and the T2S parity tests against upstream on CUDA.
# BATCH=N (run 35 on): also N rows through infer_panel_batch_infer, upstream's batched loop vs optimize_t2s.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
if [ "${TESTS:-0}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/kernels/test_t2s_sample.py tests/kernels/test_t2s_decode.py \
    tests/gpt_sovits/test_t2s.py 2>&1 | tail -2
  python3 -m pytest -q -p no:cacheprovider tests/gpt_sovits/test_upstream.py -k "t2s" 2>&1 | tail -2
fi
timeout 400 python3 benchmarks/t2s_gpu.py --variants "${VARIANTS:-kernels,torch}" --batch "${BATCH:-0}" \
  --json "$OUT/t2s.json" \
  --profile "$OUT/t2s_profile.txt" 2> "$OUT/t2s.log" | cat
grep -v "^use early\|^T2S\|^Infer Speed\|^Loading" "$OUT/t2s.log" | cut -c1-300 | tail -30
