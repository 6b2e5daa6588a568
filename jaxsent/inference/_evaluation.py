"""Evaluating a trained model on a labelled data set, as its run's final report did."""

from __future__ import annotations

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
      ``(split, notes)``: a `jaxsent.training.loop.Split` and sentences saying what was left
      out (a sample, filtered rows), for the report.
    """
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"size={size!r} must be 0 (all examples) or a positive int")
    settings = trained.settings
    raw = data_lib.load_raw(
        name, split=split, data_dir=data_dir, text_column=text_column, label_column=label_column
    )
    key = f"{name}:{split}"
    ds, report = data_lib.prepare_with_report(
        raw,
        trained.tokenizer,
        max_length=settings.max_length,
        split_name=key,
        clean_markup=settings.clean_markup,
        on_bad_rows=on_bad_rows,
        truncation=settings.truncation,
        head_fraction=settings.head_fraction,
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
    return Split(key, ds, data_lib.to_numpy_columns(ds)), notes


def evaluation_results(predictions: dict[str, np.ndarray], trained: TrainedModel) -> dict[str, Any]:
    """The report of an evaluation, made as the run's final report is made.

    Args:
      predictions: `jaxsent.training.loop.evaluate`'s per-example predictions.
      trained: the model (its fitted temperature and best step go into the report).

    Returns:
      `jaxsent.evaluation.evaluation_report` with the run's temperature, plus ``best_step``.
    """
    results = evaluation.evaluation_report(
        predictions["logits"],
        predictions["labels"],
        predictions["full_lengths"],
        temperature=trained.settings.temperature,
    )
    results["best_step"] = trained.best_step
    return results
