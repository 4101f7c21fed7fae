#!/usr/bin/env bash
# GPU run (issue 4): `python -m tts_compile client` against a live service (benchmarks/service.py: api_v2's /tts over
# upstream's own stages, random weights, fp16), first as is, then restarted with optimize_pipeline; same texts,
# WARMUP untimed and REQUESTS timed requests per text, one caller. VERSION=v2ProPlus|v3|v4.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. GPT_SOVITS_HOME=upstream TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
VERSION=${VERSION:-v2ProPlus} REQUESTS=${REQUESTS:-5} WARMUP=${WARMUP:-2}
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
for mode in upstream optimized; do
  ready="/tmp/ready-$mode"; rm -f "$ready"
  python3 benchmarks/service.py --version "$VERSION" --port 9880 --ready-file "$ready" \
    $([ "$mode" = optimized ] && echo --optimize) > "$OUT/service-$VERSION-$mode.log" 2>&1 &
  server=$!
  for _ in $(seq 360); do [ -f "$ready" ] || ! kill -0 $server 2>/dev/null && break; sleep 0.5; done
  grep -v "characters:" "$OUT/service-$VERSION-$mode.log" | tail -3
  python3 -m tts_compile client --url http://127.0.0.1:9880 --requests "$REQUESTS" --warmup "$WARMUP" \
    --param ref_audio_path=/srv/voices/ref.wav --param prompt_text=prompt --param prompt_lang=zh \
    --json "$OUT/client-$VERSION-$mode.json" 2>/dev/null
  kill $server; wait $server 2>/dev/null
done
