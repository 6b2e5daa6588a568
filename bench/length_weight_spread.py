"""How much the seed's length weighting can do in length-bucketed batches vs random batches.

The seed's length weights are normalised by their batch mean, so what reaches an example is its
weight relative to the others of its batch. For the first run of a study config, this builds the
training split and one epoch's batch plan two ways (the config's length buckets, and random
batches padded to max_length as in the seed), applies `jaxsent.losses.length_weights` to every
batch and reports the spread of the relative weights over the training examples.

Usage (from the repository root):
    JAXSENT_DATA_DIR=../shared/data .venv/bin/python bench/length_weight_spread.py \\
        --config configs/study/imdb.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxsent import data as data_lib
from jaxsent.losses import length_weights
from jaxsent.models import load_tokenizer
from jaxsent.study.runner import load_config_file, plan_study
from jaxsent.training.splits import load_splits

# Study configs import `configs.*`, which `python -m train.study` finds from the working directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def relative_weights(lengths: np.ndarray, plan) -> np.ndarray:
    """Each training example's length weight divided by its batch's mean weight."""
    out = []
    for spec in plan:
        rows = spec.indices[spec.indices >= 0]
        weights = np.asarray(length_weights(jnp.asarray(lengths[rows])), dtype=np.float64)
        out.append(weights / weights.mean())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a study config (configs/study/*.py)")
    parser.add_argument("--seed", type=int, default=0, help="batch-plan seed (epoch 0)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        config = plan_study(load_config_file(args.config), scratch)[0].config
    splits, _, _ = load_splits(config, load_tokenizer(config.model.name))
    lengths = splits["train"].arrays.lengths
    dc = config.data
    print(
        f"{len(lengths)} training examples at max_length {dc.max_length}; "
        f"{np.mean(lengths >= dc.max_length):.1%} truncated to it"
    )
    bucketed = data_lib.make_bucket_boundaries(
        dc.max_length, num_buckets=dc.num_buckets, lengths=lengths
    )
    for name, boundaries in (
        (f"{len(bucketed)} length buckets {tuple(int(b) for b in bucketed)}", bucketed),
        ("random batches (one bucket, padded to max_length)", (dc.max_length,)),
    ):
        plan = data_lib.batch_plan(
            lengths,
            global_batch_size=config.train.global_batch_size,
            boundaries=boundaries,
            shuffle=True,
            seed=args.seed,
            epoch=0,
        )
        rel = relative_weights(lengths, plan)
        low, high = np.quantile(rel, [0.05, 0.95])
        print(
            f"{name}: weight / batch mean: sd {rel.std():.3f}, 5-95% [{low:.2f}, {high:.2f}], "
            f"range [{rel.min():.2f}, {rel.max():.2f}]"
        )


if __name__ == "__main__":
    main()
