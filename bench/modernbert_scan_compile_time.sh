#!/usr/bin/env bash
# scan_layers vs unrolled: compile time of ModernBERT-base's (22 layers) train step for v5e-8 at
# the seed recipe's 1,536 tokens (configs/modernbert_base_imdb.py: global batch 32, bfloat16
# compute, remat=full), dp, side by side: one after the other on a quiet machine, with the
# persistent compilation cache off (train.plan turns it off). Goal: scan at least 3x faster.
# Writes docs/tpu/modernbert-scan-compile-{unrolled,scan}.json and .txt, prints each shape's
# compile seconds and the train step's ratio. About 15 minutes of both cores of this machine.
#
# MODEL, OUT and EXTRA (further train.plan flags) change what is measured, e.g. a quick check:
#   MODEL=/path/to/tiny_modernbert OUT=/tmp EXTRA=--config.data.max_length=128 bench/modernbert_scan_compile_time.sh
set -eu
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1
MODEL=${MODEL:-modernbert-base}
OUT=${OUT:-docs/tpu}
for scan in False True; do
  name=$([ "$scan" = True ] && echo scan || echo unrolled)
  # shellcheck disable=SC2086  # EXTRA is a list of flags
  .venv/bin/python -m train.plan --config configs/modernbert_base_imdb.py \
    --config.model.name="$MODEL" --topology=v5e:2x4 --config.mesh.strategy=dp \
    --config.model.remat=full --config.model.scan_layers=$scan ${EXTRA:-} \
    --output "$OUT/modernbert-scan-compile-$name.json" \
    > "$OUT/modernbert-scan-compile-$name.txt" 2>&1 || true
  .venv/bin/python -c "import json,sys; p=json.load(open(sys.argv[1])); \
print(sys.argv[2], [(s['step'], round(s['compile_seconds'], 1)) for s in p['shapes']])" \
    "$OUT/modernbert-scan-compile-$name.json" "$name"
done
.venv/bin/python -c "import json,sys; \
train = lambda name: [s['compile_seconds'] for s in json.load(open(f'{sys.argv[1]}/modernbert-scan-compile-{name}.json'))['shapes'] if s['step'] == 'train'][0]; \
print(f\"train step: unrolled {train('unrolled'):.1f} s, scan {train('scan'):.1f} s, {train('unrolled') / train('scan'):.2f}x\")" \
  "$OUT"
