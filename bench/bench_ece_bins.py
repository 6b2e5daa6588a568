"""ECE's bin sums in the paired bootstrap: segment sums (the library) vs a one-hot [N, bins] matrix.

The bootstrap evaluates ECE once per resample and run (2,000 x 6 times for a 3-seed comparison),
so the bin sums are its inner loop. Both versions run side by side in alternating rounds on the
same synthetic predictions (N test examples, 3 seeds a side), and must agree.

    .venv/bin/python bench/bench_ece_bins.py [--n 2000] [--resamples 2000] [--rounds 3]
"""

import argparse
import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsent import metrics, stats


def one_hot_bin_sums(confidence, outcome, valid, num_bins):
    """The implementation before segment sums (jaxsent 0.1.0 up to this change)."""
    edges = jnp.asarray(metrics.reliability_bin_edges(num_bins), dtype=confidence.dtype)
    index = jnp.clip(jnp.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    member = (index[:, None] == jnp.arange(num_bins)[None, :]) & valid[:, None]
    count = jnp.sum(member, axis=0, dtype=jnp.int32)
    conf_sum = jnp.sum(jnp.where(member, confidence[:, None], 0), axis=0)
    outcome_sum = jnp.sum(jnp.where(member, outcome[:, None], 0), axis=0)
    return count, conf_sum, outcome_sum, edges


@contextlib.contextmanager
def bin_sums(implementation):
    original = metrics._bin_sums
    metrics._bin_sums = implementation
    try:
        yield
    finally:
        metrics._bin_sums = original


def ece_with(implementation):
    # A distinct function per implementation: the bootstrap's jit is keyed on the metric, and
    # the patched bin sums are read when it traces.
    def ece(logits, labels):
        with bin_sums(implementation):
            return metrics.expected_calibration_error(logits, labels)

    return ece


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, args.n)
    runs = [(rng.normal(2.0 * (2 * labels - 1), 2.5).astype(np.float32), labels) for _ in range(6)]
    variant, baseline = runs[:3], runs[3:]
    versions = {
        "segment_sum": ece_with(metrics._bin_sums),
        "one_hot": ece_with(one_hot_bin_sums),
    }

    def run(metric):
        return stats.bootstrap_replicates(
            metric, variant, baseline, num_resamples=args.resamples, seed=0
        )

    results = {name: run(metric) for name, metric in versions.items()}  # compile, and compare
    np.testing.assert_allclose(results["segment_sum"], results["one_hot"], rtol=0, atol=1e-6)
    seconds = {name: [] for name in versions}
    for _ in range(args.rounds):
        for name, metric in versions.items():
            start = time.perf_counter()
            jax.block_until_ready(run(metric))
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in seconds.items()}
    print(
        f"paired bootstrap of ECE, N={args.n}, {args.resamples} resamples, 3 + 3 runs "
        f"(best of {args.rounds} alternating rounds; replicates agree within 1e-6):"
    )
    for name, value in best.items():
        print(f"  {name:>11}: {value:.2f} s")
    print(f"  speed-up of segment_sum: {best['one_hot'] / best['segment_sum']:.2f}x")


if __name__ == "__main__":
    main()
