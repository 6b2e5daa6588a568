"""`python -m train` end to end on a tiny random BERT: outputs, exact resume after SIGKILL,
graceful SIGTERM, refusal to resume under a changed config, damaged checkpoints."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest
from cli_runs import ROOT, env, run, train_command
from tiny_models import save_tiny_model_dir

NUM_STEPS = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


def _command(model_dir, workdir, *overrides):
    return train_command(
        model_dir,
        workdir,
        "--config.train.log_every_steps=1",
        "--config.train.eval_every_steps=4",
        "--config.train.checkpoint_every_steps=2",
        "--config.train.max_checkpoints=10",
        *overrides,
        num_steps=NUM_STEPS,
    )


_env = env
_run = run


def _train_rows(workdir):
    """step -> loss of the last logged train row for that step (a resumed run re-logs steps)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def _wait_for_step(workdir, step, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
        path = workdir / "metrics.jsonl"
        if path.exists() and max(_train_rows(workdir), default=0) >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _checkpoint_arrays(workdir, step):
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(workdir / "checkpoints") as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    import jax

    return jax.tree.map(np.asarray, restored["state"])


@pytest.fixture(scope="module")
def reference_run(model_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = _run(_command(model_dir, workdir), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, result


def test_run_writes_the_documented_workdir(reference_run):
    workdir, result = reference_run
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
    assert sorted(_train_rows(workdir)) == list(range(1, NUM_STEPS + 1))
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == NUM_STEPS
    assert "accuracy:" in result.stdout and "NOTE:" in result.stdout
    assert f"python -m train.predict --model {workdir} --text" in result.stdout
    assert "after scaling" in result.stdout and (workdir / "export" / "config.json").is_file()


def test_sigkill_then_resume_is_bit_identical(reference_run, model_dir, tmp_path):
    reference, _ = reference_run
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(model_dir, workdir),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_step(workdir, 5, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = _run(_command(model_dir, workdir), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert _train_rows(workdir) == _train_rows(reference)  # every logged loss, exactly
    ours, theirs = _checkpoint_arrays(workdir, NUM_STEPS), _checkpoint_arrays(reference, NUM_STEPS)
    import jax

    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    assert json.loads((workdir / "eval_results.json").read_text()) == json.loads(
        (reference / "eval_results.json").read_text()
    )


def test_sigterm_saves_a_checkpoint_and_exits_resumable(model_dir, tmp_path):
    workdir = tmp_path / "term"
    proc = subprocess.Popen(
        _command(model_dir, workdir),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_step(workdir, 1, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, output[-3000:]
    assert "Rerun the same command to resume" in output
    stopped_at = max(_train_rows(workdir))
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir()
    resumed = _run(_command(model_dir, workdir), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]


def test_changed_config_is_refused(reference_run, model_dir):
    workdir, _ = reference_run
    result = _run(_command(model_dir, workdir, "--config.train.global_batch_size=32"), timeout=600)
    assert result.returncode != 0
    assert "cannot resume" in result.stderr and "train.global_batch_size" in result.stderr


def test_damaged_newest_checkpoint_falls_back_to_the_previous(reference_run, model_dir, tmp_path):
    import shutil

    reference, _ = reference_run
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
    result = _run(_command(model_dir, workdir), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"checkpoints/{NUM_STEPS - 2} is unreadable" in result.stderr
    assert _train_rows(workdir) == _train_rows(reference)
