"""`check_config`: every bad field is named in one line before any work; the CLIs' error path."""

import json
import math
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from cli_runs import ROOT, module, run

from configs import default
from jaxsent import evaluation
from jaxsent.study.runner import load_config_file, plan_study
from jaxsent.training import config_check
from jaxsent.training.config_check import ConfigError, check_config

MISSING = "/nonexistent/jaxsent-test"


@pytest.fixture(autouse=True)
def _environment(monkeypatch):
    # Known data sets come from the hub unless a data directory is set; no test depends on one.
    monkeypatch.delenv("JAXSENT_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """A folder with only the config.json fields the checks read (12 heads, 512 positions)."""
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"model_type": "bert", "num_attention_heads": 12, "max_position_embeddings": 512}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _folder_with(tmp_path, **config) -> Path:
    folder = tmp_path / "other_model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_roberta_reads_two_positions_less_than_its_table(tmp_path):
    # RoBERTa's positions start past padding_idx=1: a 514-row table reads 512 tokens.
    folder = _folder_with(
        tmp_path, model_type="roberta", max_position_embeddings=514, pad_token_id=1
    )
    check_config(_config(folder, **{"data.max_length": 512}), num_devices=1, trace_steps=False)
    with pytest.raises(ConfigError, match=r"^config\.data\.max_length=513: .*\(512, "):
        check_config(_config(folder, **{"data.max_length": 513}), num_devices=1)


def test_an_unsupported_model_type_is_named(tmp_path):
    folder = _folder_with(tmp_path, model_type="gpt2")
    with pytest.raises(ConfigError, match=r"^config\.model\.name=.*model_type='gpt2'.*'bert'"):
        check_config(_config(folder), num_devices=1)


def _config(model_folder: Path, **fields) -> ml_collections.ConfigDict:
    """configs/default.py on `model_folder`, with `fields` ({"train.num_steps": 3}) set as given:
    any type, as a library user's config could hold."""
    config = default.get_config()
    config.model.name = str(model_folder)
    with config.ignore_type():
        for path, value in fields.items():
            group, _, name = path.rpartition(".")
            target = config
            for part in filter(None, group.split(".")):
                target = target[part]
            target[name] = value
    return config


def _error(config, *, num_devices: int = 1) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_config(config, num_devices=num_devices)
    message = str(info.value)
    assert "\n" not in message
    return info.value


# (fields set, the field named, its value): each one bad value, all else the default.
BAD_VALUES = [
    # types
    ({"train.num_steps": "10"}, "train.num_steps", "10"),
    ({"train.num_epochs": 1.0}, "train.num_epochs", 1.0),
    ({"optim.learning_rate": "5e-5"}, "optim.learning_rate", "5e-5"),
    ({"data.clean_markup": 1}, "data.clean_markup", 1),
    ({"data.train_split": 3}, "data.train_split", 3),
    ({"loss.stop_gradient_weights": 1}, "loss.stop_gradient_weights", 1),
    ({"loss.gamma_focal": "2"}, "loss.gamma_focal", "2"),
    ({"model.scan_layers": "yes"}, "model.scan_layers", "yes"),
    # ranges
    ({"seed": -1}, "seed", -1),
    ({"train.global_batch_size": 0}, "train.global_batch_size", 0),
    ({"train.eval_batch_size": -64}, "train.eval_batch_size", -64),
    ({"train.log_every_steps": 0}, "train.log_every_steps", 0),
    ({"train.checkpoint_every_steps": 0}, "train.checkpoint_every_steps", 0),
    ({"train.eval_every_steps": -1}, "train.eval_every_steps", -1),
    ({"train.max_checkpoints": 0}, "train.max_checkpoints", 0),
    ({"data.max_length": 1}, "data.max_length", 1),
    ({"data.num_buckets": 0}, "data.num_buckets", 0),
    ({"data.train_size": -5}, "data.train_size", -5),
    ({"data.validation_size": 1.5}, "data.validation_size", 1.5),
    ({"data.validation_size": 0.0}, "data.validation_size", 0.0),
    ({"data.eval_holdout": -0.2}, "data.eval_holdout", -0.2),
    ({"data.head_fraction": 1.5}, "data.head_fraction", 1.5),
    ({"model.dropout_rate": 1.0}, "model.dropout_rate", 1.0),
    ({"optim.b2": 1.0}, "optim.b2", 1.0),
    ({"optim.eps": 0.0}, "optim.eps", 0.0),
    ({"optim.warmup_steps": -2}, "optim.warmup_steps", -2),
    ({"optim.warmup_fraction": 1.1}, "optim.warmup_fraction", 1.1),
    ({"optim.grad_clip_norm": -1.0}, "optim.grad_clip_norm", -1.0),
    ({"optim.max_consecutive_nonfinite": 0}, "optim.max_consecutive_nonfinite", 0),
    ({"mesh.data": 0}, "mesh.data", 0),
    ({"mesh.model": 0}, "mesh.model", 0),
    ({"loss.label_smoothing_epsilon": 1.0}, "loss.label_smoothing_epsilon", 1.0),
    ({"loss.min_length_weight": 2.0}, "loss.min_length_weight", 2.0),
    # finiteness
    ({"optim.learning_rate": math.nan}, "optim.learning_rate", math.nan),
    ({"optim.weight_decay": math.inf}, "optim.weight_decay", math.inf),
    ({"loss.gamma_focal": -math.inf}, "loss.gamma_focal", -math.inf),
    # names
    ({"loss.name": "hinge"}, "loss.name", "hinge"),
    ({"optim.schedule": "step"}, "optim.schedule", "step"),
    ({"model.pooling": "max"}, "model.pooling", "max"),
    ({"model.dtype": "float16"}, "model.dtype", "float16"),
    ({"model.remat": "some"}, "model.remat", "some"),
    ({"data.truncation": "tail"}, "data.truncation", "tail"),
    ({"data.on_bad_rows": "skip"}, "data.on_bad_rows", "skip"),
    ({"mesh.strategy": "zero"}, "mesh.strategy", "zero"),
    ({"train.best_mode": "maximum"}, "train.best_mode", "maximum"),
    ({"train.best_metric": "acc"}, "train.best_metric", "acc"),
    ({"data.name": "imbd"}, "data.name", "imbd"),
    ({"data.name": f"{MISSING}/reviews.csv"}, "data.name", f"{MISSING}/reviews.csv"),
    ({"data.data_dir": MISSING}, "data.data_dir", MISSING),
    ({"model.name": MISSING}, "model.name", MISSING),
    ({"model.name": "a/b/c"}, "model.name", "a/b/c"),
    # a hub id outside the cache while HF_HUB_OFFLINE is set
    ({"model.name": "jaxsent-test/not-cached"}, "model.name", "jaxsent-test/not-cached"),
    # extra_evals syntax and names
    ({"data.extra_evals": "rotten_tomatoes:"}, "data.extra_evals", "rotten_tomatoes:"),
    ({"data.extra_evals": "imdb,imdb:test"}, "data.extra_evals", "imdb,imdb:test"),
    ({"data.extra_evals": "rotten_tomatos:all"}, "data.extra_evals", "rotten_tomatos:all"),
    # combinations
    ({"train.num_epochs": 0}, "train.num_epochs", 0),  # with num_steps 0
    ({"optim.warmup_steps": 101, "train.num_steps": 100}, "optim.warmup_steps", 101),
    # 320 examples in batches of 32, one epoch: at most 10 steps
    ({"optim.warmup_steps": 11, "data.train_size": 320}, "optim.warmup_steps", 11),
    ({"train.best_metric": "nll"}, "train.best_mode", "max"),
    ({"train.best_metric": "auroc", "train.best_mode": "min"}, "train.best_mode", "min"),
    ({"data.max_length": 1024}, "data.max_length", 1024),  # 512 positions
    ({"train.micro_batch_size": -8}, "train.micro_batch_size", -8),
    ({"train.micro_batch_size": 12}, "train.micro_batch_size", 12),  # batch 32
    ({"train.micro_batch_size": 8, "loss.name": "focal"}, "train.micro_batch_size", 8),
]


@pytest.mark.parametrize(
    "fields, field, value", BAD_VALUES, ids=[f"{f}={v!r}" for _, f, v in BAD_VALUES]
)
def test_a_bad_value_is_named_in_one_line(model_folder, fields, field, value):
    error = _error(_config(model_folder, **fields))
    assert error.field == field
    assert str(error).startswith(f"config.{field}={value!r}: ")
    assert len(str(error)) > len(f"config.{field}={value!r}: ") + 5  # says what is allowed


def test_the_issues_example_word_for_word(model_folder):
    error = _error(_config(model_folder, **{"train.global_batch_size": -3}))
    assert str(error) == (
        "config.train.global_batch_size=-3: must be a positive multiple of the data axis (1)"
    )


@pytest.mark.parametrize(
    "fields, num_devices, field, allowed",
    [
        ({"train.global_batch_size": 12}, 8, "train.global_batch_size", "the data axis (8)"),
        ({"mesh.model": 2, "train.eval_batch_size": 6}, 8, "train.eval_batch_size", "axis (4)"),
        ({"mesh.model": 3}, 8, "mesh.model", "must divide the number of devices (8)"),
        ({"mesh.data": 2, "mesh.model": 2}, 8, "mesh.data", "the number of devices (8)"),
        ({"mesh.model": 8}, 8, "mesh.model", "must divide the model's attention heads (12)"),
        ({"train.micro_batch_size": 4}, 8, "train.micro_batch_size", "the data axis (8)"),
    ],
)
def test_the_mesh_is_checked_against_devices_and_heads(
    model_folder, fields, num_devices, field, allowed
):
    error = _error(_config(model_folder, **fields), num_devices=num_devices)
    assert error.field == field and allowed in str(error)


def test_mesh_model_dividing_the_heads_and_devices_passes(model_folder):
    for fields in ({"mesh.model": 4}, {"mesh.model": 2, "mesh.data": 4}):
        check_config(_config(model_folder, **fields), num_devices=8, trace_steps=False)


def test_a_misspelt_field_is_unknown_and_the_intended_one_suggested(model_folder):
    config = _config(model_folder)
    config.train.lerning_rate = 3e-5
    error = _error(config)
    assert str(error).startswith("config.train.lerning_rate=3e-05: is not a field")
    assert "did you mean config.optim.learning_rate?" in str(error)


def test_a_missing_field_and_a_value_for_a_group_are_named(model_folder):
    config = _config(model_folder)
    del config.train["num_steps"]
    assert str(_error(config)).startswith("config.train.num_steps: is missing")
    config = ml_collections.ConfigDict(_config(model_folder).to_dict() | {"mesh": 3})
    assert str(_error(config)) == "config.mesh=3: must be a group of fields"


def test_optional_fields_may_be_absent_or_valid(model_folder):
    config = _config(model_folder)
    for name in ("gamma_focal", "label_smoothing_epsilon", "stop_gradient_weights"):
        del config.loss[name]  # the loss's own defaults apply
    check_config(config, num_devices=1, trace_steps=False)
    config.model.remat, config.model.scan_layers = "dots", True
    check_config(config, num_devices=1, trace_steps=False)


def test_every_default_field_has_a_rule():
    """A field added to configs/default.py needs a rule (else every run stops on it as
    unknown); a rule for a field default.py lacks is for an optional field."""
    fields = {path for path, _ in config_check._leaves(default.get_config())}
    assert fields - set(config_check.FIELDS) == set()
    assert set(config_check.FIELDS) - fields <= config_check.OPTIONAL_FIELDS


def test_best_metric_names_are_what_validation_writes():
    logits, labels = np.array([1.0, -2.0, 0.5, -0.1]), np.array([1, 0, 0, 1])
    written = set(evaluation.scalar_metrics(logits, labels)) - {"n_examples"}
    assert set(config_check.metric_names()) == written
    # Every metric of two and of K ordered classes has a direction, so best_mode is checked
    # against each, and no direction names a metric that is never written.
    every_metric = set(config_check.metric_names(2)) | set(config_check.metric_names(5, True))
    assert written < every_metric
    assert every_metric == config_check.HIGHER_IS_BETTER | config_check.LOWER_IS_BETTER


CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
STUDIES = sorted(p.name for p in (ROOT / "configs" / "study").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("num_devices", [1, 8])
def test_the_repositorys_configs_pass(name, num_devices, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # bert_base_imdb names a hub checkpoint
    # The steps are traced once per config (over 8 devices): the field rules need no trace.
    config = load_config_file(f"configs/{name}")
    check_config(config, num_devices=num_devices, trace_steps=num_devices == 8)


@pytest.mark.parametrize("name", STUDIES)
def test_every_run_of_the_repositorys_studies_passes(name, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    runs = plan_study(load_config_file(f"configs/study/{name}"), tmp_path)
    for planned in runs:
        check_config(planned.config, num_devices=1, trace_steps=False)
    assert not any(tmp_path.iterdir())  # planning writes nothing


def test_train_and_evaluate_checks_before_writing(model_folder, tmp_path):
    from jaxsent.training.loop import train_and_evaluate

    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"^config\.loss\.name='hinge': "):
        train_and_evaluate(_config(model_folder, **{"loss.name": "hinge"}), workdir)
    assert not workdir.exists()


# --- the command lines (each a subprocess: a few seconds of imports) ---------------------------


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "--config.train.global_batch_size=-3",
            # cli_runs gives the processes two host devices
            "error: config.train.global_batch_size=-3: must be a positive multiple of the data "
            "axis (2)",
        ),
        ("--config.train.lerning_rate=1", "error: --config.train.lerning_rate=1: "),
    ],
)
def test_train_reports_a_bad_value_in_one_line_and_writes_nothing(
    model_folder, tmp_path, override, expected
):
    workdir = tmp_path / "run"
    args = ["--config=configs/smoke.py", f"--workdir={workdir}", override]
    result = run(module("train", *args, f"--config.model.name={model_folder}"), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert _last_line(result.stderr).startswith(expected), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not workdir.exists() or not any(workdir.iterdir())


def test_debug_shows_the_traceback(model_folder, tmp_path):
    args = ["--config=configs/smoke.py", f"--workdir={tmp_path / 'run'}", "--debug"]
    bad = ["--config.train.global_batch_size=-3", f"--config.model.name={model_folder}"]
    result = run(module("train", *args, *bad), timeout=300)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigError: config.train.global_batch_size=-3" in (
        result.stderr
    )


def _tiny_modernbert_folder(tmp_path, **fields) -> Path:
    folder = tmp_path / "modernbert"
    folder.mkdir()
    config = dict(
        model_type="modernbert",
        vocab_size=64,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        **fields,
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# Every command, each with an error that used to surface late (after the run had written
# config.json, or as a traceback). JAX_PLATFORMS is emptied, as on a user's machine: with the
# test extra's libtpu installed, no command may print libtpu's start-up noise before its line.
CLI_ERRORS = {
    "train-architecture": (
        ("train", "--config=configs/smoke.py", "--config.model.name=bert-large"),
        "error: config.model.name='bert-large': is a named architecture: shapes without "
        "weights, for `python -m train.plan`; to train it, name its checkpoint "
        "('google-bert/bert-large-uncased') or a local folder",
    ),
    "train-local-window": (
        ("train", "--config=configs/smoke.py", "--config.model.name={modernbert}"),
        "error: config.model.name='{modernbert}': has a config.json "
        "ModernBertConfig.local_attention=1 must be >= 2",
    ),
    "plan-topology": (
        ("train.plan", "--config=configs/smoke.py", "--topology=v5e:3x3"),
        "error: ",
    ),
    "predict-model": (("train.predict", f"--model={MISSING}", "--text=fine"), "error: "),
    "predict-flag": (
        ("train.predict", f"--model={MISSING}", "--text=fine", "--chunk_rows=0"),
        "error: ",
    ),
    "evaluate-data": (
        ("train.evaluate", f"--model={MISSING}", "--data=imbd"),
        "error: --data='imbd': is neither a known data set",
    ),
    "study-seed": (
        ("train.study", "--config=configs/study/smoke.py", "--config.seeds=(0, -1)"),
        "error: config.seed=-1: must be an integer >= 0 (study variant 'bce', seed -1)",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_every_command_reports_a_user_error_in_one_line(tmp_path, case):
    (name, *args), expected = CLI_ERRORS[case]
    modernbert = _tiny_modernbert_folder(tmp_path, local_attention=1)
    args = [a.format(modernbert=modernbert) for a in args]
    expected = expected.format(modernbert=modernbert)
    workdir = tmp_path / "workdir"
    if name in ("train", "train.study"):
        args.append(f"--workdir={workdir}")
    result = run(module(name, *args), extra_env={"JAX_PLATFORMS": ""}, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr[-3000:]
    assert not workdir.exists()


# --- the steps traced on abstract shapes ---------------------------------------------------------


def _tiny_config(model_dir, **fields):
    config = _config(model_dir, **fields)
    config.data.max_length, config.train.global_batch_size = 32, 16
    return config


def test_a_valid_config_traces_its_steps_once(model_dir, monkeypatch):
    from jaxsent.training import build

    calls = []
    original = build.abstract_steps
    monkeypatch.setattr(build, "abstract_steps", lambda *a: calls.append(a) or original(*a))
    config = _tiny_config(model_dir, **{"train.micro_batch_size": 8})
    check_config(config, num_devices=2)
    check_config(config, num_devices=2)  # the same config over the same devices: no new trace
    check_config(config, num_devices=1)
    assert len(calls) == 2


def test_steps_that_cannot_be_built_are_one_line_naming_the_model(model_dir, monkeypatch):
    from jaxsent.training import build

    def refuse(config, mesh):
        raise NotImplementedError("this layout\nis not built")

    monkeypatch.setattr(build, "abstract_steps", refuse)
    config = _tiny_config(model_dir, **{"seed": 12345})  # not traced before in this process
    with pytest.raises(ConfigError) as info:
        check_config(config, num_devices=1)
    assert str(info.value) == (
        f"config: the run's model cannot be built from these fields (model.name="
        f"{str(model_dir)!r}, max_length 32): NotImplementedError: this layout is not built"
    )
    check_config(config, num_devices=1, trace_steps=False)  # the fields themselves pass


def test_a_k_class_config_builds_and_traces_a_k_logit_head(model_dir):
    from flax import nnx

    from jaxsent import sharding
    from jaxsent.training import build

    config = _tiny_config(model_dir, **{"data.name": "sst5", "train.best_metric": "mae"})
    config.train.best_mode = "min"
    check_config(config, num_devices=1)  # traced with the five classes sst5 names
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    steps, state, _ = build.abstract_steps(config, mesh)
    model, _ = nnx.merge(steps.eval_graphdef, steps.rng_state, state)
    assert model.head.kernel.shape == (32, 5) and model.label_names[0] == "very negative"
    config.train.best_metric = "auroc"  # a binary metric: sst5 has five classes
    with pytest.raises(ConfigError, match=r"^config\.train\.best_metric='auroc': .*'mae'"):
        check_config(config, num_devices=1, trace_steps=False)
