"""Evaluating a trained model on a labelled data set, as its run's final report did.

The data's labels are read as the model's classes (`jaxsent.data.ClassLabels.encode`: a class
name, or an integer: the class id, or the data's integer for the class when the run's labels
were such integers). Data of another set of classes is refused before any row is read as the
model's: a known data set whose number of classes is not the model's (``sst2`` has two,
``sst5`` five), or a file whose labels hold more classes than the model has, or hold only the
binary 0/1 (or negative/positive) labels while the model has more than two classes and those
labels are not its class names. A label naming none of the classes is a malformed row, and the
evaluated labels must hold at least two classes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxsent import data as data_lib
from jaxsent import evaluation
from jaxsent.inference._loading import TrainedModel
from jaxsent.training.splits import Split


def load_eval_split(
    trained: TrainedModel,
    name: str,
    *,
    split: str,
    size: int = 0,
    sample_seed: int | None = None,
    data_dir: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    on_bad_rows: str = "error",
) -> tuple[Split, list[str]]:
    """A labelled data set, prepared as the run prepared its evaluation split.

    Args:
      trained: the model (its tokenizer and `InferenceSettings` decide the tokenisation).
      name: anything `jaxsent.data.load_raw` accepts.
      split: the split to read.
      size: 0 for every example, else a fixed stratified sample of this many (as the run's
        ``data.eval_size``; a size above the split's evaluates all of it).
      sample_seed: the sample's seed; default the run's ``data.eval_sample_seed`` (or ``seed``,
        for runs before it existed), else 0.
      data_dir, text_column, label_column: as in `load_raw`.
      on_bad_rows: as in `jaxsent.data.prepare`.

    Returns:
      ``(split, notes)``: a `jaxsent.training.loop.Split` (labels: the model's class ids) and
      sentences saying what was left out (a sample, filtered rows), for the report.

    Raises:
      ValueError: data of another number of classes than the model's, a label naming none of
        its classes (with ``on_bad_rows="error"``; the split, row, value and classes named), or
        labels holding a single class (see the module docstring).
    """
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"size={size!r} must be 0 (all examples) or a positive int")
    settings = trained.settings
    classes = trained.classes
    raw = data_lib.load_raw(
        name,
        split=split,
        data_dir=data_dir,
        text_column=text_column,
        label_column=label_column,
        # A model of other classes than negative / positive reads the raw labels itself (a
        # binary spelling such as "negative" may name another of its classes).
        raw_labels=classes != data_lib.BINARY,
    )
    key = f"{name}:{split}"
    _check_data_classes(_raw_labels(raw), classes, data=name, split=split)
    ds, report = data_lib.prepare_with_report(
        raw,
        trained.tokenizer,
        max_length=settings.max_length,
        split_name=key,
        clean_markup=settings.clean_markup,
        on_bad_rows=on_bad_rows,
        truncation=settings.truncation,
        head_fraction=settings.head_fraction,
        classes=classes,
    )
    notes = []
    if report.num_filtered:
        notes.append(
            f"{report.num_filtered:,} malformed row(s) of {report.num_input_rows:,} left out "
            "(on_bad_rows=filter)"
        )
    if size and size < len(ds):
        if sample_seed is None:
            config = trained.run_config or {}
            sample_seed = config.get("data", {}).get("eval_sample_seed", config.get("seed", 0))
        full = len(ds)
        ds = data_lib.stratified_subset(ds, size=size, seed=sample_seed)
        notes.append(
            f"'{split}' metrics are on a fixed stratified sample of {size:,} of its {full:,} "
            f"examples (seed {sample_seed})"
        )
    arrays = data_lib.to_numpy_columns(ds)
    found = np.unique(arrays.labels)
    if len(found) < 2:
        held = f"one class only ({classes.names[found[0]]!r})" if len(found) else "no class"
        raise ValueError(
            f"{key}: the evaluated labels hold {held}; the metrics compare classes, so "
            f"evaluate data of two or more of the model's ({classes.describe()})"
        )
    return Split(key, ds, arrays, classes), notes


def _raw_labels(ds) -> list[Any]:
    """The label column's values, less the missing ones (rows the screening reports)."""
    values = ds.select_columns(["label"]).with_format("arrow")[:]["label"].to_pylist()
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _check_data_classes(
    raw_labels: list[Any], classes: data_lib.ClassLabels, *, data: str, split: str
) -> None:
    """Refuses data of another set of classes than the model's (see the module docstring).

    Args:
      raw_labels: the data's labels as read (missing ones left out).
      classes: the model's classes.
      data, split: the data set (a known name decides its classes) and split, for messages.

    Raises:
      ValueError: one line saying both sets of classes.
    """
    model_k = classes.num_classes
    known = data_lib.KNOWN_DATASETS.get(data)
    if known is not None:
        found = data_lib.ClassLabels(known.label_names) if known.label_names else data_lib.BINARY
        if found.num_classes != model_k:
            raise ValueError(
                f"the model has {model_k} classes ({classes.describe()}) but {data} has "
                f"{found.num_classes} ({found.describe()}): evaluate it on data of its classes"
            )
        return
    try:
        found, _ = data_lib.infer_class_labels(raw_labels)
    except ValueError:  # one class, or mixed kinds: the row screening names what is wrong
        return
    names = {name.strip().casefold() for name in classes.names}
    named = all(isinstance(v, str) and v.strip().casefold() in names for v in raw_labels)
    binary_on_k = found == data_lib.BINARY and model_k > 2 and not named
    if binary_on_k or found.num_classes > model_k:
        held = f"{found.num_classes} ({found.describe()})"
        if binary_on_k:
            held = "2 (binary: 0/1 or negative/positive)"
        raise ValueError(
            f"the model has {model_k} classes ({classes.describe()}) but the labels of "
            f"{data}:{split} hold {held}: evaluate it on data of its classes"
        )


def evaluation_results(predictions: dict[str, np.ndarray], trained: TrainedModel) -> dict[str, Any]:
    """The report of an evaluation, made as the run's final report is made.

    Args:
      predictions: `jaxsent.training.loop.evaluate`'s per-example predictions.
      trained: the model (its fitted temperature, classes and best step go into the report).

    Returns:
      `jaxsent.evaluation.evaluation_report` with the run's temperature (and, for K > 2
      classes, their names and whether they are ordered), plus ``best_step``.
    """
    classes = trained.classes
    options: dict[str, Any] = {}
    if classes.num_classes > 2:  # as the run's own report (`loop.Run.report_options`)
        options = {"class_names": list(classes.names), "ordinal": classes.ordinal}
    results = evaluation.evaluation_report(
        predictions["logits"],
        predictions["labels"],
        predictions["full_lengths"],
        temperature=trained.settings.temperature,
        **options,
    )
    results["best_step"] = trained.best_step
    return results
