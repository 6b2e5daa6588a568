"""The training loop's choices, checked on two finished tiny runs against what they logged.

The two runs train identically (same data, steps and seed) and differ only in how the best
checkpoint is chosen: the highest validation accuracy, or the lowest validation NLL. On them:
the best checkpoint is the best validation step of `metrics.jsonl` (ties: the newest), only the
newest `train.max_checkpoints` periodic checkpoints are kept, and the final temperature is the one
fitted on the best checkpoint's validation logits, scored again here from the checkpoint.
"""

import json
import shutil

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_runs import DATA_DIR, metrics_rows, read_json, run, train_command

from jaxsent import calibration, reporting
from jaxsent.export import read_settings
from jaxsent.inference import Scorer, load_trained
from jaxsent.training import splits as splits_lib

pytestmark = pytest.mark.slow

NUM_STEPS = 12
EVERY = 2  # validation and periodic checkpoints
COMMON = (
    "--config.data.num_buckets=1",  # one compiled shape: each run takes about half a minute
    # Large enough for a tiny random model to learn in 12 steps, so that validation moves: the
    # accuracy rises to a plateau (a tie) and the NLL has its minimum before the last step.
    "--config.optim.learning_rate=3e-3",
    f"--config.train.eval_every_steps={EVERY}",
    f"--config.train.checkpoint_every_steps={EVERY}",
    f"--config.train.log_every_steps={EVERY}",
)
RUNS = {  # name: (best_metric, best_mode, max_checkpoints)
    "max_accuracy": ("accuracy", "max", 1),
    "min_nll": ("nll", "min", 3),
}
# Logits of the same checkpoint scored here (8 host devices, 4 rows each) and in the run
# (2 devices, 16 rows each) differ in float32 summation order: measured up to 3e-8 (one ulp at
# |z| ~ 0.3); the bound allows a few ulps of logits up to ~10.
LOGIT_ATOL = 1e-6
# The temperature is homogeneous in the logits (T(c z) = c T(z)), so it moves by about the
# logits' relative error, and bisection resolves log T to float32 rounding: measured 1e-7
# relative. Another checkpoint's logits move it far outside: 0.63 at step 6, 1.15 at step 12.
TEMPERATURE_RTOL = 1e-5


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    """name -> work directory of each finished run."""
    out = {}
    for name, (metric, mode, keep) in RUNS.items():
        workdir = tmp_path_factory.mktemp(name) / "run"
        result = run(
            train_command(
                model_dir,
                workdir,
                *COMMON,
                f"--config.train.best_metric={metric}",
                f"--config.train.best_mode={mode}",
                f"--config.train.max_checkpoints={keep}",
                num_steps=NUM_STEPS,
            )
        )
        assert result.returncode == 0, result.stderr[-4000:]
        out[name] = workdir
    return out


def _validation_rows(workdir) -> list[dict]:
    return [r for r in metrics_rows(workdir) if r["split"] == "validation"]


def _expected_best(rows, metric: str, mode: str) -> tuple[int, float, bool]:
    """(step, value, tied) of the best validation row; among equal values, the newest step."""
    values = [r[metric] for r in rows]
    best = max(values) if mode == "max" else min(values)
    steps = [r["step"] for r in rows if r[metric] == best]
    return steps[-1], best, len(steps) > 1


def _step_folders(folder) -> list[str]:
    return sorted((p.name for p in folder.iterdir()), key=lambda name: int(name))


def _best_meta(workdir, step: int) -> dict:
    with ocp.CheckpointManager(
        workdir / "best", options=ocp.CheckpointManagerOptions(read_only=True)
    ) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])


def test_best_mode_changes_the_choice_not_the_training(runs):
    first, second = (_validation_rows(w) for w in runs.values())
    assert [r["step"] for r in first] == list(range(EVERY, NUM_STEPS + 1, EVERY))
    assert first == second


@pytest.mark.parametrize("name", RUNS)
def test_best_checkpoint_is_the_best_validation_step(runs, name):
    metric, mode, _ = RUNS[name]
    workdir = runs[name]
    step, value, tied = _expected_best(_validation_rows(workdir), metric, mode)
    assert read_json(workdir / "eval_results.json")["best_step"] == step
    assert _step_folders(workdir / "best") == [str(step)]  # the only best checkpoint on disk
    meta = _best_meta(workdir, step)
    assert meta["step"] == step and meta["best"] == value
    # What makes each run a test: without these, a rule such as "the last step" or "the first
    # of equal values" would pass too.
    if name == "max_accuracy":
        assert tied, "the accuracy run no longer ties at its best: change its recipe"
    else:
        assert step < NUM_STEPS, "the NLL run is best at its last step: change its recipe"


@pytest.mark.parametrize("name", RUNS)
def test_only_the_newest_periodic_checkpoints_are_kept(runs, name):
    _, _, keep = RUNS[name]
    workdir = runs[name]
    periodic = list(range(EVERY, NUM_STEPS + 1, EVERY))
    assert _step_folders(workdir / "checkpoints") == [str(s) for s in periodic[-keep:]]
    assert len(_step_folders(workdir / "best")) == 1  # kept apart, whatever its step


def _validation_temperature(workdir, tmp_path) -> tuple[float, int, np.ndarray]:
    """The temperature fitted on the validation logits of `workdir`'s best checkpoint, scored
    here: the model restored from `best/` (a copy of the run without its export, so that
    `load_trained` reads the checkpoint), the validation split rebuilt from the run's config,
    and the run's own bucket boundaries and batch size (from its export's settings).

    Returns the temperature, the checkpoint's step and the largest logit difference on the
    eval split from the run's `predictions.parquet` (same checkpoint, scored by the run).
    """
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("export"))
    trained = load_trained(copy)
    assert trained.source == "checkpoint"
    settings, _ = read_settings(workdir / "export")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    config.data.data_dir = DATA_DIR  # where the run's subprocess found it
    splits = splits_lib.load_splits(config, trained.tokenizer)[0]
    scorer = Scorer(
        trained.model,
        batch_size=settings.batch_size,
        boundaries=settings.bucket_boundaries,
        pad_id=trained.tokenizer.pad_token_id or 0,
    )
    scored = scorer.predict_split(splits["eval"])
    saved = reporting.read_predictions(workdir / "predictions.parquet")
    order = np.argsort(scored["example_ids"])
    np.testing.assert_array_equal(scored["example_ids"][order], np.sort(saved["example_id"]))
    mine = scored["logits"][order]
    theirs = saved["logit"][np.argsort(saved["example_id"])]
    validation = scorer.predict_split(splits["validation"])
    temperature = float(calibration.fit_temperature(validation["logits"], validation["labels"]))
    return temperature, trained.best_step, np.max(np.abs(mine - theirs))


@pytest.fixture(scope="module")
def temperatures(runs, tmp_path_factory):
    return {
        name: _validation_temperature(workdir, tmp_path_factory.mktemp(f"{name}_copy"))
        for name, workdir in runs.items()
    }


@pytest.mark.parametrize("name", RUNS)
def test_temperature_is_fitted_on_the_best_checkpoints_validation_logits(runs, temperatures, name):
    temperature, step, eval_logit_gap = temperatures[name]
    results = read_json(runs[name] / "eval_results.json")
    assert step == results["best_step"]
    # The scoring here reproduces the run's own (eval split, same checkpoint).
    assert eval_logit_gap <= LOGIT_ATOL
    assert results["temperature"] == pytest.approx(temperature, rel=TEMPERATURE_RTOL)
    assert 0.01 < temperature < 100  # fitted inside the search bounds, not stopped at one


def test_the_two_best_checkpoints_give_temperatures_far_apart(temperatures):
    """The runs choose different checkpoints of one training, and their validation logits give
    temperatures much further apart than the tolerance: logits of another step than the best
    would fail the test above."""
    (t_max, step_max, _), (t_min, step_min, _) = temperatures.values()
    assert step_max != step_min
    assert abs(t_max - t_min) > 100 * TEMPERATURE_RTOL * max(t_max, t_min)
