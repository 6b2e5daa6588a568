"""Evaluation artefacts: the per-example predictions file, the reliability diagram, and the
report folder that holds them with ``eval_results.json`` (`write_report`).

Predictions are written as Parquet (one row per real example, columns ``example_id``,
``label``, ``logit``, ``prob``, ``pred``, and ``length``/``full_length`` when given): typed
columns keep the float32 logits exact, and the file loads with pyarrow, pandas or
``datasets.load_dataset("parquet", ...)``.

K-class predictions (logits ``[N, K]``) have the columns ``example_id``, ``label``, ``pred``
(the argmax), ``prob`` (its probability), ``prob_<class name>`` and ``logit_<class name>`` per
class, and the length columns; the report folder then also holds the classwise reliability
diagrams (``reliability_classwise.png``) and the confusion matrix (``confusion_matrix.png``).

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
from jaxsent import multiclass_metrics as mm

__all__ = [
    "plot_classwise_reliability",
    "plot_confusion_matrix",
    "plot_reliability_diagram",
    "read_predictions",
    "save_predictions",
    "write_report",
]

PREDICTION_COLUMNS = ("example_id", "label", "logit", "prob", "pred")
#: The leading columns of a K-class predictions file; ``prob_<name>`` and ``logit_<name>``
#: per class follow.
MULTICLASS_PREDICTION_COLUMNS = ("example_id", "label", "pred", "prob")
# The class names, in class order, as JSON in the Parquet schema's metadata.
_CLASS_NAMES_KEY = b"jaxsent.class_names"


def save_predictions(
    path: str | os.PathLike,
    *,
    example_ids: Sequence | np.ndarray,
    logits,
    labels,
    lengths=None,
    full_lengths=None,
    where=None,
    class_names: Sequence[str] | None = None,
) -> str:
    """Writes one Parquet row per real example: id, label, logit, probability, prediction.

    Args:
      path: output file (``.parquet``); parent directories are created.
      example_ids: ``[N]`` unique ids (integers or strings) identifying each example in
        its split.
      logits: ``[N]`` float logits of the positive class, or ``[N, K]`` logits of K classes
        (stored as float32).
      labels: ``[N]`` 0/1 labels, or integer labels in ``[0, K)``.
      lengths: optional ``[N]`` token counts the model saw, stored as an int64 ``length``
        column.
      full_lengths: optional ``[N]`` token counts of the whole texts (before truncation), an
        int64 ``full_length`` column.
      where: optional ``[N]`` bool mask; only rows where it is True are written
        (padding rows of fixed-shape evaluation batches).
      class_names: K-class only: the names of the per-class columns (default ``"0"`` ..
        ``"K-1"``), also kept in the file's metadata.

    Returns:
      The path written, as a string.

    Columns: ``example_id`` (as given), ``label`` (int64), ``logit`` (float32),
    ``prob = sigmoid(logit)`` (float32, as the metrics compute it) and
    ``pred = 1 if logit > 0 else 0`` (int64, the metrics' decision rule).
    K classes: ``example_id``, ``label`` (int64), ``pred`` (int64 argmax, ties to the lowest
    index), ``prob`` (float32 softmax probability of ``pred``), then ``prob_<name>`` (float32
    softmax) and ``logit_<name>`` (float32) for each class in order.

    Raises:
      ValueError: on mismatched lengths, labels outside {0, 1} (``[0, K)``), duplicated ids, or
        ``class_names`` with binary logits.
    """
    ids = np.asarray(example_ids)
    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels)
    multiclass = logits.ndim == 2
    extra = {}
    if lengths is not None:
        extra["length"] = np.asarray(lengths)
    if full_lengths is not None:
        extra["full_length"] = np.asarray(full_lengths)
    if ids.ndim != 1:
        raise ValueError(f"`example_ids` must have shape [N], got shape {ids.shape}.")
    if multiclass:
        if logits.shape[0] != ids.shape[0] or logits.shape[1] < 2:
            raise ValueError(
                f"`logits` must have shape [N, K] with N = {ids.shape[0]} (like `example_ids`) "
                f"and K >= 2, got {logits.shape}."
            )
        names = mm.resolve_class_names(class_names, logits.shape[1])
    elif class_names is not None:
        raise ValueError(
            f"`class_names` is for [N, K] logits of K classes, got {class_names!r} with [N] "
            "binary logits."
        )
    named = (
        ("logits", None if multiclass else logits),
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
    if multiclass:
        num_classes = logits.shape[1]
        if not np.issubdtype(labels.dtype, np.number) or np.issubdtype(labels.dtype, np.bool_):
            raise ValueError(f"`labels` must be integer class indices, got dtype {labels.dtype}.")
        bad = labels[(labels < 0) | (labels >= num_classes) | (labels != np.floor(labels))]
        if bad.size:
            raise ValueError(f"`labels` must be integers in [0, {num_classes}), got {bad[0]!r}.")
    else:
        bad = labels[(labels != 0) & (labels != 1)]
        if bad.size:
            raise ValueError(f"`labels` must be 0 or 1, got {bad[0]!r}.")
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        duplicate = unique[counts > 1][0]
        raise ValueError(f"`example_ids` must be unique, got {duplicate!r} more than once.")
    if multiclass:
        table = _multiclass_table(ids, logits, labels, names, extra)
    else:
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


def _multiclass_table(ids, logits, labels, names, extra) -> pa.Table:
    """The K-class predictions table, its class names in the schema metadata."""
    probs = np.asarray(jax.nn.softmax(logits, axis=-1), dtype=np.float32)  # as the metrics do
    pred = np.asarray(mm.predicted_class(logits)).astype(np.int64)
    columns = {
        "example_id": pa.array(ids.tolist()),
        "label": pa.array(labels.astype(np.int64)),
        "pred": pa.array(pred),
        "prob": pa.array(np.take_along_axis(probs, pred[:, None], axis=1)[:, 0]),
        **{f"prob_{name}": pa.array(probs[:, k]) for k, name in enumerate(names)},
        **{f"logit_{name}": pa.array(logits[:, k]) for k, name in enumerate(names)},
        **{k: pa.array(v.astype(np.int64)) for k, v in extra.items()},
    }
    if len(columns) != len(MULTICLASS_PREDICTION_COLUMNS) + 2 * len(names) + len(extra):
        raise ValueError(f"`class_names` {names!r} give column names that collide.")
    return pa.table(columns, metadata={_CLASS_NAMES_KEY: json.dumps(names)})


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a file written by ``save_predictions`` into a dict of numpy arrays.

    Binary files: the ``[N]`` columns (``example_id``, ``label``, ``logit``, ``prob``,
    ``pred``, and ``length`` and ``full_length`` when the file has them).

    K-class files: ``example_id``, ``label``, ``pred``, ``prob`` (``[N]``), ``logits`` and
    ``probs`` (float32 ``[N, K]``, from the per-class columns), ``class_names`` (str ``[K]``),
    and ``length`` and ``full_length`` when present. ``"logits" in result`` tells the two apart.
    """
    source = os.fspath(path)
    if storage.is_remote(source):
        source = pa.BufferReader(epath.Path(source).read_bytes())
    table = pq.read_table(source)
    optional = [c for c in ("length", "full_length") if c in table.column_names]
    metadata = table.schema.metadata or {}
    if "logit" not in table.column_names and _CLASS_NAMES_KEY in metadata:
        names = json.loads(metadata[_CLASS_NAMES_KEY])
        per_class = [f"{kind}_{name}" for kind in ("logit", "prob") for name in names]
        missing = [
            c for c in (*MULTICLASS_PREDICTION_COLUMNS, *per_class) if c not in table.column_names
        ]
        if missing:
            raise ValueError(
                f"{os.fspath(path)!r} is not a predictions file: missing columns {missing}."
            )
        out = {name: table.column(name).to_numpy() for name in MULTICLASS_PREDICTION_COLUMNS}
        for kind, key in (("logit", "logits"), ("prob", "probs")):
            columns = [table.column(f"{kind}_{name}").to_numpy() for name in names]
            out[key] = np.stack(columns, axis=1).astype(np.float32, copy=False)
        out["class_names"] = np.asarray(names, dtype=str)
        out.update({name: table.column(name).to_numpy() for name in optional})
        return out
    missing = [c for c in PREDICTION_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{os.fspath(path)!r} is not a predictions file: missing columns {missing}."
        )
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
    confidence over [1/2, 1], where all its mass lies; for ``[N, K]`` logits the confidence
    is ``max_k p_k`` (`jaxsent.multiclass_metrics.top_label_reliability_bins`), plotted from
    the bin edge at or below 1/K.

    Args:
      logits: ``[N]`` float logits of the positive class, or ``[N, K]`` logits of K classes.
      labels: ``[N]`` 0/1 labels, or integer labels in ``[0, K)``.
      path: output PNG path; parent directories are created.
      num_bins: number of equal-width bins over [0, 1].
      title: figure title (default "Reliability diagram").
      where: optional ``[N]`` bool mask of the real rows.
      positive_class: binary only: plot ``p`` against label frequency instead of top-label
        confidence against accuracy (for K classes see `plot_classwise_reliability`).

    Returns:
      The path written, as a string.
    """
    if np.ndim(logits) == 2:
        if positive_class:
            raise ValueError(
                "`positive_class=True` is for [N] binary logits; for [N, K] logits use "
                "plot_classwise_reliability."
            )
        bins = mm.top_label_reliability_bins(logits, labels, where=where, num_bins=num_bins)
        ece = float(mm.expected_calibration_error(logits, labels, where=where, num_bins=num_bins))
        num_classes = np.shape(logits)[1]
        count, conf, acc, edges = (np.asarray(x) for x in bins)
        fig = Figure(figsize=(5, 6), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        _draw_reliability(
            top,
            bottom,
            count,
            conf,
            acc,
            edges,
            outcome_name="accuracy",
            xlabel="confidence max_k p_k",
            x_low=(num_bins // num_classes) / num_bins,
        )
        summary = (
            f"top-label ECE ({num_bins} bins) = {ece:.4f}, n = {int(count.sum())}, "
            f"K = {num_classes}"
        )
        fig.suptitle(f"{title or 'Reliability diagram'}\n{summary}")
        return _save_figure(fig, path)
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

    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    _draw_reliability(
        top,
        bottom,
        count,
        conf,
        acc,
        edges,
        outcome_name="label frequency" if positive_class else "accuracy",
        xlabel="predicted P(positive)" if positive_class else "confidence max(p, 1 - p)",
        x_low=0.0 if positive_class else 0.5,
    )
    summary = f"ECE ({num_bins} bins) = {ece:.4f}, n = {int(count.sum())}"
    fig.suptitle(f"{title or 'Reliability diagram'}\n{summary}")
    return _save_figure(fig, path)


def _draw_reliability(
    top,
    bottom,
    count,
    conf,
    acc,
    edges,
    *,
    outcome_name: str,
    xlabel: str,
    x_low: float,
    legend_size=None,
    log_counts: bool = False,
) -> None:
    """One reliability diagram: outcome bars, confidence gaps and the diagonal on ``top``, the
    bin counts on ``bottom``."""
    filled = count > 0
    width = 1.0 / (len(edges) - 1)
    centers = (edges[:-1] + edges[1:]) / 2
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
    if legend_size != 0:
        top.legend(loc="upper left", fontsize=legend_size)
    bottom.bar(centers, count, width=width, edgecolor="black")
    if log_counts:
        bottom.set_yscale("log")
    bottom.set_ylabel("examples")
    bottom.set_xlabel(xlabel)
    bottom.set_xlim(x_low, 1.0)


def _save_figure(fig: Figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if storage.is_remote(path):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        epath.Path(path).write_bytes(buffer.getvalue())
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_classwise_reliability(
    logits,
    labels,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    num_bins: int = 15,
    title: str | None = None,
    where=None,
) -> str:
    """Draws one reliability diagram per class (small multiples) and writes a PNG.

    Panel ``k`` bins ``p_k`` against the frequency of class ``k``
    (`jaxsent.multiclass_metrics.classwise_reliability_bins`) and carries that class's ECE;
    the example counts below each panel are on a log scale, since most ``p_k`` lie near 0. The
    title carries the classwise ECE (the mean of the per-class ones).

    Args:
      logits: ``[N, K]`` float logits.
      labels: ``[N]`` integer labels in ``[0, K)``.
      path: output PNG path; parent directories are created.
      class_names: the K panel titles (default ``"0"`` .. ``"K-1"``).
      num_bins: number of equal-width bins over [0, 1].
      title: figure title (default "Classwise reliability").
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      The path written, as a string.
    """
    bins = mm.classwise_reliability_bins(logits, labels, where=where, num_bins=num_bins)
    errors = np.asarray(mm.class_calibration_errors(logits, labels, where=where, num_bins=num_bins))
    count, conf, acc, edges = (np.asarray(x) for x in bins)
    num_classes = count.shape[0]
    names = mm.resolve_class_names(class_names, num_classes)
    columns = min(num_classes, 5)
    rows = -(-num_classes // columns)
    fig = Figure(figsize=(2.9 * columns, 3.6 * rows + 0.6), layout="constrained")
    grid = fig.add_gridspec(2 * rows, columns, height_ratios=(3, 1) * rows)
    for k, name in enumerate(names):
        row, column = divmod(k, columns)
        top = fig.add_subplot(grid[2 * row, column])
        bottom = fig.add_subplot(grid[2 * row + 1, column], sharex=top)
        _draw_reliability(
            top,
            bottom,
            count[k],
            conf[k],
            acc[k],
            edges,
            outcome_name="class frequency",
            xlabel=f"P({name})",
            x_low=0.0,
            legend_size="x-small" if k == 0 else 0,
            log_counts=True,
        )
        top.set_title(f"{name}: ECE {errors[k]:.4f}", fontsize="medium")
        top.tick_params(labelbottom=False)
        if column:
            top.set_ylabel("")
            bottom.set_ylabel("")
    summary = (
        f"classwise ECE ({num_bins} bins) = {float(errors.mean()):.4f}, "
        f"n = {int(count[0].sum())}, K = {num_classes}"
    )
    fig.suptitle(f"{title or 'Classwise reliability'}\n{summary}")
    return _save_figure(fig, path)


def plot_confusion_matrix(
    logits,
    labels,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    where=None,
) -> str:
    """Draws the confusion matrix, as counts and row-normalised, and writes a PNG.

    Rows are the true classes, columns the predicted ones
    (`jaxsent.multiclass_metrics.confusion_matrix`); the row-normalised panel holds each
    class's recall on its diagonal (a class without examples has an empty row).

    Args:
      logits: ``[N, K]`` float logits.
      labels: ``[N]`` integer labels in ``[0, K)``.
      path: output PNG path; parent directories are created.
      class_names: the K axis labels (default ``"0"`` .. ``"K-1"``).
      title: figure title (default "Confusion matrix").
      where: optional ``[N]`` bool mask of the real rows.

    Returns:
      The path written, as a string.
    """
    confusion = np.asarray(mm.confusion_matrix(logits, labels, where=where))
    num_classes = confusion.shape[0]
    names = mm.resolve_class_names(class_names, num_classes)
    support = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(
        confusion, support, out=np.full(confusion.shape, np.nan), where=support > 0
    )
    side = max(3.5, 0.6 * num_classes + 1.8)
    fig = Figure(figsize=(2 * side + 1.5, side + 0.8), layout="constrained")
    panels = (
        (confusion, "{:d}", "counts", max(int(confusion.max()), 1)),
        (normalised, "{:.2f}", "row-normalised (recall on the diagonal)", 1.0),
    )
    fontsize = "medium" if num_classes <= 6 else "small" if num_classes <= 10 else "x-small"
    for ax, (values, fmt, panel_title, vmax) in zip(fig.subplots(1, 2), panels, strict=True):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        for i in range(num_classes):
            for j in range(num_classes):
                value = values[i, j]
                if np.isfinite(value):
                    color = "white" if value > vmax / 2 else "black"
                    text = fmt.format(value.item())
                    ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
        ticks = range(num_classes)
        ax.set_xticks(ticks, names, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_yticks(ticks, names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(panel_title, fontsize="medium")
        fig.colorbar(image, ax=ax, shrink=0.8)
    n = int(confusion.sum())
    accuracy = np.trace(confusion) / n if n else float("nan")
    fig.suptitle(f"{title or 'Confusion matrix'}\naccuracy = {accuracy:.4f}, n = {n}")
    return _save_figure(fig, path)


def write_report(
    directory: str | os.PathLike,
    results: Mapping[str, Any],
    predictions: Mapping[str, np.ndarray],
    *,
    title: str,
) -> None:
    """Writes an evaluation's folder: ``eval_results.json``, ``predictions.parquet`` and
    ``reliability.png``; for K classes also ``reliability_classwise.png`` and
    ``confusion_matrix.png``.

    Args:
      directory: output folder (local or bucket URL); created when missing.
      results: the JSON-serialisable metrics (e.g. `jaxsent.evaluation.evaluation_report`).
      predictions: the keyword arguments of `save_predictions` (``example_ids``, ``logits``,
        ``labels``, optionally ``lengths``, ``full_lengths``, ``where`` and, for K classes,
        ``class_names``; K-class names missing there are taken from ``results["class_names"]``).
      title: the figures' title.
    """
    directory = storage.as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    logits, labels = predictions["logits"], predictions["labels"]
    if np.ndim(logits) == 2:
        names = predictions.get("class_names")
        if names is None:
            names = results.get("class_names")
        names = mm.resolve_class_names(names, np.shape(logits)[1])
        save_predictions(directory / "predictions.parquet", **{**predictions, "class_names": names})
        where = predictions.get("where")
        plot_reliability_diagram(
            logits, labels, directory / "reliability.png", title=title, where=where
        )
        plot_classwise_reliability(
            logits,
            labels,
            directory / "reliability_classwise.png",
            class_names=names,
            title=title,
            where=where,
        )
        plot_confusion_matrix(
            logits,
            labels,
            directory / "confusion_matrix.png",
            class_names=names,
            title=title,
            where=where,
        )
        return
    save_predictions(directory / "predictions.parquet", **predictions)
    plot_reliability_diagram(
        predictions["logits"], predictions["labels"], directory / "reliability.png", title=title
    )
