#!/usr/bin/env bash
# GPU runs 22-25 (issue 8): one GPT-SoVITS request end to end, upstream as is vs after optimize_pipeline, fp16, the
# client's short / medium / long texts; one version per run:
#   VERSION=v2ProPlus|v3|v4 [CONCURRENCY=4,16] [PARITY=1] bash benchmarks/gpu_pipeline.sh
# PARITY=1 first runs the version's fp32 parity tests against upstream on CUDA.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
if [ "${PARITY:-0}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/gpt_sovits/test_upstream.py -k "cuda and $VERSION" 2>&1 | tail -3
fi
timeout 540 python3 benchmarks/pipeline.py --versions "$VERSION" --concurrency "${CONCURRENCY:-4,16}" \
  --json "$OUT/pipeline-$VERSION.json" 2> "$OUT/pipeline-$VERSION.log" | cat
grep -v "early stop\|^$\|Removing weight" "$OUT/pipeline-$VERSION.log" | cut -c1-250 | tail -16
