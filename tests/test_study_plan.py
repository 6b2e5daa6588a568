"""The study's plan (`runner.plan_study`; a bad study is refused) and its summary.json."""

import json

import ml_collections
import pytest

from jaxsent import losses
from jaxsent.study import report, runner


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
