"""Helpers for tests that run `python -m train` as a subprocess on the tiny model.

The work directory may be local or a bucket URL (``gs://...``, read through `etils.epath`).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from etils import epath

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("JAXSENT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
NUM_STEPS = 8
TIMEOUT_S = 900  # cold compiles on 2 shared cores
# Most tests spend their time in XLA's CPU compiler, not in running what it compiled. For the test
# processes and the runs they start: optimisation level 0 of the CPU backend (LLVM's), and the
# classic fused-kernel emitter instead of the MLIR fusion emitters, which build an MLIR context
# and pipeline per fusion (a tiny model's train step: 5.4 -> 4.5 s to compile;
# tests/test_training_step.py 155 -> 98 s). The same HLO programs; no fast-math either way, and
# what a test compares is compiled alike. tests/test_smoke.py and `make train` keep the defaults.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def module(name: str, *args: str) -> list[str]:
    """``python -m name args...`` with the interpreter running the tests."""
    return [sys.executable, "-m", name, *map(str, args)]


def train_command(model_dir, workdir, *overrides: str, num_steps: int = NUM_STEPS) -> list[str]:
    """`python -m train` of the tiny model on SST-2: 192 train, 64 validation, 96 eval examples."""
    return module(
        "train",
        "--config",
        "configs/smoke.py",
        "--workdir",
        workdir,
        f"--config.model.name={model_dir}",
        "--config.data.train_size=192",
        "--config.data.validation_size=64",
        "--config.data.eval_size=96",
        "--config.data.max_length=32",
        "--config.data.num_buckets=2",  # two shapes: the runs' compiles are most of their time
        "--config.train.global_batch_size=16",
        "--config.train.eval_batch_size=32",
        f"--config.train.num_steps={num_steps}",
        *overrides,
    )


def command(model_dir, workdir, *overrides, num_steps: int = NUM_STEPS):
    """`train_command` with a log row each step, validation every 4 and checkpoints every 2."""
    return train_command(
        model_dir,
        workdir,
        "--config.train.log_every_steps=1",
        "--config.train.eval_every_steps=4",
        "--config.train.checkpoint_every_steps=2",
        "--config.train.max_checkpoints=10",
        *overrides,
        num_steps=num_steps,
    )


# The five-class run (`multiclass_command`): SST-5 under cls pooling, so that its export is a
# transformers BertForSequenceClassification with five labels.
SST5_CLASSES = ("very negative", "negative", "neutral", "positive", "very positive")


def multiclass_command(encoder_dir, workdir) -> list[str]:
    """`train_command` on SST-5 (five ordered classes) from a bare encoder with a pooler, under
    ``pooling=cls``: one bucket shape (one compile), and a learning rate at which 8 steps move
    the fresh head, so that the predicted classes differ between texts."""
    return train_command(
        encoder_dir,
        workdir,
        "--config.data.name=sst5",
        "--config.model.pooling=cls",
        "--config.data.num_buckets=1",
        "--config.optim.learning_rate=1e-3",
    )


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    result = dict(os.environ)
    result.setdefault("JAXSENT_DATA_DIR", DATA_DIR)
    # Two host devices: the runs below are data-parallel, as on a real accelerator.
    result["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=2 {TEST_XLA_FLAGS}"
    result["PYTHONUNBUFFERED"] = "1"
    result.update(extra or {})
    return result


# Set in the pytest process that `passed_under_the_default_compiler` starts.
DEFAULT_COMPILER_ENV = "JAXSENT_TEST_DEFAULT_COMPILER"


def passed_under_the_default_compiler(request) -> bool:
    """Runs the calling test again in a pytest process with XLA's default CPU flags (what a user's
    run compiles with, not `TEST_XLA_FLAGS`) and returns True once it passed there; returns False
    in that process, where the test's body runs. For the few claims about the default compiler's
    arithmetic bit for bit, rather than about two computations compiled alike."""
    if os.environ.get(DEFAULT_COMPILER_ENV):
        return False
    result = run(
        module("pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", request.node.nodeid),
        extra_env={
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            DEFAULT_COMPILER_ENV: "1",
        },
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return True


def run(cmd, *, extra_env=None, **kwargs):
    kwargs.setdefault("timeout", TIMEOUT_S)
    return subprocess.run(
        cmd, cwd=ROOT, env=env(extra_env), capture_output=True, text=True, **kwargs
    )


def start(cmd, *, extra_env=None):
    """`cmd` in the background, stdout and stderr together."""
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env(extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def metrics_rows(workdir) -> list[dict]:
    path = epath.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_rows(workdir) -> dict[int, float]:
    """step -> loss of the last logged train row for that step (a resumed run re-logs steps)."""
    return {r["step"]: r["loss"] for r in metrics_rows(workdir) if r["split"] == "train"}


def read_json(path):
    return json.loads(epath.Path(path).read_text())


def wait_for_step(workdir, step, proc, timeout=300):
    deadline = time.monotonic() + timeout
    path = epath.Path(workdir) / "metrics.jsonl"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
        if path.exists() and max(train_rows(workdir), default=0) >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def checkpoint_arrays(workdir, step):
    import jax
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(epath.Path(workdir) / "checkpoints") as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.map(np.asarray, restored["state"])
