"""Command-line entry points run as a user runs them: in a subprocess, from the repository root.

Runs get two host devices (data parallel, as on an accelerator) and the shared data folder.
`train_command` is a training run of the tiny random BERT (`tiny_models.save_tiny_model_dir`) on
small samples of SST-2: seconds of compute, every part of the real pipeline.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("JAXSENT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
TIMEOUT_S = 900  # cold compiles on 2 shared cores


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.setdefault("JAXSENT_DATA_DIR", DATA_DIR)
    # Two host devices: the runs below are data-parallel, as on a real accelerator.
    out["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    out["PYTHONUNBUFFERED"] = "1"
    return out


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", TIMEOUT_S)
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, **kwargs)


def module(name: str, *args: str) -> list[str]:
    """``python -m name args...`` with the interpreter running the tests."""
    return [sys.executable, "-m", name, *map(str, args)]


def train_command(model_dir, workdir, *overrides: str, num_steps: int = 8) -> list[str]:
    """`python -m train` of the tiny model: 192 train, 64 validation, 96 eval examples."""
    return module(
        "train",
        "--config",
        "configs/smoke.py",
        "--workdir",
        str(workdir),
        f"--config.model.name={model_dir}",
        "--config.data.train_size=192",
        "--config.data.validation_size=64",
        "--config.data.eval_size=96",
        "--config.data.max_length=32",
        "--config.train.global_batch_size=16",
        "--config.train.eval_batch_size=32",
        f"--config.train.num_steps={num_steps}",
        *overrides,
    )


def train_tiny_run(model_dir, workdir, *overrides: str) -> Path:
    """A finished tiny training run in ``workdir``."""
    result = run(train_command(model_dir, workdir, *overrides))
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(workdir)
