"""jaxsent.stats against scipy.stats and an independent numpy bootstrap loop.

Tolerances.
* ``t_interval`` (float64, scipy's t quantile) against ``scipy.stats.t.interval`` and a
  tabulated quantile: a few float64 ulps, ``rtol = 1e-12``.
* Bootstrap replicates: each metric value is float32 from float32 logits against a
  float64 reference, within ``(N + 4) * eps32`` (relative for NLL and Brier, absolute
  for ECE; see tests/test_metrics.py); a replicate is a difference of seed means of such
  values, so ``atol = 2 * (N + 4) * eps32 * max(1, |metric|)``.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import expit, log_expit

from jaxsent import calibration as C
from jaxsent import stats as S

EPS32 = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------ Student t


def test_t_interval_uses_the_tabulated_quantile():
    # t_{0.975, 2} = 4.302652729911275 (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
    mean, low, high = S.t_interval([0.90, 0.91, 0.92])
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    # The sample std of these decimals is 0.01 to ~1e-13 relative (they are not exact in binary).
    np.testing.assert_allclose([mean, low, high], [0.91, 0.91 - half, 0.91 + half], rtol=1e-11)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 31])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_t_interval_matches_scipy(n, confidence):
    values = np.random.default_rng(n).normal(0.9, 0.02, n)
    mean, low, high = S.t_interval(values, confidence=confidence)
    want_low, want_high = sps.t.interval(
        confidence, n - 1, loc=values.mean(), scale=sps.sem(values)
    )
    assert mean == pytest.approx(values.mean(), rel=1e-15)
    np.testing.assert_allclose([low, high], [want_low, want_high], rtol=1e-12)


def test_t_interval_degenerate_cases():
    mean, low, high = S.t_interval([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert S.t_interval(np.full(4, 0.25)) == (0.25, 0.25, 0.25)
    assert S.t_interval((1, 2, 3)).mean == 2.0  # plain sequences and ints


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: S.t_interval([0.9, np.nan, 0.8, np.nan]), ValueError, r"nan.*\[1, 3\]"),
        (lambda: S.t_interval([0.9, np.inf]), ValueError, r"`values`.*inf.*\[1\]"),
        (lambda: S.t_interval([]), ValueError, "`values`.*non-empty"),
        (lambda: S.t_interval(np.ones((2, 2))), ValueError, r"`values`.*\(2, 2\)"),
        (lambda: S.t_interval([1.0, 2.0], confidence=1.0), ValueError, "`confidence`.*1.0"),
        (lambda: S.t_interval([1.0, 2.0], confidence="95"), TypeError, "`confidence`"),
    ],
)
def test_t_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------ indices


def test_bootstrap_indices_are_per_replicate_and_chunk_invariant():
    full = S.bootstrap_indices(50, 30, seed=3)
    assert full.shape == (30, 50) and full.dtype == np.int32
    assert full.min() >= 0 and full.max() < 50
    np.testing.assert_array_equal(S.bootstrap_indices(50, 12, seed=3, start=10), full[10:22])
    np.testing.assert_array_equal(S.bootstrap_indices(50, 30, seed=3), full)
    assert not np.array_equal(S.bootstrap_indices(50, 30, seed=4), full)
    # Replicates differ from each other (not one draw repeated).
    assert len({row.tobytes() for row in full}) == 30


# ----------------------------------------------------------- reference loop


def guo_ece(logits, labels, num_bins=15):
    """Top-label ECE by the loop of Guo et al. (2017), float64, bins (lo, hi]."""
    z = np.asarray(logits, np.float64)
    confidence = expit(np.abs(z))
    outcome = ((z > 0) == (labels == 1)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1).astype(np.float32).astype(np.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(outcome[in_bin].mean() - confidence[in_bin].mean())
    return ece


REFERENCE = {
    "accuracy": lambda z, y: np.mean((z > 0) == (y == 1)),
    "nll": lambda z, y: np.mean(-log_expit(np.where(y == 1, z, -z).astype(np.float64))),
    "brier": lambda z, y: np.mean((expit(z.astype(np.float64)) - y) ** 2),
    "ece": guo_ece,
}


def reference_replicates(metric, variant, baseline, num_resamples, seed):
    """The bootstrap by plain loops over replicates and seeds, in float64."""
    labels = baseline[0][1]
    indices = S.bootstrap_indices(len(labels), num_resamples, seed=seed)
    out = []
    for index in indices:
        v = [REFERENCE[metric](z[index], labels[index]) for z, _ in variant]
        b = [REFERENCE[metric](z[index], labels[index]) for z, _ in baseline]
        out.append(np.mean(v) - np.mean(b))
    return np.array(out)


def make_runs(num_seeds, n, shift, seed, scale=2.0):
    """Per-seed (logits, labels); the labels depend on ``n`` only, so runs share them."""
    labels = (np.arange(n) % 2).astype(np.int32)
    np.random.default_rng(n).shuffle(labels)
    rng = np.random.default_rng(seed)
    sign = 2 * labels - 1
    runs = []
    for _ in range(num_seeds):
        margin = rng.normal(1.0 + shift, scale, n)
        runs.append(((sign * margin).astype(np.float32), labels))
    return runs


@pytest.mark.parametrize(
    "metric, num_seeds", [("nll", 2), ("brier", 2), ("ece", 2), ("accuracy", 1)]
)
def test_replicates_match_a_numpy_loop_on_the_same_indices(metric, num_seeds):
    n, num_resamples = 40, 300
    variant = make_runs(num_seeds, n, 0.3, seed=1)
    baseline = make_runs(num_seeds, n, 0.0, seed=2)
    if metric == "ece":  # float32 vs float64 confidences must fall in the same bins
        confidence = expit(np.abs(np.concatenate([z for z, _ in variant + baseline])))
        edges = np.arange(16) / 15
        assert np.min(np.abs(confidence[:, None] - edges[None, :])) > 1e-6
    want = reference_replicates(metric, variant, baseline, num_resamples, seed=7)
    got = S.bootstrap_replicates(
        metric, variant, baseline, num_resamples=num_resamples, seed=7, chunk_size=64
    )
    scale = max(1.0, max(REFERENCE[metric](z, y) for z, y in variant + baseline))
    atol = 2 * (n + 4) * EPS32 * scale
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)

    result = S.paired_bootstrap(metric, variant, baseline, num_resamples=num_resamples, seed=7)
    full = np.arange(n)
    observed = np.mean([REFERENCE[metric](z[full], y) for z, y in variant]) - np.mean(
        [REFERENCE[metric](z[full], y) for z, y in baseline]
    )
    np.testing.assert_allclose(result["difference"], observed, rtol=0, atol=atol)
    # Percentile interval from the replicates.
    np.testing.assert_allclose(
        [result["ci_low"], result["ci_high"]],
        np.quantile(want, [0.025, 0.975]),
        rtol=0,
        atol=atol,
    )
    # Two-sided p with the add-one correction, counted on the reference replicates. The
    # signs agree when no reference replicate is within rounding of 0 (continuous
    # metrics), or when ties are exact (accuracy with one seed per side).
    if metric != "accuracy":
        assert np.min(np.abs(want)) > atol
    else:
        np.testing.assert_array_equal(np.sign(got), np.sign(want))
    tails = [np.sum(want <= 0), np.sum(want >= 0)]
    want_p = min(1.0, 2 * (1 + min(tails)) / (num_resamples + 1))
    assert result["p_value"] == pytest.approx(want_p, rel=1e-12)


def test_chunking_does_not_change_the_replicates():
    variant, baseline = make_runs(2, 30, 0.5, seed=3), make_runs(2, 30, 0.0, seed=4)
    one = S.bootstrap_replicates("ece", variant, baseline, num_resamples=50, chunk_size=50)
    many = S.bootstrap_replicates("ece", variant, baseline, num_resamples=50, chunk_size=7)
    np.testing.assert_allclose(many, one, rtol=0, atol=2 * EPS32)


# ----------------------------------------------------------- properties


@pytest.mark.parametrize("metric", ["accuracy", "nll", "brier", "ece", "auroc"])
def test_identical_variant_and_baseline(metric):
    runs = make_runs(3, 200, 0.0, seed=5)
    result = S.paired_bootstrap(metric, runs, runs, num_resamples=200)
    assert result["difference"] == 0.0
    assert (result["ci_low"], result["ci_high"]) == (0.0, 0.0)
    assert result["p_value"] == 1.0


@pytest.mark.parametrize("metric", ["accuracy", "nll", "brier", "ece"])
def test_large_real_shift_is_significant_and_interval_holds_the_difference(metric):
    # Variant: much larger margins on the same examples (better accuracy and NLL, and
    # an ECE far from the baseline's, which is underconfident-then-miscalibrated).
    baseline = make_runs(3, 1000, 0.0, seed=6, scale=1.0)
    variant = [(z * 4.0 + np.float32(3.0) * (2 * y - 1), y) for z, y in baseline]
    result = S.paired_bootstrap(metric, variant, baseline, num_resamples=500)
    assert result["p_value"] < 0.01
    assert result["p_value"] == pytest.approx(2 / 501)
    assert not result["ci_low"] <= 0.0 <= result["ci_high"]
    assert result["ci_low"] <= result["difference"] <= result["ci_high"]


@pytest.mark.parametrize("metric", ["accuracy", "nll", "brier", "ece"])
def test_interval_contains_observed_difference_for_a_small_effect(metric):
    variant, baseline = make_runs(3, 500, 0.1, seed=8), make_runs(3, 500, 0.0, seed=9)
    result = S.paired_bootstrap(metric, variant, baseline, num_resamples=400)
    assert result["ci_low"] <= result["difference"] <= result["ci_high"]
    assert 0 < result["p_value"] <= 1


def test_accuracy_difference_is_the_mean_per_example_correctness_difference():
    variant, baseline = make_runs(3, 777, 0.2, seed=10), make_runs(3, 777, 0.0, seed=11)
    labels = baseline[0][1]

    def correct(runs):
        return np.array([(z > 0) == (labels == 1) for z, _ in runs], float)

    want = np.mean(correct(variant) - correct(baseline))
    result = S.paired_bootstrap("accuracy", variant, baseline, num_resamples=50)
    np.testing.assert_allclose(result["difference"], want, rtol=0, atol=4 * EPS32)
    np.testing.assert_allclose(result["variant_values"], correct(variant).mean(1), rtol=EPS32)


def test_seed_pairing_does_not_matter_and_seed_counts_may_differ():
    variant, baseline = make_runs(3, 100, 0.3, seed=12), make_runs(2, 100, 0.0, seed=13)
    a = S.paired_bootstrap("nll", variant, baseline, num_resamples=100)
    b = S.paired_bootstrap("nll", variant[::-1], baseline[::-1], num_resamples=100)
    for key in ("difference", "ci_low", "ci_high", "p_value"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-15, err_msg=key)


def test_temperature_scaled_logits():
    variant, baseline = make_runs(2, 300, 0.8, seed=14), make_runs(2, 300, 0.0, seed=15)

    def scaled(runs):
        return [(C.apply_temperature(z, C.fit_temperature(z, y)), y) for z, y in runs]

    for metric in ("nll", "ece"):
        result = S.paired_bootstrap(metric, scaled(variant), scaled(baseline), num_resamples=100)
        fn = S.BOOTSTRAP_METRICS[metric]
        values = [float(fn(z, y)) for z, y in scaled(variant) + scaled(baseline)]
        assert result["variant_values"] == values[:2]
        assert result["baseline_values"] == values[2:]
        assert result["ci_low"] <= result["difference"] <= result["ci_high"]
    # Temperature never changes a prediction: the accuracy comparison is unchanged.
    raw = S.paired_bootstrap("accuracy", variant, baseline, num_resamples=100)
    scaled_result = S.paired_bootstrap(
        "accuracy", scaled(variant), scaled(baseline), num_resamples=100
    )
    assert scaled_result == raw


def test_custom_metric_function():
    variant, baseline = make_runs(2, 60, 0.3, seed=16), make_runs(2, 60, 0.0, seed=17)

    def positive_rate(logits, labels):
        return jnp.mean(logits > 0)

    result = S.paired_bootstrap(positive_rate, variant, baseline, num_resamples=50)
    assert result["metric"] == "positive_rate"
    want = np.mean([np.mean(z > 0) for z, _ in variant]) - np.mean(
        [np.mean(z > 0) for z, _ in baseline]
    )
    np.testing.assert_allclose(result["difference"], want, atol=4 * EPS32)


# ------------------------------------------------------------------ bad input


def test_bad_input():
    runs = make_runs(2, 20, 0.0, seed=18)
    z, y = runs[0]
    flipped = [(z, y), (z, 1 - y)]
    with pytest.raises(ValueError, match=r"`variant\[1\]` labels differ"):
        S.paired_bootstrap("nll", flipped, runs)
    with pytest.raises(ValueError, match=r"`baseline\[1\]` labels differ"):
        S.paired_bootstrap("nll", runs, flipped)
    with pytest.raises(ValueError, match=r"`variant\[0\]` labels differ.*\(19,\)"):
        S.paired_bootstrap("nll", [(z[:-1], y[:-1])], runs)
    with pytest.raises(ValueError, match="`metric`.*'f1'"):
        S.paired_bootstrap("f1", runs, runs)
    with pytest.raises(TypeError, match="`variant`.*single pair"):
        S.paired_bootstrap("nll", (z, y), runs)
    with pytest.raises(ValueError, match="`baseline`.*non-empty"):
        S.paired_bootstrap("nll", runs, [])
    with pytest.raises(TypeError, match=r"`variant\[0\]` logits must be floats"):
        S.paired_bootstrap("nll", [(y, y)], runs)
    with pytest.raises(ValueError, match=r"`variant\[0\]` logits must be finite.*nan.*row 3"):
        S.paired_bootstrap("nll", [(np.where(np.arange(20) == 3, np.nan, z), y)], runs)
    with pytest.raises(ValueError, match="`labels`.*2"):
        S.paired_bootstrap("nll", [(z, 2 * y)], [(z, 2 * y)])
    with pytest.raises(ValueError, match="`num_resamples`.*0"):
        S.paired_bootstrap("nll", runs, runs, num_resamples=0)
    with pytest.raises(ValueError, match="`confidence`.*95"):
        S.paired_bootstrap("nll", runs, runs, confidence=95)
    with pytest.raises(ValueError, match="`chunk_size`.*0"):
        S.paired_bootstrap("nll", runs, runs, chunk_size=0)


def test_metric_undefined_on_a_resample_is_an_error():
    # Two examples, one per class: many resamples hold one class, where AUROC is NaN.
    logits = np.array([1.0, -1.0], np.float32)
    labels = np.array([1, 0])
    with pytest.raises(ValueError, match="'auroc' is not finite on .* resamples"):
        S.paired_bootstrap("auroc", [(logits, labels)], [(logits, labels)], num_resamples=20)
