"""jaxsent.calibration against scipy's bounded 1-D minimiser in float64.

Reference. ``scipy.optimize.minimize_scalar(method="bounded")`` minimises the float64 mean
NLL over ``u = log T`` in the same bounds with ``xatol = 1e-11``; the NLL is unimodal in
``u`` (convex in ``1 / T``), so Brent's bounded search finds the optimum. The margins are
the float32 inputs cast exactly to float64, so the two fits solve the same problem.

Tolerances.
* ``T``: the fit bisects ``log T`` to float32 resolution; its float32 derivative sum
  decides each step's side, so rounding can move the root where ``|f'|`` is below the
  summation error. Measured relative error <= 1e-7 up to N = 1e5; ``RTOL_T = 1e-5``
  leaves a factor 100.
* NLL: the fitted NLL exceeds the minimum by ``f''_u du^2 / 2`` at a log-T error ``du``
  (``f'_u = 0`` at an interior optimum), so with ``du <= RTOL_T`` we allow
  ``curvature * RTOL_T**2 / 2`` plus 1e-15 for float64 rounding of the mean, where
  ``curvature = mean((m/T)^2 sigmoid(m/T) sigmoid(-m/T))`` is ``f''_u`` at the optimum.
  At a bound the claim is one-sided and exact: ours <= scipy's + 1e-15.
* float64 under x64: ``T`` within 1e-9 relative of scipy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit

from jaxsent import calibration as C
from jaxsent import metrics as M

RTOL_T = 1e-5
EPS32 = float(np.finfo(np.float32).eps)
jit_fit = jax.jit(C.fit_temperature, static_argnames=("min_temperature", "max_temperature"))


# ---------------------------------------------------------------- references


def margins64(logits, labels):
    z = np.asarray(logits).astype(np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    return np.where(y == 1, z, -z)


def nll64(logits, labels, temperature):
    """float64 mean NLL of logits / T."""
    return float(np.mean(-log_expit(margins64(logits, labels) / float(temperature))))


def curvature64(logits, labels, temperature):
    """d^2 NLL / d(log T)^2 at a stationary point: mean(a^2 sigma(a) sigma(-a)), a = m / T."""
    a = margins64(logits, labels) / float(temperature)
    return float(np.mean(a * a * expit(a) * expit(-a)))


def scipy_temperature(logits, labels, low=1e-2, high=1e2):
    m = margins64(logits, labels)
    result = minimize_scalar(
        lambda u: np.mean(-log_expit(m * math.exp(-u))),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-11},
    )
    return math.exp(result.x)


def assert_fit_matches_scipy(logits, labels, got, low=1e-2, high=1e2):
    want = scipy_temperature(logits, labels, low, high)
    got = float(got)
    # The bounds as float32 holds them (float32(1e-2) is just below 1e-2).
    assert np.float32(low) <= got <= np.float32(high)
    tol = 0.5 * curvature64(logits, labels, want) * RTOL_T**2 + 1e-15
    assert nll64(logits, labels, got) <= nll64(logits, labels, want) + tol
    return got, want


def calibrated_problem(n, temperature, seed, scale=3.0):
    """Labels drawn from sigmoid(w); logits z = temperature * w (over/under-confident)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(scale=scale, size=n)
    labels = (rng.random(n) < expit(w)).astype(np.int32)
    return (temperature * w).astype(np.float32), labels


# --------------------------------------------------------------- interior optimum


@pytest.mark.parametrize(
    "n, temperature, seed", [(7, 2.0, 0), (200, 0.5, 1), (200, 3.0, 2), (10_662, 1.7, 3)]
)
def test_interior_optimum_matches_scipy(n, temperature, seed):
    logits, labels = calibrated_problem(n, temperature, seed)
    got, want = assert_fit_matches_scipy(logits, labels, jit_fit(logits, labels))
    np.testing.assert_allclose(got, want, rtol=RTOL_T)


def test_recovers_the_generating_temperature():
    # Statistical sanity with a fixed seed: 2e5 rows pin T to about 1%.
    logits, labels = calibrated_problem(200_000, 2.5, seed=4)
    np.testing.assert_allclose(float(jit_fit(logits, labels)), 2.5, rtol=0.03)


def test_float64_under_x64_matches_scipy_to_1e9():
    logits, labels = calibrated_problem(500, 1.8, seed=5)
    logits = logits.astype(np.float64)
    with jax.enable_x64(True):
        got = C.fit_temperature(jnp.asarray(logits, jnp.float64), labels)
        assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), scipy_temperature(logits, labels), rtol=1e-9)


def test_column_logits_and_labels_equal_vector():
    logits, labels = calibrated_problem(50, 2.0, seed=6)
    vector = C.fit_temperature(logits, labels)
    assert float(C.fit_temperature(logits[:, None], labels)) == float(vector)
    assert float(C.fit_temperature(logits[:, None], labels[:, None])) == float(vector)


@pytest.mark.parametrize("label_dtype", [bool, np.int32, np.float32])
def test_label_dtypes_agree(label_dtype):
    logits, labels = calibrated_problem(60, 2.0, seed=7)
    want = float(C.fit_temperature(logits, labels))
    assert float(C.fit_temperature(logits, labels.astype(label_dtype))) == want


def test_low_precision_logits_compute_in_float32():
    logits, labels = calibrated_problem(100, 2.0, seed=8)
    got = C.fit_temperature(jnp.asarray(logits, jnp.bfloat16), labels)
    assert got.dtype == jnp.float32
    rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
    got, want = assert_fit_matches_scipy(rounded, labels, got)
    np.testing.assert_allclose(got, want, rtol=RTOL_T)


# ------------------------------------------------------------------ awkward inputs


def test_perfectly_separable_returns_the_lower_bound_exactly():
    logits = np.array([3.0, -2.0, 0.5, -0.1, 7.0], np.float32)
    labels = np.array([1, 0, 1, 0, 1])
    assert float(jit_fit(logits, labels)) == np.float32(1e-2)
    assert_fit_matches_scipy(logits, labels, jit_fit(logits, labels))
    # Custom bounds are honoured exactly as well.
    got = jit_fit(logits, labels, min_temperature=0.5, max_temperature=4.0)
    assert float(got) == 0.5


def test_all_one_class_all_correct_returns_the_lower_bound():
    logits = np.array([1.0, 2.0, 0.3], np.float32)
    assert float(jit_fit(logits, np.ones(3, np.int32))) == np.float32(1e-2)
    assert float(jit_fit(-logits, np.zeros(3, np.int32))) == np.float32(1e-2)


def test_all_one_class_mixed_signs_is_interior():
    logits = np.array([2.0, 1.0, -0.5, 3.0, -1.5, 0.7], np.float32)
    labels = np.ones(6, np.int32)
    got, want = assert_fit_matches_scipy(logits, labels, jit_fit(logits, labels))
    assert 1e-2 < got < 1e2
    np.testing.assert_allclose(got, want, rtol=RTOL_T)


def test_all_wrong_returns_the_upper_bound_exactly():
    logits = np.array([2.0, -1.0, 0.5], np.float32)
    labels = np.array([0, 1, 0])
    assert float(jit_fit(logits, labels)) == np.float32(1e2)
    assert_fit_matches_scipy(logits, labels, jit_fit(logits, labels))


def test_very_large_logits_do_not_overflow():
    rng = np.random.default_rng(9)
    logits = (rng.choice([-1.0, 1.0], 400) * rng.uniform(500, 1500, 400)).astype(np.float32)
    labels = (rng.random(400) < np.where(logits > 0, 0.8, 0.2)).astype(np.int32)
    got = jit_fit(logits, labels, min_temperature=1e-2, max_temperature=1e4)
    assert np.isfinite(float(got))
    got, want = assert_fit_matches_scipy(logits, labels, got, high=1e4)
    np.testing.assert_allclose(got, want, rtol=RTOL_T)
    assert got > 100  # |z| ~ 1e3 with 20% errors: T of several hundred
    # Separable at |z| ~ 1e3 (sigmoid saturates at every T in range): the lower bound.
    assert float(jit_fit(np.abs(logits), np.ones(400, np.int32))) == np.float32(1e-2)


def test_no_real_rows_and_zero_logits_give_the_identity():
    assert float(C.fit_temperature(np.zeros(0, np.float32), np.zeros(0, np.int32))) == 1.0
    logits = np.array([np.nan, 2.0], np.float32)
    assert float(jit_fit(logits, np.array([1, 0]), where=np.zeros(2, bool))) == 1.0
    assert float(jit_fit(np.zeros(4, np.float32), np.array([0, 1, 1, 0]))) == 1.0


@st.composite
def masked_problems(draw):
    """(logits, labels, mask): junk (NaN/inf logits, label 7) in the masked rows."""
    n = draw(st.sampled_from([3, 9, 40]))
    elements = st.floats(-30, 30, width=32, allow_subnormal=False)
    logits = draw(hnp.arrays(np.float32, n, elements=elements))
    labels = draw(hnp.arrays(np.int32, n, elements=st.sampled_from([0, 1])))
    mask = draw(hnp.arrays(bool, n))
    junk = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    logits_junk = np.where(mask, logits, junk).astype(np.float32)
    labels_junk = np.where(mask, labels, 7).astype(np.int32)
    return logits_junk, labels_junk, mask


@settings(max_examples=40, deadline=None)
@given(masked_problems())
def test_where_equals_selecting_rows_and_junk_never_leaks(problem):
    logits, labels, mask = problem
    got = float(jit_fit(logits, labels, where=mask))
    assert np.isfinite(got)
    want = float(C.fit_temperature(logits[mask], labels[mask]))
    # Padding adds exact zeros to the derivative sum, but changes its summation order.
    np.testing.assert_allclose(got, want, rtol=RTOL_T)
    if mask.any():
        assert_fit_matches_scipy(logits[mask], labels[mask], got)


@settings(max_examples=10, deadline=None)
@given(masked_problems())
def test_jit_equals_eager(problem):
    logits, labels, mask = problem
    eager = float(C.fit_temperature(logits, labels, where=mask))
    np.testing.assert_allclose(float(jit_fit(logits, labels, where=mask)), eager, rtol=4 * EPS32)


@st.composite
def problems(draw):
    n = draw(st.sampled_from([1, 2, 5, 17, 64]))
    if draw(st.booleans()):
        elements = st.sampled_from([-4.0, -1.0, 0.0, 0.5, 3.0])
    else:
        elements = st.floats(-30, 30, width=32, allow_subnormal=False)
    logits = draw(hnp.arrays(np.float32, n, elements=elements))
    labels = draw(hnp.arrays(np.int32, n, elements=st.sampled_from([0, 1])))
    return logits, labels


@settings(max_examples=80, deadline=None)
@given(problems())
def test_fitted_temperature_never_increases_nll_and_matches_scipy(problem):
    logits, labels = problem
    got = float(jit_fit(logits, labels))
    assert np.float32(1e-2) <= got <= np.float32(1e2)
    # T = 1 is inside the bounds, so the bounded optimum is at least as good.
    tol = 0.5 * curvature64(logits, labels, got) * RTOL_T**2 + 1e-15
    assert nll64(logits, labels, got) <= nll64(logits, labels, 1.0) + tol
    assert_fit_matches_scipy(logits, labels, got)


# ------------------------------------------------------------------ apply


def test_apply_temperature_divides_and_keeps_predictions():
    logits, labels = calibrated_problem(100, 2.0, seed=10)
    temperature = C.fit_temperature(logits, labels)
    scaled = C.apply_temperature(logits, temperature)
    np.testing.assert_allclose(scaled, logits / float(temperature), rtol=EPS32)
    assert float(M.accuracy(scaled, labels)) == float(M.accuracy(logits, labels))
    assert float(M.binary_nll(scaled, labels)) < float(M.binary_nll(logits, labels))
    assert C.apply_temperature(logits[:, None], 2.0).shape == (100, 1)
    assert C.apply_temperature(jnp.asarray(logits, jnp.bfloat16), 2.0).dtype == jnp.float32
    traced = jax.jit(C.apply_temperature)(logits, temperature)
    np.testing.assert_allclose(traced, scaled, rtol=EPS32)


# ------------------------------------------------------------------ bad input


Z = np.zeros(3, np.float32)
Y = np.array([0, 1, 1])


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: C.fit_temperature(np.zeros(3, np.int32), Y), TypeError, "`logits`.*int32"),
        (
            lambda: C.fit_temperature(np.zeros((3, 2, 2)), Y),
            ValueError,
            r"`logits`.*\(3, 2, 2\)",
        ),
        (lambda: C.fit_temperature(Z, np.array([0, 1])), ValueError, "`labels`"),
        (lambda: C.fit_temperature(Z, np.array([0, 2, 1])), ValueError, "`labels`.*2"),
        (lambda: C.fit_temperature(Z, Y, where=np.ones(3)), TypeError, "`where`"),
        (lambda: C.fit_temperature(Z, Y, where=np.ones(2, bool)), ValueError, "`where`"),
        (lambda: C.fit_temperature(Z, Y, min_temperature=0.0), ValueError, "`min_temperature`"),
        (
            lambda: C.fit_temperature(Z, Y, max_temperature=float("inf")),
            ValueError,
            "`max_temperature`.*inf",
        ),
        (
            lambda: C.fit_temperature(Z, Y, min_temperature=2.0, max_temperature=1.0),
            ValueError,
            "`min_temperature` must be below",
        ),
        (
            lambda: C.fit_temperature(np.array([0.0, np.nan, 1.0]), Y),
            ValueError,
            "`logits`.*nan.*row 1",
        ),
        (lambda: C.apply_temperature(Z, 0.0), ValueError, "`temperature`.*0.0"),
        (lambda: C.apply_temperature(Z, -1.0), ValueError, "`temperature`.*-1.0"),
        (lambda: C.apply_temperature(Z, float("nan")), ValueError, "`temperature`.*nan"),
        (lambda: C.apply_temperature(Z, np.ones(2)), ValueError, "`temperature`.*scalar"),
        (lambda: C.apply_temperature(np.zeros(2, np.int32), 1.0), TypeError, "`logits`"),
    ],
)
def test_bad_input_names_argument_and_value(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_non_finite_real_logit_under_jit_is_nan():
    got = jit_fit(np.array([0.0, np.inf, 1.0], np.float32), Y)
    assert np.isnan(float(got))
