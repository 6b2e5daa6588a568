"""The study's plan (`runner.plan_study`; a bad study is refused) and its summary."""

import json

import ml_collections
import numpy as np
import pytest
from etils import epath

from jaxsent import evaluation, losses
from jaxsent.study import report, runner
from jaxsent.study import summary as summary_lib


def _study(**fields):
    study = ml_collections.ConfigDict()
    study.base = "configs/smoke.py"
    study.overrides = {"data": {"train_size": 128}}
    study.variants = ("bce", "focal_seed")
    study.custom_variants = {}
    study.seeds = (0, 1)
    study.baseline = "bce"
    for key, value in fields.items():
        study[key] = value
    return study


def test_runs_are_seed_major_with_the_preset_and_overrides_applied(tmp_path):
    study = _study(custom_variants={"lr3e5": {"optim": {"learning_rate": 3e-5}}})
    study.variants = ("bce", "focal_seed", "lr3e5")
    runs = runner.plan_study(study, tmp_path)
    assert [(r.variant, r.seed) for r in runs] == [
        ("bce", 0),
        ("focal_seed", 0),
        ("lr3e5", 0),
        ("bce", 1),
        ("focal_seed", 1),
        ("lr3e5", 1),
    ]
    for run in runs:
        assert run.config.seed == run.seed
        assert run.config.data.train_size == 128
        assert run.workdir == tmp_path / run.variant / f"seed_{run.seed}"
    by_name = {(r.variant, r.seed): r.config for r in runs}
    for key, value in losses.LOSS_PRESETS["focal_seed"].items():
        assert by_name["focal_seed", 0].loss[key] == value
    assert by_name["lr3e5", 1].optim.learning_rate == 3e-5
    base_loss = runner.load_config_file("configs/smoke.py").loss.to_dict()
    assert by_name["lr3e5", 1].loss.to_dict() == base_loss  # a custom variant keeps the base's
    assert by_name["bce", 0].loss.name == "bce"


@pytest.mark.parametrize(
    "fields, error, message",
    [
        ({"variants": ("bce", "no_such_loss")}, ValueError, "'no_such_loss' is neither a loss"),
        ({"variants": ("bce", "focal_seed", "bce")}, ValueError, "variants repeat a name"),
        ({"seeds": ()}, ValueError, r"seeds must be distinct and at least one, got \[\]"),
        ({"seeds": (0, 0)}, ValueError, r"got \[0, 0\]"),
        ({"baseline": "weighted"}, ValueError, "baseline 'weighted' is not among the variants"),
        ({"overrides": {"data": {"trian_size": 1}}}, KeyError, "overrides.data: 'trian_size'"),
        ({"overrides": {"optimiser": {}}}, KeyError, "overrides: 'optimiser' is not a field"),
        ({"overrides": {"seed": {"x": 1}}}, TypeError, "'seed' is a value, not a group"),
        (
            {"variants": ("bce", "bad"), "custom_variants": {"bad": {"loss": {"gama": 2.0}}}},
            KeyError,
            "variant bad.loss: 'gama' is not a field",
        ),
        ({"base": "configs/no_such_config.py"}, FileNotFoundError, "no_such_config"),
    ],
)
def test_a_bad_study_is_refused_naming_the_field(tmp_path, fields, error, message):
    with pytest.raises(error, match=message):
        runner.plan_study(_study(**fields), tmp_path)


def test_summary_json_is_strict_json():
    summary = {
        "variants": {"bce": {"n_seeds": 1, "accuracy": {"mean": 0.9, "ci_low": float("nan")}}},
        "runs": [{"x": [1.0, float("inf")], "label": "bce"}],
    }

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    parsed = json.loads(report.summary_json(summary), parse_constant=refuse)
    assert parsed["variants"]["bce"]["accuracy"] == {"mean": 0.9, "ci_low": None}
    assert parsed["runs"] == [{"x": [1.0, None], "label": "bce"}]


def _fake_run(tmp_path, variant, logits, labels, full_lengths):
    """A finished run as the archive holds it: eval_results.json and predictions.csv."""
    run = runner.PlannedRun(variant, 0, epath.Path(tmp_path) / variant / "seed_0", None)
    run.workdir.mkdir(parents=True)
    results = evaluation.evaluation_report(logits, labels, full_lengths, temperature=1.0)
    (run.workdir / runner.RESULTS_FILE).write_text(json.dumps(results))
    columns = zip(labels, logits, full_lengths, strict=True)
    rows = ["example_id,label,logit,full_length"]
    rows += [f"{i},{y},{float(z)!r},{n}" for i, (y, z, n) in enumerate(columns)]
    (run.workdir / runner.PREDICTIONS_CSV).write_text("\n".join(rows) + "\n")
    return run


def test_length_comparison_per_quartile_and_its_verdict(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 2, n)
    full_lengths = rng.integers(10, 600, n)
    base = ((2 * labels - 1) * 1.5 + rng.normal(0, 1.5, n)).astype(np.float32)
    # The variant is right on every long review, as the seed's hypothesis hopes.
    variant = np.where(full_lengths > 450, (2 * labels - 1) * 3.0, base).astype(np.float32)
    runs = [
        _fake_run(tmp_path, "bce", base, labels, full_lengths),
        _fake_run(tmp_path, "length_only", variant, labels, full_lengths),
    ]
    summary = summary_lib.summarize(runs, baseline="bce", num_resamples=300)

    edges = np.quantile(full_lengths.astype(float), [0, 0.25, 0.5, 0.75, 1])
    rows = [r for r in summary["comparisons_by_length"] if r["metric"] == "accuracy"]
    assert [r["stratum"] for r in rows] == [1, 2, 3, 4]
    for k, row in enumerate(rows):
        inside = (full_lengths > edges[k]) & (full_lengths <= edges[k + 1])
        if k == 0:
            inside |= full_lengths == edges[0]
        assert row["n_examples"] == inside.sum()
        assert (row["low"], row["high"]) == (edges[k], edges[k + 1])
        correct = (variant > 0) == (labels == 1), (base > 0) == (labels == 1)
        expected = correct[0][inside].mean() - correct[1][inside].mean()
        assert row["difference"] == pytest.approx(expected, abs=1e-6)
    assert rows[-1]["ci_low"] > 0, "a gain on every long review must show in the last quartile"
    longest = [v for v in summary["verdicts"] if "longest quartile" in v["hypothesis"]]
    assert len(longest) == 1
    assert longest[0]["text"].startswith(
        f"length weighting on the longest quartile ({edges[3]:g}-{edges[4]:g} tokens) "
        "(length_only vs bce, 1 seed, eval): better accuracy"
    )
    markdown = report.markdown_report(summary, eval_sets=["eval"], figures={}, command="c")
    assert "| length_only | bce | accuracy | 1 | " in markdown
