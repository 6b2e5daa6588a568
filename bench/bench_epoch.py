"""Epoch time on IMDB train: length-bucketed batches vs padding every batch to max_length.

An ESTIMATE from measured per-shape step times, not a timed epoch: for every distinct padded
length L that either plan uses, the jitted train step of ``bench_train_step.py`` (MiniLM,
focal loss, AdamW, dropout on) is compiled, warmed up and timed on a real IMDB batch of that
shape; each plan's epoch time is then sum over shapes of (batches of that shape) x (median
step time at that shape). The step's cost depends only on the padded shape, not on which
tokens are real, so this equals a timed epoch up to machine-load noise, input assembly
(~0.07 ms per batch, docs/benchmarks/data.md) and the run's per-step host overhead.

Plans (``jaxsent.data``): IMDB train cleaned and tokenised at ``--max-length`` by
``prepare``; bucketed = ``batch_plan(boundaries=make_bucket_boundaries(max_length,
num_buckets=--num-buckets, lengths=train_lengths))``; padded = ``batch_plan(boundaries=
(max_length,))``; both global batch ``--batch-size``, shuffled with ``--seed``, epoch 0.

    JAXSENT_DATA_DIR=../shared/data .venv/bin/python bench/bench_epoch.py \\
        --max-length 512 --batch-size 32 --repeats 3
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import build_jax_steps, cpu_seconds  # noqa: E402

from jaxsent.data import (  # noqa: E402
    batch_plan,
    load_raw,
    make_batch,
    make_bucket_boundaries,
    plan_stats,
    prepare,
    to_numpy_columns,
)
from jaxsent.models import bert_params  # noqa: E402
from jaxsent.models.classifier import load_tokenizer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-l6", help="folder, short name or hub id")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-buckets", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed steps per shape (median), in rounds over all shapes",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed steps per shape after compiling"
    )
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step of a shape compiles)")

    model_dir = bert_params.resolve(args.model)
    tokenizer = load_tokenizer(model_dir)
    start = time.perf_counter()
    train = prepare(
        load_raw("imdb", split="train"), tokenizer, max_length=args.max_length, split_name="train"
    )
    arrays = to_numpy_columns(train)
    tokenize_s = time.perf_counter() - start
    lengths = arrays.lengths
    bounds = make_bucket_boundaries(args.max_length, num_buckets=args.num_buckets, lengths=lengths)
    plans = {
        "bucketed": batch_plan(
            lengths,
            global_batch_size=args.batch_size,
            boundaries=bounds,
            shuffle=True,
            seed=args.seed,
            epoch=0,
        ),
        "pad to max_length": batch_plan(
            lengths,
            global_batch_size=args.batch_size,
            boundaries=(args.max_length,),
            shuffle=True,
            seed=args.seed,
            epoch=0,
        ),
    }
    counts = {
        name: collections.Counter(spec.seq_len for spec in plan) for name, plan in plans.items()
    }
    shapes = sorted(set().union(*counts.values()))
    example_spec = {}
    for spec in plans["bucketed"] + plans["pad to max_length"]:  # a full batch where possible
        if spec.seq_len not in example_spec or spec.num_real > example_spec[spec.seq_len].num_real:
            example_spec[spec.seq_len] = spec
    example_batch = {}
    for seq_len, spec in example_spec.items():
        batch = make_batch(arrays, spec, pad_id=tokenizer.pad_token_id or 0)
        batch.pop("example_id")
        example_batch[seq_len] = {k: jnp.asarray(v) for k, v in batch.items()}

    steps, state = build_jax_steps(model_dir, args.pooling)
    holder = {"state": state}

    def step(seq_len):
        holder["state"], metrics = steps.train_step(holder["state"], example_batch[seq_len])
        jax.block_until_ready(metrics)

    compile_s = {}
    for seq_len in shapes:
        t0 = time.perf_counter()
        step(seq_len)
        compile_s[seq_len] = time.perf_counter() - t0
        for _ in range(args.warmup):
            step(seq_len)
        print(f"shape {seq_len}: first step (compile) {compile_s[seq_len]:.1f} s", flush=True)
    load_before = os.getloadavg()
    wall = {seq_len: [] for seq_len in shapes}
    cpu = {seq_len: [] for seq_len in shapes}
    for _ in range(args.repeats):
        for seq_len in shapes:
            c0, t0 = cpu_seconds(), time.perf_counter()
            step(seq_len)
            wall[seq_len].append(time.perf_counter() - t0)
            cpu[seq_len].append(cpu_seconds() - c0)
    load_after = os.getloadavg()
    step_s = {seq_len: statistics.median(t) for seq_len, t in wall.items()}

    print()
    print(
        f"IMDB train, {len(lengths):,} reviews, max_length {args.max_length} (tokenised/read in "
        f"{tokenize_s:.1f} s); {args.model}, global batch {args.batch_size}, train mode, focal "
        f"loss, AdamW; jax {jax.__version__} ({jax.default_backend()}); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average "
        f"(1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_before)} before, "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} after; step times: median of "
        f"{args.repeats} rounds over all shapes after compile + {args.warmup} warm-up step(s)"
    )
    print()
    print("| padded length | s/step (median) | CPU s/step | batches, bucketed | batches, padded |")
    print("|---:|---:|---:|---:|---:|")
    for seq_len in shapes:
        print(
            f"| {seq_len} | {step_s[seq_len]:.2f} | {statistics.median(cpu[seq_len]):.2f} | "
            f"{counts['bucketed'][seq_len]} | {counts['pad to max_length'][seq_len]} |"
        )
    print()
    print(
        "| plan | shapes | batches | real tokens | real share | est. epoch (h) | est. real "
        "tokens/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    totals = {}
    for name, plan in plans.items():
        stats = plan_stats(plan, lengths)
        total = totals[name] = sum(n * step_s[seq_len] for seq_len, n in counts[name].items())
        print(
            f"| {name} | {len(stats.shapes)} | {stats.num_batches} | {stats.real_tokens:,} | "
            f"{stats.real_fraction:.1%} | {total / 3600:.2f} | {stats.real_tokens / total:,.0f} |"
        )
    print()
    print(
        f"estimated epoch time, padded / bucketed: "
        f"{totals['pad to max_length'] / totals['bucketed']:.2f}x "
        f"(bucket boundaries {tuple(int(b) for b in bounds)}; compile per shape "
        f"{min(compile_s.values()):.0f}-{max(compile_s.values()):.0f} s, not included)"
    )


if __name__ == "__main__":
    main()
