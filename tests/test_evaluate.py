"""`python -m train.evaluate` on a tiny trained run: the run's own report, reproduced; any other
labelled data set, measured like it (checked against scikit-learn)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from cli_runs import DATA_DIR, SST5_CLASSES, module, run
from sklearn import metrics as skm

from jaxsent.inference import Scorer, evaluation_results, load_eval_split, load_trained

EVAL_SIZE = 96


def _results(directory):
    return json.loads((directory / "eval_results.json").read_text())


def test_pointed_at_the_runs_split_it_reproduces_the_runs_report(run_dir):
    """Exactly: the same evaluation code on the same float32 parameters (the export's
    safetensors hold them bit for bit), with the run's bucket boundaries, batch size and
    device count, and the same report function with the run's temperature."""
    result = run(
        module(
            "train.evaluate",
            "--model",
            run_dir,
            "--data=sst2",
            "--split=validation",
            f"--size={EVAL_SIZE}",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir / "evaluations" / f"sst2-validation-sample{EVAL_SIZE}"
    ours, theirs = _results(out), _results(run_dir)
    assert ours["n_examples"] == EVAL_SIZE and "temperature" in theirs
    for key, value in theirs.items():
        if key != "notes":
            assert ours[key] == value, key
    assert ours["notes"] == [f"{theirs['notes'][1]} (seed 0)"]  # the sample, not the training
    assert pq.read_table(out / "predictions.parquet").equals(
        pq.read_table(run_dir / "predictions.parquet")
    )
    assert (out / "reliability.png").stat().st_size > 0
    assert "accuracy:" in result.stdout


def _assert_close(ours, theirs, atol, path="results"):
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs), path
        for key in theirs:
            _assert_close(ours[key], theirs[key], atol, f"{path}.{key}")
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _assert_close(a, b, atol, f"{path}[{i}]")
    elif isinstance(theirs, float):
        assert math.isclose(ours, theirs, rel_tol=0, abs_tol=atol), (path, ours, theirs)
    else:
        assert ours == theirs, path


def test_a_run_without_export_is_evaluated_from_its_best_checkpoint(run_dir, tmp_path):
    """Near-exactly: here the batches are split over 8 host devices instead of the run's 2, and
    the run's fitted buckets are unknown (evenly spaced ones), so the logits can differ in
    float32 rounding (~1e-7); the metrics are means of those."""
    copy = tmp_path / "old_run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    trained = load_trained(copy)
    assert trained.source == "checkpoint"
    split, notes = load_eval_split(trained, "sst2", split="validation", size=EVAL_SIZE)
    scorer = Scorer(
        trained.model,
        batch_size=trained.settings.batch_size,
        boundaries=trained.settings.bucket_boundaries,
        pad_id=trained.tokenizer.pad_token_id,
    )
    predictions = scorer.predict_split(split)
    ours = evaluation_results(predictions, trained)
    theirs = {k: v for k, v in _results(run_dir).items() if k not in ("notes", "split")}
    _assert_close(ours, theirs, atol=1e-6)


def test_another_data_set_is_measured_like_the_runs_own(run_dir, tmp_path):
    sst2 = pq.read_table(f"{DATA_DIR}/sst2/validation.parquet").slice(100, 60)
    labels = np.asarray(sst2.column("label").to_pylist())
    table = sst2.select(["sentence"]).rename_columns(["body"])
    table = table.append_column("stars", [["pos" if y else "neg" for y in labels]])
    pa_csv.write_csv(table, tmp_path / "reviews.csv")
    out = tmp_path / "report"
    result = run(
        module(
            "train.evaluate",
            "--model",
            run_dir / "export",
            "--data",
            tmp_path / "reviews.csv",
            "--split=reviews",
            "--text_column=body",
            "--label_column=stars",
            "--workdir",
            out,
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = _results(out)
    predictions = pq.read_table(out / "predictions.parquet").to_pydict()
    assert sorted(predictions["example_id"]) == list(range(60))
    y = np.asarray(predictions["label"])
    np.testing.assert_array_equal(y, labels[np.asarray(predictions["example_id"])])
    logits = np.asarray(predictions["logit"], np.float64)
    p = 1.0 / (1.0 + np.exp(-logits))
    p_ts = 1.0 / (1.0 + np.exp(-logits / results["temperature"]))
    assert results["n_examples"] == 60 and results["split"] == "reviews"
    assert results["accuracy"] == pytest.approx(skm.accuracy_score(y, logits > 0), abs=1e-6)
    assert results["auroc"] == pytest.approx(skm.roc_auc_score(y, logits), abs=1e-6)
    assert results["nll"] == pytest.approx(skm.log_loss(y, p), abs=1e-5)
    assert results["brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-5)
    assert results["nll_ts"] == pytest.approx(skm.log_loss(y, p_ts), abs=1e-5)
    assert results["temperature"] == _results(run_dir)["temperature"]


def test_an_export_outside_a_run_needs_a_workdir(run_dir, tmp_path):
    shutil.copytree(run_dir / "export", tmp_path / "model")
    result = run(
        module("train.evaluate", "--model", tmp_path / "model", "--data=sst2", "--split=validation")
    )
    assert result.returncode == 2
    assert "is an export outside a run's work directory: pass --workdir" in result.stderr
    assert "Traceback" not in result.stderr


# K classes: the five-class SST-5 run (tests/conftest.py `multiclass_run`).


def test_k_classes_pointed_at_the_runs_split_it_reproduces_the_runs_report(
    multiclass_run, tmp_path
):
    """Exactly, as for two classes: every metric of the K-class report (per class, confusion
    matrix, ordinal ones, temperature-scaled ones) and the per-class predictions file."""
    workdir = multiclass_run.workdir
    out = tmp_path / "report"
    result = run(
        module(
            "train.evaluate",
            "--model",
            workdir,
            "--data=sst5",
            "--split=validation",
            f"--size={EVAL_SIZE}",
            "--workdir",
            out,
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = _results(out), _results(workdir)
    assert ours["n_examples"] == EVAL_SIZE and "temperature" in theirs
    assert theirs["class_names"] == list(SST5_CLASSES) and theirs["ordinal"] is True
    assert len(set(np.asarray(theirs["confusion_matrix"]).argmax(axis=1))) > 1  # not one class
    for key, value in theirs.items():
        if key != "notes":
            assert ours[key] == value, key
    assert pq.read_table(out / "predictions.parquet").equals(
        pq.read_table(workdir / "predictions.parquet")
    )
    for figure in ("reliability.png", "reliability_classwise.png", "confusion_matrix.png"):
        assert (out / figure).stat().st_size > 0
    assert "macro_f1:" in result.stdout and "accuracy_within_one:" in result.stdout


def _error_of(*args) -> str:
    result = run(module("train.evaluate", *map(str, args)))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def _reviews(tmp_path, labels, name="reviews") -> Path:
    texts = [f"review number {i} of a film" for i in range(len(labels))]
    path = tmp_path / f"{name}.csv"
    pa_csv.write_csv(pa.table({"text": texts, "label": labels}), path)
    return path


@pytest.mark.parametrize("error", ["other_classes", "outside", "one_class"])
def test_k_classes_bad_data_is_one_line(multiclass_run, tmp_path, error):
    workdir = multiclass_run.workdir
    out = tmp_path / "report"
    if error == "other_classes":
        line = _error_of("--model", workdir, "--data=sst2", "--split=validation", "--workdir", out)
        assert line == (
            "error: the model has 5 classes (0 'very negative', 1 'negative', 2 'neutral', "
            "3 'positive', 4 'very positive') but sst2 has 2 (0 'negative', 1 'positive'): "
            "evaluate it on data of its classes"
        )
    elif error == "outside":
        data = _reviews(tmp_path, ["neutral", "Very Positive", "superb", "negative", "positive"])
        line = _error_of("--model", workdir, "--data", data, "--split=reviews", "--workdir", out)
        assert "split " in line and "reviews': 1 malformed row(s) of 5: row 2: label='superb'" in (
            line
        )
        assert "label must be one of the classes (0 'very negative', 1 'negative'," in line
    else:
        data = _reviews(tmp_path, [2, 2, 2])
        line = _error_of("--model", workdir, "--data", data, "--split=reviews", "--workdir", out)
        assert line.endswith(
            "reviews: the evaluated labels hold one class only ('neutral'); the metrics compare "
            "classes, so evaluate data of two or more of the model's (0 'very negative', "
            "1 'negative', 2 'neutral', 3 'positive', 4 'very positive')"
        )
    assert not out.exists()


def test_labels_are_read_as_the_models_classes(run_dir, multiclass_run, tmp_path):
    """In-process (no scoring): names in any case, ids, and data of other classes."""
    five = load_trained(multiclass_run.workdir)
    two = load_trained(run_dir)
    data = _reviews(tmp_path, ["Neutral", " very positive", "very negative", "negative"], "names")
    split, _ = load_eval_split(five, str(data), split="names")  # any case, stripped
    assert split.classes == five.classes
    assert split.arrays.labels[np.argsort(split.arrays.example_ids)].tolist() == [2, 4, 0, 1]
    # Binary labels on five classes: 0/1 are ids of two of its classes, so they are refused;
    # names that happen to be binary spellings are its own class names, so they are read.
    binary = _reviews(tmp_path, [0, 1, 1, 0], name="binary")
    with pytest.raises(ValueError, match=r"5 classes .*\.csv:binary hold 2 \(binary: 0/1 or"):
        load_eval_split(five, str(binary), split="binary")
    named = _reviews(tmp_path, ["negative", "positive"], name="named")
    assert load_eval_split(five, str(named), split="named")[0].arrays.labels.tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"the model has 2 classes .* but sst5 has 5 \(0 'very"):
        load_eval_split(two, "sst5", split="validation", data_dir=DATA_DIR)
    stars = _reviews(tmp_path, [1, 2, 3], name="stars")
    with pytest.raises(ValueError, match=r"has 2 classes .*/stars\.csv:stars hold 3 \(0 '1'"):
        load_eval_split(two, str(stars), split="stars")
