"""jaxsent.reporting: predictions round trip and the reliability diagram PNG."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread
from scipy.special import expit

from jaxsent import reporting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def eval_batch():
    """A padded evaluation batch: 9 real rows, 3 padding rows holding NaN and -1."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=12).astype(np.float32)
    labels = (rng.random(12) < expit(logits)).astype(np.int32)
    where = np.arange(12) < 9
    logits[~where] = np.nan
    labels[~where] = -1
    ids = np.where(where, np.arange(100, 112), -1)
    return ids, logits, labels, where


@pytest.mark.parametrize("string_ids", [False, True])
def test_predictions_round_trip(tmp_path, eval_batch, string_ids):
    ids, logits, labels, where = eval_batch
    if string_ids:
        ids = np.array([f"test-{i}" for i in ids])
    path = reporting.save_predictions(
        tmp_path / "sub" / "predictions.parquet",
        example_ids=ids,
        logits=logits,
        labels=labels,
        where=where,
    )
    got = reporting.read_predictions(path)
    assert pq.read_table(path).column_names == list(reporting.PREDICTION_COLUMNS)
    np.testing.assert_array_equal(got["example_id"], ids[where])
    np.testing.assert_array_equal(got["label"], labels[where])
    np.testing.assert_array_equal(got["logit"], logits[where])  # float32 stored exactly
    assert got["logit"].dtype == np.float32
    np.testing.assert_allclose(got["prob"], expit(logits[where].astype(np.float64)), rtol=2e-7)
    np.testing.assert_array_equal(got["pred"], (logits[where] > 0).astype(int))


def test_predictions_keep_lengths(tmp_path, eval_batch):
    ids, logits, labels, where = eval_batch
    lengths = np.arange(len(ids)) * 7 + 3
    path = reporting.save_predictions(
        tmp_path / "p.parquet",
        example_ids=ids,
        logits=logits,
        labels=labels,
        lengths=lengths,
        where=where,
    )
    got = reporting.read_predictions(path)
    np.testing.assert_array_equal(got["length"], lengths[where])
    assert got["length"].dtype == np.int64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(example_ids=[1, 2], logits=[0.0, 1.0], labels=[0, 1], lengths=[3]), "`lengths`"),
        (dict(example_ids=[1, 1], logits=[0.0, 1.0], labels=[0, 1]), "`example_ids`.*1"),
        (dict(example_ids=[1, 2], logits=[0.0, 1.0], labels=[0, 2]), "`labels`.*2"),
        (dict(example_ids=[1, 2], logits=[0.0], labels=[0, 1]), "`logits`"),
        (dict(example_ids=[1, 2], logits=[0.0, 1.0], labels=[0, 1], where=[1, 0]), "`where`"),
    ],
)
def test_save_predictions_rejects_bad_input(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        reporting.save_predictions(tmp_path / "p.parquet", **kwargs)


@pytest.mark.parametrize("positive_class", [False, True])
def test_reliability_diagram_writes_png(tmp_path, eval_batch, positive_class):
    _, logits, labels, where = eval_batch
    path = reporting.plot_reliability_diagram(
        logits,
        labels,
        tmp_path / "plots" / "reliability.png",
        num_bins=15,
        title="test split",
        where=where,
        positive_class=positive_class,
    )
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    # Not a blank canvas: the bars and text put many distinct colours on it.
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10


def test_write_report_writes_the_three_files(tmp_path, eval_batch):
    ids, logits, labels, where = eval_batch
    predictions = {"example_ids": ids[where], "logits": logits[where], "labels": labels[where]}
    results = {"accuracy": 0.5, "n_examples": 9, "notes": ["a note"]}
    reporting.write_report(tmp_path / "new" / "dir", results, predictions, title="t")
    directory = tmp_path / "new" / "dir"
    assert json.loads((directory / "eval_results.json").read_text()) == results
    got = reporting.read_predictions(directory / "predictions.parquet")
    np.testing.assert_array_equal(got["example_id"], ids[where])
    np.testing.assert_array_equal(got["logit"], logits[where])
    assert (directory / "reliability.png").read_bytes().startswith(PNG_MAGIC)
