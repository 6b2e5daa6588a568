"""Evaluation artefacts: the per-example predictions file, the reliability diagram, and the
report folder that holds them with ``eval_results.json`` (`write_report`).

Predictions are written as Parquet (one row per real example, columns ``example_id``,
``label``, ``logit``, ``prob``, ``pred``, and ``length``/``full_length`` when given): typed
columns keep the float32 logits exact, and the file loads with pyarrow, pandas or
``datasets.load_dataset("parquet", ...)``.

Paths may be local or bucket URLs (``gs://...``, see `jaxsent.storage`): an object is written
whole from memory.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath
from matplotlib.figure import Figure

from jaxsent import metrics, storage

__all__ = ["plot_reliability_diagram", "read_predictions", "save_predictions", "write_report"]

PREDICTION_COLUMNS = ("example_id", "label", "logit", "prob", "pred")


def save_predictions(
    path: str | os.PathLike,
    *,
    example_ids: Sequence | np.ndarray,
    logits,
    labels,
    lengths=None,
    full_lengths=None,
    where=None,
) -> str:
    """Writes one Parquet row per real example: id, label, logit, probability, prediction.

    Args:
      path: output file (``.parquet``); parent directories are created.
      example_ids: ``[N]`` unique ids (integers or strings) identifying each example in
        its split.
      logits: ``[N]`` float logits of the positive class (stored as float32).
      labels: ``[N]`` 0/1 labels.
      lengths: optional ``[N]`` token counts the model saw, stored as an int64 ``length``
        column.
      full_lengths: optional ``[N]`` token counts of the whole texts (before truncation), an
        int64 ``full_length`` column.
      where: optional ``[N]`` bool mask; only rows where it is True are written
        (padding rows of fixed-shape evaluation batches).

    Returns:
      The path written, as a string.

    Columns: ``example_id`` (as given), ``label`` (int64), ``logit`` (float32),
    ``prob = sigmoid(logit)`` (float32, as the metrics compute it) and
    ``pred = 1 if logit > 0 else 0`` (int64, the metrics' decision rule).

    Raises:
      ValueError: on mismatched lengths, non-0/1 labels or duplicated ids.
    """
    ids = np.asarray(example_ids)
    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels)
    extra = {}
    if lengths is not None:
        extra["length"] = np.asarray(lengths)
    if full_lengths is not None:
        extra["full_length"] = np.asarray(full_lengths)
    if ids.ndim != 1:
        raise ValueError(f"`example_ids` must have shape [N], got shape {ids.shape}.")
    named = (
        ("logits", logits),
        ("labels", labels),
        ("lengths", extra.get("length")),
        ("full_lengths", extra.get("full_length")),
    )
    for name, value in named:
        if value is None:
            continue
        if value.shape != ids.shape:
            raise ValueError(
                f"`{name}` must have shape {ids.shape} like `example_ids`, got {value.shape}."
            )
    if where is not None:
        where = np.asarray(where)
        if where.dtype != np.bool_ or where.shape != ids.shape:
            raise ValueError(
                f"`where` must be a bool mask of shape {ids.shape}, "
                f"got {where.dtype} {where.shape}."
            )
        ids, logits, labels = ids[where], logits[where], labels[where]
        extra = {k: v[where] for k, v in extra.items()}
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.size:
        raise ValueError(f"`labels` must be 0 or 1, got {bad[0]!r}.")
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        duplicate = unique[counts > 1][0]
        raise ValueError(f"`example_ids` must be unique, got {duplicate!r} more than once.")
    prob = np.asarray(jax.nn.sigmoid(logits), dtype=np.float32)
    table = pa.table(
        {
            "example_id": pa.array(ids.tolist()),
            "label": pa.array(labels.astype(np.int64)),
            "logit": pa.array(logits),
            "prob": pa.array(prob),
            "pred": pa.array((logits > 0).astype(np.int64)),
            **{k: pa.array(v.astype(np.int64)) for k, v in extra.items()},
        }
    )
    path = os.fspath(path)
    if storage.is_remote(path):
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        epath.Path(path).write_bytes(buffer.getvalue())
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(table, path)
    return path


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a file written by ``save_predictions`` into a dict of ``[N]`` numpy arrays.

    Keys: the columns (``example_id``, ``label``, ``logit``, ``prob``, ``pred``, and ``length``
    and ``full_length`` when the file has them).
    """
    source = os.fspath(path)
    if storage.is_remote(source):
        source = pa.BufferReader(epath.Path(source).read_bytes())
    table = pq.read_table(source)
    missing = [c for c in PREDICTION_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{os.fspath(path)!r} is not a predictions file: missing columns {missing}."
        )
    optional = [c for c in ("length", "full_length") if c in table.column_names]
    names = [*PREDICTION_COLUMNS, *optional]
    return {name: table.column(name).to_numpy() for name in names}


def plot_reliability_diagram(
    logits,
    labels,
    path: str | os.PathLike,
    *,
    num_bins: int = 15,
    title: str | None = None,
    where=None,
    positive_class: bool = False,
) -> str:
    """Draws a reliability diagram with a histogram of confidences and writes a PNG.

    The top panel shows, for each non-empty bin of ``metrics.reliability_bins``, the
    accuracy (bar) against the mean confidence (red hatched gap), with the diagonal of
    perfect calibration; the bottom panel shows how many examples fall in each bin.
    The title carries the ECE (same bins) and the example count. Top-label mode plots
    confidence over [1/2, 1], where all its mass lies.

    Args:
      logits: ``[N]`` float logits of the positive class.
      labels: ``[N]`` 0/1 labels.
      path: output PNG path; parent directories are created.
      num_bins: number of equal-width bins over [0, 1].
      title: figure title (default "Reliability diagram").
      where: optional ``[N]`` bool mask of the real rows.
      positive_class: plot ``p`` against label frequency instead of top-label
        confidence against accuracy.

    Returns:
      The path written, as a string.
    """
    confidence, outcome = metrics.calibration_inputs(
        logits, labels, where=where, positive_class=positive_class
    )
    bins = metrics.reliability_bins(confidence, outcome, where=where, num_bins=num_bins)
    ece = float(
        metrics.expected_calibration_error(
            logits, labels, where=where, num_bins=num_bins, positive_class=positive_class
        )
    )
    count, conf, acc, edges = (np.asarray(x) for x in bins)
    filled = count > 0
    width = 1.0 / num_bins
    centers = (edges[:-1] + edges[1:]) / 2

    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    outcome_name = "label frequency" if positive_class else "accuracy"
    top.bar(centers[filled], acc[filled], width=width, edgecolor="black", label=outcome_name)
    # Hatched without fill so that the gap stays readable over the accuracy bar when
    # the bin is under-confident (confidence below accuracy).
    top.bar(
        centers[filled],
        conf[filled] - acc[filled],
        bottom=acc[filled],
        width=width,
        fill=False,
        hatch="//",
        edgecolor="red",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel(outcome_name)
    top.legend(loc="upper left")
    bottom.bar(centers, count, width=width, edgecolor="black")
    bottom.set_ylabel("examples")
    bottom.set_xlabel("predicted P(positive)" if positive_class else "confidence max(p, 1 - p)")
    bottom.set_xlim(0.0 if positive_class else 0.5, 1.0)
    summary = f"ECE ({num_bins} bins) = {ece:.4f}, n = {int(count.sum())}"
    fig.suptitle(f"{title or 'Reliability diagram'}\n{summary}")
    path = os.fspath(path)
    if storage.is_remote(path):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        epath.Path(path).write_bytes(buffer.getvalue())
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def write_report(
    directory: str | os.PathLike,
    results: Mapping[str, Any],
    predictions: Mapping[str, np.ndarray],
    *,
    title: str,
) -> None:
    """Writes an evaluation's folder: ``eval_results.json``, ``predictions.parquet`` and
    ``reliability.png``.

    Args:
      directory: output folder (local or bucket URL); created when missing.
      results: the JSON-serialisable metrics (e.g. `jaxsent.evaluation.evaluation_report`).
      predictions: the keyword arguments of `save_predictions` (``example_ids``, ``logits``,
        ``labels``, optionally ``lengths`` and ``full_lengths``).
      title: the reliability diagram's title.
    """
    directory = storage.as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    save_predictions(directory / "predictions.parquet", **predictions)
    plot_reliability_diagram(
        predictions["logits"], predictions["labels"], directory / "reliability.png", title=title
    )
