"""Where the library's ModernBERT train step spends XLA:CPU's time, op by op.

Traces one step of the library's train step (``build_steps``, the model of
``bench_modernbert.py``) with ``jax.profiler``, reads the trace back (``ProfileData``) and sums
each XLA op's time over XLA:CPU's worker threads (CPU-seconds: two busy threads count twice).
Each op is listed with its output shape and the JAX operation it comes from, read from the
optimised HLO (dumped with ``--xla_dump_to``). Fusions named ``ynn_fusion`` are YNNPACK's dots.

    JAX_PLATFORMS=cpu .venv/bin/python bench/profile_modernbert_step.py --layers 6 --micro 16
    JAX_PLATFORMS=cpu .venv/bin/python bench/profile_modernbert_step.py --layers 6 --micro 16 \\
        --no-barrier   # without modernbert.materialized_cotangent
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile

WORK = tempfile.mkdtemp(prefix="jaxsent-profile-")
DUMP = f"--xla_dump_to={WORK}/hlo --xla_dump_hlo_module_re=train_step"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DUMP}".strip()
sys.path.insert(0, os.path.dirname(__file__))

import bench_modernbert as bench  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import transformers  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

from jaxsent.models import from_pretrained  # noqa: E402


def op_table(hlo_text: str) -> dict[str, tuple[str, str]]:
    """op name -> (output shape, the JAX op_name it comes from)."""
    table = {}
    for match in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) [\w\-]+\((.*)$", hlo_text, re.M):
        source = re.search(r'op_name="([^"]*)"', match.group(3))
        table[match.group(1)] = (match.group(2), source.group(1) if source else "")
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--micro", type=int, default=16, help="micro-batches per step")
    parser.add_argument("--top", type=int, default=30, help="ops to list")
    parser.add_argument("--no-barrier", action="store_true")
    args = parser.parse_args(argv)

    config = transformers.ModernBertConfig(
        **bench.BASE, num_hidden_layers=args.layers, pad_token_id=0
    )
    with tempfile.TemporaryDirectory() as directory:
        transformers.ModernBertModel(config).save_pretrained(directory)
        encoder = from_pretrained(directory, dtype=jnp.float32)
    batch = bench.make_batch(args.batch, args.length, bench.BASE["vocab_size"], 0)
    run = bench.library_step_fn(encoder, batch, args.micro)
    if args.no_barrier:
        run = bench.without_residual_barrier(run)
    try:
        report(run, args)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


def report(run, args) -> None:
    run()  # compiles
    run()
    jax.profiler.start_trace(f"{WORK}/trace")
    run()
    jax.profiler.stop_trace()

    hlo_files = glob.glob(f"{WORK}/hlo/*jit_train_step.cpu_after_optimizations.txt")
    table = op_table(open(hlo_files[0]).read())
    trace = glob.glob(f"{WORK}/trace/plugins/profile/*/*.xplane.pb")[0]
    seconds: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for plane in ProfileData.from_file(trace).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # XLA:CPU's worker threads
                continue
            for event in line.events:
                if event.name in table:
                    seconds[event.name] += event.duration_ns / 1e9
                    calls[event.name] += 1
    total = sum(seconds.values())
    dots = sum(t for name, t in seconds.items() if name.startswith("ynn_fusion"))
    print(
        f"ModernBERT library step, {args.layers} layers, {args.batch} x {args.length}, "
        f"{args.micro} micro-batches{', no barrier' if args.no_barrier else ''}: "
        f"{total:.2f} CPU-s in XLA ops, of which YNNPACK fusions {dots:.2f}"
    )
    for name, t in seconds.most_common(args.top):
        shape, source = table[name]
        print(f"{t:7.3f} s {calls[name]:4d}x {name:28s} {shape:32s} {source[-60:]}")


if __name__ == "__main__":
    main()
