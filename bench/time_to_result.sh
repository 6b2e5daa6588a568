#!/usr/bin/env bash
# Time to result, side by side on an idle machine: the HF Trainer peer
# (../shared/peers/hf_trainer_mainjob.py, the main job's recipe and token ids), then `make train`
# with empty caches (a new datasets cache and a new XLA compilation cache), and with WARM=1 also a
# second run of the main job on the warm caches. Logs: runs/timing_{peer,first,warm}.log; each ends
# with "wall N s". Run from the repository root after `make setup-test` and
# `.venv/bin/pip install -e '.[bench]'`.
set -u
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export JAXSENT_DATA_DIR="${JAXSENT_DATA_DIR:-$(realpath ../shared/data)}"
cache=$(mktemp -d)
rm -rf runs/imdb_minilm runs/imdb_minilm_warm
mkdir -p runs
t() {
  local start rc
  start=$(date +%s.%N)
  "$@"
  rc=$?
  echo "wall $(echo "$(date +%s.%N) - $start" | bc) s, rc $rc"
}
HF_DATASETS_CACHE=$cache/peer t .venv/bin/python ../shared/peers/hf_trainer_mainjob.py \
  > runs/timing_peer.log 2>&1
HF_DATASETS_CACHE=$cache/jaxsent JAXSENT_COMPILATION_CACHE=$cache/xla t make train \
  > runs/timing_first.log 2>&1
if [ "${WARM:-0}" = 1 ]; then
  HF_DATASETS_CACHE=$cache/jaxsent JAXSENT_COMPILATION_CACHE=$cache/xla t .venv/bin/python \
    -m train --config configs/imdb_minilm.py --workdir runs/imdb_minilm_warm \
    > runs/timing_warm.log 2>&1
fi
tail -n 1 runs/timing_*.log
