"""A finished run's model as a folder that jaxsent and the PyTorch world load: `DIR/export/`.

The folder is the Hugging Face layout that `jaxsent.models.save_pretrained` writes
(``config.json``, ``model.safetensors``; a ``transformers.BertForSequenceClassification`` with
``num_labels=1`` under ``pooling="cls"``), the tokenizer's files (with ``model_max_length`` set
to the training's ``max_length``), and ``jaxsent.json``, which adds to the model's own entries
(pooling, dropout rate, compute dtype) how the run read text and scored it: `InferenceSettings`
(``max_length``, ``clean_markup``, the truncation mode, the fitted bucket boundaries, the
evaluation batch size, the temperature fitted on validation) and where the model came from
(``run``: work directory, best step, the run's config).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from typing import Any

import jax
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from jaxsent.data.preprocess import check_truncation
from jaxsent.models import METADATA_FILE, read_metadata, save_pretrained

__all__ = [
    "EXPORT_DIR",
    "InferenceSettings",
    "gathered_params",
    "is_export",
    "read_settings",
    "write_export",
]

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
_REQUIRED_FILES = ("config.json", "model.safetensors", METADATA_FILE)


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How a trained model reads and scores text: what its training used.

    Attributes:
      max_length: token budget per text (longer texts are truncated).
      clean_markup: whether ``<br />`` markup is replaced by spaces before tokenising.
      truncation, head_fraction: which tokens of a longer text are kept (see
        `jaxsent.data.encode_texts`).
      bucket_boundaries: the padded lengths of the run's batches (one compiled shape each);
        the same boundaries give the same padded shapes, and so the run's logits exactly.
      batch_size: the run's evaluation batch size (``train.eval_batch_size``).
      temperature: the temperature fitted on the validation split, or None.
      classes: the run's classes (`jaxsent.data.ClassLabels.to_json`: names, the integers that
        stand for them in the data, ordinal), or None for the binary negative / positive
        (not written then, so two-class exports are as they always were).
    """

    max_length: int
    clean_markup: bool
    truncation: str
    head_fraction: float
    bucket_boundaries: tuple[int, ...]
    batch_size: int
    temperature: float | None
    classes: dict[str, Any] | None = None

    def __post_init__(self):
        check_truncation(self.truncation, self.head_fraction)
        bounds = self.bucket_boundaries
        if not bounds or list(bounds) != sorted(set(bounds)) or bounds[-1] != self.max_length:
            raise ValueError(
                f"bucket_boundaries={bounds!r} must increase strictly and end at "
                f"max_length={self.max_length}"
            )
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature!r} must be positive")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["bucket_boundaries"] = list(self.bucket_boundaries)
        if self.classes is None:
            del out["classes"]
        return out

    def class_labels(self):
        """The classes as a `jaxsent.data.ClassLabels` (binary when none were recorded)."""
        from jaxsent.data import BINARY, ClassLabels

        return BINARY if self.classes is None else ClassLabels.from_json(self.classes)

    @classmethod
    def from_json(cls, meta: dict[str, Any], *, source: str) -> InferenceSettings:
        """The settings in a ``jaxsent.json`` dict; ``source`` names the file in errors."""
        fields = [f.name for f in dataclasses.fields(cls)]
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = [name for name in fields if name not in meta and name not in optional]
        if missing:
            raise ValueError(
                f"{source} has no {missing}: it describes a model, not an exported run "
                "(export folders are written by training, in <workdir>/export)"
            )
        values = {name: meta[name] for name in fields if name in meta}
        values["bucket_boundaries"] = tuple(int(b) for b in values["bucket_boundaries"])
        if values["temperature"] is not None:
            values["temperature"] = float(values["temperature"])
        return cls(**values)


def is_export(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds an export (the model files and ``jaxsent.json``)."""
    directory = epath.Path(directory)
    return all((directory / name).is_file() for name in _REQUIRED_FILES)


def read_settings(directory: str | os.PathLike) -> tuple[InferenceSettings, dict[str, Any]]:
    """The `InferenceSettings` of an export folder, and its ``run`` entry (empty if none)."""
    meta = read_metadata(directory)
    settings = InferenceSettings.from_json(meta, source=os.path.join(directory, METADATA_FILE))
    return settings, dict(meta.get("run") or {})


def write_export(
    model: nnx.Module,
    directory: str | os.PathLike,
    *,
    tokenizer: Any,
    settings: InferenceSettings,
    run_info: dict[str, Any] | None = None,
) -> epath.Path:
    """Writes an export folder, replacing any earlier one only once the new one is whole.

    The files are written to a local temporary folder, copied next to ``directory`` and moved
    into place, so a crash leaves either the previous export or none, never half of one.

    Args:
      model: the classifier (its arrays must be readable on this host).
      directory: the export folder (a local path or an `etils.epath` one).
      tokenizer: the run's tokenizer; saved with ``model_max_length = settings.max_length``.
      settings: how the model reads and scores text.
      run_info: JSON-serialisable provenance, stored under ``run``.

    Returns:
      The export folder.
    """
    directory = epath.Path(directory)
    partial = directory.parent / f".{directory.name}.partial"
    previous = directory.parent / f".{directory.name}.previous"
    with tempfile.TemporaryDirectory(prefix="jaxsent-export-") as local:
        tokenizer.model_max_length = settings.max_length
        metadata = settings.to_json()
        if run_info:
            metadata["run"] = run_info
        save_pretrained(model, local, tokenizer=tokenizer, metadata=metadata)
        for stale in (partial, previous):
            if stale.exists():
                stale.rmtree()
        partial.mkdir(parents=True)
        for name in sorted(os.listdir(local)):
            epath.Path(local, name).copy(partial / name)
    if directory.exists():
        directory.rename(previous)
    partial.rename(directory)
    if previous.exists():
        previous.rmtree()
    return directory


def gathered_params(model: nnx.Module) -> nnx.Module:
    """``model`` with every parameter whole on this host (every process must call it)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return x

    return nnx.merge(graphdef, jax.tree.map(gather, params), rest)
