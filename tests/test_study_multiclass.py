"""The study's summary and report of K-class runs, on synthetic run folders (no training).

Each fake run is what `train_and_evaluate` leaves of a K-class run: `eval_results.json` from
`jaxsent.evaluation.evaluation_report` (five ordered classes), `predictions.parquet` from
`jaxsent.reporting.save_predictions` (rows in a per-run order, paired by example id) and a
`metrics.jsonl`. The summary's numbers are checked against float64 NumPy (scikit-learn for
macro-F1); the archive is checked to give back the K logits bit for bit.
"""

import json

import numpy as np
import pytest
from etils import epath
from scipy.special import log_softmax, softmax
from sklearn.metrics import f1_score

from jaxsent import evaluation, reporting
from jaxsent.study import report, runner
from jaxsent.study import summary as summary_lib

NAMES = ("very negative", "negative", "neutral", "positive", "very positive")
K = len(NAMES)
N = 240
SEEDS = (0, 1)


def _ece(confidence, outcome, num_bins=15):
    edges = np.linspace(0.0, 1.0, num_bins + 1).astype(np.float32).astype(np.float64)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(outcome[in_bin].mean() - confidence[in_bin].mean())
    return total


def reference(metric, logits, labels):
    """Float64 reference of a compared metric; ``*_ts`` take already scaled logits."""
    z = np.asarray(logits, np.float64)
    pred = np.argmax(z, 1)
    probs = softmax(z, axis=1)
    metric = metric.removesuffix("_ts")
    if metric == "accuracy":
        return np.mean(pred == labels)
    if metric == "macro_f1":
        return f1_score(labels, pred, average="macro")
    if metric == "mae":
        return np.mean(np.abs(pred - labels))
    if metric == "nll":
        return -np.mean(log_softmax(z, axis=1)[np.arange(len(labels)), labels])
    if metric == "brier":
        return np.mean(np.sum((probs - np.eye(K)[labels]) ** 2, axis=1))
    if metric == "ece":
        return _ece(probs.max(1), (pred == labels).astype(float))
    if metric == "classwise_ece":
        return np.mean([_ece(probs[:, k], (labels == k).astype(float)) for k in range(K)])
    raise KeyError(metric)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, N)
    full_lengths = rng.integers(5, 70, N)
    # bce: right about 60% of the time; focal_gamma2: much better (a larger margin on the true
    # class); confidence_only: undecided, nearly always the same class (it abstains).
    logits = {}
    for seed in SEEDS:
        noise = np.random.default_rng(10 + seed).normal(0, 1.2, (N, K))
        one_hot = np.eye(K)[labels]
        logits["bce", seed] = (noise + 1.2 * one_hot).astype(np.float32)
        logits["focal_gamma2", seed] = (noise + 3.0 * one_hot).astype(np.float32)
        flat = 0.001 * noise + np.array([0, 0, 0.05, 0, 0])
        logits["confidence_only", seed] = flat.astype(np.float32)
    return labels, full_lengths, logits


def _temperature(variant, seed):
    return {"bce": 1.1, "focal_gamma2": 0.7, "confidence_only": 0.2}.get(variant, 0.9) + 0.05 * seed


def _write_run(root, variant, seed, logits, labels, full_lengths, *, ordinal=True):
    run = runner.PlannedRun(variant, seed, epath.Path(root) / variant / f"seed_{seed}", None)
    run.workdir.mkdir(parents=True)
    results = evaluation.evaluation_report(
        logits,
        labels,
        full_lengths,
        temperature=_temperature(variant, seed),
        class_names=NAMES,
        ordinal=ordinal,
    )
    (run.workdir / runner.RESULTS_FILE).write_text(json.dumps(results))
    order = np.random.default_rng(seed + 100).permutation(N)  # each file in its own row order
    reporting.save_predictions(
        run.workdir / runner.PREDICTIONS_PARQUET,
        example_ids=order,
        logits=logits[order],
        labels=labels[order],
        full_lengths=full_lengths[order],
        class_names=NAMES,
    )
    log = [{"split": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    (run.workdir / "metrics.jsonl").write_text("\n".join(map(json.dumps, log)) + "\n")
    return run


@pytest.fixture(scope="module")
def study(data, tmp_path_factory):
    labels, full_lengths, logits = data
    root = tmp_path_factory.mktemp("kstudy")
    runs = [
        _write_run(root, v, s, logits[v, s], labels, full_lengths)
        for s in SEEDS
        for v in ("bce", "focal_gamma2", "confidence_only")
    ]
    summary = summary_lib.summarize(runs, baseline="bce", num_resamples=200, study={"x": 1})
    return root, runs, summary


def test_rows_carry_the_k_class_metrics_and_decisiveness(data, study):
    labels, _, logits = data
    root, runs, summary = study
    assert summary["classes"] == {"names": list(NAMES), "ordinal": True}
    assert list(summary)[:2] == ["study", "classes"]
    for row in summary["runs"]:
        results = json.loads((epath.Path(row["workdir"]) / "eval_results.json").read_text())
        for key in ("accuracy", "macro_f1", "mae", "accuracy_within_one", "nll", "brier", "ece"):
            assert row[key] == results[key], key
        for key in ("classwise_ece", "temperature", "nll_ts", "ece_ts", "classwise_ece_ts"):
            assert row[key] == results[key], key
        assert row["length_q4/accuracy"] == results["length_strata"]["strata"][3]["accuracy"]
        for name in NAMES:
            assert row[f"per_class/{name}/f1"] == results["per_class"][name]["f1"]
            assert row[f"per_class/{name}/recall"] == results["per_class"][name]["recall"]
        z = logits[row["variant"], row["seed"]]
        top = np.sort(z, axis=1)
        assert row["median_logit_margin"] == pytest.approx(np.median(top[:, -1] - top[:, -2]))
        counts = np.bincount(np.argmax(z, 1), minlength=K)
        assert row["top_class_rate"] == counts.max() / N
        assert row["final_train_loss"] == 1.0 / 3
        assert "median_abs_logit" not in row and "positive_rate" not in row
    collapsed = [r for r in summary["runs"] if r["variant"] == "confidence_only"]
    assert all(r["top_class_rate"] == 1.0 and r["median_logit_margin"] < 0.1 for r in collapsed)
    interval = summary["variants"]["bce"]["macro_f1"]
    values = [r["macro_f1"] for r in summary["runs"] if r["variant"] == "bce"]
    assert interval["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert interval["ci_low"] < interval["mean"] < interval["ci_high"]


def test_comparisons_are_the_seed_mean_of_paired_differences(data, study):
    labels, _, logits = data
    _, _, summary = study
    want_metrics = [
        "accuracy",
        "macro_f1",
        "mae",
        "nll",
        "brier",
        "ece",
        "classwise_ece",
        "nll_ts",
        "ece_ts",
        "classwise_ece_ts",
    ]
    for variant in ("focal_gamma2", "confidence_only"):
        rows = [c for c in summary["comparisons"] if c["variant"] == variant]
        assert [c["metric"] for c in rows] == want_metrics
        for row in rows:
            assert (row["baseline"], row["eval_set"], row["n_seeds"]) == ("bce", "eval", 2)

            def value(name, seed, metric=row["metric"]):
                z = logits[name, seed]
                if metric.endswith("_ts"):
                    z = z / np.float32(_temperature(name, seed))
                return reference(metric, z, labels)

            want = np.mean([value(variant, s) - value("bce", s) for s in SEEDS])
            # float32 metrics of 240 examples against float64 (ECE: no confidence on an edge).
            assert row["difference"] == pytest.approx(want, abs=1e-5), row["metric"]
            if "ece" not in row["metric"]:  # ECE's bootstrap is biased: no such guarantee
                assert row["ci_low"] <= row["difference"] <= row["ci_high"]
    better = next(
        c
        for c in summary["comparisons"]
        if (c["variant"], c["metric"]) == ("focal_gamma2", "macro_f1")
    )
    assert better["ci_low"] > 0 and better["p_value"] < 0.05
    by_length = [c for c in summary["comparisons_by_length"] if c["variant"] == "focal_gamma2"]
    assert [(c["stratum"], c["metric"]) for c in by_length] == [
        (k, m) for k in (1, 2, 3, 4) for m in ("accuracy", "nll")
    ]
    assert sum(c["n_examples"] for c in by_length) == 2 * N


def test_verdicts_name_the_k_class_metrics(study):
    _, _, summary = study
    texts = {v["variant"]: v["text"] for v in summary["verdicts"]}
    assert set(texts) == {"focal_gamma2", "confidence_only"}
    assert texts["focal_gamma2"].startswith(
        "focal modulator (gamma = 2) (focal_gamma2 vs bce, 2 seeds, eval): better accuracy; "
        "better macro_f1; better mae;"
    )
    assert texts["confidence_only"].startswith(
        "confidence weighting (confidence_only vs bce, 2 seeds, eval): worse accuracy; "
        "worse macro_f1;"
    )
    row = next(
        c
        for c in summary["comparisons"]
        if (c["variant"], c["metric"]) == ("focal_gamma2", "macro_f1")
    )
    d, lo, hi = (100 * row[k] for k in ("difference", "ci_low", "ci_high"))
    assert f"macro_f1 {d:+.2f} pt [{lo:+.2f}, {hi:+.2f}]" in texts["focal_gamma2"]
    for metric in ("mae", "nll", "ece", "ece_ts"):
        assert f"; {metric} " in texts["focal_gamma2"]
    assert "brier" not in texts["focal_gamma2"]


def test_report_files_and_tables(study, tmp_path):
    _, runs, summary = study
    out = epath.Path(tmp_path)
    report.write_report(summary, runs, out, eval_sets=["eval"], command="python -m train.study")
    for name in (
        "summary.json",
        "summary.csv",
        "report.md",
        "metrics_eval.png",
        "reliability_eval.png",
        "length_strata.png",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["classes"]["names"] == list(NAMES)
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"macro_f1", "mae", "classwise_ece_ts", "per_class/neutral/f1"} <= set(header)
    text = (out / "report.md").read_text()
    assert (
        "Classes (5, ordered): very negative, negative, neutral, positive, very positive." in text
    )
    assert (
        "| variant | seeds | accuracy | macro_f1 | mae | accuracy_within_one | nll | brier | ece "
        "| classwise_ece | nll_ts | ece_ts | classwise_ece_ts | temperature |"
    ) in text
    bce = summary["variants"]["bce"]
    accuracy, macro_f1 = bce["accuracy"], bce["macro_f1"]
    half = (macro_f1["ci_high"] - macro_f1["ci_low"]) / 2
    row = next(line for line in text.splitlines() if line.startswith("| bce | 2 | "))
    assert row.startswith(
        f"| bce | 2 | {100 * accuracy['mean']:.2f} ± "
        f"{100 * (accuracy['ci_high'] - accuracy['ci_low']) / 2:.2f} | "
        f"{100 * macro_f1['mean']:.2f} ± {100 * half:.2f} | "
    )
    assert (
        "| variant | seeds | very negative | negative | neutral | positive | very positive |"
        in (text.split("F1 per class, in %:")[1])
    )
    assert "| variant | seeds | accuracy | median_logit_margin | top_class_rate |" in text
    comparison = next(
        c
        for c in summary["comparisons"]
        if (c["variant"], c["metric"]) == ("focal_gamma2", "macro_f1")
    )
    assert f"| focal_gamma2 | bce | macro_f1 | 2 | {100 * comparison['difference']:+.4f} |" in text
    nll = next(
        c for c in summary["comparisons"] if (c["variant"], c["metric"]) == ("focal_gamma2", "nll")
    )
    assert f"| focal_gamma2 | bce | nll | 2 | {nll['difference']:+.4f} |" in text


def test_unordered_classes_leave_out_the_ordinal_metrics(data, tmp_path):
    labels, full_lengths, logits = data
    runs = [
        _write_run(tmp_path, v, 0, logits[name, 0], labels, full_lengths, ordinal=False)
        for v, name in (("bce", "bce"), ("bce_ls", "focal_gamma2"))
    ]
    summary = summary_lib.summarize(runs, baseline="bce", num_resamples=20)
    assert summary["classes"]["ordinal"] is False
    metrics = [c["metric"] for c in summary["comparisons"]]
    assert metrics == list(summary_lib.MULTICLASS_COMPARED_METRICS)
    text = report.markdown_report(summary, eval_sets=["eval"], figures={}, command="c")
    assert "Classes (5, unordered)" in text and "| mae |" not in text
    assert "label smoothing (bce_ls vs bce, 1 seed, eval): " in text


def test_binary_and_k_class_runs_are_not_mixed(data, tmp_path):
    labels, full_lengths, logits = data
    k_class = _write_run(tmp_path, "bce", 0, logits["bce", 0], labels, full_lengths)
    binary = runner.PlannedRun("bce_ls", 0, epath.Path(tmp_path) / "bce_ls" / "seed_0", None)
    binary.workdir.mkdir(parents=True)
    z = logits["bce", 0][:, 1] - logits["bce", 0][:, 0]
    results = evaluation.evaluation_report(z, (labels > 2).astype(int), full_lengths)
    (binary.workdir / runner.RESULTS_FILE).write_text(json.dumps(results))
    with pytest.raises(ValueError, match=r"different classes \(bce seed 0: very negative, "):
        summary_lib.summarize([k_class, binary], baseline="bce", num_resamples=20)


def test_the_archive_keeps_the_k_logits_bit_for_bit(data, tmp_path):
    labels, full_lengths, _ = data
    rng = np.random.default_rng(5)
    # Logits over many magnitudes, including values with no short decimal form.
    logits = (rng.normal(0, 1, (N, K)) * 10.0 ** rng.integers(-30, 30, (N, K))).astype(np.float32)
    logits[0] = [np.float32(1) / 3, -0.0, np.finfo(np.float32).max, np.float32(0.1), 1e-45]
    run = _write_run(tmp_path / "study", "bce", 0, logits, labels, full_lengths)
    archive = epath.Path(tmp_path) / "archive"
    runner.archive_run(run, archive)
    csv_header = (archive / "bce" / "seed_0" / runner.PREDICTIONS_CSV).read_text().splitlines()[0]
    assert csv_header == (
        '"example_id","label","logit_very negative","logit_negative","logit_neutral",'
        '"logit_positive","logit_very positive","full_length"'
    )
    elsewhere = runner.PlannedRun(
        "bce", 0, epath.Path(tmp_path) / "elsewhere" / "bce" / "seed_0", None
    )
    assert runner.restore_archived([elsewhere], archive) == 1
    assert not (elsewhere.workdir / runner.PREDICTIONS_PARQUET).exists()
    restored = summary_lib._predictions(elsewhere, "eval")
    original = summary_lib._predictions(run, "eval")
    assert restored.logit.dtype == np.float32 and restored.logit.shape == (N, K)
    np.testing.assert_array_equal(restored.logit.view(np.uint32), original.logit.view(np.uint32))
    np.testing.assert_array_equal(original.logit, logits)  # ids 0..N-1 in order
    for field in ("example_id", "label", "full_length"):
        np.testing.assert_array_equal(getattr(restored, field), getattr(original, field))
    assert restored.class_names == original.class_names == NAMES
