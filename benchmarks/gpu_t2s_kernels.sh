#!/usr/bin/env bash
# GPU run 16 (issue 5): the Triton decode layers. Native-GPU runs of the kernel tests and the upstream T2S parity
# tests (CUDA: captured step + kernels, float32), then the tile sweep and the per-launch-kind times, batch 1 and 8.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_t2s_decode.py tests/gpt_sovits -k t2s -x --tb=short 2>&1 | grep -v "^  " | tail -25
timeout 150 python3 benchmarks/t2s_kernel_tiles.py --json "$OUT/tiles_rows1.json" 2>&1 | tail -18
timeout 100 python3 benchmarks/t2s_kernel_tiles.py --rows 8 --json "$OUT/tiles_rows8.json" 2>&1 | tail -8
