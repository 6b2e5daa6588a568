"""The optimiser recipe: schedule shape, decay mask, clipping and the non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from jaxsent.training.optim import learning_rate_schedule, make_optimizer, weight_decay_mask

# The shipped defaults, with a warmup long enough to see and strong decay to measure.
CONFIG = dict(default.get_config().optim) | dict(
    learning_rate=1e-3,
    warmup_steps=-1,
    warmup_fraction=0.1,
    weight_decay=0.1,
    max_consecutive_nonfinite=3,
)


def test_linear_schedule_warms_up_then_decays_to_zero():
    sched = learning_rate_schedule(peak_value=1.0, total_steps=100, warmup_steps=10)
    values = np.array([sched(i) for i in range(101)])
    np.testing.assert_allclose(values[[0, 5, 10, 55, 100]], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) < 0)


def test_cosine_schedule_peaks_at_end_of_warmup():
    sched = learning_rate_schedule(peak_value=2.0, total_steps=50, warmup_steps=5, kind="cosine")
    np.testing.assert_allclose([sched(0), sched(5), sched(50)], [0.0, 2.0, 0.0], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="step"), "schedule kind='step'"),
        (dict(total_steps=0), "total_steps=0"),
        (dict(warmup_steps=200), "warmup_steps=200"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, match):
    args = dict(peak_value=1.0, total_steps=100, warmup_steps=10) | kwargs
    with pytest.raises(ValueError, match=match):
        learning_rate_schedule(**args)


def test_decay_mask_excludes_biases_and_norm_scales():
    params = {
        "kernel": jnp.ones((3, 4)),
        "bias": jnp.ones(4),
        "scale": jnp.ones(4),
        "embedding": jnp.ones((10, 4)),
    }
    assert weight_decay_mask(params) == {
        "kernel": True,
        "bias": False,
        "scale": False,
        "embedding": True,
    }


def _one_update(grads, params):
    tx, _ = make_optimizer(CONFIG, total_steps=10)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_decay_applies_only_to_masked_parameters():
    # Zero gradients: the only change is weight decay, on the matrix and not on the bias.
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx, sched = make_optimizer(CONFIG, total_steps=10)
    state = tx.init(params)
    for _ in range(2):  # step 0 has learning rate 0 (warmup starts at 0)
        updates, state = tx.update(zeros, state, params)
        params = optax.apply_updates(params, updates)
    lr1 = sched(1)
    np.testing.assert_allclose(params["kernel"], 1.0 - lr1 * CONFIG["weight_decay"], rtol=1e-6)
    np.testing.assert_array_equal(params["bias"], 1.0)


def test_nonfinite_gradients_are_skipped_and_counted():
    params = {"kernel": jnp.ones((2, 2))}
    bad = {"kernel": jnp.full((2, 2), jnp.nan)}
    new_params, state = _one_update(bad, params)
    np.testing.assert_array_equal(new_params["kernel"], params["kernel"])
    assert int(state.notfinite_count) == 1 and int(state.total_notfinite) == 1


def _first_moment_after_one_update(config, grads, params):
    """Adam's first moment after one update: ``(1 - b1) * g``, g the gradient Adam received.

    Adam's update itself is nearly blind to the gradient's scale (``m / sqrt(v)``), so clipping
    shows in its moments, not in the parameters after one step.
    """
    tx, _ = make_optimizer(config, total_steps=10)
    _, state = tx.update(grads, tx.init(params), params)
    return optax.tree.get(state, "mu")


def test_clipping_rescales_a_large_gradient_to_the_clip_norm_before_adam():
    rng = np.random.default_rng(0)
    params = {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}
    grads = jax.tree.map(lambda p: jnp.asarray(100 * rng.normal(size=p.shape), p.dtype), params)
    norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))))
    clip, one_minus_b1 = 0.5, 1 - CONFIG["b1"]
    assert norm > 100 * clip
    mu = _first_moment_after_one_update(CONFIG | dict(grad_clip_norm=clip), grads, params)
    # By hand (g * clip / |g|) and by optax's own transformation: the same gradient.
    by_optax, _ = optax.clip_by_global_norm(clip).update(grads, optax.EmptyState())
    for got, g, clipped in zip(*map(jax.tree.leaves, (mu, grads, by_optax)), strict=True):
        np.testing.assert_allclose(got, one_minus_b1 * np.asarray(g) * clip / norm, rtol=1e-5)
        np.testing.assert_allclose(got, one_minus_b1 * np.asarray(clipped), rtol=1e-6)
    # Switched off (0), or a gradient already within the norm: Adam gets the gradient itself.
    small = jax.tree.map(lambda g: g * (0.5 * clip / norm), grads)
    clipped_at = CONFIG | dict(grad_clip_norm=clip)
    for config, g in ((CONFIG | dict(grad_clip_norm=0.0), grads), (clipped_at, small)):
        mu = _first_moment_after_one_update(config, g, params)
        jax.tree.map(
            lambda got, want: np.testing.assert_allclose(got, one_minus_b1 * want, rtol=1e-6),
            mu,
            g,
        )
