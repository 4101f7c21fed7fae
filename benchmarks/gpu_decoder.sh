#!/usr/bin/env bash
# GPU runs 30-31 (issue 6): the padded decoder. Native Triton pointwise and decoder tests plus the CUDA parity of
# upstream's SynthesizerTrn.decode; the v2ProPlus decoder alone (eager / windows / padded, with a kernel profile and
# every convolution timed alone) under cuDNN's heuristics and, in a second process, its benchmark; then the whole
# SynthesizerTrn.decode (upstream vs optimize_sovits, v2ProPlus and v2).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_decoder_pointwise.py \
  tests/gpt_sovits/test_decoder.py tests/gpt_sovits/test_sovits.py --tb=short 2>&1 | grep -v "^  " | tail -6
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpt_sovits/test_upstream.py -k "synthesizer and cuda" \
  --tb=short 2>&1 | grep -v "^  " | tail -6
for bench in "" --cudnn-benchmark; do
  timeout 150 python3 benchmarks/decoder_gpu.py $bench --tokens 25,250,500 --json "$OUT/decoder$bench.json" \
    2> "$OUT/decoder$bench.log" | cat
  grep -v "^optimizing\|bucket .* ready\|captured\|receptive\|verified" "$OUT/decoder$bench.log" \
    | cut -c1-170 | tail -26
done
timeout 200 python3 benchmarks/sovits_gpu.py --json "$OUT/sovits.json" 2> "$OUT/sovits.log" | cat
grep -v "captured the\|^optimizing\|bucket .* ready\|ready in" "$OUT/sovits.log" | cut -c1-150 | tail -11
