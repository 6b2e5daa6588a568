#!/usr/bin/env bash
# SST-5, side by side on an idle machine: for each seed, jaxsent (configs/$CONFIG.py, empty XLA
# compilation cache) and then the HF Trainer peer (bench/hf_trainer_sst5.py), on the same
# examples and token ids. Resumable: a seed whose folder holds its result is skipped. Then
# bench/sst5_compare.py prints the table of docs/benchmarks.md. Run from the repository root after
# `make setup-test` and `.venv/bin/pip install -e '.[bench]'`:
#     [CONFIG=sst5_minilm_phrases] [OUT=runs/sst5] [SEEDS="0 1 2"] bench/sst5_runs.sh
set -u
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export JAXSENT_DATA_DIR="${JAXSENT_DATA_DIR:-$(realpath ../shared/data)}"
config=${CONFIG:-sst5_minilm_phrases}
out=${OUT:-runs/sst5/$config}
mkdir -p "$out/jaxsent" "$out/peer"
for seed in ${SEEDS:-0 1 2}; do
  run="$out/jaxsent/seed_$seed"
  if [ ! -f "$run/timing.json" ]; then
    rm -rf "$run"
    cache=$(mktemp -d)
    JAXSENT_COMPILATION_CACHE=$cache .venv/bin/python -m train --config "configs/$config.py" \
      --workdir "$run" --config.seed="$seed" > "$out/jaxsent_seed_$seed.log" 2>&1
    rm -rf "$cache"
  fi
  if [ ! -f "$out/peer/seed_$seed/result.json" ]; then
    .venv/bin/python bench/hf_trainer_sst5.py --seed "$seed" --config "$config" \
      --out "$out/peer/seed_$seed" \
      > "$out/peer_seed_$seed.log" 2>&1
  fi
done
.venv/bin/python bench/sst5_compare.py --jaxsent "$out/jaxsent" --peer "$out/peer" \
  --seeds ${SEEDS:-0 1 2}
