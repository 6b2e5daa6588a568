"""jaxsent's SST-5 runs against the HF Trainer peer, seed by seed, on the same test sentences.

For each seed: jaxsent's run folder (``python -m train --config configs/sst5_minilm.py
--config.seed=S``) and the peer's (``bench/hf_trainer_sst5.py --seed S``); their test logits,
matched by example id, give the accuracy, macro-F1, NLL and ECE of each, and a paired bootstrap
of the accuracy difference (jaxsent - peer, 2,000 resamples of the 2,210 sentences, 95%
percentile interval; `jaxsent.stats.paired_bootstrap`). Prints a markdown table.

    .venv/bin/python bench/sst5_compare.py --jaxsent runs/sst5/jaxsent --peer runs/sst5/peer \\
        --seeds 0 1 2

``--jaxsent`` and ``--peer`` hold one ``seed_<S>`` folder per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.getcwd())
from jaxsent import multiclass_metrics, reporting, stats  # noqa: E402

METRICS = ("accuracy", "macro_f1", "nll", "ece")


def _jaxsent(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    predictions = reporting.read_predictions(os.path.join(folder, "predictions.parquet"))
    with open(os.path.join(folder, "timing.json")) as f:
        timing = json.load(f)
    ids = np.asarray(predictions["example_id"])
    return ids, np.asarray(predictions["logits"]), np.asarray(predictions["label"]), timing


def _peer(folder: str) -> tuple[np.ndarray, np.ndarray, dict]:
    ids = np.load(os.path.join(folder, "test_example_ids.npy"))
    logits = np.load(os.path.join(folder, "test_logits.npy"))
    with open(os.path.join(folder, "result.json")) as f:
        return ids, logits, json.load(f)


def compare(jaxsent_dir: str, peer_dir: str, seed: int) -> dict:
    ids, logits, labels, timing = _jaxsent(os.path.join(jaxsent_dir, f"seed_{seed}"))
    peer_ids, peer_logits, peer = _peer(os.path.join(peer_dir, f"seed_{seed}"))
    order = {int(i): k for k, i in enumerate(peer_ids)}
    if sorted(order) != sorted(int(i) for i in ids):
        raise ValueError(f"seed {seed}: the two runs scored different test sentences")
    peer_logits = peer_logits[[order[int(i)] for i in ids]]
    row = {"seed": seed}
    for name, values in (("jaxsent", logits), ("peer", peer_logits)):
        metrics = multiclass_metrics.multiclass_classification_metrics(values, labels)
        row[name] = {k: float(metrics[k]) for k in METRICS}
    diff = stats.paired_bootstrap("accuracy", [(logits, labels)], [(peer_logits, labels)])
    row["accuracy_difference"] = {
        k: diff[k] for k in ("difference", "ci_low", "ci_high", "p_value")
    }
    row["jaxsent_wall_s"] = float(timing["total"])
    row["peer_wall_s"] = float(peer["wall_s"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jaxsent", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    rows = [compare(args.jaxsent, args.peer, seed) for seed in args.seeds]
    print(
        "| seed | jaxsent acc | peer acc | difference [95% CI] | jaxsent macro-F1 | "
        "peer macro-F1 | jaxsent NLL | peer NLL | jaxsent ECE | peer ECE | jaxsent s | peer s |"
    )
    print("|---" * 12 + "|")
    for r in rows:
        j, p, d = r["jaxsent"], r["peer"], r["accuracy_difference"]
        print(
            f"| {r['seed']} | {j['accuracy']:.4f} | {p['accuracy']:.4f} | "
            f"{d['difference']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | "
            f"{j['macro_f1']:.4f} | "
            f"{p['macro_f1']:.4f} | {j['nll']:.4f} | {p['nll']:.4f} | {j['ece']:.4f} | "
            f"{p['ece']:.4f} | {r['jaxsent_wall_s']:.0f} | {r['peer_wall_s']:.0f} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
