"""Multi-host training: two processes with 2 CPU devices each train like one with 4.

The pair is stopped part-way by a SIGTERM to one process only (both must stop after the same
step) and resumed, as a preempted pod would be. The processes meet through
`jax.distributed.initialize` on localhost (gloo collectives over TCP) and share one workdir, as
hosts of a pod share a bucket. Each builds only its own rows of every global batch; the mesh,
the global batch and the dropout keys are those of the single-process run, so the per-step
losses and final parameters agree up to the order of floating-point reductions (measured
differences <= 6e-7; tolerance 1e-5).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_runs import TEST_XLA_FLAGS
from tiny_models import save_tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("JAXSENT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
NUM_STEPS = 4
EVAL_SIZE = 64
TIMEOUT_S = 600  # cold compiles of three processes on 2 shared cores; ~1-2 min when idle


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(model_dir, workdir, *extra):
    return [
        sys.executable,
        "-m",
        "train",
        "--config",
        "configs/smoke.py",
        "--workdir",
        str(workdir),
        f"--config.model.name={model_dir}",
        "--config.data.train_size=96",
        "--config.data.validation_size=32",
        f"--config.data.eval_size={EVAL_SIZE}",
        "--config.data.max_length=32",
        "--config.data.num_buckets=1",  # one compiled shape: the runs are compile-bound
        "--config.train.global_batch_size=16",
        "--config.train.eval_batch_size=32",
        f"--config.train.num_steps={NUM_STEPS}",
        "--config.train.log_every_steps=1",
        f"--config.train.eval_every_steps={NUM_STEPS}",
        f"--config.train.checkpoint_every_steps={NUM_STEPS}",
        *extra,
    ]


def _env(devices: int, cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAXSENT_DATA_DIR", DATA_DIR)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"
    env["JAXSENT_COMPILATION_CACHE"] = str(cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Runs:
    """Child processes that end together: a failure or the deadline kills them all.

    A process that dies leaves its partner blocked in a collective, so one failure ends all.
    """

    def __init__(self, directory: Path, deadline: float):
        self.directory, self.deadline = directory, deadline
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.exit_codes: dict[str, int] = {}  # expected, where not 0

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.logs[name] = self.directory / f"{name}.log"
        with open(self.logs[name], "w") as log:
            self.procs[name] = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self, name: str) -> str:
        return self.logs[name].read_text()

    def fail(self, message: str):
        self.kill()
        tails = "\n".join(f"--- {n} ---\n{self.output(n)[-3000:]}" for n in self.procs)
        raise AssertionError(f"{message}\n{tails}")

    def poll_until(self, condition, what: str) -> None:
        """Waits for `condition()`, failing on the deadline or an unexpected exit."""
        while not condition():
            for name, proc in self.procs.items():
                code = proc.poll()
                if code is not None and code != self.exit_codes.get(name, 0):
                    self.fail(f"{name} exited with {code} while waiting for {what}")
            if time.monotonic() > self.deadline:
                self.fail(f"timed out waiting for {what}")
            time.sleep(0.05)

    def wait(self, expected_codes: dict[str, int]) -> None:
        """Waits for the named processes to exit with the given codes."""
        self.exit_codes.update(expected_codes)
        self.poll_until(
            lambda: all(self.procs[n].poll() is not None for n in expected_codes),
            f"{sorted(expected_codes)} to exit",
        )

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def _train_losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def _checkpoint_arrays(workdir: Path, step: int):
    """The saved state on this process's first device (the saving topology is gone)."""
    import jax
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        checkpointer.metadata(path).item_metadata,
    )
    return jax.tree.map(np.asarray, checkpointer.restore(path, target))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with 4 devices; two with 2 each, one of them sent SIGTERM, then resumed.

    Returns (single-process workdir, two-process workdir, outputs by run name).
    """
    tmp = tmp_path_factory.mktemp("multihost")
    model_dir = save_tiny_model_dir(tmp / "model")
    single, multi = tmp / "single", tmp / "multi"

    def pair(prefix: str, runs: Runs) -> None:
        port = _free_port()
        for i in range(2):
            flags = (
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            )
            runs.start(
                f"{prefix}{i}", _command(model_dir, multi, *flags), _env(2, tmp / "cache_multi")
            )

    runs = Runs(tmp, time.monotonic() + TIMEOUT_S)
    try:
        # The reference runs beside the pair: the pair spends much of its time waiting.
        runs.start("single", _command(model_dir, single), _env(4, tmp / "cache_single"))
        pair("process", runs)
        metrics = multi / "metrics.jsonl"
        runs.poll_until(lambda: metrics.exists() and '"train"' in metrics.read_text(), "step 1")
        # Only process 1 is signalled: process 0 must learn of it and stop after the same step
        # (at the latest after the final validation, which follows the last step).
        runs.procs["process1"].send_signal(signal.SIGTERM)
        runs.wait({"process0": 75, "process1": 75})
        pair("resumed", runs)
        runs.wait({"single": 0, "resumed0": 0, "resumed1": 0})
    finally:
        runs.kill()
    return single, multi, {name: runs.output(name) for name in runs.procs}


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_after_the_same_step(runs):
    _, multi, outputs = runs
    assert "stopped by signal 15 after step" in outputs["process1"]
    assert "stopped by a signal to another process after step" in outputs["process0"]
    steps = {int(re.search(r"after step (\d+)", outputs[f"process{i}"]).group(1)) for i in range(2)}
    assert len(steps) == 1, steps
    assert "resumed from step" in outputs["resumed0"]


@pytest.mark.slow
def test_two_processes_log_the_losses_of_one(runs):
    single, multi, _ = runs
    ours, theirs = _train_losses(multi), _train_losses(single)
    assert sorted(ours) == sorted(theirs) == list(range(1, NUM_STEPS + 1))
    np.testing.assert_allclose(
        [ours[s] for s in sorted(ours)], [theirs[s] for s in sorted(theirs)], rtol=0, atol=1e-5
    )


@pytest.mark.slow
def test_two_processes_evaluate_like_one(runs):
    single, multi, _ = runs
    ours = json.loads((multi / "eval_results.json").read_text())
    theirs = json.loads((single / "eval_results.json").read_text())
    assert ours["n_examples"] == theirs["n_examples"] == EVAL_SIZE  # every example, once
    assert ours["accuracy"] == theirs["accuracy"]
    assert ours["best_step"] == theirs["best_step"] == NUM_STEPS
    for key in ("nll", "brier"):
        assert abs(ours[key] - theirs[key]) <= 1e-5, key
    from jaxsent.reporting import read_predictions

    ours, theirs = (
        read_predictions(multi / "predictions.parquet"),
        read_predictions(single / "predictions.parquet"),
    )
    np.testing.assert_array_equal(ours["example_id"], theirs["example_id"])
    np.testing.assert_allclose(ours["logit"], theirs["logit"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_two_processes_save_the_parameters_of_one(runs):
    import jax

    single, multi, _ = runs
    ours, theirs = _checkpoint_arrays(multi, NUM_STEPS), _checkpoint_arrays(single, NUM_STEPS)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), ours, theirs)


@pytest.mark.slow
def test_only_process_zero_reports(runs):
    _, _, outputs = runs
    assert "accuracy:" in outputs["resumed0"]
    assert "accuracy:" not in outputs["resumed1"]
    assert "validation accuracy=" not in outputs["process1"] + outputs["resumed1"]


@pytest.mark.slow
def test_two_processes_export_the_model_of_one(runs):
    from safetensors.numpy import load_file

    single, multi, _ = runs
    ours = load_file(str(multi / "export" / "model.safetensors"))
    theirs = load_file(str(single / "export" / "model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-5, err_msg=key)
    ours, theirs = (json.loads((w / "export" / "jaxsent.json").read_text()) for w in runs[:2])
    assert ours["bucket_boundaries"] == theirs["bucket_boundaries"]
    assert ours["run"]["best_step"] == theirs["run"]["best_step"] == NUM_STEPS
