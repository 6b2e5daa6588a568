"""jaxsent.metrics against scikit-learn, an independent ECE loop and brute-force AUROC.

Tolerances. The metrics compute in float32 from float32 logits; the references compute in
float64 from the same logits (cast exactly), so every difference is float32 rounding:
* counting metrics (accuracy, precision, recall, F1) are one correctly rounded division
  of exact integer counts: relative error <= eps/2, tested at ``EPS32``;
* NLL, Brier, AUROC and ECE are means of N terms each within ~2 eps of exact (measured:
  jax.nn.sigmoid <= 1.2 eps, log_sigmoid <= 1.9 eps on [-30, 30]); summing N non-negative
  terms adds at most (N - 1) eps relative, hence ``rtol = (N + 4) * EPS32``. ECE subtracts
  two per-bin sums (cancellation), so its bound is absolute: ``atol = (N + 4) * EPS32``.
* The float64 test runs the same code under x64 and agrees with the references to 1e-12,
  showing the float32 differences are rounding only.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import expit
from sklearn import metrics as skm

from jaxsent import metrics as M
from jaxsent.evaluation import _jit_metrics as jit_metrics  # the jitted metrics the loop runs

EPS32 = float(np.finfo(np.float32).eps)
KEYS = ("accuracy", "precision", "recall", "f1", "auroc", "nll", "brier", "ece", "n_examples")
# A few fixed sizes keep the number of jit compilations (one per shape) small.
SIZES = (1, 2, 3, 5, 8, 17, 48)


# ---------------------------------------------------------------- references


def guo_ece_reference(confidence, outcome, num_bins):
    """ECE by the loop of Guo et al. (2017): bins (lo, hi], plus 0 in the first bin."""
    confidence = np.asarray(confidence, np.float64)
    outcome = np.asarray(outcome, np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1).astype(np.float32).astype(np.float64)
    ece = 0.0
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        in_bin = (confidence > lo) & (confidence <= hi)
        if b == 0:
            in_bin |= confidence == 0
        if in_bin.any():
            ece += in_bin.mean() * abs(outcome[in_bin].mean() - confidence[in_bin].mean())
    return ece


def pairwise_auroc(scores, labels):
    """P(s+ > s-) + P(s+ == s-)/2 over all positive/negative pairs, by brute force."""
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    if pos.size == 0 or neg.size == 0:
        return np.nan
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def reference_metrics(logits, labels, num_bins=15):
    """float64 references: scikit-learn where it has the metric, Guo's loop for ECE."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels).astype(int)
    pred = z > 0
    p = expit(z)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y, pred, average="binary", zero_division=0.0, labels=[0, 1]
    )
    both_classes = 0 < y.sum() < len(y)
    # Two accurate columns: sklearn then only clips at float64 eps (|z| > 36, not drawn).
    two_columns = np.stack([expit(-z), p], axis=1)
    confidence, _ = M.calibration_inputs(jnp.asarray(logits), jnp.asarray(labels))
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": skm.roc_auc_score(y, z) if both_classes else np.nan,
        "nll": skm.log_loss(y, two_columns, labels=[0, 1]),
        "brier": skm.brier_score_loss(y, p, pos_label=1),
        "ece": guo_ece_reference(confidence, pred == y, num_bins),
        "n_examples": len(y),
    }


def assert_matches_reference(got, want, n, *, eps=EPS32):
    exact_rtol = eps
    mean_rtol = (n + 4) * eps
    for key in ("accuracy", "precision", "recall", "f1"):
        np.testing.assert_allclose(got[key], want[key], rtol=exact_rtol, atol=0, err_msg=key)
    for key in ("auroc", "nll", "brier"):
        # Brier's atol only covers the float64 reference's own cancellation in 1 - p.
        np.testing.assert_allclose(got[key], want[key], rtol=mean_rtol, atol=1e-15, err_msg=key)
    np.testing.assert_allclose(got["ece"], want["ece"], rtol=0, atol=mean_rtol, err_msg="ece")
    assert int(got["n_examples"]) == want["n_examples"]


# ----------------------------------------------------------------- strategies


@st.composite
def problems(draw, sizes=SIZES):
    """(logits float32 [n], labels int32 [n]): tie-heavy or continuous, maybe one class."""
    n = draw(st.sampled_from(sizes))
    if draw(st.booleans()):
        elements = st.sampled_from([-2.0, -0.5, 0.0, 0.5, 2.0])
    else:
        # XLA on CPU flushes subnormals to zero, so a logit of 1e-45 is not > 0 on device while
        # numpy's reference says it is: subnormal logits are outside what the metrics promise.
        elements = st.floats(-30, 30, width=32, allow_subnormal=False)
    logits = draw(hnp.arrays(np.float32, n, elements=elements))
    label_values = draw(st.sampled_from([(0, 1), (0,), (1,)]))
    labels = draw(hnp.arrays(np.int32, n, elements=st.sampled_from(label_values)))
    return logits, labels


@st.composite
def masked_problems(draw):
    """A problem with a mask; masked rows get NaN/inf logits and out-of-range labels."""
    logits, labels = draw(problems())
    mask = draw(hnp.arrays(bool, len(logits)))
    junk_logit = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    logits = np.where(mask, logits, junk_logit).astype(np.float32)
    labels = np.where(mask, labels, -7).astype(np.int32)
    return logits, labels, mask


# ---------------------------------------------------------------------- tests


@settings(max_examples=60, deadline=None)
@given(problems())
def test_matches_sklearn_and_guo_ece(problem):
    logits, labels = problem
    got = jit_metrics(logits, labels)
    assert_matches_reference(got, reference_metrics(logits, labels), len(logits))


@settings(max_examples=25, deadline=None)
@given(masked_problems())
def test_where_equals_selecting_rows_and_padding_never_poisons(problem):
    logits, labels, mask = problem
    got = jit_metrics(logits, labels, where=mask)
    want = M.binary_classification_metrics(logits[mask], labels[mask])
    n = int(mask.sum())
    assert int(got["n_examples"]) == n
    for key in KEYS:
        np.testing.assert_allclose(
            got[key], want[key], rtol=(n + 4) * EPS32, atol=(n + 4) * EPS32, err_msg=key
        )
    if n:
        assert_matches_reference(got, reference_metrics(logits[mask], labels[mask]), n)


@settings(max_examples=10, deadline=None)
@given(masked_problems())
def test_jit_equals_eager(problem):
    logits, labels, mask = problem
    eager = M.binary_classification_metrics(logits, labels, where=mask)
    jitted = jit_metrics(logits, labels, where=mask)
    for key in KEYS:
        np.testing.assert_allclose(jitted[key], eager[key], rtol=4 * EPS32, err_msg=key)


def test_float64_under_x64_matches_references_to_1e12():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=500)
    labels = (rng.random(500) < expit(logits)).astype(np.int32)
    with jax.enable_x64(True):
        got = M.binary_classification_metrics(jnp.asarray(logits, jnp.float64), labels)
        assert got["nll"].dtype == jnp.float64
        want = reference_metrics(logits, labels)
    assert_matches_reference(got, want, 1, eps=1e-12 / 5)
    # The float32 path on the same data stays within its own bound.
    got32 = M.binary_classification_metrics(logits.astype(np.float32), labels)
    want32 = reference_metrics(logits.astype(np.float32), labels)
    assert_matches_reference(got32, want32, 500)


def test_auroc_large_n_float32_accuracy():
    # Averaging per-positive fractions keeps float32 near 1 ulp even for 100k rows
    # (measured 0.7 eps), where summing pair counts (~2.5e9) would not fit float32.
    rng = np.random.default_rng(1)
    logits = rng.normal(size=100_000).astype(np.float32)
    labels = (rng.random(100_000) < expit(logits)).astype(np.int32)
    got = float(M.auroc(logits, labels))
    np.testing.assert_allclose(got, skm.roc_auc_score(labels, logits), rtol=8 * EPS32)


def test_auroc_with_infinite_scores_and_ties_matches_pairwise():
    logits = np.array([np.inf, np.inf, -np.inf, 0.0, 0.0, 1.0, -np.inf, np.inf], np.float32)
    labels = np.array([1, 0, 0, 1, 0, 1, 1, 0])
    assert float(M.auroc(logits, labels)) == pytest.approx(pairwise_auroc(logits, labels))


def test_auroc_undefined_cases_are_nan():
    assert np.isnan(M.auroc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert np.isnan(M.auroc(np.array([0.1, 0.2]), np.array([0, 0])))
    assert np.isnan(M.auroc(np.array([np.nan, 0.2]), np.array([1, 0])))
    assert float(M.auroc(np.zeros(4), np.array([0, 1, 0, 1]))) == 0.5


def test_no_real_rows():
    got = M.binary_classification_metrics(
        np.full(3, np.nan, np.float32), np.array([1, 0, 1]), where=np.zeros(3, bool)
    )
    assert int(got["n_examples"]) == 0
    for key in ("accuracy", "auroc", "nll", "brier", "ece"):
        assert np.isnan(got[key]), key
    for key in ("precision", "recall", "f1"):
        assert float(got[key]) == 0.0, key


def test_zero_logit_predicts_negative():
    tp, fp, fn, tn = M.confusion_counts(np.zeros(2), np.array([1, 0]))
    assert (int(tp), int(fp), int(fn), int(tn)) == (0, 0, 1, 1)


@pytest.mark.parametrize("z", [30.0, 100.0, 1e4, 1e30])
def test_nll_from_logits_is_exact_at_extremes(z):
    logits = np.array([z, -z, z, -z], np.float32)
    labels = np.array([1, 0, 0, 1])  # two confident right, two confident wrong
    want = np.mean(np.logaddexp(0.0, -np.where(labels == 1, 1, -1) * logits.astype(np.float64)))
    got = float(M.binary_nll(logits, labels))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=4 * EPS32)
    np.testing.assert_allclose(float(M.brier_score(logits, labels)), 0.5, rtol=EPS32)


def test_low_precision_logits_compute_in_float32():
    logits = jnp.array([0.5, -1.5, 2.0], jnp.bfloat16)
    got = M.binary_classification_metrics(logits, jnp.array([True, False, False]))
    assert all(got[k].dtype == jnp.float32 for k in KEYS if k != "n_examples")
    assert got["n_examples"].dtype == jnp.int32


# ------------------------------------------------------------------- calibration


@settings(max_examples=30, deadline=None)
@given(problems(), st.sampled_from([1, 2, 10, 15]))
def test_positive_class_ece_matches_guo_loop(problem, num_bins):
    logits, labels = problem
    got = M.expected_calibration_error(logits, labels, num_bins=num_bins, positive_class=True)
    confidence, outcome = M.calibration_inputs(logits, labels, positive_class=True)
    np.testing.assert_array_equal(outcome, labels)
    want = guo_ece_reference(confidence, labels, num_bins)
    np.testing.assert_allclose(got, want, rtol=0, atol=(len(logits) + 4) * EPS32)


def test_top_label_confidence_is_max_p_one_minus_p():
    logits = np.linspace(-30, 30, 2001).astype(np.float32)
    labels = (np.arange(2001) % 2).astype(np.int32)
    confidence, outcome = M.calibration_inputs(logits, labels)
    p = expit(logits.astype(np.float64))
    np.testing.assert_allclose(confidence, np.maximum(p, 1 - p), rtol=2 * EPS32)
    np.testing.assert_array_equal(outcome, (logits > 0) == (labels == 1))
    assert float(np.min(confidence)) >= 0.5


def test_bin_edges_are_upper_inclusive():
    edges = M.reliability_bin_edges(15)
    assert edges.dtype == np.float32 and edges[0] == 0 and edges[-1] == 1
    interior = edges[1:-1]
    above = np.nextafter(interior, np.float32(2))
    confidence = np.concatenate([[0.0, 1.0], interior, above]).astype(np.float32)
    bins = M.reliability_bins(confidence, np.ones_like(confidence), num_bins=15)
    expected_index = np.concatenate([[0, 14], np.arange(14), np.arange(1, 15)])
    np.testing.assert_array_equal(bins.count, np.bincount(expected_index, minlength=15))
    # Each edge sits in the bin it closes, and each bin's mean stays inside its edges.
    filled = bins.count > 0
    assert np.all(bins.confidence[filled] > edges[:-1][filled] - 1e-7)
    assert np.all(bins.confidence[filled] <= edges[1:][filled])


def test_reliability_bins_statistics_and_padding():
    confidence = np.array([0.55, 0.58, 0.95, 0.99, np.nan], np.float32)
    outcome = np.array([1.0, 0.0, 1.0, 1.0, np.nan], np.float32)
    where = np.array([True, True, True, True, False])
    bins = M.reliability_bins(confidence, outcome, where=where, num_bins=10)
    bins = jax.tree.map(np.asarray, bins)
    np.testing.assert_array_equal(bins.count, [0, 0, 0, 0, 0, 2, 0, 0, 0, 2])
    np.testing.assert_allclose(bins.confidence[[5, 9]], [0.565, 0.97], rtol=EPS32)
    np.testing.assert_allclose(bins.accuracy[[5, 9]], [0.5, 1.0], rtol=EPS32)
    assert np.all(bins.confidence[bins.count == 0] == 0)
    assert not np.any(np.isnan(bins.accuracy))


def test_top_label_ece_leaves_lower_half_of_bins_empty():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=4.0, size=1000).astype(np.float32)
    confidence, outcome = M.calibration_inputs(logits, np.zeros(1000, np.int32))
    bins = M.reliability_bins(confidence, outcome, num_bins=15)
    assert np.all(bins.count[:7] == 0) and int(bins.count.sum()) == 1000


def test_ece_known_value():
    # Two bins: (0, .5] holds nothing (top-label), (.5, 1] holds all four rows with mean
    # confidence 0.75 (logits ±log 3) and accuracy 1/2, so ECE = 0.25.
    logits = np.log(3.0) * np.array([1, 1, -1, -1], np.float32)
    labels = np.array([1, 0, 0, 1])
    got = float(M.expected_calibration_error(logits, labels, num_bins=2))
    np.testing.assert_allclose(got, 0.25, rtol=4 * EPS32)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: M.accuracy(np.zeros(3), np.array([0, 1, 2])), ValueError, "`labels`.*2"),
        (lambda: M.accuracy(np.zeros(2), np.array([0.0, 0.5])), ValueError, "`labels`.*0.5"),
        (lambda: M.accuracy(np.zeros(3), np.array([0, 1])), ValueError, "`labels`"),
        (lambda: M.accuracy(np.zeros((2, 2)), np.zeros((2, 2))), ValueError, r"`logits`.*\[N\]"),
        (lambda: M.accuracy(np.zeros(2, np.int32), np.zeros(2)), TypeError, "`logits`.*int32"),
        (lambda: M.accuracy(np.zeros(2), np.zeros(2), where=np.ones(2)), TypeError, "`where`"),
        (
            lambda: M.accuracy(np.zeros(2), np.zeros(2), where=np.ones(3, bool)),
            ValueError,
            "`where`",
        ),
        (lambda: M.reliability_bin_edges(0), ValueError, "`num_bins`.*0"),
    ],
)
def test_bad_input_names_argument_and_value(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_label_values_in_padding_rows_are_not_checked():
    got = M.accuracy(np.zeros(2), np.array([0, 5]), where=np.array([True, False]))
    assert float(got) == 1.0
