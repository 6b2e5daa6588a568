"""`loop.resume`: a resume key added after a checkpoint was written takes its old default."""

import types

import pytest

from configs import default
from jaxsent.training import loop


class _Checkpoints:
    def __init__(self, fingerprint):
        self.meta = {"step": 7, "best": 0.5, "fingerprint": fingerprint}

    def latest_step(self):
        return 7

    def restore_latest(self, state):
        return state, self.meta


def _run(config, stored):
    return types.SimpleNamespace(
        ckpts=_Checkpoints(stored),
        state="state",
        fingerprint=loop.resume_fingerprint(config),
        workdir="runs/x",
        best=None,
    )


def test_a_checkpoint_from_before_a_resume_key_resumes_under_its_default():
    config = default.get_config()
    stored = loop.resume_fingerprint(config)
    del stored["model.scan_layers"]  # written before the key existed
    run = _run(config, stored)
    assert loop.resume(run) == 7 and run.best == 0.5

    config.model.scan_layers = True  # not the layout the checkpoint was written in
    with pytest.raises(ValueError, match=r"'model.scan_layers': \(False, True\)"):
        loop.resume(_run(config, stored))
