"""The final report: length strata against a plain numpy computation, temperature-scaled metrics,
and the parsing of `data.extra_evals`."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

from jaxsent import calibration, evaluation, metrics
from jaxsent.training.config_check import parse_extra_evals
from jaxsent.training.loop import extra_eval_dir


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    n = 401
    lengths = rng.integers(5, 300, size=n)
    labels = rng.integers(0, 2, size=n)
    # Long examples are easier: the stratified accuracy must differ between strata.
    logits = (2 * labels - 1) * (lengths / 60.0) + rng.normal(0, 1.5, size=n)
    return logits.astype(np.float32), labels, lengths


def test_length_strata_match_a_direct_computation(predictions):
    logits, labels, lengths = predictions
    got = evaluation.length_strata(logits, labels, lengths)
    edges = np.quantile(lengths, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(got["edges"], edges)
    total = 0
    for k, stratum in enumerate(got["strata"]):
        low, high = edges[k], edges[k + 1]
        member = (lengths > low) & (lengths <= high)
        if k == 0:
            member |= lengths == low
        total += member.sum()
        assert stratum["n_examples"] == member.sum()
        assert (stratum["low"], stratum["high"]) == (low, high)
        p = 1 / (1 + np.exp(-logits[member].astype(np.float64)))
        y = labels[member]
        # float32 metrics against float64 sklearn: a few ulps of float32 on values of order 1.
        assert stratum["accuracy"] == pytest.approx(accuracy_score(y, p > 0.5), abs=1e-6)
        assert stratum["nll"] == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-5)
        assert stratum["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-5)
        ece = metrics.expected_calibration_error(logits[member], y)
        assert stratum["ece"] == pytest.approx(float(ece), abs=1e-7)
    assert total == len(lengths)  # every example in exactly one stratum
    accuracies = [s["accuracy"] for s in got["strata"]]
    assert accuracies[-1] > accuracies[0]


def test_length_strata_with_ties_report_empty_strata():
    lengths = np.array([10] * 9 + [50])
    logits = np.linspace(-2, 2, 10).astype(np.float32)
    labels = np.array([0, 1] * 5)
    got = evaluation.length_strata(logits, labels, lengths)
    counts = [s["n_examples"] for s in got["strata"]]
    assert sum(counts) == 10
    assert counts == [9, 0, 0, 1]
    assert got["strata"][1]["accuracy"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lengths=np.arange(3)), "`lengths` must have shape"),
        (dict(num_strata=0), "`num_strata`"),
    ],
)
def test_length_strata_reject_bad_input(kwargs, message):
    args = dict(logits=np.zeros(4, np.float32), labels=np.zeros(4), lengths=np.arange(4)) | kwargs
    with pytest.raises(ValueError, match=message):
        evaluation.length_strata(**args)


def test_report_holds_raw_and_temperature_scaled_metrics(predictions):
    logits, labels, lengths = predictions
    temperature = 2.5
    report = evaluation.evaluation_report(logits, labels, lengths, temperature=temperature)
    raw = metrics.binary_classification_metrics(logits, labels)
    scaled = metrics.binary_classification_metrics(logits / temperature, labels)
    for key in ("accuracy", "f1", "auroc", "nll", "brier", "ece"):
        assert report[key] == pytest.approx(float(raw[key]), abs=1e-7)
    for key in ("nll", "brier", "ece"):
        assert report[f"{key}_ts"] == pytest.approx(float(scaled[key]), abs=1e-7)
    assert report["temperature"] == temperature
    assert report["n_examples"] == len(logits)
    assert len(report["length_strata"]["strata"]) == 4
    assert "nll_ts" not in evaluation.evaluation_report(logits, labels, lengths)


def test_report_with_the_fitted_temperature_does_not_raise_nll(predictions):
    logits, labels, lengths = predictions
    temperature = float(calibration.fit_temperature(logits, labels))
    report = evaluation.evaluation_report(logits, labels, lengths, temperature=temperature)
    assert report["nll_ts"] <= report["nll"] + 1e-6


def test_parse_extra_evals():
    assert parse_extra_evals("") == {}
    assert parse_extra_evals("rotten_tomatoes:all, imdb ,gs://b/folder:dev,gs://b/data") == {
        "rotten_tomatoes:all": ("rotten_tomatoes", "all"),
        "imdb:test": ("imdb", "test"),
        "gs://b/folder:dev": ("gs://b/folder", "dev"),
        "gs://b/data:test": ("gs://b/data", "test"),
    }
    with pytest.raises(ValueError, match="twice"):
        parse_extra_evals("imdb,imdb:test")
    with pytest.raises(ValueError, match="'imdb:'"):
        parse_extra_evals("imdb:")
    assert extra_eval_dir("rotten_tomatoes:all") == "rotten_tomatoes-all"
    assert extra_eval_dir("gs://b/folder:dev") == "gs-__b_folder-dev"
