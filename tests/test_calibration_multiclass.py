"""jaxsent.calibration on K-class logits against scipy's bounded 1-D minimiser in float64.

Reference. ``scipy.optimize.minimize_scalar(method="bounded")`` minimises the float64 mean
softmax NLL of ``z / T`` over ``u = log T`` in the same bounds with ``xatol = 1e-11``; the NLL
is unimodal in ``u`` (convex in ``1 / T``: its second derivative is a mean of variances), so
Brent's bounded search finds the optimum. The logits are the float32 inputs cast exactly.

Tolerances, as in tests/test_calibration.py:
* ``T``: bisection of ``log T`` on the sign of a float32 derivative sum: ``RTOL_T = 1e-5``.
* NLL: at a log-T error ``du`` the NLL exceeds its minimum by ``f''_u du^2 / 2`` with
  ``f''_u = mean_i Var_{softmax(z_i / T)}[z_i / T]`` (the curvature in ``u`` at the optimum),
  so we allow ``curvature * RTOL_T**2 / 2 + 1e-15``; at a bound the claim is one-sided.
* The K = 2 fit on logits ``[0, z]`` solves the binary problem (term by term the same
  derivative), computed differently, so the two temperatures agree to ``RTOL_T``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import brentq, minimize_scalar
from scipy.special import expit, log_softmax, softmax

from jaxsent import calibration as C
from jaxsent import multiclass_metrics as MM

RTOL_T = 1e-5
EPS32 = float(np.finfo(np.float32).eps)
jit_fit = jax.jit(C.fit_temperature, static_argnames=("min_temperature", "max_temperature"))


# ---------------------------------------------------------------- references


def nll64(logits, labels, temperature):
    z = np.asarray(logits, np.float64) / float(temperature)
    return float(np.mean(-log_softmax(z, axis=1)[np.arange(len(labels)), labels]))


def curvature64(logits, labels, temperature):
    """d^2 NLL / d(log T)^2 at a stationary point: mean_i Var_{p_i}[z_i / T]."""
    a = np.asarray(logits, np.float64) / float(temperature)
    p = softmax(a, axis=1)
    mean = np.sum(p * a, axis=1, keepdims=True)
    return float(np.mean(np.sum(p * (a - mean) ** 2, axis=1)))


def scipy_temperature(logits, labels, low=1e-2, high=1e2):
    result = minimize_scalar(
        lambda u: nll64(logits, labels, math.exp(u)),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-11},
    )
    return math.exp(result.x)


def assert_fit_matches_scipy(logits, labels, got, low=1e-2, high=1e2):
    want = scipy_temperature(logits, labels, low, high)
    got = float(got)
    assert np.float32(low) <= got <= np.float32(high)
    tol = 0.5 * curvature64(logits, labels, want) * RTOL_T**2 + 1e-15
    assert nll64(logits, labels, got) <= nll64(logits, labels, want) + tol
    return got, want


def calibrated_problem(n, k, temperature, seed, scale=2.0):
    """Labels drawn from softmax(w); logits z = temperature * w (over/under-confident)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(scale=scale, size=(n, k))
    p = softmax(w, axis=1)
    labels = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1).astype(np.int32)
    return (temperature * w).astype(np.float32), labels


# --------------------------------------------------------------- interior optimum


@pytest.mark.parametrize(
    "n, k, temperature, seed",
    [(9, 3, 2.0, 0), (300, 5, 0.5, 1), (300, 5, 3.0, 2), (2_210, 5, 1.7, 3), (400, 20, 2.2, 4)],
)
def test_interior_optimum_matches_scipy(n, k, temperature, seed):
    logits, labels = calibrated_problem(n, k, temperature, seed)
    got, want = assert_fit_matches_scipy(logits, labels, jit_fit(logits, labels))
    np.testing.assert_allclose(got, want, rtol=RTOL_T)


def test_recovers_the_generating_temperature():
    logits, labels = calibrated_problem(50_000, 5, 2.5, seed=5)
    np.testing.assert_allclose(float(jit_fit(logits, labels)), 2.5, rtol=0.03)


def test_two_classes_of_logits_zero_and_z_give_the_binary_temperature():
    rng = np.random.default_rng(6)
    z = rng.normal(scale=3.0, size=500).astype(np.float32)
    y = (rng.random(500) < expit(z / 1.8)).astype(np.int32)
    where = rng.random(500) < 0.9
    two = np.stack([np.zeros_like(z), z], axis=1)
    binary = float(C.fit_temperature(z, y, where=where))
    np.testing.assert_allclose(float(C.fit_temperature(two, y, where=where)), binary, rtol=RTOL_T)
    # The bounds cases agree exactly.
    separable = np.abs(z) * np.where(y == 1, 1, -1)
    two_separable = np.stack([np.zeros_like(z), separable], axis=1)
    assert float(C.fit_temperature(two_separable, y)) == float(C.fit_temperature(separable, y))


def test_float64_under_x64_matches_the_root_of_the_derivative_to_1e12():
    # minimize_scalar resolves a minimum from NLL values only to about sqrt(eps64) ~ 1e-8 in
    # log T; the root of the float64 derivative (brentq, xtol 1e-15) pins it to rounding.
    logits, labels = calibrated_problem(500, 4, 1.8, seed=7)
    logits = logits.astype(np.float64)
    gap = logits - logits[np.arange(500), labels][:, None]

    def derivative(u):  # n f'(s) at s = exp(-u): sum_i E_{softmax(s z_i)}[z_i - z_iy]
        return float(np.sum(softmax(gap * math.exp(-u), axis=1) * gap))

    want = math.exp(brentq(derivative, math.log(1e-2), math.log(1e2), xtol=1e-15))
    with jax.enable_x64(True):
        got = C.fit_temperature(jnp.asarray(logits, jnp.float64), labels)
        assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), want, rtol=1e-12)
    np.testing.assert_allclose(scipy_temperature(logits, labels), want, rtol=1e-7)


def test_temperature_keeps_every_prediction_and_lowers_nll():
    logits, labels = calibrated_problem(1_000, 5, 2.5, seed=8)
    temperature = C.fit_temperature(logits, labels)
    scaled = C.apply_temperature(logits, temperature)
    assert scaled.shape == logits.shape
    np.testing.assert_allclose(scaled, logits / float(temperature), rtol=EPS32)
    np.testing.assert_array_equal(MM.predicted_class(scaled), MM.predicted_class(logits))
    assert float(MM.accuracy(scaled, labels)) == float(MM.accuracy(logits, labels))
    assert float(MM.nll(scaled, labels)) < float(MM.nll(logits, labels))


# ------------------------------------------------------------------ awkward inputs


def test_every_true_class_strictly_largest_returns_the_lower_bound_exactly():
    logits = np.array([[3.0, -2.0, 0.5], [0.0, 0.1, -4.0], [1.0, 1.0, 7.0]], np.float32)
    labels = np.array([0, 1, 2])
    assert float(jit_fit(logits, labels)) == np.float32(1e-2)
    assert_fit_matches_scipy(logits, labels, jit_fit(logits, labels))
    assert float(jit_fit(logits, labels, min_temperature=0.5, max_temperature=4.0)) == 0.5


def test_a_tie_for_the_top_is_not_separable():
    # Row 0's true class ties another for the top: the NLL tends to log 2 as T -> 0, above
    # its value at T ~ 1 where row 1 (mixed) matters; the optimum is interior.
    logits = np.array([[2.0, 2.0, -1.0], [0.5, -0.5, 1.0]], np.float32)
    labels = np.array([0, 0])
    got, want = assert_fit_matches_scipy(logits, labels, jit_fit(logits, labels))
    np.testing.assert_allclose(got, want, rtol=RTOL_T)


def test_every_true_class_strictly_smallest_returns_the_upper_bound_exactly():
    logits = np.array([[-3.0, 2.0, 0.5], [0.0, -0.1, 4.0]], np.float32)
    labels = np.array([0, 1])
    assert float(jit_fit(logits, labels)) == np.float32(1e2)
    assert_fit_matches_scipy(logits, labels, jit_fit(logits, labels))


def test_no_real_rows_and_equal_logits_give_the_identity():
    assert float(C.fit_temperature(np.zeros((0, 3), np.float32), np.zeros(0, np.int32))) == 1.0
    logits = np.array([[np.nan, 2.0, 0.0], [1.0, 2.0, 3.0]], np.float32)
    assert float(jit_fit(logits, np.array([1, 9]), where=np.zeros(2, bool))) == 1.0
    equal = np.array([[1.5, 1.5, 1.5], [-2.0, -2.0, -2.0]], np.float32)
    assert float(jit_fit(equal, np.array([0, 2]))) == 1.0


def test_very_large_logits_do_not_overflow():
    logits, labels = calibrated_problem(300, 4, 500.0, seed=9)
    got = jit_fit(logits, labels, max_temperature=1e4)
    assert np.isfinite(float(got))
    got, want = assert_fit_matches_scipy(logits, labels, got, high=1e4)
    np.testing.assert_allclose(got, want, rtol=RTOL_T)


@st.composite
def masked_problems(draw):
    """(logits, labels, mask): junk (NaN/inf logits, out-of-range labels) in masked rows."""
    n = draw(st.sampled_from([3, 9, 40]))
    k = draw(st.sampled_from([2, 3, 5]))
    elements = st.floats(-20, 20, width=32, allow_subnormal=False)
    logits = draw(hnp.arrays(np.float32, (n, k), elements=elements))
    labels = draw(hnp.arrays(np.int32, n, elements=st.integers(0, k - 1)))
    mask = draw(hnp.arrays(bool, n))
    junk = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    logits = np.where(mask[:, None], logits, junk).astype(np.float32)
    labels = np.where(mask, labels, k + 2).astype(np.int32)
    return logits, labels, mask


@settings(max_examples=30, deadline=None)
@given(masked_problems())
def test_where_equals_selecting_rows_and_matches_scipy(problem):
    logits, labels, mask = problem
    got = float(jit_fit(logits, labels, where=mask))
    assert np.isfinite(got)
    want = float(jit_fit(logits[mask], labels[mask]))
    np.testing.assert_allclose(got, want, rtol=RTOL_T)
    if mask.any():
        assert_fit_matches_scipy(logits[mask], labels[mask], got)
        # T = 1 lies inside the bounds, so the fit is at least as good.
        tol = 0.5 * curvature64(logits[mask], labels[mask], got) * RTOL_T**2 + 1e-15
        assert nll64(logits[mask], labels[mask], got) <= nll64(logits[mask], labels[mask], 1) + tol


def test_jit_equals_eager():
    logits, labels = calibrated_problem(64, 3, 2.0, seed=10)
    where = np.arange(64) % 5 != 0
    eager = float(C.fit_temperature(logits, labels, where=where))
    np.testing.assert_allclose(float(jit_fit(logits, labels, where=where)), eager, rtol=4 * EPS32)


def test_low_precision_logits_compute_in_float32():
    logits, labels = calibrated_problem(100, 3, 2.0, seed=11)
    got = C.fit_temperature(jnp.asarray(logits, jnp.bfloat16), labels)
    assert got.dtype == jnp.float32
    rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
    got, want = assert_fit_matches_scipy(rounded, labels, got)
    np.testing.assert_allclose(got, want, rtol=RTOL_T)


# ------------------------------------------------------------------ bad input

Z = np.zeros((3, 4), np.float32)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: C.fit_temperature(Z, np.array([0, 4, 1])), ValueError, r"`labels`.*\[0, 4\)"),
        (lambda: C.fit_temperature(Z, np.array([0.0, 1.0, 1.0])), TypeError, "`labels`"),
        (lambda: C.fit_temperature(Z, np.array([0, 1])), ValueError, "`labels`"),
        (lambda: C.fit_temperature(Z.astype(int), np.zeros(3, int)), TypeError, "`logits`"),
        (lambda: C.fit_temperature(np.zeros((3, 2, 2)), np.zeros(3, int)), ValueError, "`logits`"),
        (
            lambda: C.fit_temperature(
                np.array([[0.0, 1.0], [np.inf, 0.0]], np.float32), np.array([0, 1])
            ),
            ValueError,
            "`logits`.*inf.*row 1",
        ),
        (
            lambda: C.fit_temperature(Z, np.zeros(3, int), min_temperature=0.0),
            ValueError,
            "`min_temperature`",
        ),
    ],
)
def test_bad_input_names_argument_and_value(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_non_finite_real_logit_under_jit_is_nan():
    logits = np.array([[0.0, 1.0], [np.nan, 0.0], [2.0, 0.0]], np.float32)
    assert np.isnan(float(jit_fit(logits, np.array([1, 0, 0]))))
