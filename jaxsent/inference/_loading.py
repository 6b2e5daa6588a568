"""Loading a trained model from a run's work directory or an export folder."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import ml_collections
from etils import epath
from flax import nnx

from jaxsent import data as data_lib
from jaxsent.export import EXPORT_DIR, InferenceSettings, is_export, read_settings
from jaxsent.models import SentimentClassifier, load_tokenizer
from jaxsent.models.classifier import default_label_names
from jaxsent.training import checkpointing
from jaxsent.training.config_check import is_ordinal, parse_label_names

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A classifier with what it needs to read text as its training did.

    Attributes:
      model: the classifier, in eval mode.
      tokenizer: its fast tokenizer.
      settings: how it reads and scores text.
      source: ``"export"`` or ``"checkpoint"`` (a run's best checkpoint).
      directory: the folder it was read from (the export folder, or the run's work directory).
      run_dir: the run's work directory when known (an export inside it, or the run itself).
      best_step: the training step of the checkpoint, when known.
      run_config: the run's config as a dict, when known.
      classes: the model's classes (`jaxsent.data.ClassLabels`; `jaxsent.data.BINARY` for the
        negative / positive runs): class ``i`` is ``classes.names[i]``, and raw labels of data
        to evaluate are read as these classes (`ClassLabels.encode`).

    Raises:
      ValueError: ``classes`` and the model's head disagree on the number of classes.
    """

    model: SentimentClassifier
    tokenizer: Any
    settings: InferenceSettings
    source: str
    directory: epath.Path
    run_dir: epath.Path | None
    best_step: int | None
    run_config: dict[str, Any] | None
    classes: data_lib.ClassLabels = data_lib.BINARY

    def __post_init__(self):
        if self.classes.num_classes != self.model.num_labels:
            raise ValueError(
                f"{os.fspath(self.directory)}: the model's head has {self.model.num_labels} "
                f"classes but its settings name {self.classes.num_classes} "
                f"({self.classes.describe()})"
            )

    def describe(self) -> str:
        step = f", step {self.best_step}" if self.best_step is not None else ""
        if self.source == "export":
            return f"export {self.directory}{step}"
        return f"best checkpoint of {self.directory}{step}"


def is_run(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is a training work directory (``config.json`` and ``best/``)."""
    directory = epath.Path(directory)
    return (directory / "config.json").is_file() and (directory / "best").is_dir()


def load_trained(path: str | os.PathLike) -> TrainedModel:
    """Loads a trained classifier from a run's work directory or an export folder.

    A work directory is read from its ``export/`` folder when it has one, else from its best
    checkpoint (rebuilding the model from the run's ``config.json``; only the model's arrays are
    read, not the optimiser's). A run that predates exports does not record its fitted bucket
    boundaries: evenly spaced ones are used, so logits can differ from the run's own in the
    last bits (a warning says so).

    Args:
      path: a work directory or an export folder.

    Returns:
      The `TrainedModel`.

    Raises:
      FileNotFoundError: ``path`` is neither.
    """
    directory = epath.Path(path)
    if is_export(directory):
        parent = directory.parent
        run_dir = parent if directory.name == EXPORT_DIR and is_run(parent) else None
        return _from_export(directory, run_dir=run_dir)
    if is_run(directory):
        if is_export(directory / EXPORT_DIR):
            return _from_export(directory / EXPORT_DIR, run_dir=directory)
        return _from_checkpoint(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {os.fspath(path)!r} does not exist")
    found = sorted(p.name for p in directory.iterdir())
    raise FileNotFoundError(
        f"{os.fspath(path)!r} is neither a training work directory (config.json and best/) nor "
        f"an export folder (config.json, model.safetensors, jaxsent.json); it holds {found}"
    )


@contextlib.contextmanager
def _local_folder(directory: epath.Path) -> Iterator[str]:
    """``directory`` as a local path, copied to a temporary folder when it is remote (gs://)."""
    if "://" not in os.fspath(directory):
        yield os.fspath(directory)
        return
    with tempfile.TemporaryDirectory(prefix="jaxsent-model-") as local:
        for item in directory.iterdir():
            if item.is_file():
                item.copy(epath.Path(local) / item.name)
        yield local


def _from_export(directory: epath.Path, *, run_dir: epath.Path | None) -> TrainedModel:
    with _local_folder(directory) as local:
        settings, run_info = read_settings(local)
        model = SentimentClassifier.from_pretrained(local)
        tokenizer = load_tokenizer(local)
    classes = settings.class_labels()
    if settings.classes is None and model.num_labels != 2:  # a folder not written by training
        classes = data_lib.ClassLabels(model.label_names)
    return TrainedModel(
        model=model,
        tokenizer=tokenizer,
        settings=settings,
        source="export",
        directory=directory,
        run_dir=run_dir,
        best_step=run_info.get("best_step"),
        run_config=run_info.get("config"),
        classes=classes,
    )


def _checkpoint_classes(
    config: ml_collections.ConfigDict, results: dict[str, Any]
) -> data_lib.ClassLabels:
    """The classes of a run without export (an export records them in ``jaxsent.json``).

    Those its config names (``data.label_names``, or the known data set's, as
    `jaxsent.training.splits.run_classes` takes them); else those of its final report (the
    classes found in the training labels; integer names stand for those integers, as
    `jaxsent.data.infer_class_labels` names them); else ``model.num_labels`` unnamed ones
    (``"0"`` .. ``"K-1"``); else the binary classes.
    """
    dc = config.data
    known = data_lib.KNOWN_DATASETS.get(dc.get("name"))
    ordinal = is_ordinal(config)
    named = parse_label_names(dc.get("label_names", "")) or (known and known.label_names)
    if named:
        return data_lib.ClassLabels(tuple(named), ordinal=ordinal)
    if results.get("class_names"):
        names = tuple(results["class_names"])
        values = None
        if all(name.lstrip("-").isdigit() and str(int(name)) == name for name in names):
            integers = tuple(int(name) for name in names)
            if list(integers) == sorted(set(integers)) and integers != tuple(range(len(names))):
                values = integers
        return data_lib.ClassLabels(names, values, bool(results.get("ordinal", ordinal)))
    num_labels = config.model.get("num_labels", 0)
    if num_labels and num_labels != 2:
        return data_lib.ClassLabels(default_label_names(num_labels), ordinal=ordinal)
    return data_lib.BINARY


def _from_checkpoint(workdir: epath.Path) -> TrainedModel:
    config_dict = json.loads((workdir / "config.json").read_text())
    config = ml_collections.ConfigDict(config_dict)
    results_path = workdir / "eval_results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    classes = _checkpoint_classes(config, results)
    # The head training built (`jaxsent.training.build.build_model`): one logit for two
    # classes, K for K; a base model's head of another size is replaced, as in training.
    model = SentimentClassifier.from_pretrained(
        config.model.name,
        pooling=config.model.pooling,
        dropout_rate=config.model.dropout_rate,
        dtype=jnp.dtype(config.model.dtype),
        num_labels=classes.num_classes,
        label_names=classes.names,
        replace_mismatched_head=True,
    )
    graphdef, rng_state, state = nnx.split(model, nnx.RngState, ...)
    try:
        arrays, meta = checkpointing.restore_best_model(
            workdir,
            state,
            best_metric=config.train.best_metric,
            best_mode=config.train.best_mode,
        )
    except ValueError as err:
        raise ValueError(
            f"{os.fspath(workdir)}: its best checkpoint does not fit the model its config "
            f"describes ({classes.num_classes} classes: {classes.describe()}; without export/ "
            f"a run's classes are known only from its config and final report): {err}"
        ) from err
    nnx.replace_by_pure_dict(state, arrays)
    model = nnx.merge(graphdef, rng_state, state)
    max_length = config.data.max_length
    log.warning(
        "%s has no export/ (a run from before exports, or one that did not finish): its fitted "
        "bucket boundaries are unknown, evenly spaced ones are used, so logits can differ from "
        "the run's own in the last bits",
        workdir,
    )
    settings = InferenceSettings(
        max_length=max_length,
        clean_markup=config.data.clean_markup,
        # Runs from before head+tail truncation kept the head.
        truncation=config.data.get("truncation", "head"),
        head_fraction=config.data.get("head_fraction", 0.25),
        bucket_boundaries=data_lib.make_bucket_boundaries(
            max_length, num_buckets=config.data.num_buckets
        ),
        batch_size=config.train.eval_batch_size,
        temperature=results.get("temperature"),
        classes=None if classes == data_lib.BINARY else classes.to_json(),
    )
    return TrainedModel(
        model=model,
        tokenizer=load_tokenizer(config.model.name),
        settings=settings,
        source="checkpoint",
        directory=workdir,
        run_dir=workdir,
        best_step=int(meta["step"]),
        run_config=config_dict,
        classes=classes,
    )
