"""Bad input to jaxsent.losses: trace-time structural errors, eager ValueErrors, checkify."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jaxsent import losses

B = 7
GOOD = dict(
    logits=np.linspace(-3.0, 3.0, B).astype(np.float32),
    labels=np.array([1, 0, 1, 1, 0, 0, 1], np.int32),
    lengths=np.array([10, 0, 300, 45, 7, 512, 64], np.int32),
)
LOSSES = {
    "bce": losses.bce_loss,
    "weighted": losses.sentiment_weighted_loss,
    "focal": losses.sentiment_focal_loss,
}


def call(fn, *, jit=False, **overrides):
    args = {**GOOD, **overrides}
    where = args.pop("where", None)

    def f(x, y, n, m):
        return fn(x, y, n, where=m)

    return (jax.jit(f) if jit else f)(args["logits"], args["labels"], args["lengths"], where)


# ----------------------------------------------------------------------------------
# Structure: rank, shape, dtype fail at trace time, naming the argument
# ----------------------------------------------------------------------------------
STRUCTURE_ERRORS = [
    # (override, exception, message naming the argument)
    # [B, 2] is the K-class form (tests/test_losses_multiclass.py); [B, 0] has no class.
    (dict(logits=np.zeros((B, 0), np.float32)), AssertionError, "logits of rank 2"),
    (dict(logits=np.zeros((B, 1, 1), np.float32)), AssertionError, "logits must have shape"),
    (dict(logits=np.zeros((), np.float32)), AssertionError, "logits must have shape"),
    (dict(logits=np.zeros(B, np.int32)), TypeError, "logits must have a floating dtype, got int32"),
    (
        dict(labels=np.zeros(B + 1, np.int32)),
        AssertionError,
        r"labels must have shape \[B\] = \(7,\)",
    ),
    (dict(labels=np.zeros((B, 1), np.int32)), AssertionError, "labels must have shape"),
    (
        dict(labels=np.zeros(B, np.complex64)),
        TypeError,
        "labels must be bool, integer or floating, got complex64",
    ),
    (dict(lengths=np.zeros(B - 1, np.int32)), AssertionError, "lengths must have shape"),
    (
        dict(lengths=np.zeros(B, bool)),
        TypeError,
        "lengths must be integer or floating token counts, got bool",
    ),
    (dict(where=np.ones(B + 2, bool)), AssertionError, "where must have shape"),
    (dict(where=np.ones(B, np.int32)), TypeError, "where must be a bool mask, got int32"),
]


@pytest.mark.parametrize("name", ["weighted", "focal"])
@pytest.mark.parametrize(
    "override,error,message", STRUCTURE_ERRORS, ids=[m for _, _, m in STRUCTURE_ERRORS]
)
def test_structure_errors_at_trace_time(name, override, error, message):
    # Under jax.jit: raised while tracing, before anything runs.
    with pytest.raises(error, match=message):
        call(LOSSES[name], jit=True, **override)


def test_bce_checks_structure_but_ignores_lengths():
    with pytest.raises(AssertionError, match="labels must have shape"):
        call(losses.bce_loss, jit=True, labels=np.zeros(B + 1, np.int32))
    assert np.isfinite(call(losses.bce_loss, lengths=np.full(B + 5, -1.0)))


# ----------------------------------------------------------------------------------
# Values: ValueError on concrete input, naming the argument and the value
# ----------------------------------------------------------------------------------
def with_value(name, index, value, dtype=None):
    array = GOOD[name].astype(dtype or GOOD[name].dtype).copy()
    array[index] = value
    return {name: array}


VALUE_ERRORS = [
    (with_value("labels", 3, 2), r"labels must be 0 or 1; got .*2.* at index 3 \(1 bad"),
    (with_value("labels", 1, -1), r"labels must be 0 or 1; got .*-1.* at index 1"),
    (with_value("labels", 5, 0.5, np.float32), r"labels must be 0 or 1; got .*0\.5.* at index 5"),
    (with_value("lengths", 2, -4), r"lengths must be finite and >= 0; got .*-4.* at index 2"),
    (
        with_value("lengths", 0, np.nan, np.float32),
        r"lengths must be finite and >= 0; got .*nan.* at index 0",
    ),
    (
        with_value("lengths", 6, np.inf, np.float32),
        r"lengths must be finite and >= 0; got .*inf.* at index 6",
    ),
    (with_value("logits", 4, np.nan), r"logits must be finite; got .*nan.* at index 4"),
    (with_value("logits", 0, -np.inf), r"logits must be finite; got .*-inf.* at index 0"),
]


@pytest.mark.parametrize("name", ["weighted", "focal"])
@pytest.mark.parametrize("override,message", VALUE_ERRORS, ids=[m for _, m in VALUE_ERRORS])
def test_bad_values_raise_value_error(name, override, message):
    with pytest.raises(ValueError, match=message):
        call(LOSSES[name], **override)


def test_bce_checks_labels_and_logits():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        call(losses.bce_loss, **with_value("labels", 3, 2))
    with pytest.raises(ValueError, match="logits must be finite"):
        call(losses.bce_loss, **with_value("logits", 3, np.nan))


def test_bad_values_in_masked_rows_are_allowed():
    where = np.array([True, True, False, True, False, True, True])
    bad = {**with_value("labels", 2, 9), **with_value("lengths", 4, -1)}
    bad["logits"] = np.where(where, GOOD["logits"], np.nan).astype(np.float32)
    for fn in LOSSES.values():
        assert np.isfinite(call(fn, where=where, **bad))


def test_value_checks_also_run_under_eager_grad():
    # jax.grad traces the logits, but labels and lengths are still concrete.
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        jax.grad(losses.sentiment_focal_loss)(
            GOOD["logits"], with_value("labels", 3, 2)["labels"], GOOD["lengths"]
        )


HYPERPARAMETER_ERRORS = [
    (dict(label_smoothing_epsilon=1.0), r"label_smoothing_epsilon must be in \[0, 1\); got 1.0"),
    (
        dict(label_smoothing_epsilon=-0.01),
        r"label_smoothing_epsilon must be in \[0, 1\); got -0.01",
    ),
    (dict(min_length_weight=1.5), r"min_length_weight must be in \[0, 1\]; got 1.5"),
    (dict(min_length_weight=-0.1), r"min_length_weight must be in \[0, 1\]; got -0.1"),
    (dict(gamma_focal=float("nan")), "gamma_focal must be a finite number; got nan"),
    (dict(gamma_focal=float("inf")), "gamma_focal must be a finite number; got inf"),
    (dict(gamma_focal=np.ones(2)), "gamma_focal must be a scalar"),
]


@pytest.mark.parametrize(
    "hyper,message", HYPERPARAMETER_ERRORS, ids=[m for _, m in HYPERPARAMETER_ERRORS]
)
def test_bad_hyperparameters_raise_value_error(hyper, message):
    with pytest.raises(ValueError, match=message):
        losses.sentiment_focal_loss(GOOD["logits"], GOOD["labels"], GOOD["lengths"], **hyper)
    # Also under jax.jit, when the hyperparameter is a Python number (static).
    with pytest.raises(ValueError, match=message):
        jax.jit(functools.partial(losses.sentiment_focal_loss, **hyper))(
            GOOD["logits"], GOOD["labels"], GOOD["lengths"]
        )


def test_min_length_weight_is_checked_by_the_weighted_loss():
    with pytest.raises(ValueError, match="min_length_weight"):
        call(functools.partial(losses.sentiment_weighted_loss, min_length_weight=2.0))


def test_stop_gradient_weights_must_be_a_bool():
    with pytest.raises(TypeError, match="stop_gradient_weights must be a Python bool"):
        losses.sentiment_weighted_loss(
            GOOD["logits"], GOOD["labels"], GOOD["lengths"], stop_gradient_weights=jnp.array(True)
        )


def test_check_loss_inputs_directly():
    losses.check_loss_inputs(
        **GOOD, gamma_focal=2.0, label_smoothing_epsilon=0.0, min_length_weight=1.0
    )
    losses.check_loss_inputs(GOOD["logits"], GOOD["labels"])  # lengths optional
    with pytest.raises(ValueError, match="lengths must be finite"):
        losses.check_loss_inputs(**{**GOOD, **with_value("lengths", 1, -3)})
    bad = with_value("labels", 0, 3)["labels"]
    bad[4] = 5
    with pytest.raises(ValueError, match=r"got .*3.* at index 0 \(2 bad value\(s\) in total\)"):
        losses.check_loss_inputs(GOOD["logits"], bad, GOOD["lengths"])


# ----------------------------------------------------------------------------------
# The same checks under jax.jit through checkify
# ----------------------------------------------------------------------------------
def checked(fn, **hyper):
    return checkify.checkify(jax.jit(functools.partial(fn, **hyper)), errors=checkify.user_checks)


@pytest.mark.parametrize("name", list(LOSSES))
def test_checkify_under_jit_passes_good_input(name):
    err, value = checked(LOSSES[name])(GOOD["logits"], GOOD["labels"], GOOD["lengths"])
    assert err.get() is None
    assert np.isfinite(value)


@pytest.mark.parametrize(
    "override,message",
    VALUE_ERRORS[::2] + VALUE_ERRORS[1::4],
    ids=[m for _, m in VALUE_ERRORS[::2] + VALUE_ERRORS[1::4]],
)
def test_checkify_under_jit_reports_bad_values(override, message):
    args = {**GOOD, **override}
    err, _ = checked(losses.sentiment_focal_loss)(args["logits"], args["labels"], args["lengths"])
    with pytest.raises(checkify.JaxRuntimeError, match=message):
        err.throw()


def test_checkify_under_jit_reports_traced_hyperparameters():
    def fn(x, y, n, eps):
        return losses.sentiment_focal_loss(x, y, n, label_smoothing_epsilon=eps)

    err, _ = checkify.checkify(jax.jit(fn), errors=checkify.user_checks)(
        GOOD["logits"], GOOD["labels"], GOOD["lengths"], 1.5
    )
    with pytest.raises(
        checkify.JaxRuntimeError, match=r"label_smoothing_epsilon must be in \[0, 1\); got 1.5"
    ):
        err.throw()


def test_checkify_respects_where():
    where = np.array([True, True, True, False, True, True, True])
    args = {**GOOD, **with_value("labels", 3, 2)}
    fn = functools.partial(losses.sentiment_weighted_loss, where=where)
    err, _ = checkify.checkify(jax.jit(fn), errors=checkify.user_checks)(
        args["logits"], args["labels"], args["lengths"]
    )
    assert err.get() is None


def test_checks_cost_nothing_without_checkify():
    """Under plain jax.jit the value checks are dropped: same compiled program as with
    the checks removed, and no error for bad values (documented behaviour)."""
    args = {**GOOD, **with_value("labels", 3, 2)}
    assert np.isfinite(
        jax.jit(losses.sentiment_focal_loss)(args["logits"], args["labels"], args["lengths"])
    )
    hlo = (
        jax.jit(losses.sentiment_focal_loss)
        .lower(GOOD["logits"], GOOD["labels"], GOOD["lengths"])
        .compile()
        .as_text()
    )
    assert "argmax" not in hlo and "custom-call" not in hlo


def test_library_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, jaxsent.losses; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
