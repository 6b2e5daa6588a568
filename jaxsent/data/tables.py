"""Tables of any size in and out: CSV, JSON Lines or Parquet read in chunks of rows, and written
whole or not at all.

Reading streams the file (`pyarrow.parquet.ParquetFile.iter_batches`, `pyarrow.csv.open_csv`,
`pyarrow.json.open_json`), so memory stays bounded by the chunk size whatever the number of rows.
CSV and JSON column types are inferred from the first block of the file, as pyarrow's streaming
readers do; columns named in ``string_columns`` are read as strings. Writing goes to a hidden
temporary file beside the output, moved over it only when every row is written: an interrupted
run leaves no output that looks whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

__all__ = [
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "AtomicTableWriter",
    "TableChunks",
    "read_chunks",
    "read_schema",
    "table_format",
]

INPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
OUTPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}


def table_format(path: str | os.PathLike, formats: dict[str, str], *, argument: str) -> str:
    """The format of ``path`` from its suffix; ``argument`` names it in the error.

    Raises:
      ValueError: a suffix that is not a key of ``formats``.
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in formats:
        raise ValueError(
            f"{argument}={os.fspath(path)!r}: unsupported file type {suffix or '(none)'!r}; "
            f"expected one of {', '.join(formats)}"
        )
    return formats[suffix]


@dataclasses.dataclass
class TableChunks:
    """A table read in chunks.

    Attributes:
      schema: the columns and their types.
      num_rows: the number of rows when the format records it (Parquet), else None.
      chunks: the rows in order, at most ``chunk_rows`` per `pyarrow.Table`.
    """

    schema: pa.Schema
    num_rows: int | None
    chunks: Iterator[pa.Table]


def _csv_reader(path: str, string_columns: Sequence[str]):
    return pa_csv.open_csv(
        path,
        # Reviews may hold line breaks inside quoted fields.
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in string_columns}
        ),
    )


def _json_reader(path: str, string_columns: Sequence[str]):
    schema = pa.schema([(name, pa.string()) for name in string_columns])
    return pa_json.open_json(
        path,
        parse_options=pa_json.ParseOptions(
            explicit_schema=schema if string_columns else None,
            unexpected_field_behavior="infer",
        ),
    )


def _open(path: str, fmt: str, string_columns: Sequence[str], chunk_rows: int):
    """(schema, num_rows or None, iterator of record batches)."""
    if fmt == "parquet":
        parquet = pq.ParquetFile(path)
        return (
            parquet.schema_arrow,
            parquet.metadata.num_rows,
            parquet.iter_batches(batch_size=chunk_rows),
        )
    if fmt == "csv":
        reader = _csv_reader(path, string_columns)
        return reader.schema, None, iter(reader)
    reader = _json_reader(path, string_columns)
    # An explicit schema puts its columns first: keep the file's order.
    order = _json_reader(path, ()).schema.names if string_columns else reader.schema.names
    schema = pa.schema([reader.schema.field(name) for name in order])
    return schema, None, (batch.select(order) for batch in reader)


def _error(argument: str, path: str, fmt: str, err: Exception) -> ValueError:
    hint = " (one JSON object per line)" if fmt == "json" else ""
    return ValueError(f"cannot read {argument}={path!r} as {fmt}{hint}: {err}")


def read_schema(path: str | os.PathLike, *, argument: str = "--input") -> pa.Schema:
    """The columns of a table file (for CSV and JSON, as inferred from its first block).

    Raises:
      ValueError: an unsupported suffix, or a file that does not read (the message names
        ``argument`` and the file).
      FileNotFoundError: no such file.
    """
    path = os.fspath(path)
    fmt = table_format(path, INPUT_FORMATS, argument=argument)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument}={path!r}: no such file")
    try:
        return _open(path, fmt, (), 1)[0]
    except (pa.ArrowException, OSError) as err:
        raise _error(argument, path, fmt, err) from err


def read_chunks(
    path: str | os.PathLike,
    *,
    chunk_rows: int,
    string_columns: Sequence[str] = (),
    argument: str = "--input",
) -> TableChunks:
    """Streams a CSV, JSON Lines or Parquet file in chunks of ``chunk_rows`` rows.

    Args:
      path: the file; its suffix gives the format (see :data:`INPUT_FORMATS`).
      chunk_rows: rows per chunk (the last may hold fewer).
      string_columns: CSV / JSON columns to read as strings whatever they look like.
      argument: how errors name the file (e.g. the command-line flag).

    Returns:
      The `TableChunks`. A parse error part-way raises `ValueError` from the iteration.

    Raises:
      ValueError, FileNotFoundError: as `read_schema`.
    """
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    path = os.fspath(path)
    fmt = table_format(path, INPUT_FORMATS, argument=argument)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument}={path!r}: no such file")
    try:
        schema, num_rows, batches = _open(path, fmt, string_columns, chunk_rows)
    except (pa.ArrowException, OSError) as err:
        raise _error(argument, path, fmt, err) from err

    def chunks() -> Iterator[pa.Table]:
        try:
            yield from _rechunk(batches, schema, chunk_rows)
        except (pa.ArrowException, OSError) as err:
            raise _error(argument, path, fmt, err) from err

    return TableChunks(schema=schema, num_rows=num_rows, chunks=chunks())


def _rechunk(batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``rows`` rows (the last one fewer) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending, schema=schema)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending, schema=schema)


class AtomicTableWriter:
    """Writes a table chunk by chunk; the file appears under its name only once complete.

    Use as a context manager: leaving the block normally commits (moves the temporary file
    over ``path``); an exception removes the temporary file and leaves any earlier ``path``
    untouched.

    Args:
      path: the output (a local file); its suffix gives the format (:data:`OUTPUT_FORMATS`).
      schema: the columns of every chunk.
      argument: how errors name the file.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, *, argument: str = "--output"):
        self.path = os.path.abspath(os.fspath(path))
        self.format = table_format(self.path, OUTPUT_FORMATS, argument=argument)
        self.schema = schema
        directory, name = os.path.split(self.path)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{argument}={os.fspath(path)!r}: no folder {directory!r}")
        fd, self.temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=directory)
        os.close(fd)
        if self.format == "parquet":
            self._writer = pq.ParquetWriter(self.temporary, schema)
        elif self.format == "csv":
            self._writer = pa_csv.CSVWriter(self.temporary, schema)
        else:
            self._writer = open(self.temporary, "w", encoding="utf-8")
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Appends ``table`` (its schema must be the writer's)."""
        if not table.schema.equals(self.schema):
            raise ValueError(f"chunk schema {table.schema} differs from {self.schema}")
        if self.format == "jsonl":
            for row in table.to_pylist():
                self._writer.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        else:
            self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> str:
        """Closes the file and moves it into place; returns the path."""
        self._writer.close()
        os.replace(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        """Closes and removes the temporary file."""
        try:
            self._writer.close()
        finally:
            if os.path.exists(self.temporary):
                os.remove(self.temporary)

    def __enter__(self) -> AtomicTableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
