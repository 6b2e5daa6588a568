"""A trained model, loaded from a run or an export, scoring text as its training did.

    trained = load_trained("runs/imdb")  # its export/ folder, else its best checkpoint
    out = Predictor(trained).predict(["A gem of a film.", "Two hours I will not get back."])
    out.labels, out.probabilities, out.num_tokens, out.truncated

Texts are cleaned, tokenised and truncated by `jaxsent.data.encode_texts` with the run's
``max_length`` and ``clean_markup``; batches are length-bucketed with the run's fitted
boundaries and scored by one jitted eval step over a mesh of every local device, as the run's
own evaluation was (`jaxsent.training.loop.evaluate`). Probabilities use the temperature fitted
on the run's validation split when there is one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from jaxsent import calibration, evaluation, sharding
from jaxsent import data as data_lib
from jaxsent.data.sources import TEXT_COLUMN_CANDIDATES
from jaxsent.export import EXPORT_DIR, InferenceSettings, is_export, read_settings
from jaxsent.models import SentimentClassifier, load_tokenizer
from jaxsent.training import checkpointing
from jaxsent.training.steps import build_eval_step

__all__ = [
    "PREDICTION_COLUMNS",
    "Predictions",
    "Predictor",
    "Scorer",
    "TrainedModel",
    "evaluation_results",
    "is_run",
    "load_eval_split",
    "load_trained",
    "predict_file",
    "probabilities",
]

log = logging.getLogger(__name__)

_BAD_TEXTS_SHOWN = 5


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
    """

    model: SentimentClassifier
    tokenizer: Any
    settings: InferenceSettings
    source: str
    directory: epath.Path
    run_dir: epath.Path | None
    best_step: int | None
    run_config: dict[str, Any] | None

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
    return TrainedModel(
        model=model,
        tokenizer=tokenizer,
        settings=settings,
        source="export",
        directory=directory,
        run_dir=run_dir,
        best_step=run_info.get("best_step"),
        run_config=run_info.get("config"),
    )


def _from_checkpoint(workdir: epath.Path) -> TrainedModel:
    config_dict = json.loads((workdir / "config.json").read_text())
    config = ml_collections.ConfigDict(config_dict)
    model = SentimentClassifier.from_pretrained(
        config.model.name,
        pooling=config.model.pooling,
        dropout_rate=config.model.dropout_rate,
        dtype=jnp.dtype(config.model.dtype),
    )
    graphdef, rng_state, state = nnx.split(model, nnx.RngState, ...)
    arrays, meta = checkpointing.restore_best_model(
        workdir,
        state,
        best_metric=config.train.best_metric,
        best_mode=config.train.best_mode,
    )
    nnx.replace_by_pure_dict(state, arrays)
    model = nnx.merge(graphdef, rng_state, state)
    max_length = config.data.max_length
    log.warning(
        "%s has no export/ (a run from before exports, or one that did not finish): its fitted "
        "bucket boundaries are unknown, evenly spaced ones are used, so logits can differ from "
        "the run's own in the last bits",
        workdir,
    )
    results_path = workdir / "eval_results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
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
    )


class Scorer:
    """Logits of tokenised texts: one jitted eval step over length-bucketed batches.

    The model's state is replicated over a mesh of every local device and each batch is split
    over its ``data`` axis, as in training's evaluation.

    Args:
      model: the classifier.
      batch_size: rows per batch; a multiple of the number of devices.
      boundaries: the padded lengths (see `InferenceSettings.bucket_boundaries`).
      pad_id: the tokenizer's padding id.
    """

    def __init__(self, model: SentimentClassifier, *, batch_size: int, boundaries, pad_id: int):
        from jaxsent.training.loop import BatchPlacer

        self.mesh = sharding.make_mesh(data=-1, model=1)
        devices = self.mesh.shape["data"]
        if not isinstance(batch_size, int) or batch_size < 1 or batch_size % devices:
            raise ValueError(
                f"batch_size={batch_size!r} must be a positive multiple of the number of "
                f"devices ({devices})"
            )
        self.batch_size = batch_size
        self.boundaries = tuple(boundaries)
        rules = sharding.SHARDING_RULES["dp"]
        self.step, self.state = build_eval_step(
            model, state_shardings_fn=lambda tree: sharding.tree_shardings(tree, self.mesh, rules)
        )
        self.place = BatchPlacer(self.mesh, pad_id=pad_id)

    def logits(self, arrays: data_lib.TokenArrays) -> np.ndarray:
        """float32 [n] logits of every example of ``arrays``, in row order."""
        plan = data_lib.batch_plan(
            arrays.lengths,
            global_batch_size=self.batch_size,
            boundaries=self.boundaries,
            shuffle=False,
            seed=0,
            epoch=0,
        )
        out = np.full(len(arrays), np.nan, dtype=np.float32)
        with jax.set_mesh(self.mesh):
            for spec in plan:
                logits = np.asarray(self.step.eval_step(self.state, self.place(arrays, spec)))
                real = spec.indices >= 0
                out[spec.indices[real]] = logits[real]
        return out

    def evaluate(self, split) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """`jaxsent.training.loop.evaluate` of a `loop.Split` (training's evaluation code)."""
        from jaxsent.training.loop import evaluate

        with jax.set_mesh(self.mesh):
            return evaluate(
                self.step,
                self.state,
                split,
                batch_size=self.batch_size,
                boundaries=self.boundaries,
                place=self.place,
            )


def probabilities(logits, temperature: float | None) -> np.ndarray:
    """float32 P(positive) = sigmoid(logits / temperature); sigmoid(logits) when it is None."""
    logits = jnp.asarray(logits, jnp.float32)
    if temperature is not None:
        logits = calibration.apply_temperature(logits, temperature)
    return np.asarray(jax.nn.sigmoid(logits), dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Per-text predictions.

    Attributes:
      logits: float32 [n], the model's logits (no temperature).
      probabilities: float32 [n], P(positive) (with the temperature, when one is applied).
      labels: int64 [n], 1 (positive) iff ``logit > 0``; a temperature never changes it.
      num_tokens: int32 [n], tokens the model read (special tokens included).
      truncated: bool [n], whether the text was longer than ``max_length`` tokens.
    """

    logits: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    num_tokens: np.ndarray
    truncated: np.ndarray


class Predictor:
    """Classifies texts with a `TrainedModel`.

    Args:
      trained: the model.
      batch_size: rows per batch; default the run's evaluation batch size.
      calibrated: apply the run's fitted temperature to the probabilities (when it has one).
    """

    def __init__(
        self, trained: TrainedModel, *, batch_size: int | None = None, calibrated: bool = True
    ):
        self.trained = trained
        settings = trained.settings
        self.temperature = settings.temperature if calibrated else None
        self.scorer = Scorer(
            trained.model,
            batch_size=batch_size or settings.batch_size,
            boundaries=settings.bucket_boundaries,
            pad_id=trained.tokenizer.pad_token_id or 0,
        )

    def predict(
        self, texts: Sequence[object], *, what: str = "text", first_row: int = 0
    ) -> Predictions:
        """Predictions for ``texts``.

        Args:
          texts: the texts (strings, not empty once cleaned).
          what, first_row: how errors name a text: ``f"{what} {first_row + i}"``.

        Returns:
          The `Predictions`, in the order of ``texts``.

        Raises:
          ValueError: a text that is missing, not a string or empty; the message names the
            first few.
        """
        settings = self.trained.settings
        bad = [
            (i, problem, text)
            for i, text in enumerate(texts)
            if (problem := data_lib.text_problem(text, clean_markup=settings.clean_markup))
        ]
        if bad:
            shown = "; ".join(
                f"{what} {first_row + i}: {problem} ({_preview(text)})"
                for i, problem, text in bad[:_BAD_TEXTS_SHOWN]
            )
            more = (
                f"; and {len(bad) - _BAD_TEXTS_SHOWN} more" if len(bad) > _BAD_TEXTS_SHOWN else ""
            )
            raise ValueError(f"{len(bad)} text(s) cannot be classified: {shown}{more}")
        if not texts:
            empty = np.zeros(0, np.float32)
            return Predictions(
                empty, empty, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)
            )
        encoded = data_lib.encode_texts(
            self.trained.tokenizer,
            list(texts),
            max_length=settings.max_length,
            clean_markup=settings.clean_markup,
            truncation=settings.truncation,
            head_fraction=settings.head_fraction,
        )
        logits = self.scorer.logits(data_lib.token_arrays(encoded.input_ids))
        return Predictions(
            logits=logits,
            probabilities=probabilities(logits, self.temperature),
            labels=(logits > 0).astype(np.int64),
            num_tokens=encoded.lengths,
            truncated=encoded.truncated,
        )


def _preview(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
):
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
    from jaxsent.training.loop import Split

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
        predictions["lengths"],
        temperature=trained.settings.temperature,
    )
    results["best_step"] = trained.best_step
    return results


PREDICTION_COLUMNS = ("logit", "probability", "label", "tokens", "truncated")


def _text_column(schema, requested: str | None, argument: str) -> str:
    names = schema.names
    if requested is not None:
        if requested not in names:
            raise ValueError(f"text column {requested!r} is not a column of {argument}: {names}")
        return requested
    for name in TEXT_COLUMN_CANDIDATES:
        if name in names:
            return name
    raise ValueError(
        f"{argument} has no text column named {', '.join(TEXT_COLUMN_CANDIDATES)}; its "
        f"columns are {names}: name the text column"
    )


def predict_file(
    predictor: Predictor,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    text_column: str | None = None,
    chunk_rows: int = 8192,
    prefix: str = "",
    progress: bool = True,
) -> int:
    """Classifies every row of a CSV, JSON Lines or Parquet file, streaming it in chunks.

    The output (``.parquet``, ``.csv`` or ``.jsonl``) holds the input's columns and rows, in
    order, plus :data:`PREDICTION_COLUMNS` (each name after ``prefix``): ``logit`` (float32),
    ``probability`` (float32, P(positive)), ``label`` (int64, 1 = positive), ``tokens`` (int32)
    and ``truncated`` (bool). Memory is bounded by ``chunk_rows``, whatever the file's size;
    the output appears only once every row is written.

    Args:
      predictor: the model.
      input_path, output_path: local files; the suffixes give the formats.
      text_column: the text column; default the first of ``text``, ``sentence``, ``review``,
        ``content`` present.
      chunk_rows: rows read, scored and written at a time.
      prefix: prepended to the added column names.
      progress: show a progress bar on stderr.

    Returns:
      The number of rows written.

    Raises:
      ValueError: a missing or non-text column, added columns that exist already, a text that
        cannot be classified (named by its row, counted from 0), a file that does not read.
      FileNotFoundError: no input file, or no folder for the output.
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    from jaxsent.data import tables

    if os.path.abspath(os.fspath(output_path)) == os.path.abspath(os.fspath(input_path)):
        raise ValueError(f"the output {os.fspath(output_path)!r} must not be the input")
    tables.table_format(output_path, tables.OUTPUT_FORMATS, argument="output")
    column = _text_column(tables.read_schema(input_path, argument="input"), text_column, "input")
    stream = tables.read_chunks(
        input_path, chunk_rows=chunk_rows, string_columns=[column], argument="input"
    )
    kind = stream.schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"input column {column!r} holds {kind} values, not text")
    added = [prefix + name for name in PREDICTION_COLUMNS]
    clash = sorted(set(added) & set(stream.schema.names))
    if clash:
        raise ValueError(
            f"the input already has column(s) {clash}; choose a prefix for the predictions' "
            "columns (e.g. 'pred_')"
        )
    types = (pa.float32(), pa.float32(), pa.int64(), pa.int32(), pa.bool_())
    fields = [pa.field(name, kind) for name, kind in zip(added, types, strict=True)]
    schema = stream.schema
    for field in fields:
        schema = schema.append(field)
    rows = 0
    with (
        tqdm(total=stream.num_rows, unit=" rows", desc="predict", disable=not progress) as bar,
        tables.AtomicTableWriter(output_path, schema, argument="output") as writer,
    ):
        for chunk in stream.chunks:
            out = predictor.predict(
                chunk.column(column).to_pylist(), what=f"input {column!r} row", first_row=rows
            )
            values = (out.logits, out.probabilities, out.labels, out.num_tokens, out.truncated)
            for field, value in zip(fields, values, strict=True):
                chunk = chunk.append_column(field, pa.array(value, type=field.type))
            writer.write(chunk)
            rows += chunk.num_rows
            bar.update(chunk.num_rows)
    return rows
