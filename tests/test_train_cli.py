"""`python -m train` end to end on a tiny random BERT: outputs, exact resume after SIGKILL and
after a graceful SIGTERM, refusal to resume under a changed config, damaged checkpoints.

The uninterrupted run they are compared with is conftest.py's session-wide `reference_run`."""

import json
import shutil
import signal

import jax
import numpy as np
from cli_runs import (
    NUM_STEPS,
    checkpoint_arrays,
    command,
    run,
    start,
    train_rows,
    wait_for_step,
)


def test_run_writes_the_documented_workdir(reference_run):
    workdir = reference_run.workdir
    for name in (
        "config.json",
        "metrics.jsonl",
        "eval_results.json",
        "predictions.parquet",
        "reliability.png",
    ):
        assert (workdir / name).is_file(), name
    assert any((workdir / "tensorboard").iterdir())
    results = json.loads((workdir / "eval_results.json").read_text())
    for key in (
        "accuracy",
        "precision",
        "recall",
        "f1",
        "auroc",
        "nll",
        "brier",
        "ece",
        "n_examples",
    ):
        assert key in results
    assert results["n_examples"] == 96  # every example of the (sampled) eval split
    assert sorted(train_rows(workdir)) == list(range(1, NUM_STEPS + 1))
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == NUM_STEPS
    stdout = reference_run.stdout
    assert "accuracy:" in stdout and "NOTE:" in stdout
    assert f"python -m train.predict --model {workdir} --text" in stdout
    assert "after scaling" in stdout and (workdir / "export" / "config.json").is_file()


def _assert_same_run(workdir, reference):
    """Every logged loss, the last checkpoint's arrays and the final report, exactly."""
    assert train_rows(workdir) == train_rows(reference)
    ours, theirs = checkpoint_arrays(workdir, NUM_STEPS), checkpoint_arrays(reference, NUM_STEPS)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    assert json.loads((workdir / "eval_results.json").read_text()) == json.loads(
        (reference / "eval_results.json").read_text()
    )


def test_sigkill_then_resume_is_bit_identical(reference_run, model_dir, tmp_path):
    reference = reference_run.workdir
    workdir = tmp_path / "killed"
    proc = start(command(model_dir, workdir))
    try:
        wait_for_step(workdir, 5, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = run(command(model_dir, workdir), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    _assert_same_run(workdir, reference)


def test_sigterm_saves_a_checkpoint_and_resumes_bit_identical(reference_run, model_dir, tmp_path):
    workdir = tmp_path / "term"
    proc = start(command(model_dir, workdir))
    wait_for_step(workdir, 1, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, output[-3000:]
    assert "Rerun the same command to resume" in output
    stopped_at = max(train_rows(workdir))
    assert stopped_at < NUM_STEPS and (workdir / "checkpoints" / str(stopped_at)).is_dir()
    resumed = run(command(model_dir, workdir), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from step {stopped_at}" in resumed.stderr
    _assert_same_run(workdir, reference_run.workdir)


def _tree(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_changed_recipe_is_refused_and_the_workdir_left_untouched(
    reference_run, model_dir, tmp_path
):
    workdir = tmp_path / "changed"
    shutil.copytree(reference_run.workdir, workdir)
    before = _tree(workdir)
    changed = ("--config.optim.learning_rate=3e-4", "--config.model.dropout_rate=0.2")
    result = run(command(model_dir, workdir, *changed), timeout=600)
    assert result.returncode == 2, result.stderr[-4000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot resume {workdir}: ") and "Traceback" not in result.stderr
    assert "model.dropout_rate (0.1 -> 0.2)" in line and "optim.learning_rate (" in line
    assert _tree(workdir) == before


def test_a_resume_may_log_differently_and_run_longer_and_records_it(
    reference_run, model_dir, tmp_path
):
    workdir = tmp_path / "longer"
    shutil.copytree(reference_run.workdir, workdir)
    started = (workdir / "config.json").read_text()
    longer = command(model_dir, workdir, "--config.train.log_every_steps=2", num_steps=10)
    result = run(longer, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"resumed from step {NUM_STEPS}" in result.stderr
    assert (workdir / "config.json").read_text() == started
    rows = [json.loads(x) for x in (workdir / "config_changes.jsonl").read_text().splitlines()]
    assert rows == [
        {
            "step": NUM_STEPS,
            "changes": {"train.log_every_steps": [1, 2], "train.num_steps": [NUM_STEPS, 10]},
        }
    ]
    assert max(train_rows(workdir)) == 10


def test_damaged_newest_checkpoint_falls_back_to_the_previous(reference_run, model_dir, tmp_path):
    reference = reference_run.workdir
    workdir = tmp_path / "damaged"
    shutil.copytree(reference, workdir)
    # Keep checkpoints up to step 6, as if the run had been killed after saving step 6, then
    # damage step 6: the resume must warn, fall back to step 4, and finish identically.
    shutil.rmtree(workdir / "checkpoints" / str(NUM_STEPS))
    (workdir / "eval_results.json").unlink()
    newest = workdir / "checkpoints" / str(NUM_STEPS - 2)
    for path in sorted(newest.rglob("*")):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = run(command(model_dir, workdir), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"checkpoints/{NUM_STEPS - 2} is unreadable" in result.stderr
    assert train_rows(workdir) == train_rows(reference)
