"""The `smoke` config end to end: real MiniLM, real SST-2, >= 80% validation accuracy.

This is the CI guard that the whole system learns: data, model import, losses, the sharded
step, checkpoint selection and evaluation together. About 2 minutes on 2 idle CPU cores.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_config_reaches_80_percent_on_sst2_validation(tmp_path):
    env = dict(os.environ)
    env.setdefault("JAXSENT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's laptop run
    result = subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/smoke.py", "--workdir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["split"] == "validation"
    assert results["n_examples"] == 872  # all of SST-2 validation: nothing dropped
    assert results["accuracy"] >= 0.80, results
    assert 0.0 <= results["ece"] < 0.15, results
