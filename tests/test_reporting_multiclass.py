"""jaxsent.reporting for K classes: the predictions round trip, the figures, the report folder."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread
from scipy.special import softmax

from jaxsent import reporting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["very negative", "negative", "neutral", "positive", "very positive"]


@pytest.fixture(scope="module")
def eval_batch():
    """A padded 5-class evaluation batch: 40 real rows, 8 padding rows holding NaN and -1."""
    rng = np.random.default_rng(0)
    n, k = 48, 5
    labels = rng.integers(0, k, size=n).astype(np.int32)
    logits = (rng.normal(scale=2.0, size=(n, k)) + 2.5 * np.eye(k)[labels]).astype(np.float32)
    logits[5] = [1.0, 3.0, 3.0, -1.0, 0.0]  # a tie for the top: class 1 is predicted
    where = np.arange(n) < 40
    logits[~where] = np.nan
    labels[~where] = -1
    ids = np.where(where, np.arange(100, 100 + n), -1)
    return ids, logits, labels, where


@pytest.mark.parametrize("class_names", [None, NAMES])
def test_predictions_round_trip(tmp_path, eval_batch, class_names):
    ids, logits, labels, where = eval_batch
    lengths = np.arange(len(ids)) * 3 + 1
    path = reporting.save_predictions(
        tmp_path / "sub" / "predictions.parquet",
        example_ids=np.array([f"test-{i}" for i in ids]),
        logits=logits,
        labels=labels,
        lengths=lengths,
        where=where,
        class_names=class_names,
    )
    names = class_names or ["0", "1", "2", "3", "4"]
    columns = [
        *reporting.MULTICLASS_PREDICTION_COLUMNS,
        *(f"prob_{name}" for name in names),
        *(f"logit_{name}" for name in names),
        "length",
    ]
    assert pq.read_table(path).column_names == columns
    got = reporting.read_predictions(path)
    real = logits[where]
    np.testing.assert_array_equal(got["example_id"], [f"test-{i}" for i in ids[where]])
    np.testing.assert_array_equal(got["label"], labels[where])
    np.testing.assert_array_equal(got["logits"], real)  # float32 stored exactly
    assert got["logits"].dtype == np.float32 and got["logits"].shape == (40, 5)
    np.testing.assert_array_equal(got["class_names"], names)
    pred = np.argmax(real, axis=1)
    np.testing.assert_array_equal(got["pred"], pred)
    assert got["pred"][5] == 1
    p = softmax(real.astype(np.float64), axis=1)
    # float32 softmax of float32 logits: |z| < 10 here, so within a few ulps of float64.
    np.testing.assert_allclose(got["probs"], p, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(got["prob"], got["probs"][np.arange(40), pred])
    np.testing.assert_array_equal(got["length"], lengths[where])
    assert "logit" not in got


def test_binary_files_read_as_before(tmp_path):
    path = reporting.save_predictions(
        tmp_path / "p.parquet", example_ids=[1, 2], logits=[0.5, -1.0], labels=[1, 0]
    )
    got = reporting.read_predictions(path)
    assert list(got) == list(reporting.PREDICTION_COLUMNS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(labels=[0, 5]), r"`labels`.*\[0, 3\).*5"),
        (dict(labels=[0, 1.5]), "`labels`.*1.5"),
        (dict(labels=[0]), "`labels`"),
        (dict(example_ids=[1, 1]), "`example_ids`.*1"),
        (dict(logits=np.zeros((3, 3))), r"`logits`.*\[N, K\]"),
        (dict(logits=np.zeros((2, 1))), "K >= 2"),
        (dict(class_names=["a", "b"]), "`class_names`.*3"),
        (dict(class_names=["a", "b", "a"]), "unique"),
    ],
)
def test_save_predictions_rejects_bad_input(tmp_path, kwargs, message):
    args = dict(example_ids=[1, 2], logits=np.zeros((2, 3)), labels=[0, 2]) | kwargs
    with pytest.raises(ValueError, match=message):
        reporting.save_predictions(tmp_path / "p.parquet", **args)


def test_binary_logits_reject_class_names(tmp_path):
    with pytest.raises(ValueError, match="`class_names`.*binary"):
        reporting.save_predictions(
            tmp_path / "p.parquet",
            example_ids=[1, 2],
            logits=[0.0, 1.0],
            labels=[0, 1],
            class_names=["neg", "pos"],
        )


def assert_png(path, min_colours=10):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    # Not a blank canvas: bars, cells and text put many distinct colours on it.
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > min_colours
    return image


def test_figures_are_drawn(tmp_path, eval_batch):
    _, logits, labels, where = eval_batch
    kwargs = dict(title="sst5 test", where=where)
    assert_png(reporting.plot_reliability_diagram(logits, labels, tmp_path / "r.png", **kwargs))
    classwise = assert_png(
        reporting.plot_classwise_reliability(
            logits, labels, tmp_path / "c.png", class_names=NAMES, **kwargs
        )
    )
    confusion = assert_png(
        reporting.plot_confusion_matrix(
            logits, labels, tmp_path / "m.png", class_names=NAMES, **kwargs
        )
    )
    assert classwise.shape[1] > classwise.shape[0]  # five panels side by side
    assert confusion.shape[1] > confusion.shape[0]  # counts and row-normalised side by side
    with pytest.raises(ValueError, match="`positive_class=True`"):
        reporting.plot_reliability_diagram(
            logits, labels, tmp_path / "x.png", positive_class=True, where=where
        )


def test_write_report_writes_the_k_class_files(tmp_path, eval_batch):
    ids, logits, labels, where = eval_batch
    predictions = {"example_ids": ids, "logits": logits, "labels": labels, "where": where}
    results = {"accuracy": 0.5, "n_examples": 40, "class_names": NAMES}
    directory = tmp_path / "new" / "dir"
    reporting.write_report(directory, results, predictions, title="t")
    assert json.loads((directory / "eval_results.json").read_text()) == results
    got = reporting.read_predictions(directory / "predictions.parquet")
    np.testing.assert_array_equal(got["class_names"], NAMES)  # taken from the results
    np.testing.assert_array_equal(got["logits"], logits[where])
    for name in ("reliability.png", "reliability_classwise.png", "confusion_matrix.png"):
        assert (directory / name).read_bytes().startswith(PNG_MAGIC), name
    # Names given with the predictions win over the results'.
    other = ["a", "b", "c", "d", "e"]
    reporting.write_report(directory, results, predictions | {"class_names": other}, title="t")
    got = reporting.read_predictions(directory / "predictions.parquet")
    np.testing.assert_array_equal(got["class_names"], other)
