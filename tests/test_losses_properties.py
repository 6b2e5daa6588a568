"""Properties of jaxsent.losses: hypothesis over the valid domain, check_grads, jit, shapes.

Hypothesis draws fixed-size batches (B = 16, a ``where`` mask varies the real rows) and
calls the losses eagerly: a new shape or a new static hyperparameter under ``jax.jit``
costs a compilation, while eager dispatch reuses compiled primitives.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from jaxsent import losses

B = 16
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

finite_logits = hnp.arrays(
    np.float32,
    B,
    elements=st.one_of(
        st.floats(-40, 40, width=32), st.sampled_from([0.0, -0.0, 1e4, -1e4, 1e-30, 88.0, -104.0])
    ),
)
labels_st = hnp.arrays(np.int32, B, elements=st.integers(0, 1))
lengths_st = hnp.arrays(np.int32, B, elements=st.integers(0, 4096))
mask_st = hnp.arrays(np.bool_, B, elements=st.booleans())
gamma_st = st.one_of(st.sampled_from([-2.0, -0.5, 0.0, 0.1, 1.0, 2.0]), st.floats(-3.0, 3.0))
epsilon_st = st.one_of(st.sampled_from([0.0, 0.05, 0.2]), st.floats(0.0, 0.99))
min_length_weight_st = st.one_of(st.sampled_from([0.0, 0.1]), st.floats(0.0, 1.0))


def focal(gamma, epsilon, min_length_weight, **kw):
    return functools.partial(
        losses.sentiment_focal_loss,
        gamma_focal=gamma,
        label_smoothing_epsilon=epsilon,
        min_length_weight=min_length_weight,
        **kw,
    )


def value_and_grad(fn, logits, labels, lengths, where=None):
    return jax.value_and_grad(lambda x: fn(x, labels, lengths, where=where))(logits)


@SETTINGS
@given(
    logits=finite_logits,
    labels=labels_st,
    lengths=lengths_st,
    where=mask_st,
    gamma=gamma_st,
    epsilon=epsilon_st,
    min_length_weight=min_length_weight_st,
    stop=st.booleans(),
)
def test_finite_loss_and_gradient_on_the_valid_domain(
    logits, labels, lengths, where, gamma, epsilon, min_length_weight, stop
):
    for fn in (
        focal(gamma, epsilon, min_length_weight, stop_gradient_weights=stop),
        functools.partial(losses.sentiment_weighted_loss, min_length_weight=min_length_weight),
    ):
        value, grad = value_and_grad(fn, logits, labels, lengths, where)
        assert np.isfinite(value) and value >= 0
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad[~where], 0.0)


@SETTINGS
@given(
    logits=finite_logits,
    labels=labels_st,
    length=st.integers(0, 4096),
    min_length_weight=min_length_weight_st,
    where=mask_st,
)
def test_focal_with_gamma0_eps0_and_constant_lengths_is_weighted(
    logits, labels, length, min_length_weight, where
):
    lengths = np.full(B, length, np.int32)
    got = value_and_grad(focal(0.0, 0.0, min_length_weight), logits, labels, lengths, where)
    want = value_and_grad(
        functools.partial(losses.sentiment_weighted_loss, min_length_weight=min_length_weight),
        logits,
        labels,
        lengths,
        where,
    )
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6 * np.max(np.abs(want[1])))


@SETTINGS
@given(
    logits=finite_logits,
    labels=labels_st,
    lengths=lengths_st,
    gamma=gamma_st,
    epsilon=epsilon_st,
    permutation=st.permutations(range(B)),
)
def test_permutation_invariance(logits, labels, lengths, gamma, epsilon, permutation):
    p = np.asarray(permutation)
    fn = focal(gamma, epsilon, 0.1)
    value, grad = value_and_grad(fn, logits, labels, lengths)
    p_value, p_grad = value_and_grad(fn, logits[p], labels[p], lengths[p])
    # Only the summation order changes: a few float32 ulp.
    np.testing.assert_allclose(p_value, value, rtol=1e-6)
    np.testing.assert_allclose(p_grad, grad[p], rtol=1e-6, atol=1e-6 * np.max(np.abs(grad)))


@SETTINGS
@given(
    logits=finite_logits,
    labels=labels_st,
    lengths=hnp.arrays(np.float32, B, elements=st.floats(1.0, 99.0, width=32)),
    scale=st.floats(1e-3, 1e3),
    gamma=gamma_st,
)
def test_length_scale_invariance_where_no_clamp_binds(logits, labels, lengths, scale, gamma):
    # sqrt(L / L_max) >= sqrt(1 / 99) > 0.1: neither clamp of [0.1, 1] binds.
    fn = focal(gamma, 0.05, 0.1)
    value, grad = value_and_grad(fn, logits, labels, lengths)
    s_value, s_grad = value_and_grad(fn, logits, labels, (lengths * np.float32(scale)))
    np.testing.assert_allclose(s_value, value, rtol=2e-6)
    np.testing.assert_allclose(s_grad, grad, rtol=2e-6, atol=2e-6 * np.max(np.abs(grad)))


# Seven real rows in varying positions: one compressed shape, compiled once.
seven_real_rows = st.permutations([True] * 7 + [False] * (B - 7)).map(np.array)


@SETTINGS
@given(
    logits=finite_logits,
    labels=labels_st,
    lengths=lengths_st,
    where=seven_real_rows,
    gamma=gamma_st,
)
def test_where_equals_dropping_the_masked_rows(logits, labels, lengths, where, gamma):
    for fn in (focal(gamma, 0.05, 0.1), losses.sentiment_weighted_loss, losses.bce_loss):
        value, grad = value_and_grad(fn, logits, labels, lengths, where)
        r_value, r_grad = value_and_grad(fn, logits[where], labels[where], lengths[where])
        np.testing.assert_allclose(value, r_value, rtol=1e-6)
        np.testing.assert_allclose(
            grad[where], r_grad, rtol=1e-6, atol=1e-6 * np.max(np.abs(r_grad), initial=0.0)
        )


# ----------------------------------------------------------------------------------
# check_grads: orders 1 and 2, forward and reverse mode, in float64
# ----------------------------------------------------------------------------------
def smooth_point(seed, batch=6):
    """Logits away from 0 (the kink of |tanh|), lengths away from the clamps."""
    rng = np.random.default_rng(seed)
    logits = rng.choice([-1, 1], batch) * rng.uniform(0.3, 6.0, batch)
    labels = rng.integers(0, 2, batch)
    lengths = rng.uniform(20.0, 100.0, batch)
    return logits, labels, lengths


# (stop_gradient_weights=True is not checked here: by design its gradient is not the
# derivative of the loss; test_losses.py checks it against a detached PyTorch statement.)
@pytest.mark.parametrize(
    "gamma,epsilon", [(0.1, 0.05), (-2.0, 0.2), (2.0, 0.0), (-0.5, 0.05), (1.3, 0.1)]
)
def test_check_grads_focal(gamma, epsilon):
    logits, labels, lengths = smooth_point(1)
    with jax.enable_x64(True):

        def fn(x):
            return losses.sentiment_focal_loss(
                x, labels, lengths, gamma_focal=gamma, label_smoothing_epsilon=epsilon
            )

        check_grads(fn, (jnp.asarray(logits),), order=2, modes=("fwd", "rev"), eps=1e-4)


def test_check_grads_weighted_and_bce():
    logits, labels, lengths = smooth_point(2)
    where = np.array([True, True, False, True, True, True])
    with jax.enable_x64(True):
        x = jnp.asarray(logits)
        check_grads(
            lambda x: losses.sentiment_weighted_loss(x, labels, lengths, where=where),
            (x,),
            order=2,
            modes=("fwd", "rev"),
            eps=1e-4,
        )
        check_grads(lambda x: losses.bce_loss(x, labels), (x,), order=2, modes=("fwd", "rev"))


def test_check_grads_building_blocks():
    logits, labels, lengths = smooth_point(3)
    with jax.enable_x64(True):
        x = jnp.asarray(logits)
        for fn in (
            lambda x: losses.sigmoid_binary_cross_entropy(x, labels, label_smoothing_epsilon=0.1),
            lambda x: losses.focal_modulator(x, labels, gamma=0.1),
            lambda x: losses.focal_modulator(x, labels, gamma=-1.5),
            losses.confidence_weights,
            lambda x: losses.normalize_weights(losses.confidence_weights(x)),
        ):
            check_grads(fn, (x,), order=2, modes=("fwd", "rev"), eps=1e-4)


def test_gradient_at_zero_logits_is_exact():
    """At x = 0 exactly (a zero-initialised head) the BCE slope is sigmoid(0) - y'."""
    labels = np.array([1, 0, 1, 0, 1, 1, 0])
    grad = jax.grad(
        lambda x: losses.sigmoid_binary_cross_entropy(x, labels, label_smoothing_epsilon=0.1).sum()
    )(jnp.zeros(7))
    np.testing.assert_allclose(grad, 0.5 - np.where(labels == 1, 0.9, 0.1), rtol=1e-7)
    # The modulator's slope at 0: d (1 - p_t + 1e-8)^2 / dx = -2 (0.5 + 1e-8) * (+-1/4).
    grad = jax.grad(lambda x: losses.focal_modulator(x, labels, gamma=2.0).sum())(jnp.zeros(7))
    np.testing.assert_allclose(grad, np.where(labels == 1, -0.25, 0.25), rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.9, -0.1, -0.5])
def test_modulator_slope_is_finite_where_its_base_vanishes(gamma):
    """u ** g has an infinite slope at u = 0 for 0 < g < 1; the seed's + 1e-8 keeps the
    base >= 1e-8, and du/dx -> 0 there, so the slope is finite and tends to 0."""
    logits = jnp.array([1e4, -1e4, 200.0, -200.0, 40.0, -40.0, 17.0])
    labels = jnp.array([1, 0, 1, 0, 0, 1, 1]) if gamma > 0 else jnp.array([0, 1, 0, 1, 1, 0, 0])
    slope = jax.grad(lambda x: losses.focal_modulator(x, labels, gamma=gamma).sum())(logits)
    assert np.all(np.isfinite(slope))
    np.testing.assert_array_equal(slope[:4], 0.0)  # base underflows to 0 (+ 1e-8)
    # |slope| <= |g| (1e-8)^(|g| - 1) * u with u = sigmoid(-|x|) (and ~ equal for tiny u).
    bound = abs(gamma) * 1e-8 ** (abs(gamma) - 1) / (1 + np.exp(np.abs(logits[4:])))
    assert np.all(np.abs(slope[4:]) <= bound * (1 + 1e-5))


# ----------------------------------------------------------------------------------
# jit == eager, output shapes
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bce", "weighted", "focal"])
@pytest.mark.parametrize("logits_shape", [(B,), (B, 1)])
def test_jit_matches_eager_and_shapes(name, logits_shape):
    fn = {
        "bce": losses.bce_loss,
        "weighted": losses.sentiment_weighted_loss,
        "focal": functools.partial(losses.sentiment_focal_loss, gamma_focal=2.0),
    }[name]
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 8.0, logits_shape).astype(np.float32)
    labels = rng.integers(0, 2, B)
    lengths = rng.integers(0, 600, B)
    where = rng.random(B) < 0.8
    f = jax.value_and_grad(lambda x: fn(x, labels, lengths, where=where))
    value, grad = f(logits)
    j_value, j_grad = jax.jit(f)(logits)
    chex.assert_shape([value, j_value], ())
    chex.assert_type([value, j_value], jnp.float32)
    chex.assert_shape([grad, j_grad], logits_shape)
    # XLA fuses differently under jit: a few ulp.
    np.testing.assert_allclose(j_value, value, rtol=1e-6)
    np.testing.assert_allclose(j_grad, grad, rtol=1e-6, atol=1e-6 * np.max(np.abs(grad)))


def test_building_block_shapes():
    x = jnp.linspace(-2.0, 2.0, B)
    y = jnp.arange(B) % 2
    n = jnp.arange(B)
    m = jnp.arange(B) < 10
    outputs = [
        losses.sigmoid_binary_cross_entropy(x, y, label_smoothing_epsilon=0.05),
        losses.smooth_binary_labels(y, epsilon=0.05),
        losses.focal_modulator(x, y, gamma=0.1),
        losses.confidence_weights(x),
        losses.length_weights(n, where=m),
        losses.normalize_weights(losses.confidence_weights(x), where=m),
    ]
    chex.assert_shape(outputs, (B,))
    chex.assert_type(outputs, jnp.float32)
    np.testing.assert_array_equal(outputs[4][~m], 0.0)
    np.testing.assert_array_equal(outputs[5][~m], 0.0)
    np.testing.assert_allclose(jnp.mean(outputs[5][m]), 1.0, rtol=1e-6)


@pytest.mark.parametrize("gamma", [-0.5, -1.0, -2.0])
def test_reversed_focal_pushes_confident_mistakes_further_wrong(gamma):
    # The reversed focal loss p_t^a (-log p_t), a = |gamma|, is not monotone in p_t: its
    # derivative p_t^(a - 1) (-a log p_t - 1) changes sign at p_t = exp(-1 / a), so below that
    # gradient descent moves a mistake further from its label (the collapse the loss study saw).
    # Reference: that closed form times dp/dz = p (1 - p), for label 1.
    a = -gamma
    p = np.concatenate([np.geomspace(1e-3, 0.99, 40), [np.exp(-1 / a) * 0.9, np.exp(-1 / a) * 1.1]])
    z = np.log(p) - np.log1p(-p)
    grad = jax.grad(
        lambda x: len(z) * losses.sentiment_loss(x, jnp.ones(len(z), jnp.int32), gamma_focal=gamma)
    )(jnp.asarray(z, jnp.float32))
    expected = p**a * (1 - p) * (-a * np.log(p) - 1)
    np.testing.assert_allclose(grad, expected, rtol=2e-5, atol=1e-7)
    below = p < np.exp(-1 / a)
    assert np.all(np.asarray(grad)[below] > 0) and np.all(np.asarray(grad)[~below] < 0)


@pytest.mark.parametrize("gamma", [0.0, 0.1, 2.0])
def test_standard_focal_always_pushes_towards_the_label(gamma):
    z = jnp.linspace(-12.0, 12.0, 97)
    grad = jax.grad(lambda x: losses.sentiment_loss(x, jnp.ones(97, jnp.int32), gamma_focal=gamma))(
        z
    )
    assert np.all(np.asarray(grad) < 0)


@pytest.mark.parametrize("stop_gradient_weights", [False, True])
def test_confidence_weighting_rewards_abstaining(stop_gradient_weights):
    # The batch-normalised confidence weights make the loss a weighted mean of BCE with weights
    # |tanh(z / 2)|: a model undecided (z = 0, weight 0) on all but two examples, which it gets
    # right with confidence, has a lower loss than one right on 60 of 64 at |z| = 3. This is the
    # degenerate solution the loss study's confidence_only runs found (chance accuracy, lowest
    # training loss). Stopping the gradient changes the descent direction, not the loss value.
    labels = jnp.arange(64) % 2
    honest = 3.0 * (2.0 * labels - 1.0) * jnp.where(jnp.arange(64) < 4, -1.0, 1.0)
    abstaining = jnp.zeros(64).at[:2].set(20.0 * (2.0 * labels[:2] - 1.0))

    def confidence_only(z):
        return losses.sentiment_loss(
            z,
            labels,
            confidence_weighting=True,
            stop_gradient_weights=stop_gradient_weights,
        )

    assert confidence_only(abstaining) < 1e-8 < 0.1 < confidence_only(honest)
    assert losses.bce_loss(abstaining, labels) > 0.6 > 0.3 > losses.bce_loss(honest, labels)
