"""A run's data: the train, validation and evaluation splits its config names, tokenised.

`load_splits` reads the data set (`jaxsent.data.load_raw`), validates its rows, carves the
validation split from train with the run's seed, draws the training subset and the evaluation
sample, and tokenises only the rows it keeps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import numpy as np

from jaxsent import data as data_lib
from jaxsent.training.config_check import parse_extra_evals, parse_label_names
from jaxsent.training.timing import PhaseTimer

__all__ = ["Split", "load_splits", "run_classes"]


@dataclasses.dataclass
class Split:
    """A tokenized split and its columnar arrays for fast batching."""

    name: str
    dataset: Any  # datasets.Dataset
    arrays: data_lib.TokenArrays
    classes: data_lib.ClassLabels = data_lib.BINARY  # the run's classes; labels are their ids

    def __len__(self) -> int:
        return len(self.dataset)


def _as_count_or_fraction(size):
    # ml_collections keeps the field's float type, so a count given as 256 arrives as 256.0.
    return int(size) if size >= 1 else size


def _raw_labels(ds) -> list[Any]:
    """The label column's values, less the missing ones (rows the screening reports)."""
    values = ds.select_columns(["label"]).with_format("arrow")[:]["label"].to_pylist()
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def run_classes(
    config: ml_collections.ConfigDict, train_labels: list[Any]
) -> tuple[data_lib.ClassLabels, str]:
    """The run's classes: ``data.label_names``, the known data set's, or the training labels'
    (`jaxsent.data.infer_class_labels`), checked against ``model.num_labels``.

    Returns:
      The classes and a sentence saying how they were named and ordered.

    Raises:
      ValueError: the training labels hold fewer than two classes or mix kinds, or
        ``model.num_labels`` is not their number (one line, naming the field).
    """
    dc = config.data
    known = data_lib.KNOWN_DATASETS.get(dc.name)
    names = parse_label_names(dc.get("label_names", "")) or (known and known.label_names) or None
    ordinal = bool(dc.get("ordinal", False)) or bool(known and known.ordinal)
    classes, how = data_lib.infer_class_labels(train_labels, names=names, ordinal=ordinal)
    if names and known and known.label_names == names and not dc.get("label_names", ""):
        how = f"classes of {dc.name}: {classes.describe()}"
    wanted = config.model.get("num_labels", 0)
    if wanted and wanted != classes.num_classes:
        raise ValueError(
            f"config.model.num_labels={wanted}: the training data has {classes.num_classes} "
            f"classes ({how}); set it to {classes.num_classes} or 0 (as many as the data has)"
        )
    return classes, how


def load_splits(
    config: ml_collections.ConfigDict, tokenizer, timer: PhaseTimer | None = None
) -> tuple[dict[str, Split], dict[str, int], list[str]]:
    """Train / validation (carved from train, fixed seed) / eval splits, tokenized.

    Rows are validated and selected (validation split, training subset, evaluation sample) from
    their labels first, and only the selected rows are tokenised. The validation split is carved
    from train (``data.validation_size``, stratified, the run's seed) unless
    ``data.validation_split`` names one. A data set with a single split (one file) and neither
    `data.train_split` nor `data.eval_split` among its splits is divided: a stratified
    `data.eval_holdout` of it (fixed by `data.eval_sample_seed`) is held out for the final
    evaluation and the rest is trained on.

    The classes (`run_classes`) are read off the training rows' labels before any row is
    screened; every split's labels are then their class ids (a label naming no class is a
    malformed row of its split).

    Returns:
      The splits (each carrying the classes); the sizes before any subsetting, so the run can
      say what it left out; and notes on how the splits and the classes were made.
    """
    timer = timer or PhaseTimer()
    dc = config.data
    kwargs = dict(
        data_dir=dc.data_dir or None,
        text_column=dc.text_column or None,
        label_column=dc.label_column or None,
        raw_labels=bool(parse_label_names(dc.get("label_names", ""))),
    )
    classes = data_lib.BINARY

    def screen(ds, split_name):
        return data_lib.screen_rows(
            ds,
            split_name=split_name,
            clean_markup=dc.clean_markup,
            on_bad_rows=dc.on_bad_rows,
            classes=classes,
        )

    def tokenize(rows):
        return data_lib.tokenize_rows(
            rows,
            tokenizer,
            max_length=dc.max_length,
            clean_markup=dc.clean_markup,
            truncation=dc.truncation,
            head_fraction=dc.head_fraction,
        )[0]

    notes = []
    with timer.phase("load"):
        names = data_lib.split_names(dc.name, data_dir=dc.data_dir or None)
        single = _single_split(names, dc)
        if single is None:
            train_raw = data_lib.load_raw(dc.name, split=dc.train_split, **kwargs)
            classes, how = run_classes(config, _raw_labels(train_raw))
            train_rows = screen(train_raw, dc.train_split)
            eval_rows = screen(
                data_lib.load_raw(dc.name, split=dc.eval_split, **kwargs), dc.eval_split
            )
        else:
            raw = data_lib.load_raw(dc.name, split=single, **kwargs)
            classes, how = run_classes(config, _raw_labels(raw))
            rows = screen(raw, single)
            held_out, kept = data_lib.validation_indices(
                rows.labels,
                validation_size=_as_count_or_fraction(dc.eval_holdout),
                seed=dc.eval_sample_seed,
            )[::-1]
            train_rows, eval_rows = rows.select(kept), rows.select(held_out)
            notes.append(
                f"{dc.name} has one split ({single!r}): evaluating on a stratified held-out "
                f"{len(eval_rows):,} of its {len(rows):,} rows (data.eval_holdout="
                f"{dc.eval_holdout}) and training on the rest"
            )
        validation_split = dc.get("validation_split", "")
        if validation_split:  # a named split selects the model: train keeps every row
            validation_rows = screen(
                data_lib.load_raw(dc.name, split=validation_split, **kwargs), validation_split
            )
            train_idx = np.arange(len(train_rows))
            validation_idx = np.arange(len(validation_rows))
        else:
            train_idx, validation_idx = data_lib.validation_indices(
                train_rows.labels,
                validation_size=_as_count_or_fraction(dc.validation_size),
                seed=config.seed,
            )
            validation_rows = train_rows
        full_sizes = {"train": len(train_idx), "eval": len(eval_rows)}
        if dc.train_size and dc.train_size < len(train_idx):
            train_idx = train_idx[
                data_lib.stratified_indices(
                    train_rows.labels[train_idx], size=dc.train_size, seed=config.seed
                )
            ]
        eval_idx = np.arange(len(eval_rows))
        if dc.eval_size and dc.eval_size < len(eval_rows):
            # One sample for every training seed: seeds and loss variants are compared on the
            # same examples.
            eval_idx = data_lib.stratified_indices(
                eval_rows.labels, size=dc.eval_size, seed=dc.eval_sample_seed
            )
        if classes.num_classes > 2 or classes != data_lib.BINARY:
            notes.append(how)
        extra = {
            key: screen(
                data_lib.load_raw(
                    name,
                    split=split,
                    data_dir=dc.data_dir or None,
                    raw_labels=kwargs["raw_labels"],
                ),
                key,
            )
            for key, (name, split) in parse_extra_evals(dc.extra_evals).items()
        }
    with timer.phase("tokenise"):
        splits = {
            "train": tokenize(train_rows.select(train_idx)),
            "validation": tokenize(validation_rows.select(validation_idx)),
            "eval": tokenize(eval_rows.select(eval_idx)),
        }
        splits.update({key: tokenize(rows) for key, rows in extra.items()})
        splits = {
            name: Split(name, ds, data_lib.to_numpy_columns(ds), classes)
            for name, ds in splits.items()
        }
    return splits, full_sizes, notes


def _single_split(names: list[str], dc: ml_collections.ConfigDict) -> str | None:
    """The one split of a single-split data set when neither named split exists, else None."""
    if len(names) == 1 and dc.train_split not in names and dc.eval_split not in names:
        return names[0]
    return None
