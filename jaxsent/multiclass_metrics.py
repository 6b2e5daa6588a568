"""K-class classification metrics, including calibration, as pure JAX functions.

The K-class counterpart of `jaxsent.metrics` (whose binary functions take logits ``[N]``):
every function here takes the model's logits ``[N, K]`` (K >= 2), integer class labels ``[N]``
in ``[0, K)`` and an optional boolean ``where`` mask of the real rows. Masked rows are replaced
with ``jnp.where`` before any arithmetic, so NaN or garbage in padding never reaches a result.
All functions are ``jax.jit``-compatible with ``num_bins`` and ``ordinal`` static (K is static
as a shape), and compute in float32, or in the input dtype when wider.

Conventions, fixed where scikit-learn offers choices:

* The predicted class is ``argmax(logits)`` with ties going to the lowest index (numpy's and
  scikit-learn's argmax). For logits ``[0, z]`` this is the binary rule "positive iff z > 0".
* The confusion matrix has rows = true class and columns = predicted class
  (``sklearn.metrics.confusion_matrix(y, pred, labels=range(K))``).
* Per-class precision, recall and F1 are 0 when their denominator is 0 (``zero_division=0``),
  as ``precision_recall_fscore_support(..., labels=range(K), zero_division=0)``.
* ``macro_f1`` averages F1 over the classes present in the real rows' labels or predictions
  (``f1_score(y, pred, average="macro")``, which ignores a class that is neither): a class
  absent from both has no defined F1 and does not pull the mean to 0.
* ``macro_recall`` averages recall over the classes present in the labels: it is
  ``balanced_accuracy_score(y, pred)``. (scikit-learn's ``recall_score(average="macro")`` differs
  only when a class is predicted but absent from the labels; it then averages in a 0.)
* NLL is the mean of ``-log_softmax(z)[y]`` (natural log): no probability clipping, so it stays
  exact for confident predictions (``sklearn.metrics.log_loss`` clips at float64 eps).
* Brier score is the original multi-class form of Brier (1950):
  ``mean_i sum_k (p_ik - 1[y_i = k])^2``, in [0, 2]. The binary ``jaxsent.metrics.brier_score``
  is the positive-class form ``mean (p - y)^2`` in [0, 1] (scikit-learn's ``brier_score_loss``);
  for K = 2 the original form is exactly twice it, so the two are not comparable across K.
* Top-label ECE (``ece``) bins the confidence ``max_k p_k`` against the correctness of the
  argmax, with the binning of the binary ECE: equal-width bins over [0, 1], upper-inclusive
  ``(lo, hi]`` (Guo et al. 2017), bin 0 also holding 0, 15 bins by default. The confidence lies
  in [1/K, 1], so the bins below 1/K stay empty. For logits ``[0, z]`` it is the binary
  top-label ECE of ``z``.
* Classwise ECE (Kull et al. 2019) is the mean over the K classes of the ECE of ``p_k``
  against ``1[y = k]`` over all real rows, with the same bins.
* Ordered classes (``ordinal=True``): ``mae`` is the mean absolute error in classes
  ``|argmax - y|`` (``sklearn.metrics.mean_absolute_error(y, pred)``) and
  ``accuracy_within_one`` the fraction of rows with ``|argmax - y| <= 1``.
* Means over zero real rows are NaN (0/0); so are the macro averages over no class.

Not supported: labels outside ``[0, K)`` in real rows under ``jax.jit`` (eagerly they raise;
traced they are not counted in the confusion matrix and their other metrics are undefined) and
unmasked NaN logits.

References:
  Brier. Verification of Forecasts Expressed in Terms of Probability. Monthly Weather Review
  78(1), 1950.
  Guo, Pleiss, Sun and Weinberger. On Calibration of Modern Neural Networks. ICML 2017.
  Kull, Perello-Nieto, Kängsepp, Silva Filho, Song and Flach. Beyond temperature scaling:
  Obtaining well-calibrated multiclass probabilities with Dirichlet calibration. NeurIPS 2019.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsent.metrics import (
    ReliabilityBins,
    _bin_sums,
    _compute_dtype,
    _count,
    _is_concrete,
    _masked_mean,
    _ratio,
    _valid_mask,
    reliability_bin_edges,
)

__all__ = [
    "ORDINAL_METRICS",
    "SCALAR_METRICS",
    "accuracy",
    "accuracy_within_one",
    "brier_score",
    "class_calibration_errors",
    "classwise_expected_calibration_error",
    "classwise_reliability_bins",
    "confusion_matrix",
    "expected_calibration_error",
    "macro_f1",
    "macro_recall",
    "mean_absolute_error",
    "multiclass_classification_metrics",
    "nll",
    "per_class_metrics",
    "predicted_class",
    "resolve_class_names",
    "top_label_calibration_inputs",
    "top_label_reliability_bins",
]

#: The float keys of `multiclass_classification_metrics` (it also returns ``n_examples``).
SCALAR_METRICS = (
    "accuracy",
    "macro_f1",
    "macro_recall",
    "nll",
    "brier",
    "ece",
    "classwise_ece",
)
#: The further float keys with ``ordinal=True``.
ORDINAL_METRICS = ("mae", "accuracy_within_one")


# --------------------------------------------------------------------------- inputs


class _Inputs(NamedTuple):
    logits: jax.Array  # [N, K] compute dtype, masked rows 0
    labels: jax.Array  # [N] int32, masked rows 0
    valid: jax.Array  # [N] bool

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @property
    def predicted(self) -> jax.Array:
        return predicted_class(self.logits)

    @property
    def one_hot(self) -> jax.Array:
        return jax.nn.one_hot(self.labels, self.num_classes, dtype=bool)


def _prepare(logits, labels, where) -> _Inputs:
    """Checks shapes and dtypes; returns the inputs with masked rows cleaned."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"`logits` must have shape [N, K] with K >= 2, got shape {logits.shape} "
            "(binary logits of shape [N] go to jaxsent.metrics)."
        )
    n, k = logits.shape
    if labels.shape != (n,):
        raise ValueError(f"`labels` must have shape [N] = ({n},), got {labels.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must be integer class indices, got dtype {labels.dtype}.")
    logits = logits.astype(_compute_dtype(logits.dtype))
    valid = _valid_mask(where, (n,))
    _check_labels(labels, valid, k)
    logits = jnp.where(valid[:, None], logits, 0)
    labels = jnp.where(valid, labels, 0).astype(jnp.int32)
    return _Inputs(logits, labels, valid)


def _check_labels(labels, valid, num_classes: int) -> None:
    """Raises on a real row's label outside ``[0, num_classes)`` when both are concrete.

    Mismatched shapes or a non-bool mask are left to `_prepare`, which names them.
    """
    ok = np.shape(labels) == np.shape(valid) and jnp.asarray(valid).dtype == jnp.bool_
    if ok and _is_concrete(labels) and _is_concrete(valid):
        values = np.asarray(labels)[np.asarray(valid)]
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(
                f"`labels` must be in [0, {num_classes}) in real rows, got {bad[0]!r}."
            )


def predicted_class(logits) -> jax.Array:
    """``argmax`` over the last axis, ties to the lowest index: ``[N, K]`` -> int32 ``[N]``."""
    return jnp.argmax(jnp.asarray(logits), axis=-1).astype(jnp.int32)


def resolve_class_names(class_names, num_classes: int) -> list[str]:
    """The K class names to report: ``class_names`` checked, or ``"0"`` .. ``"K-1"`` when None.

    Raises:
      ValueError: not ``num_classes`` names, an empty or non-string name, or a repeated one.
    """
    if class_names is None:
        return [str(k) for k in range(num_classes)]
    if isinstance(class_names, str):
        raise ValueError(f"`class_names` must be a sequence of names, got {class_names!r}.")
    names = list(class_names)
    if len(names) != num_classes:
        raise ValueError(
            f"`class_names` must hold one name per class ({num_classes}), got {len(names)}: "
            f"{names!r}."
        )
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"`class_names` must be non-empty strings, got {name!r}.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"`class_names` must be unique, got {repeated[0]!r} more than once.")
    return names


# ------------------------------------------------------------------ counting metrics


# The private computations below are jitted: a public function runs its checks eagerly (they
# need concrete labels), then one compiled program per shape instead of dispatching op by op.
# Under an outer jit they are inlined.


@jax.jit
def _confusion(x: _Inputs) -> jax.Array:
    k = x.num_classes
    # One segment per (true, predicted) cell; masked rows go to segment k * k, which
    # segment_sum drops.
    cell = jnp.where(x.valid, x.labels * k + x.predicted, k * k)
    counts = jax.ops.segment_sum(x.valid.astype(jnp.int32), cell, num_segments=k * k)
    return counts.reshape(k, k)


def confusion_matrix(logits, labels, *, where=None) -> jax.Array:
    """The ``[K, K]`` confusion matrix: rows the true class, columns the predicted class.

    Args:
      logits: ``[N, K]`` float logits.
      labels: ``[N]`` integer labels in ``[0, K)``.
      where: optional ``[N]`` bool mask of the rows to count.

    Returns:
      int32 ``[K, K]``; entry ``[i, j]`` counts the real rows of class ``i`` predicted ``j``
      (``sklearn.metrics.confusion_matrix(y, pred, labels=range(K))``).
    """
    return _confusion(_prepare(logits, labels, where))


def _per_class(confusion: jax.Array, dtype):
    true_positive = jnp.diagonal(confusion)
    support = jnp.sum(confusion, axis=1)  # real rows of each class
    predicted = jnp.sum(confusion, axis=0)  # real rows predicted as each class
    return {
        "precision": _ratio(true_positive, predicted, dtype),
        "recall": _ratio(true_positive, support, dtype),
        "f1": _ratio(2 * true_positive, support + predicted, dtype),
        "support": support,
        "predicted": predicted,
    }


def per_class_metrics(logits, labels, *, where=None) -> dict[str, jax.Array]:
    """Per-class precision, recall, F1 and support, and the confusion matrix.

    ``precision_k = tp_k / (rows predicted k)``, ``recall_k = tp_k / (rows of class k)``,
    ``f1_k = 2 tp_k / (rows of class k + rows predicted k)``; each is 0 when its denominator is
    0 (scikit-learn's ``zero_division=0``).

    Args:
      logits: ``[N, K]`` float logits.
      labels: ``[N]`` integer labels in ``[0, K)``.
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      ``{"precision", "recall", "f1"}`` float ``[K]``, ``"support"`` int32 ``[K]`` (real rows of
      each class) and ``"confusion_matrix"`` int32 ``[K, K]`` (see `confusion_matrix`).
    """
    return _per_class_metrics(_prepare(logits, labels, where))


@jax.jit
def _per_class_metrics(x: _Inputs) -> dict[str, jax.Array]:
    confusion = _confusion(x)
    stats = _per_class(confusion, x.logits.dtype)
    del stats["predicted"]
    return {**stats, "confusion_matrix": confusion}


def _accuracy(x: _Inputs) -> jax.Array:
    correct = _count(x.valid & (x.predicted == x.labels))
    return correct.astype(x.logits.dtype) / _count(x.valid).astype(x.logits.dtype)


def accuracy(logits, labels, *, where=None) -> jax.Array:
    """Fraction of real rows whose argmax equals the label; NaN when there are none."""
    return _accuracy(_prepare(logits, labels, where))


def _mean_over(values: jax.Array, present: jax.Array) -> jax.Array:
    """Mean of ``values`` over the classes where ``present``; NaN when none is."""
    total = jnp.sum(jnp.where(present, values, 0))
    return total / _count(present).astype(values.dtype)


def _macro_f1(stats) -> jax.Array:
    return _mean_over(stats["f1"], (stats["support"] > 0) | (stats["predicted"] > 0))


def _macro_recall(stats) -> jax.Array:
    return _mean_over(stats["recall"], stats["support"] > 0)


def macro_f1(logits, labels, *, where=None) -> jax.Array:
    """Mean F1 over the classes present in the real rows' labels or predictions.

    Equals ``sklearn.metrics.f1_score(y, pred, average="macro")``. NaN without real rows.
    """
    x = _prepare(logits, labels, where)
    return _macro_f1(_per_class(_confusion(x), x.logits.dtype))


def macro_recall(logits, labels, *, where=None) -> jax.Array:
    """Mean recall over the classes present in the real rows' labels: balanced accuracy.

    Equals ``sklearn.metrics.balanced_accuracy_score(y, pred)``. NaN without real rows.
    """
    x = _prepare(logits, labels, where)
    return _macro_recall(_per_class(_confusion(x), x.logits.dtype))


def _distance(x: _Inputs) -> jax.Array:
    return jnp.abs(x.predicted - x.labels)


def mean_absolute_error(logits, labels, *, where=None) -> jax.Array:
    """Mean ``|argmax - y|`` in classes, for ordered classes; NaN without real rows.

    Equals ``sklearn.metrics.mean_absolute_error(y, pred)``.
    """
    x = _prepare(logits, labels, where)
    return _masked_mean(_distance(x).astype(x.logits.dtype), x.valid)


def accuracy_within_one(logits, labels, *, where=None) -> jax.Array:
    """Fraction of real rows with ``|argmax - y| <= 1``, for ordered classes; NaN without rows."""
    x = _prepare(logits, labels, where)
    return _masked_mean((_distance(x) <= 1).astype(x.logits.dtype), x.valid)


# -------------------------------------------------------------- probabilistic scores


@jax.jit
def _nll(x: _Inputs) -> jax.Array:
    log_probs = jax.nn.log_softmax(x.logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, x.labels[:, None], axis=-1)[:, 0]
    return _masked_mean(-picked, x.valid)


def nll(logits, labels, *, where=None) -> jax.Array:
    """Mean negative log-likelihood ``-log_softmax(z)[y]`` (natural log), no clipping.

    Args:
      logits: ``[N, K]`` float logits.
      labels: ``[N]`` integer labels in ``[0, K)``.
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      Scalar mean over real rows; NaN when there are none.
    """
    return _nll(_prepare(logits, labels, where))


@jax.jit
def _brier(x: _Inputs) -> jax.Array:
    probs = jax.nn.softmax(x.logits, axis=-1)
    others = jnp.where(x.one_hot, 0, probs)
    # 1 - p_y as the sum of the other classes' probabilities: no cancellation when p_y ~ 1.
    miss = jnp.sum(others, axis=-1)
    per_example = jnp.square(miss) + jnp.sum(jnp.square(others), axis=-1)
    return _masked_mean(per_example, x.valid)


def brier_score(logits, labels, *, where=None) -> jax.Array:
    """Multi-class Brier score, Brier's (1950) original form, in [0, 2].

    ``mean_i sum_k (p_ik - 1[y_i = k])^2`` with ``p = softmax(z)``. The binary
    `jaxsent.metrics.brier_score` is the positive-class form ``mean (p - y)^2`` in [0, 1]; for
    K = 2 this one is exactly twice it, so the values are not comparable across K.

    Args:
      logits: ``[N, K]`` float logits.
      labels: ``[N]`` integer labels in ``[0, K)``.
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      Scalar in [0, 2]; NaN when there are no real rows.
    """
    return _brier(_prepare(logits, labels, where))


# ---------------------------------------------------------------------- calibration


def _top_label_pairs(x: _Inputs):
    confidence = jnp.max(jax.nn.softmax(x.logits, axis=-1), axis=-1)
    return confidence, (x.predicted == x.labels).astype(x.logits.dtype)


def top_label_calibration_inputs(logits, labels, *, where=None):
    """Per-example top-label (confidence, outcome) pairs: ``max_k p_k`` and argmax == label.

    Args:
      logits: ``[N, K]`` float logits.
      labels: ``[N]`` integer labels in ``[0, K)``.
      where: optional ``[N]`` bool mask of the real rows; the other rows get finite
        placeholders (as for all-zero logits), to be masked again downstream.

    Returns:
      ``(confidence, outcome)``, two float ``[N]`` arrays; the confidence lies in [1/K, 1].
      `jaxsent.metrics.reliability_bins` bins them.
    """
    return _jit_top_label_pairs(_prepare(logits, labels, where))


_jit_top_label_pairs = jax.jit(_top_label_pairs)


def _ece_from_sums(conf_sum, outcome_sum, n):
    return jnp.sum(jnp.abs(outcome_sum - conf_sum), axis=-1) / n.astype(conf_sum.dtype)


@functools.partial(jax.jit, static_argnums=1)
def _top_label_ece(x: _Inputs, num_bins: int) -> jax.Array:
    confidence, outcome = _top_label_pairs(x)
    _, conf_sum, outcome_sum, _ = _bin_sums(confidence, outcome, x.valid, num_bins)
    return _ece_from_sums(conf_sum, outcome_sum, _count(x.valid))


def expected_calibration_error(logits, labels, *, where=None, num_bins: int = 15) -> jax.Array:
    """Top-label expected calibration error with equal-width ``(lo, hi]`` bins.

    ``ECE = sum_b (n_b / n) |acc_b - conf_b|`` over the confidences ``max_k p_k`` and the
    correctness of the argmax (Guo et al. 2017), binned as `jaxsent.metrics.reliability_bins`.

    Args:
      logits: ``[N, K]`` float logits.
      labels: ``[N]`` integer labels in ``[0, K)``.
      where: optional ``[N]`` bool mask of the real rows.
      num_bins: number of equal-width bins over [0, 1] (static under jit).

    Returns:
      Scalar in [0, 1]; NaN when there are no real rows.
    """
    return _top_label_ece(_prepare(logits, labels, where), num_bins)


def top_label_reliability_bins(logits, labels, *, where=None, num_bins: int = 15):
    """The top-label reliability diagram's bins (`jaxsent.metrics.ReliabilityBins`, ``[B]``)."""
    return _top_label_bins(_prepare(logits, labels, where), num_bins)


@functools.partial(jax.jit, static_argnums=1)
def _top_label_bins(x: _Inputs, num_bins: int) -> ReliabilityBins:
    confidence, outcome = _top_label_pairs(x)
    count, conf_sum, outcome_sum, edges = _bin_sums(confidence, outcome, x.valid, num_bins)
    dtype = confidence.dtype
    return ReliabilityBins(
        count, _ratio(conf_sum, count, dtype), _ratio(outcome_sum, count, dtype), edges
    )


def _classwise_sums(x: _Inputs, num_bins: int):
    """Per class k, the bin sums of (p_k, 1[y = k]): count, conf_sum, outcome_sum ``[K, B]``."""
    probs = jax.nn.softmax(x.logits, axis=-1)
    outcome = x.one_hot.astype(probs.dtype)

    def sums(confidence, target):
        count, conf_sum, outcome_sum, _ = _bin_sums(confidence, target, x.valid, num_bins)
        return count, conf_sum, outcome_sum

    return jax.vmap(sums, in_axes=(1, 1))(probs, outcome)


@functools.partial(jax.jit, static_argnums=1)
def _class_errors(x: _Inputs, num_bins: int) -> jax.Array:
    _, conf_sum, outcome_sum = _classwise_sums(x, num_bins)
    return _ece_from_sums(conf_sum, outcome_sum, _count(x.valid))


def class_calibration_errors(logits, labels, *, where=None, num_bins: int = 15) -> jax.Array:
    """Per class ``k``, the ECE of ``p_k`` against ``1[y = k]`` over all real rows: ``[K]``.

    Args:
      logits: ``[N, K]`` float logits.
      labels: ``[N]`` integer labels in ``[0, K)``.
      where: optional ``[N]`` bool mask of the real rows.
      num_bins: number of equal-width ``(lo, hi]`` bins over [0, 1] (static under jit).

    Returns:
      float ``[K]`` in [0, 1]; NaN when there are no real rows.
    """
    return _class_errors(_prepare(logits, labels, where), num_bins)


def classwise_expected_calibration_error(
    logits, labels, *, where=None, num_bins: int = 15
) -> jax.Array:
    """Classwise ECE (Kull et al. 2019): the mean over classes of `class_calibration_errors`."""
    return jnp.mean(class_calibration_errors(logits, labels, where=where, num_bins=num_bins))


def classwise_reliability_bins(
    logits, labels, *, where=None, num_bins: int = 15
) -> ReliabilityBins:
    """Per class ``k``, the reliability bins of ``p_k`` against ``1[y = k]``.

    Returns:
      `jaxsent.metrics.ReliabilityBins` whose ``count``, ``confidence`` (mean ``p_k``) and
      ``accuracy`` (frequency of class k) have shape ``[K, num_bins]``; ``edges`` is
      ``[num_bins + 1]``.
    """
    return _classwise_bins(_prepare(logits, labels, where), num_bins)


@functools.partial(jax.jit, static_argnums=1)
def _classwise_bins(x: _Inputs, num_bins: int) -> ReliabilityBins:
    count, conf_sum, outcome_sum = _classwise_sums(x, num_bins)
    dtype = x.logits.dtype
    edges = jnp.asarray(reliability_bin_edges(num_bins), dtype)
    return ReliabilityBins(
        count, _ratio(conf_sum, count, dtype), _ratio(outcome_sum, count, dtype), edges
    )


# ----------------------------------------------------------------------------- all


def multiclass_classification_metrics(
    logits, labels, *, where=None, num_bins: int = 15, ordinal: bool = False
) -> dict[str, jax.Array]:
    """Every scalar evaluation metric of a K-class classifier over the real rows.

    Args:
      logits: ``[N, K]`` float logits, K >= 2 (any float dtype; computed in float32 or wider).
      labels: ``[N]`` integer labels in ``[0, K)``.
      where: optional ``[N]`` bool mask of the real rows (False on padding rows, whose
        logits and labels may hold anything, NaN included).
      num_bins: number of ECE bins (static under jit).
      ordinal: the classes are ordered (e.g. very negative .. very positive): also return
        ``mae`` and ``accuracy_within_one`` (static under jit).

    Returns:
      A dict of scalars, the keys of :data:`SCALAR_METRICS` (``accuracy``, ``macro_f1``,
      ``macro_recall``, ``nll``, ``brier``, ``ece`` (top-label), ``classwise_ece``) as floats,
      with ``ordinal=True`` also :data:`ORDINAL_METRICS` (``mae``, ``accuracy_within_one``),
      and ``n_examples`` (int32 count of real rows). Per-class values are in
      `per_class_metrics`. See the module docstring for the conventions.
    """
    return _classification_metrics(_prepare(logits, labels, where), num_bins, ordinal)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _classification_metrics(x: _Inputs, num_bins: int, ordinal: bool) -> dict[str, jax.Array]:
    stats = _per_class(_confusion(x), x.logits.dtype)
    out = {
        "accuracy": _accuracy(x),
        "macro_f1": _macro_f1(stats),
        "macro_recall": _macro_recall(stats),
        "nll": _nll(x),
        "brier": _brier(x),
        "ece": _top_label_ece(x, num_bins),
        "classwise_ece": jnp.mean(_class_errors(x, num_bins)),
    }
    if ordinal:
        distance = _distance(x)
        out["mae"] = _masked_mean(distance.astype(x.logits.dtype), x.valid)
        out["accuracy_within_one"] = _masked_mean((distance <= 1).astype(x.logits.dtype), x.valid)
    out["n_examples"] = _count(x.valid)
    return out
