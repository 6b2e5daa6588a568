"""The final report of a run, as a pure function of its predictions.

`evaluation_report` turns the logits of an evaluation split (and the temperature fitted on the
validation split) into every number `eval_results.json` holds: the metrics of
`jaxsent.metrics.binary_classification_metrics`, the same calibration metrics after temperature
scaling, and the metrics per quartile of the examples' token lengths. Training and
`python -m train.evaluate` both call it, so their reports agree by construction.

Every function dispatches on the rank of the logits: ``[N]`` logits of the positive class take
the binary metrics, ``[N, K]`` logits (K >= 2) with integer labels in ``[0, K)`` the K-class
metrics of `jaxsent.multiclass_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsent import calibration, metrics, multiclass_metrics

__all__ = [
    "STRATUM_METRICS",
    "evaluation_report",
    "length_strata",
    "length_stratum_index",
    "scalar_metrics",
]

# Metrics reported per length stratum: the seed's length hypothesis is about accuracy and
# calibration on long reviews.
STRATUM_METRICS = ("accuracy", "nll", "brier", "ece")

# The calibration metrics reported again after temperature scaling (the others do not change
# under a positive temperature).
_SCALED_METRICS = ("nll", "brier", "ece")
_SCALED_MULTICLASS_METRICS = ("nll", "brier", "ece", "classwise_ece")

_jit_metrics = jax.jit(metrics.binary_classification_metrics, static_argnames="num_bins")
_jit_multiclass_metrics = jax.jit(
    multiclass_metrics.multiclass_classification_metrics, static_argnames=("num_bins", "ordinal")
)


def _is_multiclass(logits) -> bool:
    """``[N, K]`` logits take the K-class metrics (which reject K < 2), ``[N]`` the binary."""
    return np.ndim(logits) == 2


def _check_binary_options(class_names, ordinal: bool) -> None:
    if class_names is not None:
        raise ValueError(
            f"`class_names` is for [N, K] logits of K classes, got {class_names!r} with [N] "
            "binary logits."
        )
    if ordinal:
        raise ValueError("`ordinal=True` is for [N, K] logits of K ordered classes, got [N].")


def scalar_metrics(
    logits, labels, *, where=None, num_bins: int = 15, ordinal: bool = False
) -> dict[str, Any]:
    """The scalar metrics (jitted) as Python floats: binary or K-class by the logits' rank.

    ``[N]`` logits: `jaxsent.metrics.binary_classification_metrics`. ``[N, K]`` logits:
    `jaxsent.multiclass_metrics.multiclass_classification_metrics` (with ``ordinal``, which
    binary logits reject). ``n_examples`` is an int; the rest are floats.
    """
    if _is_multiclass(logits):
        # The label range is checked eagerly here: under the jit below the labels are traced.
        valid = jnp.ones(np.shape(labels), bool) if where is None else jnp.asarray(where)
        multiclass_metrics._check_labels(labels, valid, np.shape(logits)[-1])
        values = _jit_multiclass_metrics(
            jnp.asarray(logits),
            jnp.asarray(labels),
            where=where,
            num_bins=num_bins,
            ordinal=ordinal,
        )
    else:
        _check_binary_options(None, ordinal)
        values = _jit_metrics(
            jnp.asarray(logits), jnp.asarray(labels), where=where, num_bins=num_bins
        )
    out = {k: float(v) for k, v in values.items() if k != "n_examples"}
    out["n_examples"] = int(values["n_examples"])
    return out


def length_stratum_index(lengths, *, num_strata: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The quantile edges of ``lengths`` and each example's stratum, as `length_strata` uses them.

    Stratum ``k`` holds the examples with ``edges[k] < length <= edges[k + 1]`` (the first also
    holds ``length == edges[0]``), where ``edges`` are the ``0, 1/num_strata, ..., 1`` quantiles
    of ``lengths``.

    Returns:
      ``(edges, stratum)``: float64 ``[num_strata + 1]`` and int ``[N]`` in ``[0, num_strata)``.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"`lengths` must have shape [N], got {lengths.shape}")
    if lengths.size == 0:
        raise ValueError("`lengths` is empty: no example to stratify")
    if num_strata < 1:
        raise ValueError(f"`num_strata` must be >= 1, got {num_strata}")
    edges = np.quantile(lengths.astype(np.float64), np.linspace(0.0, 1.0, num_strata + 1))
    return edges, np.searchsorted(edges[1:-1], lengths, side="left")


def length_strata(
    logits, labels, lengths, *, num_strata: int = 4, num_bins: int = 15
) -> dict[str, Any]:
    """Accuracy, NLL, Brier and ECE per quantile of the examples' token lengths.

    Pass the lengths of the whole texts (before truncation): with truncation the used lengths
    pile up at ``max_length`` and the upper quantiles collapse into one value.

    The strata are those of `length_stratum_index`. Ties can make strata unequal, or empty when
    many examples share a length; every stratum reports its ``n_examples``, and an empty one has
    no metrics (None).

    Args:
      logits: ``[N]`` float logits of the positive class, or ``[N, K]`` logits of K classes.
      labels: ``[N]`` 0/1 labels, or integer labels in ``[0, K)``.
      lengths: ``[N]`` token counts (of the whole texts, before truncation).
      num_strata: number of quantile strata (4: quartiles).
      num_bins: ECE bins.

    Returns:
      ``{"edges": [num_strata + 1 floats], "strata": [num_strata dicts]}``, each stratum dict with
      ``low``, ``high``, ``n_examples`` and the metrics of :data:`STRATUM_METRICS`.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.shape != np.shape(logits)[:1]:
        raise ValueError(
            f"`lengths` must have shape [N] like `logits` {np.shape(logits)}, got {lengths.shape}"
        )
    edges, stratum = length_stratum_index(lengths, num_strata=num_strata)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    strata = []
    for k in range(num_strata):
        where = stratum == k
        row = {"low": float(edges[k]), "high": float(edges[k + 1]), "n_examples": int(where.sum())}
        if row["n_examples"]:
            values = scalar_metrics(logits, labels, where=jnp.asarray(where), num_bins=num_bins)
            row.update({m: values[m] for m in STRATUM_METRICS})
        else:
            row.update(dict.fromkeys(STRATUM_METRICS))
        strata.append(row)
    return {"edges": [float(e) for e in edges], "strata": strata}


def evaluation_report(
    logits,
    labels,
    lengths,
    *,
    temperature: float | None = None,
    num_bins: int = 15,
    num_length_strata: int = 4,
    class_names: Sequence[str] | None = None,
    ordinal: bool = False,
) -> dict[str, Any]:
    """Every metric of a run's final report, from the per-example predictions.

    Args:
      logits: ``[N]`` float logits of the positive class (every example of the split), or
        ``[N, K]`` logits of K classes.
      labels: ``[N]`` 0/1 labels, or integer labels in ``[0, K)``.
      lengths: ``[N]`` token counts of the whole texts (before truncation), for the strata.
      temperature: the temperature fitted on the validation split
        (:func:`jaxsent.calibration.fit_temperature`); None skips the scaled metrics.
      num_bins: ECE bins.
      num_length_strata: quantile strata of the lengths.
      class_names: K-class only: the K names the per-class metrics are keyed by (default
        ``"0"`` .. ``"K-1"``).
      ordinal: K-class only: the classes are ordered; adds ``mae`` and ``accuracy_within_one``.

    Returns:
      Binary logits: the metrics of :func:`jaxsent.metrics.binary_classification_metrics`
      (floats; ``n_examples`` an int); with a temperature also ``temperature`` and ``nll_ts``,
      ``brier_ts``, ``ece_ts`` (the same metrics of ``logits / temperature``; accuracy, F1 and
      AUROC do not change under a positive temperature); and ``length_strata``
      (:func:`length_strata`).

      K-class logits: the metrics of
      :func:`jaxsent.multiclass_metrics.multiclass_classification_metrics` (``ordinal`` ones
      included when asked); with a temperature ``temperature``, ``nll_ts``, ``brier_ts``,
      ``ece_ts`` and ``classwise_ece_ts``; then ``class_names`` (list of K str), ``ordinal``
      (bool), ``per_class`` (``{name: {"precision", "recall", "f1": float, "support": int}}``
      in class order), ``confusion_matrix`` (K lists of K ints, rows the true class, columns
      the predicted one) and ``length_strata``.

    Raises:
      ValueError: ``class_names`` or ``ordinal=True`` with binary logits; ``class_names`` not
        K unique non-empty strings.
    """
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels)
    multiclass = _is_multiclass(logits)
    if multiclass:
        names = multiclass_metrics.resolve_class_names(class_names, logits.shape[-1])
    else:
        _check_binary_options(class_names, ordinal)
    report = scalar_metrics(logits, labels, num_bins=num_bins, ordinal=ordinal)
    if temperature is not None:
        scaled = scalar_metrics(
            calibration.apply_temperature(logits, temperature), labels, num_bins=num_bins
        )
        report["temperature"] = float(temperature)
        rescored = _SCALED_MULTICLASS_METRICS if multiclass else _SCALED_METRICS
        report.update({f"{k}_ts": scaled[k] for k in rescored})
    if multiclass:
        per_class = jax.tree.map(np.asarray, multiclass_metrics.per_class_metrics(logits, labels))
        report["class_names"] = names
        report["ordinal"] = bool(ordinal)
        report["per_class"] = {
            name: {
                "precision": float(per_class["precision"][k]),
                "recall": float(per_class["recall"][k]),
                "f1": float(per_class["f1"][k]),
                "support": int(per_class["support"][k]),
            }
            for k, name in enumerate(names)
        }
        report["confusion_matrix"] = per_class["confusion_matrix"].astype(int).tolist()
    report["length_strata"] = length_strata(
        logits, labels, lengths, num_strata=num_length_strata, num_bins=num_bins
    )
    return report
