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


def test_changed_config_is_refused(reference_run, model_dir, tmp_path):
    workdir = tmp_path / "changed"
    shutil.copytree(reference_run.workdir, workdir)
    result = run(command(model_dir, workdir, "--config.train.global_batch_size=32"), timeout=600)
    assert result.returncode != 0
    assert "cannot resume" in result.stderr and "train.global_batch_size" in result.stderr


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
