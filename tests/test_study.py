"""`python -m train.study` end to end on a tiny random BERT: 2 loss presets x 2 seeds, killed after
its first run and started again (finished runs are skipped), and its summary checked against an
independent computation from the runs' own result files; and a paired comparison of the committed
IMDB study (docs/study/imdb) recomputed from its archived prediction files."""

import csv
import json
import signal
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_runs import ROOT, module, run, start
from etils import epath
from scipy import stats as scipy_stats

from jaxsent import stats
from jaxsent.study import summary as study_summary
from jaxsent.study.runner import PlannedRun

pytestmark = pytest.mark.slow


def _study_config(path: Path, model_dir: Path) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            import ml_collections

            def get_config():
                config = ml_collections.ConfigDict()
                config.base = "configs/smoke.py"
                config.overrides = {{
                    "model": {{"name": "{model_dir}"}},
                    "data": {{
                        "train_size": 96,
                        "validation_size": 48,
                        "eval_size": 80,
                        "max_length": 32,
                        "num_buckets": 1,
                        "extra_evals": "sst2:validation",
                    }},
                    "train": {{
                        "global_batch_size": 16,
                        "eval_batch_size": 32,
                        "num_steps": 4,
                        "checkpoint_every_steps": 2,
                    }},
                }}
                config.variants = ("bce", "focal_seed")
                config.custom_variants = {{}}
                config.seeds = (0, 1)
                config.baseline = "bce"
                return config
            """
        )
    )
    return path


def _command(config, workdir, *extra, archive=None):
    archive = archive or Path(workdir).parent / "archive"
    return module(
        "train.study",
        "--config",
        config,
        "--workdir",
        workdir,
        "--num_resamples=200",
        f"--archive={archive}",
        *extra,
    )


@pytest.fixture(scope="module")
def study(model_dir, tmp_path_factory):
    """The study, SIGKILLed once its first run is finished, then run again to the end."""
    tmp = tmp_path_factory.mktemp("study")
    config = _study_config(tmp / "tiny_study.py", model_dir)
    workdir = tmp / "study"
    first = workdir / "bce" / "seed_0" / "eval_results.json"
    proc = start(_command(config, workdir))
    deadline = time.monotonic() + 600
    try:
        while not first.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "first run not finished in 600 s"
            time.sleep(0.2)
        first_written = first.stat().st_mtime_ns
        # Let the second run start, so that the kill interrupts it.
        while not (workdir / "focal_seed" / "seed_0" / "config.json").exists():
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = run(_command(config, workdir), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, result, first_written


def test_rerun_skips_finished_runs(study):
    workdir, result, first_written = study
    out = result.stdout
    assert "study: 4 runs, 1 already done, 3 to train" in out
    assert "[2/4] focal_seed seed 0 (resuming)" in out
    assert "[1/4]" not in out
    # The finished run was not trained or written again.
    assert (workdir / "bce" / "seed_0" / "eval_results.json").stat().st_mtime_ns == first_written
    assert "summary of 4/4 runs" in out


def test_summary_matches_an_independent_computation(study):
    workdir, _, _ = study
    summary = json.loads((workdir / "summary.json").read_text())
    results = {
        (variant, seed): json.loads(
            (workdir / variant / f"seed_{seed}" / "eval_results.json").read_text()
        )
        for variant in ("bce", "focal_seed")
        for seed in (0, 1)
    }
    assert [(r["variant"], r["seed"]) for r in summary["runs"]] == [
        ("bce", 0),
        ("focal_seed", 0),
        ("bce", 1),
        ("focal_seed", 1),
    ]
    for row in summary["runs"]:
        mine = results[row["variant"], row["seed"]]
        for key in ("accuracy", "nll", "ece", "temperature", "nll_ts", "brier_ts", "ece_ts"):
            assert row[key] == mine[key]
        assert row["sst2:validation/accuracy"] == mine["extra_evals"]["sst2:validation"]["accuracy"]
        assert row["length_q1/accuracy"] == mine["length_strata"]["strata"][0]["accuracy"]
        folder = workdir / row["variant"] / f"seed_{row['seed']}"
        logits = pq.read_table(folder / "predictions.parquet").column("logit").to_numpy()
        assert row["median_abs_logit"] == pytest.approx(np.median(np.abs(logits)), rel=1e-7)
        assert row["positive_rate"] == np.mean(logits > 0)
        log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert row["final_train_loss"] == [r["loss"] for r in log if r["split"] == "train"][-1]
    for variant in ("bce", "focal_seed"):
        aggregate = summary["variants"][variant]
        assert aggregate["n_seeds"] == 2
        for key in ("accuracy", "nll", "ece_ts"):
            values = np.array([results[variant, s][key] for s in (0, 1)])
            if values[0] == values[1]:  # scipy's interval is nan for a zero spread
                low = high = values.mean()
            else:
                low, high = scipy_stats.t.interval(
                    0.95, df=1, loc=values.mean(), scale=scipy_stats.sem(values)
                )
            assert aggregate[key]["mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert aggregate[key]["ci_low"] == pytest.approx(low, rel=1e-9)
            assert aggregate[key]["ci_high"] == pytest.approx(high, rel=1e-9)
    # Paired comparison: the point estimate is the mean over seeds of the per-seed differences.
    for eval_set, get in (
        ("eval", lambda r: r),
        ("sst2:validation", lambda r: r["extra_evals"]["sst2:validation"]),
    ):
        row = next(
            c
            for c in summary["comparisons"]
            if (c["eval_set"], c["variant"], c["metric"]) == (eval_set, "focal_seed", "accuracy")
        )
        expected = np.mean(
            [
                get(results["focal_seed", s])["accuracy"] - get(results["bce", s])["accuracy"]
                for s in (0, 1)
            ]
        )
        assert row["difference"] == pytest.approx(expected, abs=1e-6)
        assert row["ci_low"] <= row["difference"] <= row["ci_high"]
        assert 0 <= row["p_value"] <= 1
    # Per length quartile: the strata of each run's own `length_strata`, and the same mean of
    # per-seed differences within each.
    by_length = [
        c
        for c in summary["comparisons_by_length"]
        if (c["variant"], c["metric"]) == ("focal_seed", "accuracy")
    ]
    strata = results["bce", 0]["length_strata"]["strata"]
    assert [c["stratum"] for c in by_length] == [
        k + 1 for k, s in enumerate(strata) if s["n_examples"]
    ]
    assert sum(c["n_examples"] for c in by_length) == results["bce", 0]["n_examples"]
    for row in by_length:
        k = row["stratum"] - 1
        assert (row["low"], row["high"], row["n_examples"]) == (
            strata[k]["low"],
            strata[k]["high"],
            strata[k]["n_examples"],
        )
        expected = np.mean(
            [
                results["focal_seed", s]["length_strata"]["strata"][k]["accuracy"]
                - results["bce", s]["length_strata"]["strata"][k]["accuracy"]
                for s in (0, 1)
            ]
        )
        assert row["difference"] == pytest.approx(expected, abs=1e-6)
        assert row["ci_low"] <= row["difference"] <= row["ci_high"]


def test_report_files(study):
    workdir, _, _ = study
    for name in (
        "summary.json",
        "summary.csv",
        "report.md",
        "study.json",
        "metrics_eval.png",
        "reliability_eval.png",
        "metrics_sst2_validation.png",
        "reliability_sst2_validation.png",
        "length_strata.png",
    ):
        assert (workdir / name).is_file(), name
    report = (workdir / "report.md").read_text()
    assert "the seed's focal loss (every term combined) (focal_seed vs bce, 2 seeds" in report
    assert "| bce | 2 | " in report.split("## How decided the models are (eval split)")[1]
    assert "| focal_seed | bce | accuracy | 2 | " in report.split("per length quartile")[1]
    csv_lines = (workdir / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("variant,seed,workdir,")
    extra = workdir / "focal_seed" / "seed_1" / "extra_evals" / "sst2-validation"
    for name in ("eval_results.json", "predictions.parquet", "reliability.png"):
        assert (extra / name).is_file(), name
    # Every example of the extra set (the eval split itself is a sample of 80).
    assert json.loads((extra / "eval_results.json").read_text())["n_examples"] == 872


def test_report_only_and_a_changed_study_is_refused(study, tmp_path):
    workdir, _, _ = study
    config = workdir.parent / "tiny_study.py"
    report = run(_command(config, workdir, "--report_only"), timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "summary of 4/4 runs" in report.stdout
    changed = run(_command(config, workdir, "--config.seeds=(0, 1, 2)"), timeout=600)
    assert changed.returncode != 0
    assert "holds another study" in changed.stderr


def test_archive_restores_the_study_elsewhere(study, tmp_path):
    workdir, _, _ = study
    archive = workdir.parent / "archive"
    assert (archive / "focal_seed" / "seed_1" / "predictions.csv").is_file()
    assert (
        not list(archive.rglob("*.parquet")) and not (archive / "bce" / "seed_0" / "best").exists()
    )
    elsewhere = tmp_path / "elsewhere"
    result = run(
        _command(workdir.parent / "tiny_study.py", elsewhere, "--report_only", archive=archive),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((elsewhere / "summary.json").read_text())
    original = json.loads((workdir / "summary.json").read_text())
    assert ours["variants"] == original["variants"]
    assert ours["comparisons"] == original["comparisons"]


ARCHIVE = ROOT / "docs" / "study" / "imdb"  # the committed IMDB study (3 seeds, 2,000 reviews)


def _archived_run(variant: str, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """(eval_results, logits, labels) of one archived run, its rows ordered by example id."""
    folder = ARCHIVE / variant / f"seed_{seed}"
    with open(folder / "predictions.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: int(row["example_id"]))
    logits = np.array([np.float32(row["logit"]) for row in rows])  # written from float32
    labels = np.array([int(row["label"]) for row in rows])
    ids = [int(row["example_id"]) for row in rows]
    assert ids == sorted(set(ids)) and len(ids) == 2000
    return json.loads((folder / "eval_results.json").read_text()), logits, labels


@pytest.mark.parametrize("variant, metric", [("length_only", "accuracy"), ("focal_seed", "nll_ts")])
def test_an_archived_comparison_is_recomputed_from_the_prediction_files(variant, metric):
    """A row of docs/study/imdb/summary.json, from the archived predictions: the difference by
    NumPy in float64, and the row itself by `stats.paired_bootstrap` on every seed's pair (the
    same examples for both sides, logits divided by each run's own temperature for `_ts`)."""
    summary = json.loads((ARCHIVE / "summary.json").read_text())
    study = json.loads((ARCHIVE / "study.json").read_text())
    baseline = study["baseline"]
    row = next(
        c
        for c in summary["comparisons"]
        if (c["eval_set"], c["variant"], c["baseline"], c["metric"])
        == ("eval", variant, baseline, metric)
    )
    assert row["n_seeds"] == len(study["seeds"]) == 3
    sides = {
        name: [_archived_run(name, seed) for seed in study["seeds"]] for name in (variant, baseline)
    }
    labels = sides[baseline][0][2]
    scaled = metric.endswith("_ts")

    def logits_and_labels(name):
        out = []
        for results, logits, y in sides[name]:
            np.testing.assert_array_equal(y, labels)  # the same examples, paired by id
            out.append((logits / results["temperature"] if scaled else logits, y))
        return out

    def float64_metric(logits, y):
        z = np.asarray(logits, np.float64)
        if metric == "accuracy":
            return np.mean((z > 0) == (y == 1))
        return np.mean(np.logaddexp(0.0, np.where(y == 1, -z, z)))  # binary NLL

    ours, theirs = logits_and_labels(variant), logits_and_labels(baseline)
    difference = np.mean(
        [float64_metric(*a) - float64_metric(*b) for a, b in zip(ours, theirs, strict=True)]
    )
    # The summary's metrics are float32 means over 2,000 examples (~1e-7 relative each).
    assert row["difference"] == pytest.approx(difference, abs=1e-6)
    result = stats.paired_bootstrap(
        metric.removesuffix("_ts"), ours, theirs, num_resamples=row["num_resamples"], seed=0
    )
    # Today's study code on the archive, as `train.study --report_only --archive` reads it.
    runs = [
        PlannedRun(name, seed, epath.Path(ARCHIVE / name / f"seed_{seed}"), None)
        for name in (variant, baseline)
        for seed in study["seeds"]
    ]
    (current,) = study_summary.compare(
        runs, variant, baseline, metrics=(metric,), num_resamples=row["num_resamples"]
    )
    # The same function on the same float32 inputs: the summary's numbers exactly.
    for key in ("difference", "ci_low", "ci_high", "p_value"):
        assert result[key] == row[key] == current[key], key
