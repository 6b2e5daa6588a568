"""Statistics for a multi-seed comparison of loss variants: seed intervals, paired bootstrap.

Two sources of uncertainty, kept apart:

* **Seeds** (training randomness; Dodge et al., 2020): ``t_interval`` gives the mean and
  Student-t interval of any per-seed number (e.g. each seed's test accuracy, or each seed's
  difference to the baseline).
* **Evaluation examples** (the test set is one sample of the population):
  ``paired_bootstrap`` compares a variant with a baseline on the same examples by
  resampling those examples, every model seen on the same resample (Berg-Kirkpatrick et al.,
  2012; Dror et al., 2018). Each replicate's metric is computed on the resampled set with
  ``jaxsent.metrics`` (binary logits ``[N]``) or ``jaxsent.multiclass_metrics`` (logits
  ``[N, K]`` of K classes) itself, so non-decomposable metrics (ECE, AUROC, macro-F1) are
  resampled correctly, not approximated from per-example terms.

Everything here is side-effect free and deterministic given ``seed``: numpy (float64) for
the summaries, JAX (the metric mapped over resamples, jitted) for the replicates.

References:
  Efron and Tibshirani. An Introduction to the Bootstrap. Chapman & Hall, 1993
  (percentile interval, ch. 13; bootstrap tests, ch. 16).
  Berg-Kirkpatrick, Burkett and Klein. An Empirical Investigation of Statistical
  Significance in NLP. EMNLP 2012.
  Dror, Baumer, Shlomov and Reichart. The Hitchhiker's Guide to Testing Statistical
  Significance in Natural Language Processing. ACL 2018.
  Dodge et al. Fine-Tuning Pretrained Language Models: Weight Initializations, Data
  Orders, and Early Stopping. arXiv:2002.06305, 2020.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from jaxsent import metrics
from jaxsent import multiclass_metrics as mm

__all__ = [
    "BOOTSTRAP_METRICS",
    "BootstrapMetric",
    "TInterval",
    "bootstrap_indices",
    "bootstrap_replicates",
    "paired_bootstrap",
    "t_interval",
]


@dataclasses.dataclass(frozen=True)
class BootstrapMetric:
    """A named metric in its binary and its K-class form, picked by the logits' rank.

    Called as ``metric(logits, labels)``: ``[N]`` logits go to ``binary``, ``[N, K]`` logits to
    ``multiclass`` (the rank is static under ``jax.jit``). A form that is None does not exist
    (AUROC has no K-class form here; macro-F1 and the ordinal metrics no binary one).
    """

    name: str
    binary: Callable | None
    multiclass: Callable | None

    def supports(self, ndim: int) -> bool:
        """Whether logits of rank ``ndim`` (1: binary, 2: K classes) have a form."""
        return (self.binary if ndim == 1 else self.multiclass) is not None

    def __call__(self, logits, labels):
        fn = self.binary if jnp.ndim(logits) == 1 else self.multiclass
        if fn is None:
            raise ValueError(
                f"metric {self.name!r} has no form for logits of shape {jnp.shape(logits)}."
            )
        return fn(logits, labels)


#: Metric names accepted by ``paired_bootstrap``, each the function every replicate calls:
#: on ``[N]`` logits the ``jaxsent.metrics`` function, on ``[N, K]`` logits the
#: ``jaxsent.multiclass_metrics`` one, as ``jaxsent.evaluation.scalar_metrics`` reports them
#: (ECE top-label with 15 bins; ``brier`` the positive-class form for binary logits and
#: Brier's K-class sum for K classes). ``auroc`` is binary only; ``macro_f1``,
#: ``macro_recall``, ``classwise_ece``, ``mae`` and ``accuracy_within_one`` are K-class only.
BOOTSTRAP_METRICS: dict[str, BootstrapMetric] = {
    metric.name: metric
    for metric in (
        BootstrapMetric("accuracy", metrics.accuracy, mm.accuracy),
        BootstrapMetric("nll", metrics.binary_nll, mm.nll),
        BootstrapMetric("brier", metrics.brier_score, mm.brier_score),
        BootstrapMetric("ece", metrics.expected_calibration_error, mm.expected_calibration_error),
        BootstrapMetric("auroc", metrics.auroc, None),
        BootstrapMetric("macro_f1", None, mm.macro_f1),
        BootstrapMetric("macro_recall", None, mm.macro_recall),
        BootstrapMetric("classwise_ece", None, mm.classwise_expected_calibration_error),
        BootstrapMetric("mae", None, mm.mean_absolute_error),
        BootstrapMetric("accuracy_within_one", None, mm.accuracy_within_one),
    )
}


# ------------------------------------------------------------------ Student t


def _check_confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise TypeError(f"`confidence` must be a float in (0, 1), got {confidence!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    return float(confidence)


class TInterval(NamedTuple):
    """Mean and two-sided Student-t confidence interval, as Python floats."""

    mean: float
    low: float
    high: float


def t_interval(values, *, confidence: float = 0.95) -> TInterval:
    """Mean of per-seed values and its Student-t confidence interval.

    ``mean +/- t_{(1 + c) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (``ddof = 1``): the interval for the expected value over seeds, assuming the
    per-seed values are independent and roughly normal (with 3 to 5 seeds nothing better
    is identifiable; Dodge et al. 2020 show the spread is real and must be reported).

    Args:
      values: ``[n]`` finite numbers, one per seed.
      confidence: coverage of the two-sided interval, in (0, 1).

    Returns:
      ``TInterval(mean, low, high)``; ``low`` and ``high`` are NaN when ``n = 1`` (no
      spread can be estimated) and equal ``mean`` when all values are equal.

    Raises:
      ValueError: empty or non-1-D ``values``, NaN or infinite entries (their positions
        are named), or ``confidence`` outside (0, 1).

    Examples:
      >>> mean, low, high = t_interval([0.90, 0.91, 0.92])
      >>> round(mean, 6), round(low, 4), round(high, 4)
      (0.91, 0.8852, 0.9348)
    """
    confidence = _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"`values` must be a non-empty 1-D sequence, got shape {x.shape}.")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(
            f"`values` must be finite, got {x[bad].tolist()} at positions {bad.tolist()}."
        )
    mean = float(np.mean(x))
    n = x.size
    if n == 1:
        return TInterval(mean, math.nan, math.nan)
    quantile = float(scipy.stats.t.ppf(0.5 + confidence / 2, n - 1))
    half = quantile * float(np.std(x, ddof=1)) / math.sqrt(n)
    return TInterval(mean, mean - half, mean + half)


# ----------------------------------------------------------- paired bootstrap


def bootstrap_indices(num_examples: int, num_resamples: int, *, seed: int = 0, start: int = 0):
    """Example indices of bootstrap replicates ``start, ..., start + num_resamples - 1``.

    Replicate ``r`` draws ``num_examples`` indices uniformly with replacement from its own
    generator, ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(r,)))``, so its
    indices depend only on ``(seed, r, num_examples)``: computing replicates in chunks
    gives the same indices as all at once, and a test can rebuild any of them.

    Args:
      num_examples: ``N``, the number of evaluation examples (>= 1).
      num_resamples: how many replicates to draw.
      seed: non-negative integer seed.
      start: number of the first replicate.

    Returns:
      int32 array ``[num_resamples, num_examples]`` of indices in ``[0, N)``.
    """
    for name, value, minimum in (
        ("num_examples", num_examples, 1),
        ("num_resamples", num_resamples, 0),
        ("seed", seed, 0),
        ("start", start, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    out = np.empty((num_resamples, num_examples), dtype=np.int32)
    for row, replicate in enumerate(range(start, start + num_resamples)):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(replicate,)))
        out[row] = rng.integers(0, num_examples, size=num_examples, dtype=np.int32)
    return out


def _resolve_metric(metric, ndim: int | None = None) -> tuple[str, Callable]:
    """The metric's name and function; a named metric without a form for rank ``ndim``
    logits is refused."""
    if isinstance(metric, str):
        if metric not in BOOTSTRAP_METRICS:
            raise ValueError(
                f"`metric` must be one of {sorted(BOOTSTRAP_METRICS)} or a function, "
                f"got {metric!r}."
            )
        fn = BOOTSTRAP_METRICS[metric]
        if ndim is not None and not fn.supports(ndim):
            kind = "binary logits [N]" if ndim == 1 else "logits [N, K] of K classes"
            supported = sorted(k for k, v in BOOTSTRAP_METRICS.items() if v.supports(ndim))
            raise ValueError(
                f"`metric` {metric!r} is not defined for {kind}; those take {supported}."
            )
        return metric, fn
    if callable(metric):
        return getattr(metric, "__name__", repr(metric)), metric
    raise TypeError(f"`metric` must be a metric name or a function, got {metric!r}.")


def _is_one_pair(runs) -> bool:
    """Whether ``runs`` is a single ``(logits, labels)`` pair rather than a list of them."""
    if not (isinstance(runs, tuple) and len(runs) == 2):
        return False
    try:
        return np.ndim(runs[0]) in (1, 2) and np.ndim(runs[1]) == 1
    except ValueError:  # numpy refuses ragged nesting: a pair of K-class pairs
        return False


def _runs(name: str, runs) -> list[tuple[np.ndarray, np.ndarray]]:
    """Checks one side's list of per-seed ``(logits, labels)`` pairs; numpy copies."""
    if _is_one_pair(runs):
        raise TypeError(
            f"`{name}` must be a list of (logits, labels) pairs, one per seed; got a single "
            "pair (wrap it in a list)."
        )
    if not isinstance(runs, Sequence) or len(runs) == 0:
        raise ValueError(f"`{name}` must be a non-empty list of (logits, labels) pairs.")
    out = []
    for s, run in enumerate(runs):
        if not (isinstance(run, Sequence) and len(run) == 2):
            raise TypeError(f"`{name}[{s}]` must be a (logits, labels) pair, got {type(run)}.")
        logits, labels = np.asarray(run[0]), np.asarray(run[1])
        if logits.ndim == 2:
            if logits.shape[1] < 2 or labels.shape != logits.shape[:1]:
                raise ValueError(
                    f"`{name}[{s}]` must hold logits [N, K] with K >= 2 and labels [N], got "
                    f"{logits.shape} and {labels.shape}."
                )
        elif logits.ndim != 1 or labels.shape != logits.shape:
            raise ValueError(
                f"`{name}[{s}]` must hold logits and labels of one shape [N], got "
                f"{logits.shape} and {labels.shape}."
            )
        if not jnp.issubdtype(logits.dtype, jnp.floating):
            raise TypeError(f"`{name}[{s}]` logits must be floats, got {logits.dtype}.")
        bad = np.flatnonzero(~np.isfinite(logits).reshape(logits.shape[0], -1).all(axis=1))
        if bad.size:
            raise ValueError(
                f"`{name}[{s}]` logits must be finite, got {logits[bad[0]]!r} at row {bad[0]}."
            )
        out.append((logits, labels))
    return out


@functools.partial(jax.jit, static_argnums=0)
def _resampled_values(metric, logits, labels, indices):
    """``metric`` of every run on every resample: ``[P, N], [N], [C, N] -> [C, P]``.

    Sequential ``lax.map`` over replicates and runs rather than ``jax.vmap``: on XLA:CPU
    the batched ECE (one-hot bin sums) and AUROC (sorts) ran 2 to 5 times slower than
    one resample at a time, and memory then stays at one resampled ``[N]`` array.
    """

    def one_replicate(index):
        resampled_labels = labels[index]
        return jax.lax.map(lambda z: metric(z[index], resampled_labels), logits)

    return jax.lax.map(one_replicate, indices)


def bootstrap_replicates(
    metric,
    variant,
    baseline,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Bootstrap distribution of ``mean_s metric(variant_s) - mean_s metric(baseline_s)``.

    Replicate ``r`` takes the example indices ``bootstrap_indices(N, ...)[r]`` and
    evaluates every run of both sides on that one resample; see ``paired_bootstrap``.

    Args:
      metric: a name in ``BOOTSTRAP_METRICS`` or a JAX-traceable ``f(logits, labels)``
        returning a scalar.
      variant, baseline: lists of per-seed ``(logits, labels [N])`` pairs, logits ``[N]``
        (binary) or ``[N, K]`` (K classes), all of one shape.
      num_resamples: number of replicates ``R``.
      seed: seed of ``bootstrap_indices``.
      chunk_size: replicates per jitted call; by default as many as keep the chunk's
        ``[chunk, N]`` index matrix near 4M entries (memory stays bounded for any ``R``).

    Returns:
      float64 array ``[R]`` of replicate differences.
    """
    _resolve_metric(metric)
    variant_runs, baseline_runs, labels = _check_paired(variant, baseline)
    _, fn = _resolve_metric(metric, variant_runs[0][0].ndim)
    return _replicates(fn, variant_runs, baseline_runs, labels, num_resamples, seed, chunk_size)


def _check_paired(variant, baseline):
    variant_runs = _runs("variant", variant)
    baseline_runs = _runs("baseline", baseline)
    logits, labels = baseline_runs[0]
    for name, runs in (("baseline", baseline_runs), ("variant", variant_runs)):
        for s, (run_logits, run_labels) in enumerate(runs):
            if run_labels.shape != labels.shape or not np.array_equal(run_labels, labels):
                raise ValueError(
                    f"`{name}[{s}]` labels differ from `baseline[0]` labels: every run must "
                    "be evaluated on the same examples in the same order "
                    f"(shapes {run_labels.shape} and {labels.shape})."
                )
            if run_logits.shape != logits.shape:
                raise ValueError(
                    f"`{name}[{s}]` logits have shape {run_logits.shape}, `baseline[0]`'s "
                    f"{logits.shape}: every run must score the same classes."
                )
    return variant_runs, baseline_runs, labels


def _replicates(fn, variant_runs, baseline_runs, labels, num_resamples, seed, chunk_size):
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, numbers.Integral):
        raise ValueError(f"`num_resamples` must be an integer >= 1, got {num_resamples!r}.")
    if num_resamples < 1:
        raise ValueError(f"`num_resamples` must be an integer >= 1, got {num_resamples!r}.")
    n = labels.shape[0]
    logits = np.stack([z for z, _ in variant_runs] + [z for z, _ in baseline_runs])
    num_variant = len(variant_runs)
    if chunk_size is None:
        chunk_size = max(1, min(num_resamples, (1 << 22) // n))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise ValueError(f"`chunk_size` must be an integer >= 1, got {chunk_size!r}.")
    elif chunk_size < 1:
        raise ValueError(f"`chunk_size` must be an integer >= 1, got {chunk_size!r}.")
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    out = np.empty(num_resamples, dtype=np.float64)
    for start in range(0, num_resamples, chunk_size):
        count = min(chunk_size, num_resamples - start)
        indices = bootstrap_indices(n, count, seed=seed, start=start)
        if count < chunk_size:  # pad to one compiled shape; the padding rows are dropped
            indices = np.concatenate([indices, np.repeat(indices[:1], chunk_size - count, 0)])
        values = np.asarray(_resampled_values(fn, logits, labels, indices), np.float64)[:count]
        variant_mean = values[:, :num_variant].mean(axis=1)
        baseline_mean = values[:, num_variant:].mean(axis=1)
        out[start : start + count] = variant_mean - baseline_mean
    return out


def paired_bootstrap(
    metric,
    variant,
    baseline,
    *,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict:
    """Paired bootstrap comparison of a variant with a baseline on the same examples.

    The statistic is the difference of seed-averaged metrics,

    .. math::

       d = \\frac{1}{S_v} \\sum_s m(\\text{variant}_s) - \\frac{1}{S_b} \\sum_t
       m(\\text{baseline}_t),

    positive when the variant's metric is larger (worse for ``nll``, ``brier``, ``ece``,
    ``classwise_ece``, ``mae``; better for ``accuracy``, ``auroc``, ``macro_f1``,
    ``macro_recall``, ``accuracy_within_one``). Each of ``R`` replicates draws ``N`` example
    indices with replacement and recomputes ``d`` on that resample, with the same indices
    for every run of both sides. This is the paired design: the models are compared on the
    same (resampled) examples, so per-example difficulty cancels. Sharing the indices
    across seeds too is deliberate: all seeds were evaluated on one test set, and a new
    test set would be shared by all of them; drawing independent indices per seed would
    treat the seeds' test sets as independent samples and shrink the interval (by up to
    ``sqrt(S)`` when the seeds agree). The interval therefore covers test-set sampling
    given these trained models; use ``t_interval`` on per-seed values for the spread
    over training seeds. With shared indices ``d`` does not depend on how seeds are
    paired, so ``variant`` and ``baseline`` may have different numbers of seeds.

    * Interval: the percentile interval, the ``(1 - c) / 2`` and ``(1 + c) / 2``
      quantiles of the replicates (``numpy.quantile``, linear interpolation; Efron and
      Tibshirani 1993, ch. 13).
    * p-value (two-sided, H0: no difference): ``p = min(1, 2 min(a, b))`` with
      ``a = (1 + #{d* <= 0}) / (R + 1)`` and ``b = (1 + #{d* >= 0}) / (R + 1)``: twice
      the smaller tail of the bootstrap distribution beyond 0, which inverts the
      percentile interval (``p < 1 - c`` essentially iff the interval excludes 0), with
      the add-one correction so that ``p`` is never exactly 0 (its floor is
      ``2 / (R + 1)``, about 0.001 at ``R = 2000``). Ties at exactly 0 count on both
      sides, so identical models get ``p = 1``. Berg-Kirkpatrick et al. (2012) count
      ``d* > 2d`` instead (the distribution shifted to the null), which is the same test
      when the bootstrap distribution is symmetric about ``d``.

    Each replicate's metric is the ``jaxsent.metrics`` function itself (for ``[N, K]``
    logits the ``jaxsent.multiclass_metrics`` one) on the resampled rows (``lax.map`` over
    a ``[chunk, N]`` index matrix, jitted), so ECE, AUROC and macro-F1 are exact on each
    resample. Metric values are float32: accuracy differences that are 0 in exact
    arithmetic across several seeds can round to a few ulps on either side, which can
    move ``p`` by the share of such replicates. To compare temperature-scaled metrics,
    pass each run's logits already divided by its own temperature
    (``jaxsent.calibration.apply_temperature``).

    Args:
      metric: a name in ``BOOTSTRAP_METRICS``: ``"accuracy"``, ``"nll"``, ``"brier"``,
        ``"ece"`` (top-label, 15 bins), binary ``"auroc"``, K-class ``"macro_f1"``,
        ``"macro_recall"``, ``"classwise_ece"``, ``"mae"``, ``"accuracy_within_one"``; or a
        JAX-traceable ``f(logits, labels [N]) -> scalar``.
      variant: list of ``(logits, labels)`` pairs, one per seed: float logits (finite),
        ``[N]`` with 0/1 ``[N]`` labels, or ``[N, K]`` with integer ``[N]`` labels in
        ``[0, K)``; every run of both sides on the same examples in the same order, its
        logits of one shape.
      baseline: the same for the baseline (e.g. the ``bce`` runs). Every run's labels
        must equal ``baseline[0]``'s.
      num_resamples: number of bootstrap replicates ``R``.
      confidence: coverage of the interval, in (0, 1).
      seed: seed of ``bootstrap_indices``; use the same seed for every variant of a study
        so that all comparisons see the same resamples.
      chunk_size: replicates per jitted call (default: memory-bounded automatically).

    Returns:
      dict with ``metric`` (name), ``difference`` (observed ``d``), ``ci_low``,
      ``ci_high``, ``p_value``, ``num_resamples``, ``confidence``, ``num_examples``,
      ``variant_values`` and ``baseline_values`` (each run's metric on all examples, in
      order) and ``variant_mean`` and ``baseline_mean``; numbers are Python floats.

    Raises:
      ValueError, TypeError: bad arguments, runs on different examples (labels differ),
        logits of different shapes, non-finite logits, a named metric without a form for
        the logits' rank (``auroc`` of K classes, ``macro_f1`` of binary logits), or a metric
        that is NaN on the data or on a resample (e.g. AUROC of a resample holding one class).
    """
    _resolve_metric(metric)
    confidence = _check_confidence(confidence)
    variant_runs, baseline_runs, labels = _check_paired(variant, baseline)
    name, fn = _resolve_metric(metric, variant_runs[0][0].ndim)
    # Eager calls check labels and dtypes through the metrics' own validation.
    variant_values = [float(fn(z, y)) for z, y in variant_runs]
    baseline_values = [float(fn(z, y)) for z, y in baseline_runs]
    if not np.all(np.isfinite(variant_values + baseline_values)):
        raise ValueError(
            f"metric {name!r} is not finite on the full data: variant {variant_values}, "
            f"baseline {baseline_values}."
        )
    variant_mean = float(np.mean(variant_values))
    baseline_mean = float(np.mean(baseline_values))
    replicates = _replicates(
        fn, variant_runs, baseline_runs, labels, num_resamples, seed, chunk_size
    )
    if not np.all(np.isfinite(replicates)):
        raise ValueError(
            f"metric {name!r} is not finite on {int(np.sum(~np.isfinite(replicates)))} of "
            f"{num_resamples} resamples (undefined on some resampled sets)."
        )
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    below = (1 + np.count_nonzero(replicates <= 0)) / (num_resamples + 1)
    above = (1 + np.count_nonzero(replicates >= 0)) / (num_resamples + 1)
    return {
        "metric": name,
        "difference": variant_mean - baseline_mean,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(min(1.0, 2 * min(below, above))),
        "num_resamples": int(num_resamples),
        "confidence": confidence,
        "num_examples": int(labels.shape[0]),
        "variant_values": variant_values,
        "baseline_values": baseline_values,
        "variant_mean": variant_mean,
        "baseline_mean": baseline_mean,
    }
