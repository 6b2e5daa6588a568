"""Classifying every row of a table file of any size, streamed in chunks."""

from __future__ import annotations

import os

import numpy as np

from jaxsent.data.labels import BINARY, ClassLabels
from jaxsent.data.sources import TEXT_COLUMN_CANDIDATES
from jaxsent.inference._scoring import Predictions, Predictor

#: The columns added for a two-class model (`prediction_columns`).
PREDICTION_COLUMNS = ("logit", "probability", "label", "tokens", "truncated")


def prediction_columns(classes: ClassLabels = BINARY, *, logits: bool = False) -> list[str]:
    """The names of the columns `predict_file` adds (before any prefix), in order.

    Two classes: :data:`PREDICTION_COLUMNS`. K > 2 classes: ``label`` (the class id),
    ``label_name``, ``probability`` (of the predicted class), ``probability_<name>`` for each
    class, with ``logits`` also ``logit_<name>`` for each class, then ``tokens`` and
    ``truncated``. ``<name>`` is the class name verbatim, spaces included
    (``probability_very negative``), as in a run's ``predictions.parquet`` (``prob_<name>``);
    class names are distinct, so the columns are too.

    Args:
      classes: the model's classes.
      logits: K classes: add the logit columns (two-class files always have ``logit``).
    """
    if classes.num_classes == 2:
        return list(PREDICTION_COLUMNS)
    return [
        "label",
        "label_name",
        "probability",
        *(f"probability_{name}" for name in classes.names),
        *((f"logit_{name}" for name in classes.names) if logits else ()),
        "tokens",
        "truncated",
    ]


def _column_types(pa, classes: ClassLabels, *, logits: bool) -> list:
    if classes.num_classes == 2:
        return [pa.float32(), pa.float32(), pa.int64(), pa.int32(), pa.bool_()]
    per_class = [pa.float32()] * (classes.num_classes * (2 if logits else 1))
    return [pa.int64(), pa.string(), pa.float32(), *per_class, pa.int32(), pa.bool_()]


def _column_values(out: Predictions, classes: ClassLabels, *, logits: bool) -> list:
    if classes.num_classes == 2:
        return [out.logits, out.probabilities, out.labels, out.num_tokens, out.truncated]
    names = np.asarray(classes.names, dtype=object)
    predicted = np.take_along_axis(out.probabilities, out.labels[:, None], axis=1)[:, 0]
    per_class = [out.probabilities[:, k] for k in range(classes.num_classes)]
    if logits:
        per_class += [out.logits[:, k] for k in range(classes.num_classes)]
    return [out.labels, names[out.labels], predicted, *per_class, out.num_tokens, out.truncated]


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
    logits: bool = False,
) -> int:
    """Classifies every row of a CSV, JSON Lines or Parquet file, streaming it in chunks.

    The output (``.parquet``, ``.csv`` or ``.jsonl``) holds the input's columns and rows, in
    order, plus the columns of `prediction_columns` (each name after ``prefix``). Two classes
    (:data:`PREDICTION_COLUMNS`): ``logit`` (float32), ``probability`` (float32, P(positive)),
    ``label`` (int64, 1 = positive), ``tokens`` (int32) and ``truncated`` (bool). K > 2
    classes: ``label`` (int64, the class id), ``label_name`` (string), ``probability``
    (float32, of the predicted class), ``probability_<class name>`` (float32, one per class),
    with ``logits`` ``logit_<class name>`` (float32, one per class), then ``tokens`` and
    ``truncated``. Memory is bounded by ``chunk_rows``, whatever the file's size; the output
    appears only once every row is written.

    Args:
      predictor: the model (its ``classes`` name the K-class columns; binary without).
      input_path, output_path: local files; the suffixes give the formats.
      text_column: the text column; default the first of ``text``, ``sentence``, ``review``,
        ``content`` present.
      chunk_rows: rows read, scored and written at a time.
      prefix: prepended to the added column names.
      progress: show a progress bar on stderr.
      logits: K classes: add the ``logit_<class name>`` columns.

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
    classes = getattr(predictor, "classes", BINARY)
    added = [prefix + name for name in prediction_columns(classes, logits=logits)]
    clash = sorted(set(added) & set(stream.schema.names))
    if clash:
        raise ValueError(
            f"the input already has column(s) {clash}; choose a prefix for the predictions' "
            "columns (e.g. 'pred_')"
        )
    types = _column_types(pa, classes, logits=logits)
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
            values = _column_values(out, classes, logits=logits)
            for field, value in zip(fields, values, strict=True):
                chunk = chunk.append_column(field, pa.array(value, type=field.type))
            writer.write(chunk)
            rows += chunk.num_rows
            bar.update(chunk.num_rows)
    return rows
