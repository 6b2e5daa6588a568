"""Issue 27's "CPU unchanged": the main job's train step on CPU, the library's program against the
one before issue 27's fixes (`gpu_leads.LEADS["before-issue-27"]`), side by side in one process.

The step is the run's own (`gpu_leads.train_steps`: configs/imdb_minilm.py as ``make train`` runs
it: MiniLM-L6's architecture, float32, batch 32 in micro-batches of 8, 384 tokens), random
weights and an IMDB-like random batch (`bench_train_step.random_batch`). Both compile first;
then ``--rounds`` rounds of ``--steps`` steps alternate between them. Prints one JSON row per
contender (median and minimum s/step, every round) and the ratio of the medians. Run it alone on
an idle machine:

    .venv/bin/python bench/cpu_step_ab.py [--length 384] [--rounds 7] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import sys
import time

import jax
import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [BENCH, ROOT]
from bench_train_step import random_batch  # noqa: E402
from gpu_leads import DEFAULT, lead_named, train_steps  # noqa: E402

from jaxsent import sharding  # noqa: E402
from jaxsent.training.steps import abstract_batch  # noqa: E402


def contender(config, lead_name: str, batch: dict[str, np.ndarray]):
    mesh = sharding.make_mesh(data=1, model=1, devices=jax.local_devices()[:1])
    steps, state = train_steps(config, mesh, lead_named(lead_name), abstract=False)
    spec = abstract_batch(*batch["input_ids"].shape, mesh)
    placed = {
        key: jax.device_put(np.asarray(batch[key], s.dtype), s.sharding) for key, s in spec.items()
    }
    holder = {"state": state, "metrics": None}

    def step():
        holder["state"], holder["metrics"] = steps.train_step(holder["state"], placed)

    def sync() -> float:
        jax.block_until_ready(holder["metrics"])
        return float(holder["metrics"]["loss"])

    start = time.perf_counter()
    step()
    loss = sync()
    return step, sync, {"first_step_s": round(time.perf_counter() - start, 1), "loss": loss}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/imdb_minilm.py")
    parser.add_argument("--length", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--contenders", default=f"{DEFAULT.name},before-issue-27")
    args = parser.parse_args(argv)
    config = runpy.run_path(os.path.join(ROOT, args.config))["get_config"]()
    config.data.max_length = args.length
    batch = random_batch(30522, int(config.train.global_batch_size), args.length, seed=0)
    names = args.contenders.split(",")
    contenders = {name: contender(config, name, batch) for name in names}
    rounds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, (step, sync, _) in contenders.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            rounds[name].append((time.perf_counter() - start) / args.steps)
    medians = {}
    for name, (_, _, info) in contenders.items():
        medians[name] = statistics.median(rounds[name])
        row = {
            "contender": name,
            "config": args.config,
            "batch": int(config.train.global_batch_size),
            "micro_batch_size": int(config.train.micro_batch_size),
            "length": args.length,
            "dtype": str(config.model.dtype),
            "s_per_step": round(medians[name], 4),
            "min_s_per_step": round(min(rounds[name]), 4),
            "rounds_s_per_step": [round(r, 4) for r in rounds[name]],
            **info,
        }
        print(json.dumps(row))
    first, *others = names
    for name in others:
        print(f"{name} / {first}: {medians[name] / medians[first]:.3f}")


if __name__ == "__main__":
    main()
