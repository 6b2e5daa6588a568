"""Times value-and-gradient of the sentiment losses against the plain-BCE floor.

For each batch size B: jitted ``jax.value_and_grad`` of ``sentiment_weighted_loss`` and
``sentiment_focal_loss`` (default hyperparameters), of
``optax.sigmoid_binary_cross_entropy(...).mean()`` (the floor: plain BCE), and the seed's
original PyTorch modules, eager, forward + backward. Calls are interleaved round by
round, in a fresh random order each round, so that load from other processes hits
every contender alike (the JAX and the PyTorch group run one after the other); the table reports
medians and the ratio to the floor.

    .venv/bin/python bench/bench_losses.py            # ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

# PyTorch's OpenMP workers otherwise spin for a while after each op, stealing the
# cores from whatever runs next (the JAX contenders) on a small shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import nn

from jaxsent import losses

SIZES = (32, 4096, 262144)


# The seed's original code (../shared/seed), what a PyTorch user would run.
class SeedWeightedLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(reduction="none")

    def forward(self, logits, targets, lengths):
        base_loss = self.bce(logits.view(-1), targets.float())
        prob = torch.sigmoid(logits.view(-1))
        confidence_weight = (prob - 0.5).abs() * 2
        length_weight = torch.sqrt(lengths.float()) / math.sqrt(lengths.max().item())
        length_weight = length_weight.clamp(0.1, 1.0)
        weights = confidence_weight * length_weight
        weights = weights / (weights.mean() + 1e-8)
        return (base_loss * weights).mean()


class SeedFocalLoss(nn.Module):
    def __init__(self, gamma_focal=0.1, label_smoothing_epsilon=0.05):
        super().__init__()
        self.gamma_focal = gamma_focal
        self.eps = label_smoothing_epsilon
        self.bce = nn.BCEWithLogitsLoss(reduction="none")

    def forward(self, logits, targets, lengths):
        x = logits.view(-1)
        y = targets.view(-1).float()
        smoothed = y * (1.0 - self.eps) + (1.0 - y) * self.eps
        base = self.bce(x, smoothed)
        probs = torch.sigmoid(x)
        pt = torch.where(y.bool(), probs, 1.0 - probs)
        modulator = (1.0 - pt + 1e-8).pow(self.gamma_focal)
        confidence_w = (probs - 0.5).abs() * 2.0
        lengths_flat = lengths.view(-1).float()
        length_w = torch.sqrt(lengths_flat) / (math.sqrt(lengths_flat.max().item()) + 1e-8)
        length_w = length_w.clamp(0.1, 1.0)
        weights = confidence_w * length_w
        weights = weights / (weights.mean() + 1e-8)
        return (modulator * base * weights).mean()


def jax_contenders():
    def floor(x, y, n):
        return optax.sigmoid_binary_cross_entropy(x, y.astype(x.dtype)).mean()

    return {
        "optax BCE (floor)": jax.jit(jax.value_and_grad(floor)),
        "jaxsent weighted": jax.jit(jax.value_and_grad(losses.sentiment_weighted_loss)),
        "jaxsent focal": jax.jit(jax.value_and_grad(losses.sentiment_focal_loss)),
    }


def torch_step(module):
    def step(x, y, n):
        x.grad = None
        value = module(x, y, n)
        value.backward()
        return value

    return step


def time_round(fn, args, block):
    start = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - start


def bench_size(batch, repeats, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=batch) * 4).astype(np.float32)
    labels = rng.integers(0, 2, batch).astype(np.int32)
    lengths = rng.integers(1, 513, batch).astype(np.int32)

    jax_args = tuple(jnp.asarray(a) for a in (logits, labels, lengths))
    torch_args = (
        torch.tensor(logits, requires_grad=True),
        torch.tensor(labels),
        torch.tensor(lengths),
    )
    jax_group = {
        name: (fn, jax_args, jax.block_until_ready) for name, fn in jax_contenders().items()
    }
    torch_group = {
        "torch seed weighted (eager)": (torch_step(SeedWeightedLoss()), torch_args, _noop),
        "torch seed focal (eager)": (torch_step(SeedFocalLoss()), torch_args, _noop),
    }
    medians = {}
    # The groups run separately, so PyTorch's thread pool never overlaps a JAX call.
    for group in (jax_group, torch_group):
        medians.update(_interleaved_medians(group, repeats, rng))
    return medians


def _noop(value):
    return value


def _interleaved_medians(contenders, repeats, rng):
    for fn, args, block in contenders.values():  # compile and warm up
        for _ in range(3):
            block(fn(*args))
    times = {name: [] for name in contenders}
    names = list(contenders)
    for _ in range(repeats):
        # A fresh order each round: no contender always runs right after the same one.
        for i in rng.permutation(len(names)):
            fn, args, block = contenders[names[i]]
            times[names[i]].append(time_round(fn, args, block))
    return {name: float(np.median(t)) for name, t in times.items()}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds per size (default: 200, 100, 40 by size)"
    )
    args = parser.parse_args()

    print(
        f"# {cpu_name()}, {os.cpu_count()} cores visible; jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), float32"
    )
    print()
    print("| B | contender | median | vs floor |")
    print("|---:|---|---:|---:|")
    for batch in args.sizes:
        repeats = args.repeats or (200 if batch <= 4096 else 40)
        medians = bench_size(batch, repeats)
        floor = medians["optax BCE (floor)"]
        for name, median in medians.items():
            print(f"| {batch:,} | {name} | {median * 1e6:,.0f} µs | {median / floor:.2f}x |")


if __name__ == "__main__":
    main()
