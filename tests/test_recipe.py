"""`jaxsent.training.recipe`: which fields a resume may change, and the record of the changes."""

import json

import pytest
from etils import epath

from configs import default
from jaxsent.training import recipe


def _config(**fields):
    config = default.get_config()
    for path, value in fields.items():
        group, _, name = path.rpartition(".")
        (config[group] if group else config)[name] = value
    return config


def test_the_same_config_changes_nothing():
    assert recipe.resume_changes(recipe.flatten(_config()), _config()) == {}


@pytest.mark.parametrize(
    "fields",
    [
        {"train.log_every_steps": 7},
        {"train.checkpoint_every_steps": 3, "train.max_checkpoints": 5},
        {"train.eval_every_steps": 11, "train.eval_batch_size": 8},
        {"train.num_steps": 500, "train.num_epochs": 2},
        {"data.extra_evals": "rotten_tomatoes:all", "mesh.data": 2},
    ],
)
def test_fields_that_change_no_step_may_change(fields):
    started = recipe.flatten(_config(**{"train.num_steps": 100}))
    changes = recipe.resume_changes(started, _config(**{"train.num_steps": 100, **fields}))
    assert changes == {f: (started[f], v) for f, v in fields.items()}


@pytest.mark.parametrize(
    "fields",
    [
        {"optim.learning_rate": 3e-4},
        {"loss.name": "focal"},
        {"model.dropout_rate": 0.0},
        {"model.dtype": "bfloat16"},
        {"train.micro_batch_size": 8},
        {"mesh.strategy": "fsdp"},
        {"seed": 1},
        {"data.max_length": 128},
        {"optim.schedule": "cosine"},
        {"train.num_steps": 50},  # shorter
        {"train.num_epochs": 0},
    ],
)
def test_fields_that_change_what_a_step_computes_are_refused(fields):
    started = recipe.flatten(_config(**{"train.num_steps": 100, "train.num_epochs": 1}))
    with pytest.raises(recipe.ResumeRefused) as info:
        recipe.resume_changes(started, _config(**{"train.num_steps": 100, **fields}), workdir="w")
    message = str(info.value)
    assert message.startswith("cannot resume w: ") and "\n" not in message
    for field, value in fields.items():
        assert f"{field} ({started[field]!r} -> {value!r})" in message


def test_every_refused_field_is_named_at_once():
    started = recipe.flatten(_config())
    new = _config(**{"optim.learning_rate": 1.0, "seed": 3, "train.log_every_steps": 9})
    with pytest.raises(recipe.ResumeRefused, match=r"optim\.learning_rate .*seed \(0 -> 3\)"):
        recipe.resume_changes(started, new)


def test_switching_from_epochs_to_steps_is_no_growth():
    started = recipe.flatten(_config(**{"train.num_steps": 0}))
    with pytest.raises(recipe.ResumeRefused, match="train.num_steps"):
        recipe.resume_changes(started, _config(**{"train.num_steps": 10}))


def test_a_field_the_record_predates_compares_with_what_the_run_ran_with():
    started = recipe.flatten(_config())
    del started["train.micro_batch_size"], started["model.scan_layers"]
    assert recipe.resume_changes(started, _config()) == {}
    with pytest.raises(recipe.ResumeRefused, match=r"train\.micro_batch_size \(0 -> 8\)"):
        recipe.resume_changes(started, _config(**{"train.micro_batch_size": 8}))


def test_the_record_replays_accepted_changes(tmp_path):
    workdir = epath.Path(tmp_path)
    assert recipe.started_config(workdir) is None and not recipe.has_checkpoint(workdir)
    (workdir / "config.json").write_text(_config().to_json_best_effort())
    recipe.record_changes(workdir, 40, {"train.log_every_steps": (50, 5)})
    recipe.record_changes(workdir, 80, {})  # nothing changed: no row
    recipe.record_changes(workdir, 90, {"train.log_every_steps": (5, 10)})
    rows = [
        json.loads(line) for line in (workdir / "config_changes.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [40, 90]
    assert recipe.started_config(workdir)["train.log_every_steps"] == 10
    (workdir / "checkpoints" / "90.orbax-checkpoint-tmp-1").mkdir(parents=True)
    assert not recipe.has_checkpoint(workdir)  # an unfinished save is no checkpoint
    (workdir / "checkpoints" / "40").mkdir()
    assert recipe.has_checkpoint(workdir)
