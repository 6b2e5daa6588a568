"""Streaming tables: chunks of bounded size that add up to the file, writes that are whole or
absent, errors that name the file; and `token_arrays` for texts held in memory."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from jaxsent.data import make_batch, token_arrays
from jaxsent.data.batching import BatchSpec
from jaxsent.data.tables import AtomicTableWriter, _rechunk, read_chunks, read_schema

ROWS = 103
TEXTS = [f"review {i}: line one\nline two, with a comma and <br /> markup é" for i in range(ROWS)]


def _table():
    return pa.table(
        {
            "id": pa.array(range(ROWS), pa.int64()),
            "text": TEXTS,
            "score": pa.array(np.linspace(0, 1, ROWS), pa.float64()),
        }
    )


def _write(table, path):
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=10)  # several row groups
    elif path.suffix == ".csv":
        pa_csv.write_csv(table, path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_chunks_are_bounded_and_add_up_to_the_file(tmp_path, suffix):
    path = _write(_table(), tmp_path / f"in{suffix}")
    stream = read_chunks(path, chunk_rows=25, string_columns=["text"])
    chunks = list(stream.chunks)
    assert [c.num_rows for c in chunks] == [25, 25, 25, 25, 3]
    whole = pa.concat_tables(chunks)
    assert whole.column_names == ["id", "text", "score"]  # the file's order
    assert whole.column("text").to_pylist() == TEXTS  # quoted line breaks, commas, unicode
    assert whole.column("id").to_pylist() == list(range(ROWS))
    assert stream.num_rows == (ROWS if suffix == ".parquet" else None)


def test_rechunk_regroups_batches_of_any_size():
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 40, size=30)
    schema = pa.schema([("x", pa.int64())])
    start = np.concatenate([[0], np.cumsum(sizes)])
    batches = [
        pa.record_batch([pa.array(range(a, b), pa.int64())], schema=schema)
        for a, b in zip(start[:-1], start[1:], strict=True)
    ]
    chunks = list(_rechunk(batches, schema, 17))
    total = int(sizes.sum())
    assert [c.num_rows for c in chunks] == [17] * (total // 17) + (
        [total % 17] if total % 17 else []
    )
    assert pa.concat_tables(chunks).column("x").to_pylist() == list(range(total))


def test_numbers_in_a_csv_text_column_are_read_as_text(tmp_path):
    path = tmp_path / "digits.csv"
    path.write_text("id,text\n1,10\n2,007\n")
    assert read_schema(path).field("text").type == pa.int64()  # as inferred from the file
    chunks = list(read_chunks(path, chunk_rows=10, string_columns=["text"]).chunks)
    assert chunks[0].column("text").to_pylist() == ["10", "007"]


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"--input='.*x.txt': unsupported file type '.txt'"):
        read_chunks(tmp_path / "x.txt", chunk_rows=10)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_chunks(tmp_path / "missing.csv", chunk_rows=10)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"cannot read --input='.*garbage.parquet' as parquet"):
        read_chunks(garbage, chunk_rows=10)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "fine"}\n{"text": 5}\n')
    with pytest.raises(ValueError, match=r"one JSON object per line.*Column\(/text\)"):
        list(read_chunks(mixed, chunk_rows=10, string_columns=["text"]).chunks)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_writer_output_reads_back(tmp_path, suffix):
    table = _table()
    path = tmp_path / f"out{suffix}"
    with AtomicTableWriter(path, table.schema) as writer:
        for chunk in table.to_batches(max_chunksize=40):
            writer.write(pa.Table.from_batches([chunk]))
    back = pa.concat_tables(read_chunks(path, chunk_rows=500, string_columns=["text"]).chunks)
    assert back.column("text").to_pylist() == TEXTS
    assert back.column("id").to_pylist() == list(range(ROWS))
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_a_failed_write_leaves_the_earlier_file_and_no_partial(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("earlier\n")
    table = _table()
    with pytest.raises(RuntimeError, match="stop"):
        with AtomicTableWriter(path, table.schema) as writer:
            writer.write(table.slice(0, 10))
            raise RuntimeError("stop")
    assert path.read_text() == "earlier\n"
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]
    with pytest.raises(ValueError, match="chunk schema"):
        with AtomicTableWriter(path, table.schema) as writer:
            writer.write(table.select(["id"]))
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]
    with pytest.raises(FileNotFoundError, match="no folder"):
        AtomicTableWriter(tmp_path / "nope" / "out.csv", table.schema)


def test_token_arrays_batch_like_prepared_data():
    ids = [[101, 7, 8, 102], [101, 102], [101, 5, 6, 7, 9, 102]]
    arrays = token_arrays(ids)
    np.testing.assert_array_equal(arrays.lengths, [4, 2, 6])
    np.testing.assert_array_equal(arrays.example_ids, [0, 1, 2])
    np.testing.assert_array_equal(arrays.labels, [0, 0, 0])
    batch = make_batch(arrays, BatchSpec(np.array([2, 0, 1, -1]), seq_len=8), pad_id=0)
    expected = np.zeros((4, 8), np.int32)
    for row, example in enumerate([2, 0, 1]):
        expected[row, : len(ids[example])] = ids[example]
    np.testing.assert_array_equal(batch["input_ids"], expected)
    np.testing.assert_array_equal(token_arrays(ids, labels=[1, 0, 1]).labels, [1, 0, 1])
    with pytest.raises(ValueError, match=r"labels has shape \(2,\)"):
        token_arrays(ids, labels=[1, 0])
