"""The K-class (softmax) forms of jaxsent.losses: logits [B, K], integer labels in [0, K).

References, none of them the library's K-class code path:

* the binary losses, at K = 2 with logits [0, z] (``test_losses.py`` ties those to PyTorch,
  the seed's code and mpmath): every preset and every named loss, value and gradient;
* mpmath at 80 digits, written here from the formulas of the issue (softmax, the seed's
  smoothing rule with eps / (K - 1), focal modulator, top-two margin, length weights,
  batch-mean normalisation), at K = 5, for every term and every loss, at moderate and
  extreme logits (+-50, gaps up to 100, two-way ties); gradients by central differences,
  which at a two-way tie give the mean of the one-sided slopes, the convention the library
  documents (at three-way ties a coordinate's central difference is no longer
  shift-invariant; those are checked against the convention directly);
* optax (``softmax_cross_entropy_with_integer_labels``, ``softmax_cross_entropy``) for the
  cross entropy, and the hand composition of the public building blocks for the losses.

Tolerances. Values: relative error. Gradients: max-norm relative error (``max|g - g_ref| <=
rtol * max|g_ref|``), as in ``test_losses.py``; per row for the per-example building
blocks, which is the statement the cancellation-free formulas make (a confidently right
row's gradient of 1e-22 is as accurate, relatively, as an undecided row's).
"""

from __future__ import annotations

import doctest
import functools

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.experimental import checkify
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from jaxsent import losses
from jaxsent.losses import _multiclass_terms

# The named losses with their default hyperparameters, and every preset.
NAMED = {name: losses.get_loss(name) for name in losses.LOSS_NAMES}
PRESETS = {name: losses.get_loss_preset(name) for name in losses.LOSS_PRESETS}


def two_class(z):
    """Logits [0, z] [B, 2]: the K = 2 form of the binary logit z."""
    z = jnp.asarray(z)
    return jnp.stack([jnp.zeros_like(z), z], axis=-1)


def assert_rowwise_close(got, want, rtol, what=""):
    """Per row, max-norm relative: ``max_k |g - g_ref| <= rtol * max_k |g_ref|`` (plus
    1e-30 absolute: float32 flushes values below its normal range, 1.2e-38, to 0)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    want2 = want.reshape(want.shape[0], -1)
    err = np.max(np.abs(got.reshape(want2.shape) - want2), axis=1)
    bound = rtol * np.max(np.abs(want2), axis=1) + 1e-30
    bad = np.flatnonzero(err > bound)
    assert bad.size == 0, f"{what}: rows {bad}: error {err[bad]} > {bound[bad]}"


def assert_loss_close(value, grad, ref_value, ref_grad, rtol, what=""):
    value_err = abs(float(value) - float(ref_value)) / abs(float(ref_value))
    grad_err = np.max(np.abs(np.asarray(grad, np.float64) - ref_grad)) / np.max(np.abs(ref_grad))
    assert value_err <= rtol, f"{what}: value rel. error {value_err:.3g} > {rtol}"
    assert grad_err <= rtol, f"{what}: grad max-norm rel. error {grad_err:.3g} > {rtol}"


# ----------------------------------------------------------------------------------
# (a) K = 2 with logits [0, z] is the binary form on z
# ----------------------------------------------------------------------------------
def binary_batch(seed=0, batch=64):
    rng = np.random.default_rng(seed)
    z = rng.uniform(-20.0, 20.0, batch).astype(np.float32)
    # The zero-initialised head, near-ties, confident rows.
    z[:8] = [0.0, -0.0, 1e-4, -1e-4, 40.0, -40.0, 60.0, -55.0]
    labels = rng.integers(0, 2, batch).astype(np.int32)
    lengths = rng.integers(0, 513, batch).astype(np.int32)
    where = rng.random(batch) < 0.8
    where[:8] = True
    return z, labels, lengths, where


# Measured: values within 7e-8 relative (1 float32 ulp; the cross entropy is the same bits,
# the modulator and the confidence weight come from other float32 formulas, each within a
# few ulp of the exact value), gradients within 3e-7 max-norm relative. 1e-6 is 8 ulp.
K2_RTOL = 1e-6


@pytest.mark.parametrize("masked", [False, True], ids=["all_rows", "where"])
@pytest.mark.parametrize("name", list(PRESETS) + [f"named:{n}" for n in NAMED])
def test_two_classes_equal_the_binary_loss(name, masked):
    fn = NAMED[name[6:]] if name.startswith("named:") else PRESETS[name]
    z, labels, lengths, where = binary_batch()
    if masked:
        z = np.where(where, z, np.nan).astype(np.float32)  # padding rows may hold NaN
    else:
        where = None
    value, grad = jax.value_and_grad(lambda z: fn(z, labels, lengths, where=where))(z)
    k_value, k_grad = jax.value_and_grad(lambda z: fn(two_class(z), labels, lengths, where=where))(
        z
    )
    assert_loss_close(k_value, k_grad, value, grad, K2_RTOL, name)
    # The full [B, 2] gradient: the loss depends on z_1 - z_0 only, so the columns are
    # opposite, and padding rows get exactly 0.
    full = jax.grad(lambda x: fn(x, labels, lengths, where=where))(np.asarray(two_class(z)))
    np.testing.assert_allclose(full[:, 1], grad, rtol=0, atol=K2_RTOL * np.max(np.abs(grad)))
    np.testing.assert_allclose(full[:, 0], -full[:, 1], rtol=0, atol=1e-6 * np.max(np.abs(grad)))
    if masked:
        np.testing.assert_array_equal(full[~where], 0.0)


BLOCK_Z = np.array(
    [-55.0, -30.0, -5.0, -0.3, 0.0, 1e-4, -1e-4, 0.7, 2.0, 9.0, 20.0, 50.0], np.float32
)
BLOCK_Y = np.array([1, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0], np.int32)


@pytest.mark.parametrize(
    "what",
    ["ce", "ce_eps0.05", "ce_eps0.2"]
    + [f"focal_{g}" for g in (2.0, 0.1, 1.3, -0.5, -2.0)]
    + ["confidence"],
)
def test_two_class_building_blocks_equal_the_binary_ones_elementwise(what):
    """Per example, values and slopes, even where they are 1e-22: the cancellation-free
    formulas agree elementwise, not only in the batch mean."""
    if what.startswith("ce"):
        eps = float(what[6:]) if "eps" in what else 0.0
        binary = functools.partial(
            losses.sigmoid_binary_cross_entropy, labels=BLOCK_Y, label_smoothing_epsilon=eps
        )
        multi = functools.partial(
            losses.softmax_cross_entropy_with_integer_labels,
            labels=BLOCK_Y,
            label_smoothing_epsilon=eps,
        )
    elif what.startswith("focal"):
        gamma = float(what[6:])
        binary = functools.partial(losses.focal_modulator, labels=BLOCK_Y, gamma=gamma)
        multi = functools.partial(losses.softmax_focal_modulator, labels=BLOCK_Y, gamma=gamma)
    else:
        binary, multi = losses.confidence_weights, losses.softmax_confidence_weights
    z = jnp.asarray(BLOCK_Z)
    want, want_slope = binary(z), jax.grad(lambda z: binary(z).sum())(z)
    got, got_slope = multi(two_class(z)), jax.grad(lambda z: multi(two_class(z)).sum())(z)
    # 3e-7 measured at most (the modulator's slope): 2.5 ulp; exact zeros stay exact.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got_slope, want_slope, rtol=1e-6, atol=0)
    if what.startswith("ce"):  # the same float32 operations: the same bits
        np.testing.assert_array_equal(got, want)


def test_two_class_smoothing_is_the_binary_rule():
    y = jnp.array([0, 1, 1, 0])
    q = losses.smooth_class_labels(y, 2, epsilon=0.1)
    np.testing.assert_array_equal(q[:, 1], losses.smooth_binary_labels(y, epsilon=0.1))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-7)


# ----------------------------------------------------------------------------------
# (b) mpmath at K = 5: every term and every loss, moderate and extreme logits
# ----------------------------------------------------------------------------------
K = 5
EXTREME_LOGITS = np.array(
    [
        [50.0, -50.0, 0.0, -1.0, 1.0],  # confidently right, gaps 49 to 100
        [50.0, -50.0, 0.0, -1.0, 1.0],  # confidently wrong by 100
        [-50.0, 50.0, 50.0, -50.0, 0.0],  # wrong, a tie for first place
        [0.5, 0.5, -1.0, -2.0, 0.0],  # undecided between two classes
        [1e-4, 0.0, -0.5, -1.0, -2.0],  # nearly undecided
        [30.0, 29.75, -20.0, 5.0, -50.0],  # two close leaders
        [-50.0, -49.0, -50.5, -51.0, 50.0],  # right by 99 to 101
        [10.0, 3.0, 3.0, -10.0, 0.0],  # a tie for second place
    ],
    np.float32,
)
EXTREME_LABELS = np.array([0, 1, 0, 3, 0, 1, 4, 2], np.int32)
LENGTHS = np.array([512, 3, 77, 256, 128, 40, 9, 300], np.int32)


def moderate_batch():
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 3.0, (8, K)).astype(np.float32)
    return logits, rng.integers(0, K, 8).astype(np.int32)


REGIMES = {"moderate": moderate_batch(), "extreme": (EXTREME_LOGITS, EXTREME_LABELS)}
STABILIZER = mpmath.mpf(1e-8)


def mp_row_terms(row, label, *, epsilon, gamma):
    """Smoothed cross entropy, focal modulator, top-two margin of one row, in mpmath."""
    num_classes = len(row)
    log_norm = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row))
    log_p = [v - log_norm for v in row]
    p = [mpmath.exp(v) for v in log_p]
    q = [1 - epsilon if k == label else epsilon / (num_classes - 1) for k in range(num_classes)]
    cross_entropy = -mpmath.fsum(qk * lk for qk, lk in zip(q, log_p, strict=True))
    p_t = p[label]
    if gamma > 0:
        modulator = (1 - p_t + STABILIZER) ** gamma
    elif gamma < 0:
        modulator = (p_t + STABILIZER) ** (-gamma)
    else:
        modulator = mpmath.mpf(1)
    first, second = sorted(p, reverse=True)[:2]
    return cross_entropy, modulator, first - second


def mp_loss(logits, labels, lengths, *, epsilon, gamma, confidence, length, min_length_weight):
    """The loss of the issue's K-class definition, over every row, in mpmath."""
    per_example, weights = [], []
    max_length = max(lengths)
    for row, label, n in zip(logits, labels, lengths, strict=True):
        cross_entropy, modulator, margin = mp_row_terms(row, label, epsilon=epsilon, gamma=gamma)
        per_example.append(modulator * cross_entropy)
        weight = mpmath.mpf(1)
        if confidence:
            weight *= margin
        if length:
            ratio = mpmath.sqrt(mpmath.mpf(n)) / mpmath.sqrt(mpmath.mpf(max_length))
            weight *= min(max(ratio, min_length_weight), 1) if max_length > 0 else 1
        weights.append(weight)
    count = len(per_example)
    if not (confidence or length):
        return mpmath.fsum(per_example) / count
    total = mpmath.fsum(weights)
    if total > STABILIZER:
        weights = [w / (total / count + STABILIZER) for w in weights]
    else:
        weights = [mpmath.mpf(1)] * count
    return mpmath.fsum(v * w for v, w in zip(per_example, weights, strict=True)) / count


def mp_value_and_grad(fn, logits):
    """fn(rows) and its gradient by central differences (step 1e-40 at 80 digits: the
    error is O(h^2) = 1e-80 where fn is smooth; at a two-way tie the central difference
    is the mean of the one-sided slopes, to O(h) = 1e-40)."""
    with mpmath.workdps(80):
        rows = [[mpmath.mpf(float(v)) for v in r] for r in np.asarray(logits, np.float64)]
        h = mpmath.mpf("1e-40")
        value = fn(rows)
        grad = np.zeros(np.shape(logits))
        for i, r in enumerate(rows):
            for k in range(len(r)):
                up = [list(x) for x in rows]
                down = [list(x) for x in rows]
                up[i][k] += h
                down[i][k] -= h
                grad[i, k] = float((fn(up) - fn(down)) / (2 * h))
        return float(value), grad


def loss_kwargs(fields):
    """mp_loss's arguments for a ``config.loss``-like mapping (a preset's fields)."""
    name = fields["name"]
    both = name in ("weighted", "focal")
    return dict(
        epsilon=mpmath.mpf(fields.get("label_smoothing_epsilon", 0.0)) if name != "weighted" else 0,
        gamma=mpmath.mpf(fields.get("gamma_focal", 0.0)) if name != "weighted" else 0,
        confidence=both or bool(fields.get("confidence_weighting")),
        length=both or bool(fields.get("length_weighting")),
        min_length_weight=mpmath.mpf(fields.get("min_length_weight", 0.1)),
    )


# Every term: cross entropy at three smoothing amounts, the modulator at five exponents
# (whole, half-whole and general; standard and reversed), the confidence margin.
TERMS = (
    [("ce", e) for e in (0.0, 0.05, 0.2)]
    + [("focal", g) for g in (2.0, 0.1, 1.3, -0.5, -2.0)]
    + [("confidence", None)]
)


def library_term(kind, param):
    if kind == "ce":
        return lambda x, y: losses.softmax_cross_entropy_with_integer_labels(
            x, y, label_smoothing_epsilon=param
        )
    if kind == "focal":
        return lambda x, y: losses.softmax_focal_modulator(x, y, gamma=param)
    return lambda x, y: losses.softmax_confidence_weights(x)


def mp_term(kind, param, label):
    index = {"ce": 0, "focal": 1, "confidence": 2}[kind]
    epsilon = mpmath.mpf(param) if kind == "ce" else 0
    gamma = mpmath.mpf(param) if kind == "focal" else 0

    def fn(rows):
        return mp_row_terms(rows[0], label, epsilon=epsilon, gamma=gamma)[index]

    return fn


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("kind,param", TERMS, ids=[f"{k}_{p}" for k, p in TERMS])
def test_building_blocks_against_mpmath(kind, param, regime):
    """Per example, value and slope, even at +-50 and gaps of 100: float64 within 1e-14 of
    the exact values (measured 3e-15), float32 within 3e-6 (relative, per row; measured
    8e-7: a float32 logit near 10 is itself uncertain by 5e-7 relative, and the exp/log
    power of a general gamma costs up to 2.2e-6, see focal_modulator)."""
    logits, labels = REGIMES[regime]
    refs = [
        mp_value_and_grad(mp_term(kind, param, int(y)), row[None])
        for row, y in zip(logits, labels, strict=True)
    ]
    ref_values = np.array([v for v, _ in refs])
    ref_grads = np.stack([g[0] for _, g in refs])
    fn = library_term(kind, param)
    for dtype, rtol in ((np.float64, 1e-14), (np.float32, 3e-6)):
        with jax.enable_x64(dtype == np.float64):
            x = jnp.asarray(logits.astype(dtype))
            values = fn(x, labels)
            grads = jax.grad(lambda x: fn(x, labels).sum())(x)
            chex.assert_type([values, grads], dtype)
        assert_rowwise_close(values[:, None], ref_values[:, None], rtol, f"{dtype} value")
        assert_rowwise_close(grads, ref_grads, rtol, f"{dtype} slope")


MP_LOSSES = {f"preset:{name}": dict(fields) for name, fields in losses.LOSS_PRESETS.items()} | {
    "focal_gamma2_eps0.2": dict(name="focal", gamma_focal=2.0, label_smoothing_epsilon=0.2),
    "focal_reversed": dict(name="focal", gamma_focal=-0.5, label_smoothing_epsilon=0.05),
    "sentiment_all_terms": dict(
        name="sentiment",
        length_weighting=True,
        confidence_weighting=True,
        gamma_focal=1.3,
        label_smoothing_epsilon=0.1,
        min_length_weight=0.0,
    ),
}


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("case", list(MP_LOSSES))
def test_losses_against_mpmath(case, regime):
    """Every preset and the other loss settings: float64 within 1e-14 of the exact loss and
    gradient (measured 1e-15), float32 within 2e-6 (measured 3e-7: the terms' few ulp and
    the batch sums' rounding)."""
    fields = MP_LOSSES[case]
    logits, labels = REGIMES[regime]
    ref_value, ref_grad = mp_value_and_grad(
        lambda rows: mp_loss(rows, labels.tolist(), LENGTHS.tolist(), **loss_kwargs(fields)),
        logits,
    )
    fn = losses.loss_from_fields(fields)
    for dtype, rtol in ((np.float64, 1e-14), (np.float32, 2e-6)):
        with jax.enable_x64(dtype == np.float64):
            x = jnp.asarray(logits.astype(dtype))
            value, grad = jax.value_and_grad(lambda x: fn(x, labels, LENGTHS))(x)
            chex.assert_type(value, dtype)
        if fields.get("stop_gradient_weights"):
            # By design not the loss's derivative: checked against the composition below.
            assert abs(float(value) - ref_value) <= rtol * abs(ref_value), dtype
        else:
            assert_loss_close(value, grad, ref_value, ref_grad, rtol, f"{case} {dtype}")


def test_cross_entropy_against_optax_in_float64():
    logits, labels = REGIMES["extreme"]
    with jax.enable_x64(True):
        x = jnp.asarray(logits.astype(np.float64))
        np.testing.assert_allclose(
            losses.softmax_cross_entropy_with_integer_labels(x, labels),
            optax.softmax_cross_entropy_with_integer_labels(x, labels),
            rtol=1e-13,
            atol=1e-15,  # optax's logsumexp - z_y rounds the 1e-22 of confident rows to 0
        )
        q = losses.smooth_class_labels(labels, K, epsilon=0.2)
        chex.assert_type(q, np.float64)
        np.testing.assert_allclose(
            losses.softmax_cross_entropy_with_integer_labels(
                x, labels, label_smoothing_epsilon=0.2
            ),
            optax.softmax_cross_entropy(x, q),
            rtol=1e-13,
        )


def test_smooth_class_labels():
    q = losses.smooth_class_labels(jnp.array([0, 4, 2]), K, epsilon=0.2)
    chex.assert_shape(q, (3, K))
    chex.assert_type(q, jnp.float32)
    want = np.full((3, K), 0.05, np.float32)
    want[[0, 1, 2], [0, 4, 2]] = 0.8
    np.testing.assert_allclose(q, want, rtol=1e-7)
    # Not optax.smooth_labels, which gives the true class 1 - eps + eps / K.
    one_hot = jax.nn.one_hot(jnp.array([0, 4, 2]), K)
    assert not np.allclose(optax.smooth_labels(one_hot, 0.2), q)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        losses.smooth_class_labels(jnp.array([0]), 1, epsilon=0.1)


def composed_loss(x, y, n, *, gamma, epsilon, min_length_weight, stop_gradient=False):
    """The K-class focal loss as the public building blocks compose it, with jnp.mean."""
    modulator = losses.softmax_focal_modulator(x, y, gamma=gamma)
    weights = losses.normalize_weights(
        losses.softmax_confidence_weights(x)
        * losses.length_weights(n, min_length_weight=min_length_weight)
    )
    if stop_gradient:
        modulator, weights = jax.lax.stop_gradient(modulator), jax.lax.stop_gradient(weights)
    ce = losses.softmax_cross_entropy_with_integer_labels(x, y, label_smoothing_epsilon=epsilon)
    return jnp.mean(modulator * ce * weights)


@pytest.mark.parametrize("stop_gradient", [False, True])
@pytest.mark.parametrize("gamma,epsilon", [(0.1, 0.05), (2.0, 0.2), (-0.5, 0.0), (0.0, 0.1)])
def test_focal_loss_is_the_composition_of_building_blocks(gamma, epsilon, stop_gradient):
    """float64: the fused loss differs from the composition only by rounding; second
    derivatives too (Hessian-vector product through the custom_jvp rules)."""
    logits, labels = moderate_batch()
    with jax.enable_x64(True):
        x = jnp.asarray(logits.astype(np.float64))
        hyper = dict(gamma=gamma, epsilon=epsilon, min_length_weight=0.1)

        def fused(x):
            return losses.sentiment_focal_loss(
                x,
                labels,
                LENGTHS,
                gamma_focal=gamma,
                label_smoothing_epsilon=epsilon,
                stop_gradient_weights=stop_gradient,
            )

        def composed(x):
            return composed_loss(x, labels, LENGTHS, stop_gradient=stop_gradient, **hyper)

        np.testing.assert_allclose(fused(x), composed(x), rtol=1e-13)
        np.testing.assert_allclose(
            jax.grad(fused)(x), jax.grad(composed)(x), rtol=1e-11, atol=1e-14
        )
        v = jnp.asarray(np.random.default_rng(0).normal(size=x.shape))

        def hvp(f):
            return jax.jvp(jax.grad(f), (x,), (v,))[1]

        np.testing.assert_allclose(hvp(fused), hvp(composed), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("stop_gradient_weights", [False, True])
def test_seed_losses_are_special_cases_bit_for_bit(stop_gradient_weights):
    """As in the binary form: sentiment_loss with the seed's terms on computes the same
    terms in the same order as the seed's losses."""
    logits, labels = moderate_batch()
    both = dict(length_weighting=True, confidence_weighting=True)
    sg = dict(stop_gradient_weights=stop_gradient_weights)

    def vg(fn, **kw):
        return jax.value_and_grad(lambda x: fn(x, labels, LENGTHS, **kw))(logits)

    def identical(a, b):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])

    identical(vg(losses.sentiment_loss), vg(losses.bce_loss))
    identical(vg(losses.sentiment_loss, **both, **sg), vg(losses.sentiment_weighted_loss, **sg))
    for gamma, eps in [(0.1, 0.05), (2.0, 0.0), (-0.5, 0.2), (0.0, 0.05), (0.0, 0.0)]:
        hyper = dict(gamma_focal=gamma, label_smoothing_epsilon=eps, **sg)
        identical(
            vg(losses.sentiment_loss, **both, **hyper), vg(losses.sentiment_focal_loss, **hyper)
        )


def test_traced_gamma_and_epsilon_match_static_ones():
    logits, labels = moderate_batch()

    def loss(x, g, e):
        return losses.sentiment_focal_loss(
            x, labels, LENGTHS, gamma_focal=g, label_smoothing_epsilon=e
        )

    swept = jax.jit(jax.value_and_grad(loss))
    for gamma, eps in [(-2.0, 0.0), (-0.5, 0.05), (0.0, 0.2), (0.1, 0.05), (2.0, 0.0)]:
        value, grad = swept(logits, jnp.float32(gamma), jnp.float32(eps))
        ref_value, ref_grad = jax.value_and_grad(loss)(logits, gamma, eps)
        # exp/log instead of multiplications for whole gammas: 2e-6 (see focal_modulator).
        assert_loss_close(value, grad, ref_value, np.asarray(ref_grad), 5e-6, f"{gamma} {eps}")


# ----------------------------------------------------------------------------------
# (c) Properties (hypothesis; eager calls on a fixed shape, B = 16, K = 5)
# ----------------------------------------------------------------------------------
B = 16
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
finite_logits = hnp.arrays(
    np.float32,
    (B, K),
    elements=st.one_of(
        st.floats(-40, 40, width=32), st.sampled_from([0.0, -0.0, 50.0, -50.0, 100.0, -100.0])
    ),
)
labels_st = hnp.arrays(np.int32, B, elements=st.integers(0, K - 1))
lengths_st = hnp.arrays(np.int32, B, elements=st.integers(0, 4096))
mask_st = hnp.arrays(np.bool_, B, elements=st.booleans())
gamma_st = st.one_of(st.sampled_from([-2.0, -0.5, 0.0, 0.1, 1.0, 2.0]), st.floats(-3.0, 3.0))
epsilon_st = st.one_of(st.sampled_from([0.0, 0.05, 0.2]), st.floats(0.0, 0.99))
seven_real_rows = st.permutations([True] * 7 + [False] * (B - 7)).map(np.array)


def focal(gamma, epsilon, **kw):
    return functools.partial(
        losses.sentiment_focal_loss, gamma_focal=gamma, label_smoothing_epsilon=epsilon, **kw
    )


def value_and_grad(fn, logits, labels, lengths, where=None):
    return jax.value_and_grad(lambda x: fn(x, labels, lengths, where=where))(logits)


def property_losses(gamma, epsilon):
    return (
        focal(gamma, epsilon),
        losses.sentiment_weighted_loss,
        losses.bce_loss,
        functools.partial(losses.sentiment_loss, confidence_weighting=True, gamma_focal=gamma),
    )


@SETTINGS
@given(
    logits=finite_logits,
    labels=labels_st,
    lengths=lengths_st,
    where=mask_st,
    gamma=gamma_st,
    epsilon=epsilon_st,
    stop=st.booleans(),
)
def test_finite_nonnegative_loss_and_gradient(logits, labels, lengths, where, gamma, epsilon, stop):
    for fn in (focal(gamma, epsilon, stop_gradient_weights=stop), losses.sentiment_weighted_loss):
        value, grad = value_and_grad(fn, logits, labels, lengths, where)
        assert np.isfinite(value) and value >= 0
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad[~where], 0.0)


@SETTINGS
@given(
    logits=finite_logits,
    labels=labels_st,
    lengths=lengths_st,
    gamma=gamma_st,
    epsilon=epsilon_st,
    permutation=st.permutations(range(K)),
)
def test_permuting_the_classes_with_the_labels_changes_nothing(
    logits, labels, lengths, gamma, epsilon, permutation
):
    perm = np.asarray(permutation)  # new class j is old class perm[j]
    new_labels = np.argsort(perm)[labels].astype(np.int32)
    for fn in property_losses(gamma, epsilon):
        value, grad = value_and_grad(fn, logits, labels, lengths)
        p_value, p_grad = value_and_grad(fn, logits[:, perm], new_labels, lengths)
        # Only summation orders change: a few float32 ulp.
        np.testing.assert_allclose(p_value, value, rtol=2e-6)
        np.testing.assert_allclose(
            p_grad, grad[:, perm], rtol=0, atol=2e-6 * np.max(np.abs(grad), initial=1e-30)
        )


# Logits on a grid of 2^-10 within +-64 and shifts by whole numbers up to 4096: every sum
# is exact in float32 (< 2^13 in units of 2^-10 needs 23 bits), and so is z - max(z).
grid_logits = hnp.arrays(np.int32, (B, K), elements=st.integers(-65536, 65536)).map(
    lambda a: (a / 1024).astype(np.float32)
)
shifts_st = hnp.arrays(np.int32, (B, 1), elements=st.integers(-4096, 4096)).map(
    lambda a: a.astype(np.float32)
)


@SETTINGS
@given(logits=grid_logits, labels=labels_st, lengths=lengths_st, shift=shifts_st, gamma=gamma_st)
def test_a_per_row_shift_of_the_logits_changes_nothing(logits, labels, lengths, shift, gamma):
    """softmax(z + c) = softmax(z): every computation starts from z - max(z), which the
    exact shift leaves unchanged, so the loss and its gradient are the same bits."""
    for fn in property_losses(gamma, 0.05):
        value, grad = value_and_grad(fn, logits, labels, lengths)
        s_value, s_grad = value_and_grad(fn, logits + shift, labels, lengths)
        np.testing.assert_array_equal(s_value, value)
        np.testing.assert_array_equal(s_grad, grad)


@SETTINGS
@given(
    logits=finite_logits,
    labels=labels_st,
    lengths=lengths_st,
    where=seven_real_rows,
    gamma=gamma_st,
)
def test_where_equals_dropping_the_masked_rows(logits, labels, lengths, where, gamma):
    for fn in property_losses(gamma, 0.05):
        value, grad = value_and_grad(fn, logits, labels, lengths, where)
        r_value, r_grad = value_and_grad(fn, logits[where], labels[where], lengths[where])
        np.testing.assert_allclose(value, r_value, rtol=1e-6)
        np.testing.assert_allclose(
            grad[where], r_grad, rtol=0, atol=1e-6 * np.max(np.abs(r_grad), initial=1e-30)
        )


@SETTINGS
@given(logits=finite_logits, labels=labels_st, lengths=lengths_st, where=mask_st)
def test_gamma0_eps0_is_plain_cross_entropy(logits, labels, lengths, where):
    plain = value_and_grad(losses.bce_loss, logits, labels, lengths, where)
    for fn in (focal(0.0, 0.0, min_length_weight=0.1), losses.sentiment_loss):
        got = value_and_grad(
            functools.partial(fn, length_weighting=True, confidence_weighting=True)
            if fn is losses.sentiment_loss
            else fn,
            logits,
            labels,
            lengths,
            where,
        )
        ref = value_and_grad(losses.sentiment_weighted_loss, logits, labels, lengths, where)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    # bce_loss against optax's integer-label softmax cross entropy over the real rows.
    if where.any():
        want = np.mean(
            optax.softmax_cross_entropy_with_integer_labels(logits[where], labels[where])
        )
        np.testing.assert_allclose(plain[0], want, rtol=2e-6, atol=1e-30)
    assert np.all(np.isfinite(plain[1]))


@pytest.mark.parametrize("scale", [100.0, 1e4])
def test_finite_gradient_and_hessian_at_extreme_logits(scale):
    rng = np.random.default_rng(3)
    logits = (scale * rng.choice([-1.0, 0.0, 1.0], (B, K))).astype(np.float32)
    labels = rng.integers(0, K, B).astype(np.int32)
    lengths = rng.integers(1, 600, B).astype(np.int32)
    v = jnp.asarray(rng.normal(size=(B, K)).astype(np.float32))
    for fn in property_losses(-0.5, 0.05) + property_losses(2.0, 0.0):

        def f(x, fn=fn):
            return fn(x, labels, lengths)

        value, grad = jax.value_and_grad(f)(logits)
        hvp = jax.jvp(jax.grad(f), (jnp.asarray(logits),), (v,))[1]
        assert np.isfinite(value) and value >= 0
        assert np.all(np.isfinite(grad)) and np.all(np.isfinite(hvp))


# ----------------------------------------------------------------------------------
# (d) check_grads in float64: orders 1 and 2, forward and reverse
# ----------------------------------------------------------------------------------
def smooth_point(seed, batch=4):
    """Logits with distinct values (no ties: the margin has kinks there), lengths away
    from the clamps."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (batch, K))
    labels = rng.integers(0, K, batch)
    lengths = rng.uniform(20.0, 100.0, batch)
    return logits, labels, lengths


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
    logits, labels, lengths = smooth_point(2, batch=6)
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
    logits, labels, _ = smooth_point(3)
    with jax.enable_x64(True):
        x = jnp.asarray(logits)
        for fn in (
            lambda x: losses.softmax_cross_entropy_with_integer_labels(x, labels),
            lambda x: losses.softmax_cross_entropy_with_integer_labels(
                x, labels, label_smoothing_epsilon=0.1
            ),
            lambda x: losses.softmax_focal_modulator(x, labels, gamma=0.1),
            lambda x: losses.softmax_focal_modulator(x, labels, gamma=-1.5),
            lambda x: losses.softmax_focal_modulator(x, labels, gamma=2.0),
            losses.softmax_confidence_weights,
            lambda x: losses.normalize_weights(losses.softmax_confidence_weights(x)),
        ):
            check_grads(fn, (x,), order=2, modes=("fwd", "rev"), eps=1e-4)


def test_a_zero_initialised_head():
    """All logits equal: cross entropy log K - its slope p - q = 1/K - q exactly -, the
    modulator (1 - 1/K + 1e-8)^gamma, the margin 0 with slope 0 (the mean over which tied
    class leads, as the binary confidence weight's slope is 0 at 0)."""
    labels = jnp.array([0, 3, 4])
    x = jnp.zeros((3, K))

    def ce(x):
        return losses.softmax_cross_entropy_with_integer_labels(
            x, labels, label_smoothing_epsilon=0.2
        )

    q = np.asarray(losses.smooth_class_labels(labels, K, epsilon=0.2))
    np.testing.assert_allclose(ce(x), -np.sum(q * np.log(0.2), axis=1), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: ce(x).sum())(x), 0.2 - q, rtol=1e-6)
    np.testing.assert_allclose(
        losses.softmax_focal_modulator(x, labels, gamma=2.0), (0.8 + 1e-8) ** 2, rtol=1e-6
    )
    np.testing.assert_array_equal(losses.softmax_confidence_weights(x), 0.0)
    np.testing.assert_array_equal(
        jax.grad(lambda x: losses.softmax_confidence_weights(x).sum())(x), 0.0
    )


def test_margin_slopes_at_ties_sum_to_zero():
    """The margin is invariant to a per-row shift, so its slopes sum to 0 over the classes,
    at ties too: a tie for first place (slope 0), and ties of two and three for second
    place (the runner-up's slope shared among them)."""
    x = jnp.array(
        [
            [2.0, 2.0, 0.0, -1.0, 0.0],
            [2.0, 2.0, 2.0, -1.0, 0.0],
            [3.0, 1.0, 1.0, -1.0, 0.0],
            [3.0, 1.0, 1.0, 1.0, 0.0],
        ]
    )
    grad = jax.grad(lambda x: losses.softmax_confidence_weights(x).sum())(x)
    np.testing.assert_array_equal(grad[:2], 0.0)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-7)
    # Second place tied between c classes: each gets -m p_k - p_k / c.
    p = np.asarray(jax.nn.softmax(x[2:]))
    m = np.asarray(losses.softmax_confidence_weights(x[2:]))
    for row, count in ((0, 2), (1, 3)):
        tied = np.flatnonzero(np.asarray(x[2 + row]) == 1.0)
        np.testing.assert_allclose(
            grad[2 + row, tied], -m[row] * p[row, tied] - p[row, tied] / count, rtol=1e-6
        )


# ----------------------------------------------------------------------------------
# (e) Bad input: trace-time errors, eager ValueErrors, checkify under jit
# ----------------------------------------------------------------------------------
GOOD = dict(
    logits=np.linspace(-3.0, 3.0, 7 * K).reshape(7, K).astype(np.float32),
    labels=np.array([1, 0, 4, 3, 0, 2, 1], np.int32),
    lengths=np.array([10, 0, 300, 45, 7, 512, 64], np.int32),
)
LOSSES = {
    "bce": losses.bce_loss,
    "weighted": losses.sentiment_weighted_loss,
    "focal": losses.sentiment_focal_loss,
    "sentiment": functools.partial(losses.sentiment_loss, length_weighting=True),
}


def call(fn, *, jit=False, **overrides):
    args = {**GOOD, **overrides}
    where = args.pop("where", None)

    def f(x, y, n, m):
        return fn(x, y, n, where=m)

    return (jax.jit(f) if jit else f)(args["logits"], args["labels"], args["lengths"], where)


STRUCTURE_ERRORS = [
    (dict(labels=np.zeros(8, np.int32)), AssertionError, r"labels must have shape \[B\] = \(7,\)"),
    (dict(labels=np.zeros((7, K), np.int32)), AssertionError, "labels must have shape"),
    (
        dict(labels=np.zeros(7, np.float32)),
        TypeError,
        r"labels must be integer class indices in \[0, 5\) for logits of shape \[B, K\] = "
        r"\(7, 5\), got float32",
    ),
    (dict(labels=np.zeros(7, bool)), TypeError, "labels must be integer class indices.*got bool"),
    (dict(lengths=np.zeros(6, np.int32)), AssertionError, "lengths must have shape"),
    (dict(where=np.ones((7, K), bool)), AssertionError, "where must have shape"),
    (dict(logits=np.zeros((7, 0), np.float32)), AssertionError, "logits of rank 2"),
    (dict(logits=np.zeros((7, K, 1), np.float32)), AssertionError, "logits must have shape"),
    (dict(logits=np.zeros((7, K), np.int32)), TypeError, "logits must have a floating dtype"),
]


def reads(name, override):
    """Whether the loss ``name`` reads the overridden input (bce_loss ignores lengths)."""
    return not (name == "bce" and "lengths" in override)


@pytest.mark.parametrize(
    "name,override,error,message",
    [(name, *case) for case in STRUCTURE_ERRORS for name in LOSSES if reads(name, case[0])],
    ids=[
        f"{name}-{case[2][:30]}"
        for case in STRUCTURE_ERRORS
        for name in LOSSES
        if reads(name, case[0])
    ],
)
def test_structure_errors_at_trace_time(name, override, error, message):
    with pytest.raises(error, match=message):
        call(LOSSES[name], jit=True, **override)


def with_value(name, index, value, dtype=None):
    array = GOOD[name].astype(dtype or GOOD[name].dtype).copy()
    array[index] = value
    return {name: array}


VALUE_ERRORS = [
    (
        with_value("labels", 3, 5),
        r"labels must be class indices in \[0, 5\) for logits with K = 5 classes; got .*5.* at "
        r"index 3 \(1 bad",
    ),
    (
        with_value("labels", 1, -1),
        r"labels must be class indices in \[0, 5\).*got .*-1.* at index 1",
    ),
    (with_value("labels", 6, 40), r"in \[0, 5\) for logits with K = 5 classes; got .*40.* index 6"),
    (with_value("logits", (4, 2), np.nan), r"logits must be finite; got .*nan.* at index \(4, 2\)"),
    (with_value("lengths", 2, -4), r"lengths must be finite and >= 0; got .*-4.* at index 2"),
]


@pytest.mark.parametrize(
    "name,override,message",
    [(name, *case) for case in VALUE_ERRORS for name in LOSSES if reads(name, case[0])],
    ids=[
        f"{name}-{case[1][:30]}" for case in VALUE_ERRORS for name in LOSSES if reads(name, case[0])
    ],
)
def test_bad_values_raise_value_error(name, override, message):
    with pytest.raises(ValueError, match=message):
        call(LOSSES[name], **override)


@pytest.mark.parametrize("override,message", VALUE_ERRORS, ids=[m[:30] for _, m in VALUE_ERRORS])
def test_bad_values_under_jit_through_checkify(override, message):
    checked = checkify.checkify(
        jax.jit(lambda x, y, n: losses.sentiment_focal_loss(x, y, n)),
        errors=checkify.user_checks,
    )
    args = {**GOOD, **override}
    err, _ = checked(args["logits"], args["labels"], args["lengths"])
    with pytest.raises(checkify.JaxRuntimeError, match=message.replace("got .*", "got ")):
        err.throw()
    err, _ = checked(GOOD["logits"], GOOD["labels"], GOOD["lengths"])
    assert err.get() is None


def test_bad_values_in_masked_rows_are_allowed():
    where = np.array([True, True, False, True, False, True, True])
    bad = {**with_value("labels", 2, 99), **with_value("lengths", 4, -1)}
    bad["logits"] = np.where(where[:, None], GOOD["logits"], np.nan).astype(np.float32)
    for fn in LOSSES.values():
        assert np.isfinite(call(fn, where=where, **bad))


def test_building_blocks_refuse_fewer_than_two_classes():
    for fn in (
        lambda x: losses.softmax_cross_entropy_with_integer_labels(x, jnp.zeros(3, int)),
        lambda x: losses.softmax_focal_modulator(x, jnp.zeros(3, int), gamma=2.0),
        losses.softmax_confidence_weights,
    ):
        with pytest.raises(
            ValueError, match=r"K >= 2 classes on the last axis, got shape \(3, 1\)"
        ):
            fn(jnp.zeros((3, 1)))


# ----------------------------------------------------------------------------------
# (f) bf16 logits compute in float32; shapes and jit
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LOSSES))
def test_bf16_logits_compute_in_float32(name):
    logits = jnp.asarray(GOOD["logits"] * 7, jnp.bfloat16)
    fn = LOSSES[name]
    value, grad = jax.value_and_grad(lambda x: fn(x, GOOD["labels"], GOOD["lengths"]))(logits)
    chex.assert_type(value, jnp.float32)
    chex.assert_type(grad, jnp.bfloat16)
    # bf16 -> f32 is exact, so the same float32 computation: the same bits.
    ref = fn(logits.astype(jnp.float32), GOOD["labels"], GOOD["lengths"])
    np.testing.assert_array_equal(value, ref)
    for block in (
        losses.softmax_cross_entropy_with_integer_labels(logits, GOOD["labels"]),
        losses.softmax_focal_modulator(logits, GOOD["labels"], gamma=0.1),
        losses.softmax_confidence_weights(logits),
    ):
        chex.assert_type(block, jnp.float32)
        chex.assert_shape(block, (7,))


def test_jit_matches_eager():
    fn = jax.value_and_grad(
        lambda x: losses.sentiment_focal_loss(x, GOOD["labels"], GOOD["lengths"], gamma_focal=2.0)
    )
    value, grad = fn(GOOD["logits"] * 5)
    j_value, j_grad = jax.jit(fn)(GOOD["logits"] * 5)
    chex.assert_shape([value, j_value], ())
    chex.assert_shape([grad, j_grad], (7, K))
    np.testing.assert_allclose(j_value, value, rtol=1e-6)
    np.testing.assert_allclose(j_grad, grad, rtol=0, atol=1e-6 * np.max(np.abs(grad)))


# ----------------------------------------------------------------------------------
# (g) A batch sharded over 8 virtual CPU devices
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sharded_batch():
    rng = np.random.default_rng(0)
    logits = rng.uniform(-20.0, 20.0, (64, K)).astype(np.float32)
    labels = rng.integers(0, K, 64).astype(np.int32)
    lengths = rng.integers(0, 513, 64).astype(np.int32)
    where = rng.random(64) < 0.75
    logits[~where] = np.nan  # padding rows must not leak across shards either
    return logits, labels, lengths, where


SHARDED_LOSSES = {
    "bce": losses.bce_loss,
    "weighted": losses.sentiment_weighted_loss,
    "focal": functools.partial(losses.sentiment_focal_loss, gamma_focal=2.0),
}


def jit_value_and_grad(fn):
    return jax.jit(jax.value_and_grad(lambda x, y, n, m: fn(x, y, n, where=m)))


def assert_sharded_matches(sharded, unsharded):
    value, grad = sharded
    ref_value, ref_grad = unsharded
    # Per-shard partial sums are combined in a different order: a few float32 ulp.
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6 * np.max(np.abs(ref_grad)))


@pytest.mark.parametrize("name", list(SHARDED_LOSSES))
def test_sharded_equals_unsharded_explicit_mesh(sharded_batch, name):
    assert jax.device_count() >= 8
    f = jit_value_and_grad(SHARDED_LOSSES[name])
    unsharded = f(*sharded_batch)
    mesh = jax.make_mesh((8,), ("data",))
    with jax.set_mesh(mesh):
        batch = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in sharded_batch]
        value, grad = f(*batch)
        assert grad.sharding.spec[0] == "data"
    assert_sharded_matches((value, grad), unsharded)


def test_sharded_equals_unsharded_auto_mesh(sharded_batch):
    f = jit_value_and_grad(SHARDED_LOSSES["focal"])
    unsharded = f(*sharded_batch)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    batch = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in sharded_batch]
    assert_sharded_matches(f(*batch), unsharded)


def test_checkify_on_a_sharded_batch(sharded_batch):
    logits, labels, lengths, where = sharded_batch
    bad_labels = labels.copy()
    bad_labels[np.flatnonzero(where)[3]] = K
    mesh = jax.make_mesh((8,), ("data",))
    checked = checkify.checkify(
        jax.jit(lambda x, y, n, m: losses.sentiment_focal_loss(x, y, n, where=m)),
        errors=checkify.user_checks,
    )
    with jax.set_mesh(mesh):
        err, _ = checked(
            *[
                jax.device_put(a, NamedSharding(mesh, P("data")))
                for a in (logits, bad_labels, lengths, where)
            ]
        )
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels must be class indices in \[0, 5\)"):
        err.throw()


# ----------------------------------------------------------------------------------
# Docstring examples
# ----------------------------------------------------------------------------------
def test_docstring_examples_run():
    result = doctest.testmod(_multiclass_terms, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 4
