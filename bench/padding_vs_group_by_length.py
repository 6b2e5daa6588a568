"""Processed tokens of one training epoch: jaxsent's fitted length buckets against HF Trainer's
``group_by_length`` (each batch padded to its own longest example), for a config's training data.

    JAXSENT_DATA_DIR=../shared/data .venv/bin/python bench/padding_vs_group_by_length.py \\
        --config sst5_minilm_phrases --buckets 4 8 16

The group_by_length figure takes the order of transformers' ``LengthGroupedSampler``
(``trainer_pt_utils.get_length_grouped_indices``, the function it calls: megabatches of up to 50
batches of a random permutation, each sorted by length), every batch padded to its longest row.
Needs the bench extra (transformers with torch).
"""

import argparse
import importlib
import os
import sys

import numpy as np
import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

sys.path.insert(0, os.getcwd())
from jaxsent.data import batching  # noqa: E402
from jaxsent.training.loop import load_run_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sst5_minilm_phrases", help="a module in configs/")
    parser.add_argument("--buckets", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    cfg = importlib.import_module(f"configs.{args.config}").get_config()
    batch = cfg.train.global_batch_size
    lengths = load_run_data(cfg).splits["train"].arrays.lengths
    real = int(lengths.sum())
    print(
        f"{len(lengths)} examples, lengths: mean {lengths.mean():.1f}, median "
        f"{np.median(lengths):.0f}, longest {lengths.max()}; {real:,} real tokens"
    )
    for count in args.buckets:
        bounds = batching.make_bucket_boundaries(
            cfg.data.max_length, num_buckets=count, lengths=lengths
        )
        plan = batching.batch_plan(
            lengths, global_batch_size=batch, boundaries=bounds, shuffle=True, seed=0, epoch=0
        )
        stats = batching.plan_stats(plan, lengths)
        share = real / stats.processed_tokens
        print(f"{count} buckets {stats.shapes}: {stats.processed_tokens:,} processed, {share:.1%}")
    generator = torch.Generator().manual_seed(0)
    order = np.asarray(get_length_grouped_indices(lengths.tolist(), batch, generator=generator))
    processed = sum(
        int(rows.max()) * len(rows)
        for rows in (lengths[order[k : k + batch]] for k in range(0, len(order), batch))
    )
    print(f"group_by_length: {processed:,} processed, {real / processed:.1%}")


if __name__ == "__main__":
    main()
