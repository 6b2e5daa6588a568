"""The final report of a run, as a pure function of its predictions.

`evaluation_report` turns the logits of an evaluation split (and the temperature fitted on the
validation split) into every number `eval_results.json` holds: the metrics of
`jaxsent.metrics.binary_classification_metrics`, the same calibration metrics after temperature
scaling, and the metrics per quartile of the examples' token lengths. Training and
`python -m train.evaluate` both call it, so their reports agree by construction.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsent import calibration, metrics

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

_jit_metrics = jax.jit(metrics.binary_classification_metrics, static_argnames="num_bins")


def scalar_metrics(logits, labels, *, where=None, num_bins: int = 15) -> dict[str, Any]:
    """`jaxsent.metrics.binary_classification_metrics` (jitted) as Python floats.

    ``n_examples`` is an int; the rest are floats.
    """
    values = _jit_metrics(jnp.asarray(logits), jnp.asarray(labels), where=where, num_bins=num_bins)
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
      logits: ``[N]`` float logits of the positive class.
      labels: ``[N]`` 0/1 labels.
      lengths: ``[N]`` token counts (of the whole texts, before truncation).
      num_strata: number of quantile strata (4: quartiles).
      num_bins: ECE bins.

    Returns:
      ``{"edges": [num_strata + 1 floats], "strata": [num_strata dicts]}``, each stratum dict with
      ``low``, ``high``, ``n_examples`` and the metrics of :data:`STRATUM_METRICS`.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.shape != np.shape(logits):
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
) -> dict[str, Any]:
    """Every metric of a run's final report, from the per-example predictions.

    Args:
      logits: ``[N]`` float logits of the positive class (every example of the split).
      labels: ``[N]`` 0/1 labels.
      lengths: ``[N]`` token counts of the whole texts (before truncation), for the strata.
      temperature: the temperature fitted on the validation split
        (:func:`jaxsent.calibration.fit_temperature`); None skips the scaled metrics.
      num_bins: ECE bins.
      num_length_strata: quantile strata of the lengths.

    Returns:
      The metrics of :func:`jaxsent.metrics.binary_classification_metrics` (floats;
      ``n_examples`` an int); with a temperature also ``temperature`` and ``nll_ts``,
      ``brier_ts``, ``ece_ts`` (the same metrics of ``logits / temperature``; accuracy, F1 and
      AUROC do not change under a positive temperature); and ``length_strata``
      (:func:`length_strata`).
    """
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels)
    report = scalar_metrics(logits, labels, num_bins=num_bins)
    if temperature is not None:
        scaled = scalar_metrics(
            calibration.apply_temperature(logits, temperature), labels, num_bins=num_bins
        )
        report["temperature"] = float(temperature)
        report.update({f"{k}_ts": scaled[k] for k in ("nll", "brier", "ece")})
    report["length_strata"] = length_strata(
        logits, labels, lengths, num_strata=num_length_strata, num_bins=num_bins
    )
    return report
