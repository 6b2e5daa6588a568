"""The K-class final report: its keys, per-class metrics against scikit-learn, temperature-scaled
metrics, length strata against the metrics of the selected rows, and the binary report left as
it was."""

import json

import numpy as np
import pytest
from scipy.special import softmax
from sklearn import metrics as skm

from jaxsent import calibration, evaluation
from jaxsent import multiclass_metrics as MM

EPS32 = float(np.finfo(np.float32).eps)
NAMES = ["very negative", "negative", "neutral", "positive", "very positive"]


@pytest.fixture(scope="module")
def predictions():
    """SST-5-like: 5 ordered classes, long examples easier, overconfident logits."""
    rng = np.random.default_rng(0)
    n = 503
    lengths = rng.integers(3, 60, size=n)
    labels = rng.integers(0, 5, size=n)
    centre = labels + rng.normal(0, 1.5, size=n) * (20 / (lengths + 10))
    logits = -1.5 * (np.arange(5)[None, :] - centre[:, None]) ** 2
    return logits.astype(np.float32), labels, lengths


SCALARS = {*MM.SCALAR_METRICS, "n_examples"}
TRAILER = {"class_names", "ordinal", "per_class", "confusion_matrix", "length_strata"}


def test_report_keys(predictions):
    logits, labels, lengths = predictions
    plain = evaluation.evaluation_report(logits, labels, lengths)
    assert set(plain) == SCALARS | TRAILER
    scaled_keys = {"temperature", "nll_ts", "brier_ts", "ece_ts", "classwise_ece_ts"}
    full = evaluation.evaluation_report(logits, labels, lengths, temperature=2.0, ordinal=True)
    assert set(full) == SCALARS | set(MM.ORDINAL_METRICS) | scaled_keys | TRAILER
    assert full["ordinal"] is True and plain["ordinal"] is False
    assert plain["class_names"] == ["0", "1", "2", "3", "4"]
    assert list(plain["per_class"]) == plain["class_names"]
    # JSON as it is written, and read back equal.
    assert json.loads(json.dumps(full)) == full


def test_report_values_match_sklearn_and_the_metrics(predictions):
    logits, labels, lengths = predictions
    temperature = float(calibration.fit_temperature(logits, labels))
    report = evaluation.evaluation_report(
        logits, labels, lengths, temperature=temperature, class_names=NAMES, ordinal=True
    )
    raw = MM.multiclass_classification_metrics(logits, labels, ordinal=True)
    scaled = MM.multiclass_classification_metrics(logits / temperature, labels)
    # The report runs one jitted program, the eager call another: fused alike up to an ulp.
    for key in (*MM.SCALAR_METRICS, *MM.ORDINAL_METRICS):
        assert report[key] == pytest.approx(float(raw[key]), rel=4 * EPS32), key
    for key in ("nll", "brier", "ece", "classwise_ece"):
        # apply_temperature and the division here round alike; the metrics then agree.
        assert report[f"{key}_ts"] == pytest.approx(float(scaled[key]), rel=4 * EPS32), key
    assert report["temperature"] == temperature
    assert report["nll_ts"] < report["nll"]  # overconfident logits: T > 1 helps
    assert report["n_examples"] == len(labels)
    pred = np.argmax(logits, axis=1)
    assert report["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()
    sk = skm.classification_report(labels, pred, target_names=NAMES, output_dict=True)
    for name in NAMES:
        got = report["per_class"][name]
        assert got["support"] == sk[name]["support"]
        assert isinstance(got["support"], int)
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert got[key] == pytest.approx(sk[name][sk_key], rel=EPS32), (name, key)
    assert report["macro_f1"] == pytest.approx(sk["macro avg"]["f1-score"], rel=7 * EPS32)
    assert report["accuracy"] == pytest.approx(sk["accuracy"], rel=EPS32)


def test_length_strata_are_the_metrics_of_each_stratum(predictions):
    logits, labels, lengths = predictions
    got = evaluation.length_strata(logits, labels, lengths)
    edges, stratum = evaluation.length_stratum_index(lengths)
    assert got["edges"] == [float(e) for e in edges]
    for k, row in enumerate(got["strata"]):
        member = stratum == k
        assert row["n_examples"] == member.sum()
        want = MM.multiclass_classification_metrics(logits[member], labels[member])
        z = logits[member].astype(np.float64)
        p = softmax(z, axis=1)
        assert row["accuracy"] == pytest.approx(float(want["accuracy"]), rel=EPS32)
        # float32 against the float64 statements: the tolerances of tests/test_metrics_multiclass.
        n = int(member.sum())
        nll = skm.log_loss(labels[member], p, labels=range(5))
        assert row["nll"] == pytest.approx(nll, rel=(n + 4) * EPS32, abs=20 * EPS32)
        brier = np.mean(np.sum((p - np.eye(5)[labels[member]]) ** 2, axis=1))
        assert row["brier"] == pytest.approx(brier, rel=(n + 24) * EPS32)
        assert row["ece"] == pytest.approx(float(want["ece"]), abs=(n + 24) * EPS32)
    accuracies = [s["accuracy"] for s in got["strata"]]
    assert accuracies[-1] > accuracies[0]


def test_scalar_metrics_dispatch_on_rank(predictions):
    logits, labels, _ = predictions
    values = evaluation.scalar_metrics(logits, labels, ordinal=True)
    assert set(values) == SCALARS | set(MM.ORDINAL_METRICS)
    assert isinstance(values["n_examples"], int) and isinstance(values["nll"], float)
    binary = evaluation.scalar_metrics(logits[:, 1] - logits[:, 0], labels > 2)
    assert "auroc" in binary and "macro_f1" not in binary


def test_binary_report_is_unchanged_and_rejects_k_class_options():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=40).astype(np.float32)
    labels = rng.integers(0, 2, size=40)
    lengths = rng.integers(5, 50, size=40)
    report = evaluation.evaluation_report(logits, labels, lengths, temperature=1.5)
    assert set(report) == {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "auroc",
        "nll",
        "brier",
        "ece",
        "n_examples",
        "temperature",
        "nll_ts",
        "brier_ts",
        "ece_ts",
        "length_strata",
    }
    with pytest.raises(ValueError, match="`class_names`.*binary"):
        evaluation.evaluation_report(logits, labels, lengths, class_names=["neg", "pos"])
    with pytest.raises(ValueError, match="`ordinal=True`"):
        evaluation.evaluation_report(logits, labels, lengths, ordinal=True)
    with pytest.raises(ValueError, match="`ordinal=True`"):
        evaluation.scalar_metrics(logits, labels, ordinal=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_names=["a", "b"]), "`class_names`.*5"),
        (dict(class_names=["a", "b", "c", "d", "a"]), "unique"),
        (dict(lengths=np.arange(3)), "`lengths` must have shape"),
        (dict(labels=np.full(503, -1)), r"`labels` must be in \[0, 5\).*-1"),
    ],
)
def test_report_rejects_bad_input(predictions, kwargs, message):
    logits, labels, lengths = predictions
    args = dict(logits=logits, labels=labels, lengths=lengths) | kwargs
    with pytest.raises(ValueError, match=message):
        evaluation.evaluation_report(**args)
