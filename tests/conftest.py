"""Test session setup.

Eight virtual CPU devices let the sharding tests build real meshes on a CPU-only machine.
The flag must be set before jax is imported anywhere, hence here and at module top.
"""

import dataclasses
import fcntl
import os
import shutil
from pathlib import Path

import pytest
from cli_runs import TEST_XLA_FLAGS

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
# With libtpu installed (test extra), JAX would start the TPU runtime in every process, and two
# pytest-xdist workers collide on /tmp/libtpu_lockfile; TPU topology compilation works on CPU.
# Describing a topology still takes libtpu's lock: tests/test_plan.py compiles in its worker and in
# `python -m train.plan` subprocesses at once, which this allows.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The test files that take longest (`--durations`, 2026-12-08), longest first. `make test` hands
# whole files to its two workers in collection order (`--dist loadfile --no-loadscope-reorder`);
# xdist's own order (most tests first) left the single two-minute smoke test to the end, one
# worker running it while the other had finished. Files not named keep their order, after these.
LONGEST_FILES = (
    "test_plan.py",
    "test_smoke.py",
    "test_predict.py",
    "test_gcs.py",
    "test_study.py",
    "test_training_step.py",
    "test_train_cli.py",
    "test_losses_multiclass.py",
    "test_modernbert.py",
    "test_multihost.py",
    "test_evaluate.py",
    "test_gpu_leads.py",
    "test_config_check.py",
    "test_compile_ahead.py",
    "test_modernbert_cli.py",
    "test_loop_choices.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept


def once_per_session(tmp_path_factory, name: str, make) -> Path:
    """The folder ``make(folder)`` filled, made once per test session and shared.

    Under pytest-xdist each worker is its own process with its own session fixtures; the
    session's temporary folder (the parent of every worker's) and a file lock make the first
    worker that asks build the folder while any other waits for it, so a training run used by
    test files on both workers is trained once. A failed build leaves no mark, so the next
    caller tries again. What it returns is shared: read it, or copy it before changing it.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The tiny random BERT classifier saved as a model folder (see tests/tiny_models.py).

    One path for the whole session: a run records it, and a resumed run must name the same.
    """
    from tiny_models import save_tiny_model_dir

    return once_per_session(tmp_path_factory, "tiny_model", save_tiny_model_dir)


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    workdir: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def reference_run(model_dir, tmp_path_factory) -> FinishedRun:
    """`cli_runs.command` trained to the end (8 steps, validation every 4, checkpoints every 2):
    the uninterrupted run that resumed, bucket and copied runs must reproduce. Shared by every
    test file and worker: never write into it (copy it first)."""
    from cli_runs import command, run

    def train(folder: Path) -> None:
        result = run(command(model_dir, folder / "workdir"))
        assert result.returncode == 0, result.stderr[-4000:]
        (folder / "stdout.txt").write_text(result.stdout)
        (folder / "stderr.txt").write_text(result.stderr)

    folder = once_per_session(tmp_path_factory, "reference", train)
    return FinishedRun(
        folder / "workdir",
        (folder / "stdout.txt").read_text(),
        (folder / "stderr.txt").read_text(),
    )


@pytest.fixture(scope="session")
def multiclass_run(tmp_path_factory) -> FinishedRun:
    """`cli_runs.multiclass_command` trained to the end: five SST-5 classes, a tiny BERT encoder
    with a pooler (wide initialisation, so that texts get distinct logits) under cls pooling.
    The one K-class run of the session, shared by the predict, evaluate and export tests: never
    write into it (pass --workdir, or copy it first)."""
    from cli_runs import multiclass_command, run
    from tiny_models import save_tiny_model_dir

    def train(folder: Path) -> None:
        encoder = save_tiny_model_dir(folder / "encoder", head=False, initializer_range=0.3)
        result = run(multiclass_command(encoder, folder / "workdir"))
        assert result.returncode == 0, result.stderr[-4000:]
        (folder / "stdout.txt").write_text(result.stdout)
        (folder / "stderr.txt").write_text(result.stderr)

    folder = once_per_session(tmp_path_factory, "multiclass", train)
    return FinishedRun(
        folder / "workdir",
        (folder / "stdout.txt").read_text(),
        (folder / "stderr.txt").read_text(),
    )


@pytest.fixture(scope="session")
def run_dir(reference_run, tmp_path_factory):
    """A finished `python -m train` run of the tiny model (8 steps, validation every 4).

    This worker's own copy of `reference_run` (the tests using it write into it, e.g.
    `train.evaluate`'s default output folder); a copy is a whole run, checkpoints included.
    """
    return Path(shutil.copytree(reference_run.workdir, tmp_path_factory.mktemp("run") / "run"))
