#!/usr/bin/env bash
# GPU run C (issue 3, banded-matmul kernel): native kernel tests, tile sweep, activation vs NVIDIA, whole BigVGAN-24k.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels -k "not spills" 2>&1 | grep -E "passed|failed|Error|assert" | head -8
timeout 120 python3 benchmarks/kernel_tiles.py --json "$OUT/tiles.json" 2>&1 | tail -100 > "$OUT/tiles.log"
python3 - "$OUT/tiles.json" <<'PY'
import json, sys, collections
rows = json.load(open(sys.argv[1])); total = collections.defaultdict(float)
for r in rows: total[(r["layout"], r["tile"], r["warps"])] += r["ms"]
for key, ms in sorted(total.items(), key=lambda kv: kv[1]): print(*key, f"{ms:.3f} ms over 6 layers")
PY
timeout 330 python3 benchmarks/activation_gpu.py --nvidia-wheel .whl/bigvgan-2.4.1-py3-none-any.whl \
  --modes cudagraphs --json "$OUT/activation.json" 2> "$OUT/activation.log" | grep -v "^\[\|g++\|nvcc"
grep -h "failed\|degraded\|continuing\|Error" "$OUT"/*.log | cut -c1-250 | head -5
