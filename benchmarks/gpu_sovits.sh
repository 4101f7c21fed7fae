#!/usr/bin/env bash
# GPU run 20 (issue 6): upstream SynthesizerTrn.decode parity tests on CUDA (captured stages, float32), then
# upstream decode eager vs optimize_sovits, fp16, v2ProPlus and v2 at 25-500 tokens (decoder captured without
# inductor), and v2ProPlus with the decoder compiled by inductor (reduce-overhead).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpt_sovits/test_upstream.py -k "synthesizer and cuda" \
  tests/gpt_sovits/test_sovits.py -x --tb=short 2>&1 | grep -v "^  " | tail -15
timeout 200 python3 benchmarks/sovits_gpu.py --json "$OUT/sovits_cudagraphs.json" 2> "$OUT/sovits_cudagraphs.log" | cat
grep -v "captured the\|^optimizing\|bucket .* ready" "$OUT/sovits_cudagraphs.log" | cut -c1-250 | tail -12
timeout 250 python3 benchmarks/sovits_gpu.py --versions v2ProPlus --mode reduce-overhead \
  --json "$OUT/sovits_reduce_overhead.json" 2> "$OUT/sovits_reduce_overhead.log" | cat
grep -v "captured the\|^optimizing\|bucket .* ready" "$OUT/sovits_reduce_overhead.log" | cut -c1-250 | tail -8
