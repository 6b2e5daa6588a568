"""jaxsent.multiclass_metrics against scikit-learn, float64 numpy statements and the binary metrics.

References. scikit-learn for the counting metrics, NLL (``log_loss``) and MAE; scipy's float64
``log_softmax`` for NLL; a float64 numpy statement of Brier's sum over classes; Guo's binning
loop (tests/test_metrics.py) over each class for the ECEs. As in tests/test_metrics.py the ECE
references bin the float32 confidences that the metrics bin (so that a confidence within an
ulp of a bin edge cannot fall on the other side in float64); those confidences are checked
against float64 separately.

Tolerances (EPS32 = float32 eps; N rows, K classes). The logits are float32, cast exactly to
float64 for the references, so every difference is float32 rounding:
* counting metrics: accuracy, precision, recall, F1 are one correctly rounded division of exact
  counts (``rtol = EPS32``); a macro average adds a sum of up to K such values and one division
  (``rtol = (K + 2) EPS32``); MAE and accuracy within one are sums of exact small integers
  (``rtol = EPS32``).
* softmax: ``z_k - max z`` is rounded to ``eps/2 |z_k - max z|``, so ``p_k`` carries a relative
  error of about ``(|z_k - max z| / 2 + 2) eps``, whose absolute size ``p_k (x / 2 + 2) eps``
  with ``x = |z_k - max z|`` is at most ``2 eps``. Hence per example NLL is within
  ``3 K eps`` (the log of a sum >= 1 of K such terms) plus ``eps`` relative, and Brier within
  ``4 K eps`` relative (two squared sums of K such terms); a mean over N adds ``N eps``
  relative: ``NLL: rtol (N + 4) eps, atol 4 K eps``; ``Brier: rtol (N + 4 K + 4) eps``.
* ECE: sums per bin then differences (cancellation): ``atol = (N + 4 K + 4) eps`` as for Brier.
* The float64 test runs the same code under x64 and agrees with the references to 1e-12.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import expit, log_softmax, softmax
from sklearn import metrics as skm

from jaxsent import metrics as M
from jaxsent import multiclass_metrics as MM
from jaxsent.evaluation import _jit_multiclass_metrics as jit_metrics  # what evaluation runs

EPS32 = float(np.finfo(np.float32).eps)
KEYS = (*MM.SCALAR_METRICS, *MM.ORDINAL_METRICS, "n_examples")
SIZES = (1, 2, 5, 17, 48)
CLASSES = (2, 3, 5)


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


def float32_probs(logits):
    """The softmax the metrics bin (float32, as jax computes it)."""
    return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))


def reference_metrics(logits, labels, num_bins=15):
    """float64 references: scikit-learn where it has the metric, numpy statements elsewhere."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels).astype(int)
    k = z.shape[1]
    pred = np.argmax(z, axis=1)
    p = softmax(z, axis=1)
    one_hot = np.eye(k)[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        balanced = skm.balanced_accuracy_score(y, pred)
    p32 = float32_probs(logits)
    confidence = p32.max(axis=1)
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "macro_f1": skm.f1_score(y, pred, average="macro", zero_division=0.0),
        "macro_recall": balanced,
        "nll": float(np.mean(-log_softmax(z, axis=1)[np.arange(len(y)), y])),
        "brier": float(np.mean(np.sum((p - one_hot) ** 2, axis=1))),
        "ece": guo_ece_reference(confidence, pred == y, num_bins),
        "classwise_ece": float(
            np.mean([guo_ece_reference(p32[:, c], y == c, num_bins) for c in range(k)])
        ),
        "mae": skm.mean_absolute_error(y, pred),
        "accuracy_within_one": float(np.mean(np.abs(pred - y) <= 1)),
        "n_examples": len(y),
    }


def assert_matches_reference(got, want, n, k, *, eps=EPS32):
    for key in ("accuracy", "mae", "accuracy_within_one"):
        np.testing.assert_allclose(got[key], want[key], rtol=eps, atol=0, err_msg=key)
    for key in ("macro_f1", "macro_recall"):
        np.testing.assert_allclose(got[key], want[key], rtol=(k + 2) * eps, atol=0, err_msg=key)
    np.testing.assert_allclose(
        got["nll"], want["nll"], rtol=(n + 4) * eps, atol=4 * k * eps, err_msg="nll"
    )
    # Brier's atol only covers the float64 reference's own cancellation in p_y - 1.
    brier_rtol = (n + 4 * k + 4) * eps
    np.testing.assert_allclose(got["brier"], want["brier"], rtol=brier_rtol, atol=1e-15)
    for key in ("ece", "classwise_ece"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=brier_rtol, err_msg=key)
    assert int(got["n_examples"]) == want["n_examples"]


# ----------------------------------------------------------------- strategies


@st.composite
def problems(draw, sizes=SIZES):
    """(logits float32 [n, k], labels int32 [n]): tie-heavy or continuous, some classes absent."""
    n = draw(st.sampled_from(sizes))
    k = draw(st.sampled_from(CLASSES))
    if draw(st.booleans()):
        elements = st.sampled_from([-2.0, -0.5, 0.0, 0.5, 2.0])  # ties in the argmax
    else:
        # |z| <= 15 keeps every float64 probability above sklearn's clipping at 2.2e-16.
        elements = st.floats(-15, 15, width=32, allow_subnormal=False)
    logits = draw(hnp.arrays(np.float32, (n, k), elements=elements))
    present = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    labels = draw(hnp.arrays(np.int32, n, elements=st.sampled_from(present)))
    return logits, labels


@st.composite
def masked_problems(draw):
    """A problem with a mask; masked rows get NaN/inf logits and out-of-range labels."""
    logits, labels = draw(problems())
    mask = draw(hnp.arrays(bool, len(logits)))
    junk_logit = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    junk_label = draw(st.sampled_from([-7, logits.shape[1]]))
    logits = np.where(mask[:, None], logits, junk_logit).astype(np.float32)
    labels = np.where(mask, labels, junk_label).astype(np.int32)
    return logits, labels, mask


def jitted(logits, labels, where=None):
    return jit_metrics(logits, labels, where=where, num_bins=15, ordinal=True)


# ---------------------------------------------------------------------- tests


@settings(max_examples=40, deadline=None)
@given(problems())
def test_matches_sklearn_and_numpy_references(problem):
    logits, labels = problem
    got = jitted(logits, labels)
    assert_matches_reference(got, reference_metrics(logits, labels), *logits.shape)


@settings(max_examples=20, deadline=None)
@given(masked_problems())
def test_where_equals_selecting_rows_and_padding_never_poisons(problem):
    logits, labels, mask = problem
    got = jitted(logits, labels, where=mask)
    want = jitted(logits[mask], labels[mask])
    n, k = int(mask.sum()), logits.shape[1]
    assert int(got["n_examples"]) == n
    tol = (n + 4 * k + 4) * EPS32
    for key in KEYS:
        np.testing.assert_allclose(got[key], want[key], rtol=tol, atol=tol, err_msg=key)
    if n:
        assert_matches_reference(got, reference_metrics(logits[mask], labels[mask]), n, k)


@settings(max_examples=6, deadline=None)
@given(masked_problems())
def test_jit_equals_eager(problem):
    logits, labels, mask = problem
    eager = MM.multiclass_classification_metrics(logits, labels, where=mask, ordinal=True)
    got = jitted(logits, labels, where=mask)
    for key in KEYS:
        np.testing.assert_allclose(got[key], eager[key], rtol=4 * EPS32, atol=0, err_msg=key)


@settings(max_examples=30, deadline=None)
@given(problems())
def test_per_class_metrics_and_confusion_match_sklearn(problem):
    logits, labels = problem
    k = logits.shape[1]
    got = MM.per_class_metrics(logits, labels)
    pred = np.argmax(logits, axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, pred, labels=range(k), zero_division=0.0
    )
    np.testing.assert_array_equal(
        got["confusion_matrix"], skm.confusion_matrix(labels, pred, labels=range(k))
    )
    np.testing.assert_array_equal(got["support"], support)
    for key, want in (("precision", precision), ("recall", recall), ("f1", f1)):
        np.testing.assert_allclose(got[key], want, rtol=EPS32, atol=0, err_msg=key)
    assert got["confusion_matrix"].dtype == jnp.int32


def test_ties_go_to_the_lowest_index_and_absent_classes_leave_the_macro_averages():
    # Rows 0-1 tie between classes 1 and 2 (argmax 1), row 2 ties all three (argmax 0).
    logits = np.array([[0, 3, 3], [0, 3, 3], [1, 1, 1], [5, 0, 0]], np.float32)
    labels = np.array([1, 2, 0, 0])
    np.testing.assert_array_equal(MM.predicted_class(logits), [1, 1, 0, 0])
    got = MM.multiclass_classification_metrics(logits, labels)
    assert float(got["accuracy"]) == 0.75
    # Class 2 is a label but never predicted: F1 0, recall 0, both in the averages.
    np.testing.assert_allclose(got["macro_f1"], (1 + 2 / 3 + 0) / 3, rtol=EPS32)
    np.testing.assert_allclose(got["macro_recall"], (1 + 1 + 0) / 3, rtol=EPS32)
    # A fourth class that is neither labelled nor predicted changes no macro average.
    wider = np.concatenate([logits, np.full((4, 1), -9, np.float32)], axis=1)
    got4 = MM.multiclass_classification_metrics(wider, labels)
    for key in ("accuracy", "macro_f1", "macro_recall"):
        assert float(got4[key]) == float(got[key]), key
    pred = np.array([1, 1, 0, 0])
    assert float(got4["macro_f1"]) == pytest.approx(skm.f1_score(labels, pred, average="macro"))


def test_a_class_predicted_but_never_labelled_counts_in_macro_f1_not_in_macro_recall():
    logits = np.array([[0, 0, 4], [4, 0, 0], [0, 4, 0]], np.float32)
    labels = np.array([0, 0, 1])  # class 2 predicted once, never labelled
    got = MM.multiclass_classification_metrics(logits, labels)
    pred = np.argmax(logits, axis=1)
    np.testing.assert_allclose(got["macro_f1"], skm.f1_score(labels, pred, average="macro"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = skm.balanced_accuracy_score(labels, pred)
    np.testing.assert_allclose(got["macro_recall"], want, rtol=EPS32)
    assert float(got["macro_recall"]) == 0.75  # (1/2 + 1) / 2: class 2 has no recall


def test_float64_under_x64_matches_references_to_1e12():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(500, 5))
    labels = rng.integers(0, 5, size=500)
    with jax.enable_x64(True):
        got = MM.multiclass_classification_metrics(
            jnp.asarray(logits, jnp.float64), labels, ordinal=True
        )
        assert got["nll"].dtype == jnp.float64
        want = reference_metrics(logits, labels)  # its confidences binned in float64 here
    assert_matches_reference(got, want, 1, 1, eps=1e-12 / 10)
    got32 = MM.multiclass_classification_metrics(logits.astype(np.float32), labels, ordinal=True)
    assert_matches_reference(got32, reference_metrics(logits.astype(np.float32), labels), 500, 5)


def test_nll_matches_sklearn_log_loss():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(300, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=300)
    want = skm.log_loss(labels, softmax(logits.astype(np.float64), axis=1), labels=range(5))
    np.testing.assert_allclose(MM.nll(logits, labels), want, rtol=304 * EPS32, atol=20 * EPS32)


@pytest.mark.parametrize("z", [30.0, 200.0, 1e4])
def test_nll_is_exact_at_extremes_where_clipping_is_not(z):
    logits = np.array([[z, 0, 0], [0, z, 0]], np.float32)
    labels = np.array([1, 1])  # one confident wrong row (cost about z), one right
    want = np.mean(-log_softmax(logits.astype(np.float64), axis=1)[[0, 1], [1, 1]])
    np.testing.assert_allclose(MM.nll(logits, labels), want, rtol=4 * EPS32)
    clipped = skm.log_loss(labels, softmax(logits.astype(np.float64), axis=1), labels=range(3))
    assert clipped < want or z < 37  # sklearn caps a wrong row near -log(2.2e-16) = 36.04


def test_brier_stays_accurate_for_confident_correct_rows():
    # p_other = 1 / (e^12 + 2) each; Brier = (2 p)^2 + 2 p^2 = 6 p^2 ~ 2.3e-10. 1 - p_y in
    # float32 would lose all but ~2 digits of it.
    logits = np.array([[12.0, 0.0, 0.0]], np.float32)
    p = 1.0 / (np.exp(12.0) + 2.0)
    np.testing.assert_allclose(MM.brier_score(logits, np.array([0])), 6 * p * p, rtol=16 * EPS32)


def test_brier_is_in_0_2_and_twice_the_binary_form_for_two_classes():
    worst = np.array([[50.0, 0.0], [0.0, 50.0]], np.float32)
    np.testing.assert_allclose(MM.brier_score(worst, np.array([1, 0])), 2.0, rtol=EPS32)
    rng = np.random.default_rng(2)
    z = rng.normal(scale=3.0, size=400).astype(np.float32)
    y = (rng.random(400) < expit(z)).astype(np.int32)
    two = np.stack([np.zeros_like(z), z], axis=1)
    np.testing.assert_allclose(
        MM.brier_score(two, y), 2 * float(M.brier_score(z, y)), rtol=404 * EPS32
    )


def test_two_classes_of_logits_zero_and_z_equal_the_binary_metrics():
    rng = np.random.default_rng(3)
    z = rng.normal(scale=3.0, size=600).astype(np.float32)
    z[:20] = 0.0  # a tie: both predict class 0 / negative
    y = (rng.random(600) < expit(z)).astype(np.int32)
    where = rng.random(600) < 0.8
    two = np.stack([np.zeros_like(z), z], axis=1)
    got = MM.multiclass_classification_metrics(two, y, where=where)
    binary = M.binary_classification_metrics(z, y, where=where)
    n = int(where.sum())
    assert float(got["accuracy"]) == float(binary["accuracy"])
    np.testing.assert_allclose(got["nll"], binary["nll"], rtol=(n + 4) * EPS32)
    # The top-label confidence max softmax = sigmoid(|z|) up to rounding, binned alike.
    np.testing.assert_allclose(got["ece"], binary["ece"], rtol=0, atol=(n + 4) * EPS32)
    conf, outcome = MM.top_label_calibration_inputs(two, y, where=where)
    conf_binary, outcome_binary = M.calibration_inputs(z, y, where=where)
    np.testing.assert_allclose(conf[where], conf_binary[where], rtol=2 * EPS32)
    np.testing.assert_array_equal(outcome[where], outcome_binary[where])
    # Class 1's ECE is the binary positive-class ECE; class 0's that of -z against 1 - y.
    errors = MM.class_calibration_errors(two, y, where=where)
    positive = M.expected_calibration_error(z, y, where=where, positive_class=True)
    negative = M.expected_calibration_error(-z, 1 - y, where=where, positive_class=True)
    np.testing.assert_allclose(errors, [negative, positive], rtol=0, atol=(n + 4) * EPS32)


def test_top_label_confidence_and_bins():
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=2.0, size=(700, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=700)
    confidence, outcome = MM.top_label_calibration_inputs(logits, labels)
    p = softmax(logits.astype(np.float64), axis=1)
    np.testing.assert_allclose(confidence, p.max(axis=1), rtol=4 * 5 * EPS32)
    np.testing.assert_array_equal(outcome, np.argmax(logits, axis=1) == labels)
    bins = MM.top_label_reliability_bins(logits, labels, num_bins=10)
    want = M.reliability_bins(confidence, outcome, num_bins=10)
    for got_field, want_field in zip(bins, want, strict=True):
        np.testing.assert_array_equal(got_field, want_field)
    assert np.all(np.asarray(bins.count)[:1] == 0)  # confidence >= 1/5 leaves bin (0, .1] empty
    np.testing.assert_allclose(
        MM.expected_calibration_error(logits, labels, num_bins=10),
        guo_ece_reference(confidence, outcome, 10),
        atol=720 * EPS32,
    )


def test_classwise_bins_match_a_per_class_count():
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=2.0, size=(300, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=300)
    where = rng.random(300) < 0.7
    bins = jax.tree.map(np.asarray, MM.classwise_reliability_bins(logits, labels, where=where))
    assert bins.count.shape == (4, 15) and bins.edges.shape == (16,)
    p = float32_probs(logits)[where]
    y = labels[where]
    index = np.clip(np.searchsorted(bins.edges, p, side="left") - 1, 0, 14)  # (lo, hi]
    for c in range(4):
        np.testing.assert_array_equal(bins.count[c], np.bincount(index[:, c], minlength=15))
        filled = bins.count[c] > 0
        conf = np.bincount(index[:, c], weights=p[:, c], minlength=15)[filled]
        freq = np.bincount(index[:, c], weights=y == c, minlength=15)[filled]
        np.testing.assert_allclose(bins.confidence[c][filled], conf / bins.count[c][filled], 1e-6)
        np.testing.assert_allclose(bins.accuracy[c][filled], freq / bins.count[c][filled], 1e-6)
    want = np.mean([guo_ece_reference(p[:, c], y == c, 15) for c in range(4)])
    got = MM.classwise_expected_calibration_error(logits, labels, where=where)
    np.testing.assert_allclose(got, want, atol=320 * EPS32)


def test_ordinal_metrics_are_opt_in_and_match_sklearn():
    logits = np.eye(5, dtype=np.float32)[[0, 2, 4, 4, 1, 3]]
    labels = np.array([0, 1, 1, 4, 3, 3])
    plain = MM.multiclass_classification_metrics(logits, labels)
    assert set(plain) == {*MM.SCALAR_METRICS, "n_examples"}
    got = MM.multiclass_classification_metrics(logits, labels, ordinal=True)
    pred = np.array([0, 2, 4, 4, 1, 3])
    assert float(got["mae"]) == pytest.approx(skm.mean_absolute_error(labels, pred))
    assert float(got["accuracy_within_one"]) == pytest.approx(4 / 6)
    assert float(MM.mean_absolute_error(logits, labels)) == float(got["mae"])
    assert float(MM.accuracy_within_one(logits, labels)) == float(got["accuracy_within_one"])


def test_public_functions_agree_with_the_dict():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(50, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=50)
    got = MM.multiclass_classification_metrics(logits, labels)
    singles = {
        "accuracy": MM.accuracy,
        "macro_f1": MM.macro_f1,
        "macro_recall": MM.macro_recall,
        "nll": MM.nll,
        "brier": MM.brier_score,
        "ece": MM.expected_calibration_error,
        "classwise_ece": MM.classwise_expected_calibration_error,
    }
    for key, fn in singles.items():
        assert float(fn(logits, labels)) == float(got[key]), key
    np.testing.assert_array_equal(
        MM.confusion_matrix(logits, labels),
        skm.confusion_matrix(labels, np.argmax(logits, axis=1), labels=range(3)),
    )


def test_eval_shape_gives_the_stable_scalar_keys():
    # What the config check lists for train.best_metric (K static, as a shape).
    spec = (jax.ShapeDtypeStruct((2, 5), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32))
    shapes = jax.eval_shape(MM.multiclass_classification_metrics, *spec)
    assert sorted(shapes) == sorted([*MM.SCALAR_METRICS, "n_examples"])
    assert all(s.shape == () for s in shapes.values())
    assert shapes["n_examples"].dtype == jnp.int32 and shapes["nll"].dtype == jnp.float32
    ordinal = jax.eval_shape(
        lambda z, y: MM.multiclass_classification_metrics(z, y, ordinal=True), *spec
    )
    assert sorted(ordinal) == sorted([*MM.SCALAR_METRICS, *MM.ORDINAL_METRICS, "n_examples"])


def test_no_real_rows():
    got = MM.multiclass_classification_metrics(
        np.full((3, 4), np.nan, np.float32),
        np.array([1, 0, 9]),
        where=np.zeros(3, bool),
        ordinal=True,
    )
    assert int(got["n_examples"]) == 0
    for key in (*MM.SCALAR_METRICS, *MM.ORDINAL_METRICS):
        assert np.isnan(got[key]), key


def test_low_precision_logits_compute_in_float32():
    logits = jnp.array([[0.5, -1.5], [2.0, 0.0]], jnp.bfloat16)
    got = MM.multiclass_classification_metrics(logits, jnp.array([0, 1]))
    assert all(got[k].dtype == jnp.float32 for k in MM.SCALAR_METRICS)


# ------------------------------------------------------------------ bad input

Z = np.zeros((3, 4), np.float32)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: MM.accuracy(np.zeros(3), np.zeros(3, int)), ValueError, r"`logits`.*\[N, K\]"),
        (lambda: MM.accuracy(np.zeros((3, 1)), np.zeros(3, int)), ValueError, "K >= 2"),
        (lambda: MM.accuracy(Z, np.array([0, 1])), ValueError, r"`labels`.*\(3,\)"),
        (lambda: MM.accuracy(Z, np.array([0.0, 1.0, 2.0])), TypeError, "`labels`.*float"),
        (lambda: MM.accuracy(Z, np.array([0, 4, 1])), ValueError, r"`labels`.*\[0, 4\).*4"),
        (lambda: MM.accuracy(Z, np.array([0, -1, 1])), ValueError, "`labels`.*-1"),
        (lambda: MM.accuracy(np.zeros((3, 4), int), np.zeros(3, int)), TypeError, "`logits`"),
        (lambda: MM.nll(Z, np.zeros(3, int), where=np.ones(3)), TypeError, "`where`"),
        (lambda: MM.nll(Z, np.zeros(3, int), where=np.ones(2, bool)), ValueError, "`where`"),
        (
            lambda: MM.expected_calibration_error(Z, np.zeros(3, int), num_bins=0),
            ValueError,
            "`num_bins`",
        ),
        (lambda: MM.resolve_class_names(["a", "b"], 3), ValueError, "`class_names`.*3"),
        (lambda: MM.resolve_class_names(["a", "a"], 2), ValueError, "unique.*'a'"),
        (lambda: MM.resolve_class_names(["a", ""], 2), ValueError, "non-empty"),
        (lambda: MM.resolve_class_names("ab", 2), ValueError, "`class_names`"),
    ],
)
def test_bad_input_names_argument_and_value(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_label_values_in_padding_rows_are_not_checked():
    got = MM.accuracy(np.eye(2, dtype=np.float32), np.array([0, 9]), where=np.array([True, False]))
    assert float(got) == 1.0
    assert MM.resolve_class_names(None, 3) == ["0", "1", "2"]
