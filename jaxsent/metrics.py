"""Binary classification metrics, including calibration, as pure JAX functions.

The K-class metrics (logits ``[N, K]``, integer labels) are in `jaxsent.multiclass_metrics`,
which shares this module's binning and masking.

Every function takes the model's logits (not probabilities), the 0/1 labels and an
optional boolean ``where`` mask marking the real rows of a fixed-shape evaluation batch.
Rows outside ``where`` are removed with ``jnp.where`` before any arithmetic, so NaN or
garbage in padding rows never reaches a result. All functions are ``jax.jit``-compatible
(``num_bins`` and ``positive_class`` are static) and compute in float32, or in the input
dtype when that is wider (float64 under ``jax_enable_x64``).

Conventions, fixed where scikit-learn offers choices:

* The predicted label is positive iff ``logit > 0`` (probability strictly above 1/2);
  a logit of exactly 0 predicts the negative class.
* Precision, recall and F1 are 0 when their denominator is 0 (scikit-learn's
  ``zero_division=0``).
* AUROC is the Mann-Whitney statistic with ties counted 1/2, which equals
  ``sklearn.metrics.roc_auc_score``; it is NaN when the real rows hold only one class
  (scikit-learn raises there).
* NLL is the mean binary cross-entropy computed from logits with ``log_sigmoid``: no
  probability clipping, so it stays finite and exact for confident predictions.
* Brier score is the mean squared error of the positive-class probability.
* ECE uses equal-width bins over [0, 1] with upper-inclusive bins ``(lo, hi]`` as in
  Guo et al. (2017); the first bin also holds 0. By default it is the top-label ECE
  (confidence ``max(p, 1 - p)`` against the correctness of the predicted label); for a
  binary model that confidence lies in [1/2, 1], so with 15 bins the seven bins below
  1/2 are always empty and the error is effectively computed on eight bins.
  ``positive_class=True`` bins ``p`` itself against the label frequency (what
  ``torchmetrics.functional.classification.binary_calibration_error`` computes,
  although torchmetrics uses lower-inclusive ``[lo, hi)`` bins).
* Means over zero real rows are NaN (0/0); so is every metric but the counts and
  precision, recall and F1 in that case.

Unmasked NaN logits are not supported: they propagate into NLL, Brier and AUROC as NaN
and into the counting metrics as a negative prediction.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "auroc",
    "binary_classification_metrics",
    "binary_nll",
    "brier_score",
    "calibration_inputs",
    "confusion_counts",
    "expected_calibration_error",
    "precision_recall_f1",
    "reliability_bin_edges",
    "reliability_bins",
]


# --------------------------------------------------------------------------- inputs


def _compute_dtype(dtype) -> jnp.dtype:
    """float32, or the input's float dtype when it is wider (float64 under x64)."""
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`logits` must have a floating dtype, got {dtype}.")
    return jnp.promote_types(dtype, jnp.float32)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _valid_mask(where, shape) -> jax.Array:
    """The boolean mask of real rows: ``where`` checked, or all True when None."""
    if where is None:
        return jnp.ones(shape, dtype=bool)
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}.")
    if where.shape != shape:
        raise ValueError(f"`where` must have shape {shape}, got {where.shape}.")
    return where


def _prepare(logits, labels, where):
    """Checks shapes and dtypes; returns (logits, positive, valid) with a clean logits.

    ``positive`` is the boolean label, ``valid`` the boolean mask of real rows (all True
    when ``where`` is None), and ``logits`` has its masked rows replaced by 0 so that
    NaN or inf in padding cannot reach any arithmetic.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 1:
        raise ValueError(f"`logits` must have shape [N], got shape {logits.shape}.")
    if labels.shape != logits.shape:
        raise ValueError(
            f"`labels` must have the shape of `logits` {logits.shape}, got {labels.shape}."
        )
    logits = logits.astype(_compute_dtype(logits.dtype))
    valid = _valid_mask(where, logits.shape)
    if labels.dtype == jnp.bool_:
        positive = labels
    else:
        if not (
            jnp.issubdtype(labels.dtype, jnp.integer) or jnp.issubdtype(labels.dtype, jnp.floating)
        ):
            raise TypeError(f"`labels` must be bool, integer or float, got {labels.dtype}.")
        if _is_concrete(labels) and _is_concrete(valid):
            values = np.asarray(labels)[np.asarray(valid)]
            bad = values[(values != 0) & (values != 1)]
            if bad.size:
                raise ValueError(f"`labels` must be 0 or 1 in real rows, got {bad[0]!r}.")
        positive = labels == 1
    logits = jnp.where(valid, logits, 0)
    return logits, positive, valid


def _count(mask: jax.Array) -> jax.Array:
    return jnp.sum(mask, dtype=jnp.int32)


def _ratio(numerator: jax.Array, denominator: jax.Array, dtype) -> jax.Array:
    """numerator / denominator in ``dtype``, 0 where the denominator is 0."""
    safe = jnp.where(denominator > 0, denominator, 1)
    return jnp.where(denominator > 0, numerator.astype(dtype) / safe.astype(dtype), 0).astype(dtype)


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over the valid rows; NaN when there are none."""
    total = jnp.sum(jnp.where(valid, values, 0))
    return total / _count(valid).astype(values.dtype)


# ------------------------------------------------------------------ counting metrics


class ConfusionCounts(NamedTuple):
    """Confusion-matrix counts over the real rows, each an int32 scalar."""

    true_positive: jax.Array
    false_positive: jax.Array
    false_negative: jax.Array
    true_negative: jax.Array


def confusion_counts(logits, labels, *, where=None) -> ConfusionCounts:
    """Counts of the 2x2 confusion matrix, predicting positive iff ``logit > 0``.

    Args:
      logits: ``[N]`` float logits of the positive class.
      labels: ``[N]`` 0/1 labels (bool, integer or float).
      where: optional ``[N]`` bool mask of the rows to count.

    Returns:
      ``ConfusionCounts`` of int32 scalars ``(tp, fp, fn, tn)``.
    """
    logits, positive, valid = _prepare(logits, labels, where)
    predicted = logits > 0
    return ConfusionCounts(
        true_positive=_count(valid & predicted & positive),
        false_positive=_count(valid & predicted & ~positive),
        false_negative=_count(valid & ~predicted & positive),
        true_negative=_count(valid & ~predicted & ~positive),
    )


def accuracy(logits, labels, *, where=None) -> jax.Array:
    """Fraction of real rows whose predicted label (``logit > 0``) equals the label.

    Args:
      logits: ``[N]`` float logits of the positive class.
      labels: ``[N]`` 0/1 labels.
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      Scalar ``(tp + tn) / n``; NaN when there are no real rows.
    """
    logits, positive, valid = _prepare(logits, labels, where)
    correct = _count(valid & ((logits > 0) == positive))
    return correct.astype(logits.dtype) / _count(valid).astype(logits.dtype)


def precision_recall_f1(logits, labels, *, where=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Precision, recall and F1 of the positive class, predicting positive iff ``logit > 0``.

    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)`` and
    ``f1 = 2 tp / (2 tp + fp + fn)`` (the harmonic mean of the two, written so that it
    stays defined when one of them is). Each is 0 when its denominator is 0, which is
    scikit-learn's ``zero_division=0``.

    Args:
      logits: ``[N]`` float logits of the positive class.
      labels: ``[N]`` 0/1 labels.
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      ``(precision, recall, f1)``, three float scalars in [0, 1].
    """
    tp, fp, fn, _ = confusion_counts(logits, labels, where=where)
    dtype = _compute_dtype(jnp.asarray(logits).dtype)
    return (
        _ratio(tp, tp + fp, dtype),
        _ratio(tp, tp + fn, dtype),
        _ratio(2 * tp, 2 * tp + fp + fn, dtype),
    )


def auroc(logits, labels, *, where=None) -> jax.Array:
    """Area under the ROC curve, as the Mann-Whitney probability with ties counted 1/2.

    ``AUROC = P(s+ > s-) + P(s+ = s-) / 2`` over all pairs of a positive and a negative
    real row, which is exactly ``sklearn.metrics.roc_auc_score``. Computed in
    ``O(N log N)``: the negatives' scores are sorted once and each positive is located
    with two binary searches. Each positive's fraction of beaten negatives is averaged
    (rather than summing pair counts) so that float32 stays accurate for large N.

    Args:
      logits: ``[N]`` float logits (any monotone score works).
      labels: ``[N]`` 0/1 labels.
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      Scalar in [0, 1]; NaN when the real rows hold no positive or no negative, or when
      a real logit is NaN.
    """
    raw = jnp.asarray(logits)
    logits, positive, valid = _prepare(logits, labels, where)
    dtype = logits.dtype
    is_pos = valid & positive
    is_neg = valid & ~positive
    n_pos = _count(is_pos)
    n_neg = _count(is_neg)
    # Padding sorts after every real negative; clipping to n_neg below keeps real +inf
    # scores correct even though they tie with the padding.
    negatives = jnp.sort(jnp.where(is_neg, logits, jnp.inf))
    below = jnp.minimum(jnp.searchsorted(negatives, logits, side="left"), n_neg)
    at_or_below = jnp.minimum(jnp.searchsorted(negatives, logits, side="right"), n_neg)
    beaten = below.astype(dtype) + 0.5 * (at_or_below - below).astype(dtype)
    per_positive = beaten / jnp.maximum(n_neg, 1).astype(dtype)
    area = jnp.sum(jnp.where(is_pos, per_positive, 0)) / jnp.maximum(n_pos, 1).astype(dtype)
    has_nan = jnp.any(valid & jnp.isnan(raw))
    return jnp.where((n_pos > 0) & (n_neg > 0) & ~has_nan, area, jnp.nan)


# -------------------------------------------------------------- probabilistic scores


def binary_nll(logits, labels, *, where=None) -> jax.Array:
    """Mean negative log-likelihood (binary cross-entropy, natural log) from logits.

    ``nll_i = -log sigmoid(z_i)`` if ``y_i = 1`` else ``-log sigmoid(-z_i)``, computed
    with ``jax.nn.log_sigmoid`` so it is exact for large ``|z|`` (no clipping: a wrong
    prediction at logit 200 costs 200 nats, where clipped-probability implementations
    such as ``sklearn.metrics.log_loss`` cap it near 36.7 in float64).

    Args:
      logits: ``[N]`` float logits of the positive class.
      labels: ``[N]`` 0/1 labels.
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      Scalar mean over real rows; NaN when there are none.
    """
    logits, positive, valid = _prepare(logits, labels, where)
    per_example = -jax.nn.log_sigmoid(jnp.where(positive, logits, -logits))
    return _masked_mean(per_example, valid)


def brier_score(logits, labels, *, where=None) -> jax.Array:
    """Mean squared error of the positive-class probability: ``mean((sigmoid(z) - y)^2)``.

    Args:
      logits: ``[N]`` float logits of the positive class.
      labels: ``[N]`` 0/1 labels.
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      Scalar in [0, 1]; NaN when there are no real rows.
    """
    logits, positive, valid = _prepare(logits, labels, where)
    # 1 - sigmoid(z) is sigmoid(-z); using it keeps the error of confident correct
    # predictions accurate instead of cancelling to 0.
    miss = jax.nn.sigmoid(jnp.where(positive, -logits, logits))
    return _masked_mean(jnp.square(miss), valid)


# ---------------------------------------------------------------------- calibration


def reliability_bin_edges(num_bins: int = 15) -> np.ndarray:
    """The ``num_bins + 1`` edges ``k / num_bins`` as float32 (nearest representable).

    Bin ``b`` holds confidences in ``(edges[b], edges[b + 1]]``; bin 0 also holds 0.
    """
    if not isinstance(num_bins, (int, np.integer)) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"`num_bins` must be a positive integer, got {num_bins!r}.")
    return (np.arange(num_bins + 1, dtype=np.float64) / num_bins).astype(np.float32)


def calibration_inputs(logits, labels, *, where=None, positive_class: bool = False):
    """Per-example (confidence, outcome) pairs that ECE and reliability diagrams bin.

    Top-label (default): ``confidence = max(p, 1 - p) = sigmoid(|z|)`` and
    ``outcome = 1`` iff the predicted label (``z > 0``) equals the label.
    Positive-class: ``confidence = p = sigmoid(z)`` and ``outcome = y``.

    Args:
      logits: ``[N]`` float logits of the positive class.
      labels: ``[N]`` 0/1 labels.
      where: optional ``[N]`` bool mask of the real rows; the other rows get finite
        placeholder values (as for a logit of 0), to be masked again downstream.
      positive_class: choose the positive-class pairs instead of the top-label ones.

    Returns:
      ``(confidence, outcome)``, two ``[N]`` float arrays with values in [0, 1] (in
      [1/2, 1] for top-label confidence).
    """
    logits, positive, _ = _prepare(logits, labels, where)
    return _calibration_pairs(logits, positive, positive_class)


def _calibration_pairs(logits, positive, positive_class):
    if positive_class:
        return jax.nn.sigmoid(logits), positive.astype(logits.dtype)
    correct = (logits > 0) == positive
    return jax.nn.sigmoid(jnp.abs(logits)), correct.astype(logits.dtype)


class ReliabilityBins(NamedTuple):
    """Per-bin statistics of a reliability diagram, each of shape ``[num_bins]``.

    Attributes:
      count: int32 number of real rows in the bin.
      confidence: mean confidence in the bin (0 where the bin is empty).
      accuracy: mean outcome in the bin (0 where the bin is empty).
      edges: float32 ``[num_bins + 1]`` bin edges (see ``reliability_bin_edges``).
    """

    count: jax.Array
    confidence: jax.Array
    accuracy: jax.Array
    edges: jax.Array


def _bin_sums(confidence, outcome, valid, num_bins):
    """Per-bin (count, sum of confidence, sum of outcome) over the valid rows."""
    edges = jnp.asarray(reliability_bin_edges(num_bins), dtype=confidence.dtype)
    # side="left" puts a value equal to an edge in the bin below it: bins are (lo, hi].
    index = jnp.clip(jnp.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    # Segment sums, O(N) rather than a one-hot [N, bins] matrix (bench/bench_ece_bins.py). A
    # masked row gets the out-of-range segment `num_bins`, which segment_sum drops. The float
    # sums may differ in the last bits between backends (scatter-add order); counts are exact.
    index = jnp.where(valid, index, num_bins)

    def bin_sum(values):
        return jax.ops.segment_sum(values, index, num_segments=num_bins)

    count = bin_sum(valid.astype(jnp.int32))
    conf_sum = bin_sum(jnp.where(valid, confidence, 0))
    outcome_sum = bin_sum(jnp.where(valid, outcome, 0).astype(confidence.dtype))
    return count, conf_sum, outcome_sum, edges


def reliability_bins(confidence, outcome, *, where=None, num_bins: int = 15) -> ReliabilityBins:
    """Bins (confidence, outcome) pairs into equal-width bins over [0, 1].

    Bin ``b`` (0-based) holds confidences in ``(b / num_bins, (b + 1) / num_bins]``,
    upper-inclusive as in Guo et al. (2017); bin 0 also holds a confidence of exactly 0.
    The edges are the float32 values nearest ``k / num_bins``.

    Args:
      confidence: ``[N]`` floats in [0, 1] (e.g. from ``calibration_inputs``).
      outcome: ``[N]`` floats or bools in [0, 1] (correctness or label).
      where: optional ``[N]`` bool mask of the real rows.
      num_bins: number of bins (static under jit).

    Returns:
      ``ReliabilityBins`` with ``count``, ``confidence`` and ``accuracy`` of shape
      ``[num_bins]`` and ``edges`` of shape ``[num_bins + 1]``.
    """
    confidence = jnp.asarray(confidence)
    confidence = confidence.astype(_compute_dtype(confidence.dtype))
    outcome = jnp.asarray(outcome)
    if confidence.ndim != 1 or outcome.shape != confidence.shape:
        raise ValueError(
            "`confidence` and `outcome` must both have shape [N], got "
            f"{confidence.shape} and {outcome.shape}."
        )
    valid = _valid_mask(where, confidence.shape)
    confidence = jnp.where(valid, confidence, 0)
    outcome = jnp.where(valid, outcome.astype(confidence.dtype), 0)
    count, conf_sum, outcome_sum, edges = _bin_sums(confidence, outcome, valid, num_bins)
    return ReliabilityBins(
        count=count,
        confidence=_ratio(conf_sum, count, confidence.dtype),
        accuracy=_ratio(outcome_sum, count, confidence.dtype),
        edges=edges,
    )


def expected_calibration_error(
    logits, labels, *, where=None, num_bins: int = 15, positive_class: bool = False
) -> jax.Array:
    """Expected calibration error with equal-width bins.

    ``ECE = sum_b (n_b / n) |acc_b - conf_b| = (1 / n) sum_b |sum_{i in b} (o_i - c_i)|``
    over the bins of ``reliability_bins``, where ``(c_i, o_i)`` come from
    ``calibration_inputs``. Top-label by default (confidence ``max(p, 1 - p)`` in
    [1/2, 1], so half of the bins are always empty); ``positive_class=True`` bins
    ``p`` against the label. Empty bins contribute 0.

    Args:
      logits: ``[N]`` float logits of the positive class.
      labels: ``[N]`` 0/1 labels.
      where: optional ``[N]`` bool mask of the real rows.
      num_bins: number of equal-width bins over [0, 1] (static under jit).
      positive_class: use the positive-class variant.

    Returns:
      Scalar in [0, 1]; NaN when there are no real rows.
    """
    logits, positive, valid = _prepare(logits, labels, where)
    confidence, outcome = _calibration_pairs(logits, positive, positive_class)
    count, conf_sum, outcome_sum, _ = _bin_sums(confidence, outcome, valid, num_bins)
    return jnp.sum(jnp.abs(outcome_sum - conf_sum)) / jnp.sum(count).astype(logits.dtype)


# ----------------------------------------------------------------------------- all


def binary_classification_metrics(logits, labels, *, where=None, num_bins: int = 15):
    """Every evaluation metric of a binary classifier over the real rows.

    Args:
      logits: ``[N]`` float logits of the positive class (any float dtype; computed in
        float32 or wider).
      labels: ``[N]`` 0/1 labels (bool, integer or float).
      where: optional ``[N]`` bool mask of the real rows (False on padding rows, whose
        logits and labels may hold anything, NaN included).
      num_bins: number of ECE bins (static under jit).

    Returns:
      A dict of scalars: ``accuracy``, ``precision``, ``recall``, ``f1``, ``auroc``,
      ``nll``, ``brier``, ``ece`` (top-label, ``num_bins`` bins) as floats and
      ``n_examples`` (int32 count of real rows). See the module docstring for the
      conventions on undefined values.
    """
    precision, recall, f1 = precision_recall_f1(logits, labels, where=where)
    return {
        "accuracy": accuracy(logits, labels, where=where),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc(logits, labels, where=where),
        "nll": binary_nll(logits, labels, where=where),
        "brier": brier_score(logits, labels, where=where),
        "ece": expected_calibration_error(logits, labels, where=where, num_bins=num_bins),
        "n_examples": _count(_valid_mask(where, jnp.shape(logits))),
    }
