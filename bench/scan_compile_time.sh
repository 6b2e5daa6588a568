#!/usr/bin/env bash
# scan_layers vs unrolled: compile time of BERT-large's (24 layers) train step for v5e-8 (global
# batch 64 x 512 tokens, dp, remat=full: without remat the scanned step does not fit), side by
# side, one after the other, with the persistent compilation cache off (train.plan turns it off).
# Writes docs/tpu/scan-compile-{unrolled,scan}.json and prints each train shape's compile seconds.
set -eu
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1
for scan in False True; do
  name=$([ "$scan" = True ] && echo scan || echo unrolled)
  .venv/bin/python -m train.plan --config configs/bert_base_imdb.py \
    --config.model.name=bert-large --topology=v5e:2x4 \
    --config.train.global_batch_size=64 --config.train.eval_batch_size=64 \
    --config.model.remat=full --config.model.scan_layers=$scan --output "docs/tpu/scan-compile-$name.json" \
    > "docs/tpu/scan-compile-$name.txt" 2>&1 || true
  .venv/bin/python -c "import json,sys; p=json.load(open(sys.argv[1])); \
print(sys.argv[2], [(s['step'], round(s['compile_seconds'], 1)) for s in p['shapes']])" \
    "docs/tpu/scan-compile-$name.json" "$name"
done
