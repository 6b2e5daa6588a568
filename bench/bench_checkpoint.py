"""Checkpoint cost: save (blocking part and total), restore, size on disk; share of training time.

The full training state (parameters + AdamW moments + counters) of a MiniLM-L6 and a BERT-base
shaped classifier is saved with `jaxsent.training.checkpointing.Checkpoints` exactly as the
training loop does (async orbax save: the loop only waits for the device-to-host copy).

    .venv/bin/python bench/bench_checkpoint.py --step-seconds 6.0 --interval 200

`--step-seconds` is the measured MiniLM train-step time on the machine (docs/benchmarks.md) and
`--interval` the default `train.checkpoint_every_steps`. The lost share is the blocking save
time over the training time between two saves; the background write also competes for the CPU,
so the share if the whole save stalled training is printed as an upper bound.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's configs/
from configs import default  # noqa: E402
from jaxsent.models import BertConfig, SentimentClassifier
from jaxsent.training.checkpointing import Checkpoints
from jaxsent.training.optim import make_optimizer
from jaxsent.training.steps import split_train_state

SHAPES = {
    "minilm-l6": BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    ),
    "bert-base": BertConfig(),
}
OPTIM = dict(default.get_config().optim)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench(name: str, config: BertConfig, repeats: int, root: Path) -> dict:
    model = SentimentClassifier(config, pooling="cls", rngs=nnx.Rngs(0))
    tx, _ = make_optimizer(OPTIM, total_steps=1000)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    _, _, state = split_train_state(model, optimizer)
    # Fresh Adam moments are zeros and compress to nothing: fill every float array with noise so
    # the size and time are those of a trained state.
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    state = jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
            for k, x in zip(keys, leaves, strict=True)
        ],
    )
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    blocking, total, restore = [], [], []
    for r in range(repeats):
        workdir = root / f"{name}-{r}"
        ckpts = Checkpoints(workdir)
        t0 = time.perf_counter()
        ckpts.save_latest(1, state, {"step": 1})
        t1 = time.perf_counter()
        ckpts.wait()
        t2 = time.perf_counter()
        blocking.append(t1 - t0)
        total.append(t2 - t0)
        t0 = time.perf_counter()
        restored, _ = ckpts.restore_latest(state)
        jax.block_until_ready(restored)
        restore.append(time.perf_counter() - t0)
        size = du(workdir / "checkpoints")
        ckpts.close()
        shutil.rmtree(workdir)
    return dict(
        name=name,
        params=num_params,
        size=size,
        blocking=statistics.median(blocking),
        total=statistics.median(total),
        restore=statistics.median(restore),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=6.0)
    parser.add_argument("--interval", type=int, default=200)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(name, SHAPES[name], args.repeats, Path(tmp)) for name in args.shapes]
    between = args.step_seconds * args.interval
    print(
        "| shape | parameters | checkpoint size | save, blocking | save, total | restore | "
        "share of training time lost (blocking / if the whole save stalled training) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['params'] / 1e6:.1f} M | {r['size'] / 2**20:,.0f} MiB | "
            f"{r['blocking']:.2f} s | {r['total']:.2f} s | {r['restore']:.2f} s | "
            f"{100 * r['blocking'] / between:.2f}% / {100 * r['total'] / between:.2f}% |"
        )


if __name__ == "__main__":
    main()
