"""`StepFunctions.compile_ahead`: the background executables are the ones `jax.jit` would have
compiled (bit-identical steps), they are what the steps run, and an unknown shape or a failed
compile behaves as without them."""

import jax
import numpy as np
import pytest
from test_training_step import _batch, _place, _setup

from jaxsent import sharding
from jaxsent.training import steps as steps_lib


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(data=2, devices=jax.devices()[:2])


def _run(steps, state, mesh, batches):
    """Train steps on `batches`, then the eval step on the first; everything fetched."""
    losses = []
    with jax.set_mesh(mesh):
        for batch in batches:
            state, metrics = steps.train_step(state, _place(batch, mesh))
            losses.append(jax.device_get(metrics["loss"]))
        logits = jax.device_get(steps.eval_step(state, _place(batches[0], mesh)))
    return losses, logits, jax.device_get(state)


def test_steps_compiled_ahead_equal_jit_steps_and_skip_jit(mesh):
    batches = [_batch(16, 12, seed=0), _batch(16, 20, seed=1), _batch(16, 12, seed=2)]
    steps, state = _setup(mesh)
    expected = _run(steps, state, mesh, batches)

    steps, state = _setup(mesh)
    shapes = [("train", 16, 12), ("train", 16, 20), ("eval", 16, 12)]
    steps.compile_ahead(state, shapes, mesh)
    got = _run(steps, state, mesh, batches)

    assert set(steps.ahead) == set(shapes)
    # The jitted functions never compiled: every step ran an executable compiled ahead.
    assert steps.train_step_fn._cache_size() == 0
    assert steps.eval_step_fn._cache_size() == 0
    np.testing.assert_array_equal(np.array(got[0]), np.array(expected[0]))
    np.testing.assert_array_equal(got[1], expected[1])
    jax.tree.map(np.testing.assert_array_equal, got[2], expected[2])


def test_a_shape_not_compiled_ahead_goes_through_jit(mesh):
    steps, state = _setup(mesh)
    steps.compile_ahead(state, [("train", 16, 12)], mesh)
    losses, _, _ = _run(steps, state, mesh, [_batch(16, 12), _batch(16, 24, seed=3)])
    assert np.all(np.isfinite(losses))
    assert steps.train_step_fn._cache_size() == 1  # the 24-token step only
    assert steps.eval_step_fn._cache_size() == 1  # eval was not compiled ahead


def test_a_failed_background_compile_raises_at_its_step(mesh, monkeypatch):
    def broken(*args):
        raise RuntimeError("compiler said no")

    monkeypatch.setattr(steps_lib, "_compile", broken)
    steps, state = _setup(mesh)
    steps.compile_ahead(state, [("train", 16, 12)], mesh)
    with pytest.raises(RuntimeError, match="compiler said no"), jax.set_mesh(mesh):
        steps.train_step(state, _place(_batch(16, 12), mesh))


def test_a_run_with_compile_ahead_logs_the_same_numbers(reference_run, model_dir, tmp_path):
    from cli_runs import checkpoint_arrays, command, metrics_rows, read_json, run

    workdir = tmp_path / "workdir"
    result = run(command(model_dir, workdir, "--config.train.compile_ahead=True"))
    assert result.returncode == 0, result.stderr[-4000:]

    def numbers(folder):
        return [
            {k: v for k, v in row.items() if "per_sec" not in k} for row in metrics_rows(folder)
        ]

    assert numbers(workdir) == numbers(reference_run.workdir)
    ours, theirs = checkpoint_arrays(workdir, 8), checkpoint_arrays(reference_run.workdir, 8)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    # This run compiled its shapes on the background thread; the reference run (the default)
    # did not.
    assert read_json(workdir / "timing.json")["compile_ahead"] > 0
    assert "compile_ahead" not in read_json(reference_run.workdir / "timing.json")
