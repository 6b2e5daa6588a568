"""ModernBERT local-layer attention: block by block (`modernbert.banded_attention`) vs the masked
full [L, L] attention (`jax.nn.dot_product_attention` with the window mask), forward + backward.

The inputs are those of one ModernBERT-base local layer: q, k, v [B, L, 12, 64], a window of 64
on either side, IMDB-like lengths (right padding). The two contenders alternate for
``--repeats`` rounds after one untimed call each (the compile); medians are reported.

    JAX_PLATFORMS=cpu .venv/bin/python bench/bench_banded_attention.py --batch 32 --length 512
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsent.models import modernbert


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    shape = (args.batch, args.length, 12, 64)
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, cotangent = (jax.random.normal(key, shape) for key in keys)
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(230), 0.7, args.batch).astype(int), 8, args.length)
    real = jnp.asarray(np.arange(args.length)[None] < lengths[:, None])
    positions = np.arange(args.length)
    near = np.abs(positions[:, None] - positions[None, :]) <= args.window
    mask = real[:, None, None, :] & jnp.asarray(near)[None, None]

    def full(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask)

    def banded(q, k, v):
        return modernbert.banded_attention(q, k, v, real, args.window)

    contenders = {
        name: jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2)))
        for name, f in (("masked full", full), ("banded", banded))
    }
    for fn in contenders.values():
        jax.block_until_ready(fn(q, k, v))
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(q, k, v))
            times[name].append(time.perf_counter() - start)
    print(
        f"local attention forward+backward, q/k/v {shape}, window {args.window}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"  {name:12s} median {medians[name]:.3f} s  rounds {[round(x, 3) for x in t]}")
    print(f"  banded is {medians['masked full'] / medians['banded']:.2f}x faster")


if __name__ == "__main__":
    main()
