"""jaxsent.stats on K-class logits [N, K]: the paired bootstrap against a float64 NumPy loop on
the same indices (scikit-learn for macro-F1), against the binary bootstrap at K = 2, and its
errors.

Tolerances as in tests/test_stats.py: each replicate is a difference of seed means of float32
metrics of ``N`` examples, within ``2 (N + 4) eps32 max(1, |metric|)`` of the float64 reference.
"""

import numpy as np
import pytest
from scipy.special import log_softmax, softmax
from sklearn.metrics import f1_score

from jaxsent import stats as S

EPS32 = float(np.finfo(np.float32).eps)
K = 4


def _ece(confidence, outcome, num_bins=15):
    """ECE by the loop of Guo et al. (2017) over (lo, hi] bins, float64."""
    edges = np.linspace(0.0, 1.0, num_bins + 1).astype(np.float32).astype(np.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(outcome[in_bin].mean() - confidence[in_bin].mean())
    return ece


def _probs(z):
    return softmax(np.asarray(z, np.float64), axis=1)


REFERENCE = {
    "accuracy": lambda z, y: np.mean(np.argmax(z, 1) == y),
    "nll": lambda z, y: (
        -np.mean(log_softmax(np.asarray(z, np.float64), axis=1)[np.arange(len(y)), y])
    ),
    "brier": lambda z, y: np.mean(np.sum((_probs(z) - np.eye(z.shape[1])[y]) ** 2, axis=1)),
    "ece": lambda z, y: _ece(_probs(z).max(1), (np.argmax(z, 1) == y).astype(float)),
    "classwise_ece": lambda z, y: np.mean(
        [_ece(_probs(z)[:, k], (y == k).astype(float)) for k in range(z.shape[1])]
    ),
    "macro_f1": lambda z, y: f1_score(y, np.argmax(z, 1), average="macro"),
    "macro_recall": lambda z, y: np.mean(
        [np.mean(np.argmax(z, 1)[y == k] == k) for k in np.unique(y)]
    ),
    "mae": lambda z, y: np.mean(np.abs(np.argmax(z, 1) - y)),
    "accuracy_within_one": lambda z, y: np.mean(np.abs(np.argmax(z, 1) - y) <= 1),
}


def make_runs(num_seeds, n, shift, seed):
    """Per-seed ([N, K] logits, labels); the labels depend on ``n`` only, so runs share them."""
    labels = (np.arange(n) % K).astype(np.int32)
    np.random.default_rng(n).shuffle(labels)
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(num_seeds):
        logits = rng.normal(0.0, 1.5, (n, K)) + (1.0 + shift) * np.eye(K)[labels]
        runs.append((logits.astype(np.float32), labels))
    return runs


def reference_replicates(metric, variant, baseline, num_resamples, seed):
    labels = baseline[0][1]
    indices = S.bootstrap_indices(len(labels), num_resamples, seed=seed)
    out = []
    for index in indices:
        v = [REFERENCE[metric](z[index], labels[index]) for z, _ in variant]
        b = [REFERENCE[metric](z[index], labels[index]) for z, _ in baseline]
        out.append(np.mean(v) - np.mean(b))
    return np.array(out)


@pytest.mark.parametrize("metric", sorted(REFERENCE))
def test_replicates_match_a_numpy_loop_on_the_same_indices(metric):
    n, num_resamples = 48, 120
    variant, baseline = make_runs(2, n, 0.4, seed=1), make_runs(2, n, 0.0, seed=2)
    if "ece" in metric:  # float32 vs float64 probabilities must fall in the same bins
        probs = _probs(np.concatenate([z for z, _ in variant + baseline]))
        values = probs.max(1) if metric == "ece" else probs.ravel()
        assert np.min(np.abs(values[:, None] - np.arange(16)[None, :] / 15)) > 1e-6
    want = reference_replicates(metric, variant, baseline, num_resamples, seed=7)
    got = S.bootstrap_replicates(
        metric, variant, baseline, num_resamples=num_resamples, seed=7, chunk_size=50
    )
    scale = max(1.0, max(REFERENCE[metric](z, y) for z, y in variant + baseline))
    atol = 2 * (n + 4) * EPS32 * scale
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    assert np.std(want) > 100 * atol  # the resamples differ: the comparison has teeth

    result = S.paired_bootstrap(metric, variant, baseline, num_resamples=num_resamples, seed=7)
    observed = np.mean([REFERENCE[metric](z, y) for z, y in variant]) - np.mean(
        [REFERENCE[metric](z, y) for z, y in baseline]
    )
    np.testing.assert_allclose(result["difference"], observed, rtol=0, atol=atol)
    np.testing.assert_allclose(
        [result["ci_low"], result["ci_high"]], np.quantile(want, [0.025, 0.975]), atol=atol
    )
    assert result["num_examples"] == n


@pytest.mark.parametrize("metric, factor", [("accuracy", 1), ("nll", 1), ("ece", 1), ("brier", 2)])
def test_two_classes_as_logits_0_z_give_the_binary_comparison(metric, factor):
    """K = 2 with logits [0, z] is the binary model z: the same comparison (Brier's K-class
    sum is twice the positive-class Brier score)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)

    def runs(shift, seed):
        r = np.random.default_rng(seed)
        out = []
        for _ in range(2):
            z = ((2 * labels - 1) * (1.0 + shift) + r.normal(0, 1.5, 200)).astype(np.float32)
            out.append(z)
        return out

    variant, baseline = runs(0.5, 4), runs(0.0, 5)
    if metric == "ece":  # sigmoid and softmax round differently: keep clear of bin edges
        confidence = 1 / (1 + np.exp(-np.abs(np.concatenate(variant + baseline).astype(float))))
        assert np.min(np.abs(confidence[:, None] - np.arange(16)[None, :] / 15)) > 1e-6

    def pairs(zs, two_class):
        if two_class:
            return [(np.stack([np.zeros_like(z), z], axis=1), labels) for z in zs]
        return [(z, labels) for z in zs]

    binary = S.paired_bootstrap(
        metric, pairs(variant, False), pairs(baseline, False), seed=1, num_resamples=200
    )
    two = S.paired_bootstrap(
        metric, pairs(variant, True), pairs(baseline, True), seed=1, num_resamples=200
    )
    for key in ("difference", "ci_low", "ci_high"):
        assert two[key] == pytest.approx(factor * binary[key], abs=1e-6), key
    assert two["p_value"] == pytest.approx(binary["p_value"], abs=2 / 201)


def test_identical_k_class_runs_have_no_difference():
    runs = make_runs(3, 150, 0.0, seed=9)
    for metric in ("accuracy", "macro_f1", "nll", "classwise_ece", "mae"):
        result = S.paired_bootstrap(metric, runs, runs, num_resamples=100)
        assert (result["difference"], result["ci_low"], result["ci_high"]) == (0.0, 0.0, 0.0)
        assert result["p_value"] == 1.0


def test_bootstrap_metrics_dispatch_on_the_logits_rank():
    ((z, y),) = make_runs(1, 30, 0.0, seed=10)
    accuracy = S.BOOTSTRAP_METRICS["accuracy"]
    assert float(accuracy(z, y)) == pytest.approx(REFERENCE["accuracy"](z, y), abs=EPS32)
    binary = z[:, 1] - z[:, 0]
    binary_labels = (y == 1).astype(np.int32)
    want = np.mean((binary > 0) == (binary_labels == 1))
    assert float(accuracy(binary, binary_labels)) == pytest.approx(want, abs=EPS32)
    assert S.BOOTSTRAP_METRICS["macro_f1"].supports(2)
    assert not S.BOOTSTRAP_METRICS["macro_f1"].supports(1)
    assert not S.BOOTSTRAP_METRICS["auroc"].supports(2)
    with pytest.raises(ValueError, match=r"'macro_f1' has no form for logits of shape \(30,\)"):
        S.BOOTSTRAP_METRICS["macro_f1"](binary, binary_labels)


def test_bad_k_class_input():
    runs = make_runs(2, 20, 0.0, seed=11)
    z, y = runs[0]
    with pytest.raises(ValueError, match=r"`metric` 'auroc' is not defined for logits \[N, K\]"):
        S.paired_bootstrap("auroc", runs, runs)
    binary = [(z[:, 0], (y == 0).astype(np.int32))]
    with pytest.raises(ValueError, match=r"`metric` 'mae' is not defined for binary logits"):
        S.paired_bootstrap("mae", binary, binary)
    with pytest.raises(TypeError, match="`variant`.*single pair"):
        S.paired_bootstrap("nll", (z, y), runs)
    with pytest.raises(ValueError, match=r"`baseline\[1\]` logits have shape \(20, 3\)"):
        S.paired_bootstrap("nll", runs, [runs[0], (z[:, :3], y)])
    with pytest.raises(ValueError, match=r"`variant\[0\]` logits have shape \(20,\)"):
        S.paired_bootstrap("nll", [(z[:, 0], y)], runs)
    with pytest.raises(ValueError, match=r"`variant\[0\]` must hold logits \[N, K\] with K >= 2"):
        S.paired_bootstrap("nll", [(z[:, :1], y)], runs)
    with pytest.raises(ValueError, match=r"`variant\[0\]` logits must be finite.*row 5"):
        S.paired_bootstrap("nll", [(np.where(np.arange(20)[:, None] == 5, np.inf, z), y)], runs)
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 4\).*4"):
        S.paired_bootstrap("nll", [(z, y + 1)], [(z, y + 1)])
    with pytest.raises(TypeError, match="`labels` must be integer class indices"):
        S.paired_bootstrap("nll", [(z, y.astype(np.float32))], [(z, y.astype(np.float32))])
