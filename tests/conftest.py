"""Test session setup.

Eight virtual CPU devices let the sharding tests build real meshes on a CPU-only machine.
The flag must be set before jax is imported anywhere, hence here and at module top.
"""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# With libtpu installed (test extra), JAX would start the TPU runtime in every process, and two
# pytest-xdist workers collide on /tmp/libtpu_lockfile; TPU topology compilation works on CPU.
# Describing a topology still takes libtpu's lock: tests/test_plan.py compiles in its worker and in
# `python -m train.plan` subprocesses at once, which this allows.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The tiny random BERT classifier saved as a model folder (see tests/tiny_models.py)."""
    from tiny_models import save_tiny_model_dir

    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def run_dir(model_dir, tmp_path_factory):
    """A finished `python -m train` run of the tiny model (8 steps, validation every 4)."""
    from cli_runs import train_tiny_run

    return train_tiny_run(
        model_dir,
        tmp_path_factory.mktemp("run"),
        "--config.train.eval_every_steps=4",
        "--config.train.log_every_steps=4",
    )
