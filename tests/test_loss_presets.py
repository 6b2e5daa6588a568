"""The composable ``sentiment_loss``, the loss presets, and building a loss from a config.

References, none of them ``sentiment_loss``'s own code path:

* the seed's losses (``bce_loss``, ``sentiment_weighted_loss``, ``sentiment_focal_loss``),
  themselves tested against PyTorch, the seed's code and mpmath in ``test_losses.py``:
  ``sentiment_loss`` must equal them bit for bit, value and gradient, since it computes
  the same terms in the same order (any difference is a change of formula, not rounding);
* the hand composition of the public building blocks with ``jnp.mean``, in float64:
  differs from the library's fused sum / normaliser only by rounding, so 1e-12;
* a NumPy float64 statement of the seed's formulas, for the values: 1e-12.

Eager calls (no ``jax.jit``) except where jit is the point: each new static configuration
under jit costs a compilation.
"""

from __future__ import annotations

import doctest
import inspect
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from jaxsent import losses
from jaxsent.losses import _presets, _registry, _sentiment
from jaxsent.training import loop

B = 64


def random_batch(seed, batch=B, *, logit_scale=20.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    logits = rng.uniform(-logit_scale, logit_scale, batch).astype(dtype)
    labels = rng.integers(0, 2, batch).astype(np.int32)
    lengths = rng.integers(0, 513, batch).astype(np.int32)
    return logits, labels, lengths


def value_and_grad(fn, logits, labels, lengths, **kwargs):
    value, grad = jax.value_and_grad(lambda x: fn(x, labels, lengths, **kwargs))(logits)
    return np.asarray(value), np.asarray(grad)


def assert_close(value, grad, ref_value, ref_grad, rtol, what=""):
    """Relative error of the value; max-norm relative error of the gradient (an element
    can be a near-cancelling sum, so elementwise relative error measures cancellation)."""
    value_err = abs(float(value) - float(ref_value)) / abs(float(ref_value))
    grad_err = np.max(np.abs(np.asarray(grad) - ref_grad)) / np.max(np.abs(ref_grad))
    assert value_err <= rtol, f"{what}: value rel. error {value_err:.3g} > {rtol}"
    assert grad_err <= rtol, f"{what}: grad max-norm rel. error {grad_err:.3g} > {rtol}"


def assert_identical(a, b, what=""):
    np.testing.assert_array_equal(a[0], b[0], err_msg=f"{what}: value")
    np.testing.assert_array_equal(a[1], b[1], err_msg=f"{what}: gradient")


# ----------------------------------------------------------------------------------
# The seed's losses are special cases, bit for bit
# ----------------------------------------------------------------------------------
BOTH = dict(length_weighting=True, confidence_weighting=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stop_gradient_weights", [False, True])
def test_seed_losses_are_special_cases_bit_for_bit(dtype, stop_gradient_weights):
    logits, labels, lengths = random_batch(1, dtype=dtype)
    sg = dict(stop_gradient_weights=stop_gradient_weights)
    with jax.enable_x64(dtype == np.float64):
        x = jnp.asarray(logits)
        assert_identical(
            value_and_grad(losses.sentiment_loss, x, labels, lengths),
            value_and_grad(losses.bce_loss, x, labels, lengths),
            "all off == bce_loss",
        )
        for m in (0.1, 0.0):
            assert_identical(
                value_and_grad(
                    losses.sentiment_loss, x, labels, lengths, min_length_weight=m, **BOTH, **sg
                ),
                value_and_grad(
                    losses.sentiment_weighted_loss, x, labels, lengths, min_length_weight=m, **sg
                ),
                f"both weights == sentiment_weighted_loss (min_length_weight={m})",
            )
        # The focal loss's defaults, Lin et al.'s gamma, reversed focal, smoothing alone,
        # and gamma = eps = 0 (where the focal loss takes its fused path and sentiment_loss
        # the plain BCE: the same bits).
        for gamma, eps in [(0.1, 0.05), (2.0, 0.0), (-0.5, 0.2), (0.0, 0.05), (0.0, 0.0)]:
            hyper = dict(gamma_focal=gamma, label_smoothing_epsilon=eps, **sg)
            assert_identical(
                value_and_grad(losses.sentiment_loss, x, labels, lengths, **BOTH, **hyper),
                value_and_grad(losses.sentiment_focal_loss, x, labels, lengths, **hyper),
                f"everything on == sentiment_focal_loss {hyper}",
            )


def test_seed_special_case_bit_for_bit_under_jit():
    logits, labels, lengths = random_batch(2)
    hyper = dict(gamma_focal=0.1, label_smoothing_epsilon=0.05)

    def composed(x):
        return losses.sentiment_loss(x, labels, lengths, **BOTH, **hyper)

    def seed(x):
        return losses.sentiment_focal_loss(x, labels, lengths, **hyper)

    assert_identical(
        jax.jit(jax.value_and_grad(composed))(logits),
        jax.jit(jax.value_and_grad(seed))(logits),
        "jit",
    )


# ----------------------------------------------------------------------------------
# Every combination is the composition of the public building blocks
# ----------------------------------------------------------------------------------
def composed_from_blocks(
    x,
    y,
    n,
    *,
    length_weighting,
    confidence_weighting,
    epsilon,
    gamma,
    min_length_weight=0.1,
    stop_gradient_weights=False,
):
    """The documented composition, from the public blocks and ``jnp.mean``."""
    modulator = losses.focal_modulator(x, y, gamma=gamma)
    weights = jnp.ones_like(x)
    if confidence_weighting:
        weights = weights * losses.confidence_weights(x)
    if length_weighting:
        weights = weights * losses.length_weights(n, min_length_weight=min_length_weight)
    if stop_gradient_weights:
        modulator, weights = jax.lax.stop_gradient((modulator, weights))
    per_example = modulator * losses.sigmoid_binary_cross_entropy(
        x, y, label_smoothing_epsilon=epsilon
    )
    if not (length_weighting or confidence_weighting):
        return jnp.mean(per_example)
    return jnp.mean(per_example * losses.normalize_weights(weights))


def numpy_reference(x, y, n, *, length_weighting, confidence_weighting, epsilon, gamma):
    """The seed's formulas in NumPy float64 (values only), min_length_weight 0.1.

    Cancellation-free, as the seed's ``1 - sigmoid(x)`` and ``sigmoid(x) - 0.5`` are not:
    ``-log sigmoid(x) = logaddexp(0, -x)``, ``1 - p_t = sigmoid(-s)`` for the signed logit
    ``s``, and ``|2 sigmoid(x) - 1| = |tanh(x / 2)|``.
    """
    x, y, n = (np.asarray(a, np.float64) for a in (x, y, n))
    target = y * (1 - epsilon) + (1 - y) * epsilon
    complement = y * epsilon + (1 - y) * (1 - epsilon)
    bce = target * np.logaddexp(0.0, -x) + complement * np.logaddexp(0.0, x)
    signed = np.where(y == 1, x, -x)
    if gamma > 0:
        bce = bce * (1 / (1 + np.exp(signed)) + 1e-8) ** gamma
    elif gamma < 0:
        bce = bce * (1 / (1 + np.exp(-signed)) + 1e-8) ** -gamma
    if not (length_weighting or confidence_weighting):
        return bce.mean()
    weights = np.ones_like(x)
    if confidence_weighting:
        weights *= np.abs(np.tanh(x / 2))
    if length_weighting and n.max() > 0:
        weights *= np.clip(np.sqrt(n) / np.sqrt(n.max()), 0.1, 1.0)
    weights = weights / (weights.mean() + 1e-8) if weights.sum() > 1e-8 else 1.0
    return (bce * weights).mean()


COMBINATIONS = [
    dict(length_weighting=lw, confidence_weighting=cw, epsilon=e, gamma=g)
    for lw, cw, e, g in itertools.product((False, True), (False, True), (0.0, 0.05), (0.0, 2.0))
] + [
    dict(length_weighting=lw, confidence_weighting=cw, epsilon=0.0, gamma=-0.5)
    for lw, cw in itertools.product((False, True), (False, True))
]


def _ids(combination):
    return ",".join(f"{k}={v}" for k, v in combination.items())


def sentiment_fn(combination, **extra):
    hyper = dict(combination)
    hyper["label_smoothing_epsilon"] = hyper.pop("epsilon")
    hyper["gamma_focal"] = hyper.pop("gamma")
    return lambda x, y, n: losses.sentiment_loss(x, y, n, **hyper, **extra)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=_ids)
def test_every_combination_is_its_composition_of_building_blocks(combination):
    """Each single term (length_only == mean(bce * normalize_weights(length_weights)),
    ...) and every combination of them, float64, value and gradient within 1e-12 of the
    hand composition, and the value within 1e-12 of NumPy (both cancellation-free, so
    they differ by rounding: ~1e-15)."""
    logits, labels, lengths = random_batch(3, dtype=np.float64)
    with jax.enable_x64(True):
        x = jnp.asarray(logits)
        value, grad = value_and_grad(sentiment_fn(combination), x, labels, lengths)
        ref_value, ref_grad = value_and_grad(
            lambda x, y, n: composed_from_blocks(x, y, n, **combination), x, labels, lengths
        )
    chex.assert_type(value, np.float64)
    assert_close(value, grad, ref_value, ref_grad, 1e-12, _ids(combination))
    np.testing.assert_allclose(
        value, numpy_reference(logits, labels, lengths, **combination), rtol=1e-12
    )


@pytest.mark.parametrize("combination", COMBINATIONS[::3], ids=_ids)
def test_float32_matches_the_float64_composition(combination):
    """float32 against the float64 composition: 2e-6, the bound ``test_losses.py`` proves
    for the seed's losses (2e-5 over |logits| <= 40 against mpmath; here |logits| <= 20
    and no term is new, so the same cancellation-free formulas give ~10 ulp)."""
    logits, labels, lengths = random_batch(4)
    value, grad = value_and_grad(sentiment_fn(combination), logits, labels, lengths)
    chex.assert_type(value, np.float32)
    with jax.enable_x64(True):
        ref_value, ref_grad = value_and_grad(
            lambda x, y, n: composed_from_blocks(x, y, n, **combination),
            jnp.asarray(logits, jnp.float64),
            labels,
            lengths,
        )
    assert_close(value, grad, ref_value, ref_grad, 2e-6, _ids(combination))


# ----------------------------------------------------------------------------------
# stop_gradient_weights
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "combination",
    [
        dict(length_weighting=True, confidence_weighting=False, epsilon=0.0, gamma=0.0),
        dict(length_weighting=False, confidence_weighting=True, epsilon=0.0, gamma=0.0),
        dict(length_weighting=False, confidence_weighting=False, epsilon=0.05, gamma=2.0),
        dict(length_weighting=True, confidence_weighting=True, epsilon=0.05, gamma=-0.5),
    ],
    ids=_ids,
)
def test_stop_gradient_changes_the_gradient_not_the_value(combination):
    """The detached gradient is the hand composition's with ``jax.lax.stop_gradient``;
    the value stays the same bits; the gradient changes wherever something depends on
    the logits (the confidence weights, the modulator)."""
    logits, labels, lengths = random_batch(5, dtype=np.float64)
    with jax.enable_x64(True):
        x = jnp.asarray(logits)
        free = value_and_grad(sentiment_fn(combination), x, labels, lengths)
        value, grad = value_and_grad(
            sentiment_fn(combination, stop_gradient_weights=True), x, labels, lengths
        )
        ref_value, ref_grad = value_and_grad(
            lambda x, y, n: composed_from_blocks(
                x, y, n, stop_gradient_weights=True, **combination
            ),
            x,
            labels,
            lengths,
        )
    assert_close(value, grad, ref_value, ref_grad, 1e-12, "detached")
    assert value == free[0]
    if combination["confidence_weighting"] or combination["gamma"] != 0:
        assert np.max(np.abs(grad - free[1])) > 1e-3 * np.max(np.abs(free[1]))
    else:
        # Length weights are data (no gradient into lengths) and normalising them by
        # their batch mean is a constant too: nothing to detach.
        np.testing.assert_allclose(grad, free[1], rtol=1e-12, atol=1e-15)


def test_stop_gradient_without_any_term_is_plain_bce():
    logits, labels, lengths = random_batch(6)
    assert_identical(
        value_and_grad(losses.sentiment_loss, logits, labels, lengths, stop_gradient_weights=True),
        value_and_grad(losses.bce_loss, logits, labels, lengths),
    )


# ----------------------------------------------------------------------------------
# Conventions shared with the seed losses: where, empty batch, extreme logits, dtypes
# ----------------------------------------------------------------------------------
PRESET_NAMES = list(losses.LOSS_PRESETS)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_where_equals_dropping_the_masked_rows_even_with_nan(name):
    """``loss(x, where=m) == loss(x[m])`` with NaN logits, invalid labels and lengths in
    the masked rows; masked rows get exactly zero gradient. float32, 1e-6: the two sides
    sum the same real terms in a different tree (64 slots vs 9), a few ulp."""
    loss_fn = losses.get_loss_preset(name)
    logits, labels, lengths = random_batch(7)
    where = np.arange(B) % 7 == 3  # 9 real rows
    poisoned_logits = np.where(where, logits, np.nan).astype(np.float32)
    poisoned_labels = np.where(where, labels, 7)
    poisoned_lengths = np.where(where, lengths, -5)
    value, grad = value_and_grad(
        loss_fn, poisoned_logits, poisoned_labels, poisoned_lengths, where=where
    )
    ref_value, ref_grad = value_and_grad(loss_fn, logits[where], labels[where], lengths[where])
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad[where], ref_grad, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(grad[~where], 0.0)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_empty_and_fully_masked_batches_are_zero(name):
    loss_fn = losses.get_loss_preset(name)
    value, grad = value_and_grad(loss_fn, jnp.zeros(0), jnp.zeros(0, int), jnp.zeros(0, int))
    assert float(value) == 0.0
    chex.assert_shape(grad, (0,))
    value, grad = value_and_grad(
        loss_fn,
        jnp.array([jnp.nan, 3.0, -jnp.inf]),
        jnp.array([7, 1, 0]),
        jnp.array([-1, 5, 2]),
        where=jnp.zeros(3, bool),
    )
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, np.zeros(3))


EXTREME = (
    np.array([1e4, -1e4, 1e4, -1e4, 0.0, 88.0, -104.0, 1e-30, 3.0], np.float32),
    np.array([1, 0, 0, 1, 1, 0, 1, 0, 1], np.int32),
    np.array([10, 0, 300, 40, 1, 512, 64, 7, 0], np.int32),
)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_is_finite_with_finite_gradients(name):
    """Under jax.jit (as the trainer runs it), on confidently right and wrong logits up
    to 1e4, a zero logit and a zero length, in float32 and bfloat16; and on a random
    batch, a finite positive loss with a nonzero gradient."""
    loss_fn = jax.jit(jax.value_and_grad(losses.get_loss_preset(name)))
    logits, labels, lengths = EXTREME
    for dtype in (jnp.float32, jnp.bfloat16):
        value, grad = loss_fn(jnp.asarray(logits, dtype), labels, lengths)
        chex.assert_type(value, jnp.float32)
        assert np.isfinite(value), (name, dtype)
        assert np.all(np.isfinite(np.asarray(grad, np.float32))), (name, dtype)
    value, grad = loss_fn(*random_batch(8, logit_scale=5.0))
    assert np.isfinite(value) and float(value) > 0
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_logits_of_shape_b1_and_traced_hyperparameters():
    logits, labels, lengths = random_batch(9)
    hyper = dict(length_weighting=True, confidence_weighting=True)
    value, grad = value_and_grad(
        losses.sentiment_loss, logits[:, None], labels, lengths, gamma_focal=-0.5, **hyper
    )
    ref_value, ref_grad = value_and_grad(
        losses.sentiment_loss, logits, labels, lengths, gamma_focal=-0.5, **hyper
    )
    chex.assert_shape(grad, (B, 1))
    assert value == ref_value
    np.testing.assert_array_equal(grad[:, 0], ref_grad)

    # gamma and epsilon may be traced (swept under jit); a traced gamma takes the
    # exp/log form of the modulator: relative error <= |gamma log b| ulp (see
    # test_losses.test_traced_gamma_matches_static_gamma), 1e-6 with margin here.
    def swept(x, gamma, eps):
        return losses.sentiment_loss(
            x, labels, lengths, gamma_focal=gamma, label_smoothing_epsilon=eps, **hyper
        )

    value, grad = jax.jit(jax.value_and_grad(swept))(logits, -0.5, 0.05)
    ref_value, ref_grad = jax.value_and_grad(swept)(logits, -0.5, 0.05)
    assert_close(value, grad, ref_value, ref_grad, 1e-6, "traced gamma, eps")


# ----------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------
def test_lengths_are_required_only_with_length_weighting():
    logits, labels, lengths = random_batch(10, 7)
    with pytest.raises(ValueError, match="lengths is required with length_weighting=True"):
        losses.sentiment_loss(logits, labels, length_weighting=True)
    # Without length weighting, lengths are ignored like bce_loss ignores them.
    assert losses.sentiment_loss(logits, labels, np.full(3, -1.0)) == losses.bce_loss(
        logits, labels
    )
    bad = lengths.copy()
    bad[4] = -2
    with pytest.raises(ValueError, match=r"lengths must be finite and >= 0; got .*-2.* at index 4"):
        losses.sentiment_loss(logits, labels, bad, length_weighting=True)
    with pytest.raises(AssertionError, match="lengths must have shape"):
        losses.sentiment_loss(logits, labels, lengths[:3], length_weighting=True)


@pytest.mark.parametrize("switch", ["length_weighting", "confidence_weighting"])
def test_switches_must_be_python_bools(switch):
    logits, labels, lengths = random_batch(11, 7)
    message = f"{switch} must be a Python bool .* got 1"
    with pytest.raises(TypeError, match=message):
        losses.sentiment_loss(logits, labels, lengths, **{switch: 1})
    with pytest.raises(TypeError, match=message):
        losses.get_loss("sentiment", **{switch: 1})
    with pytest.raises(TypeError, match=f"{switch} must be a Python bool"):
        losses.sentiment_loss(logits, labels, lengths, **{switch: jnp.array(True)})


def test_hyperparameters_are_checked_and_named():
    logits, labels, lengths = random_batch(12, 7)
    with pytest.raises(ValueError, match=r"label_smoothing_epsilon must be in \[0, 1\); got 1.0"):
        losses.sentiment_loss(logits, labels, label_smoothing_epsilon=1.0)
    with pytest.raises(ValueError, match="gamma_focal must be a finite number; got nan"):
        losses.get_loss("sentiment", gamma_focal=float("nan"))
    with pytest.raises(ValueError, match=r"min_length_weight must be in \[0, 1\]; got 2.0"):
        losses.sentiment_loss(logits, labels, lengths, min_length_weight=2.0)


# ----------------------------------------------------------------------------------
# Registry and presets
# ----------------------------------------------------------------------------------
def test_registry_lists_the_hyperparameters_from_the_signatures():
    assert "sentiment" in losses.LOSS_NAMES
    assert losses.loss_hyperparameters("sentiment") == (
        "length_weighting",
        "confidence_weighting",
        "label_smoothing_epsilon",
        "gamma_focal",
        "min_length_weight",
        "stop_gradient_weights",
    )
    assert losses.loss_hyperparameters("bce") == ()
    assert losses.loss_hyperparameters("focal") == (
        "gamma_focal",
        "label_smoothing_epsilon",
        "min_length_weight",
        "stop_gradient_weights",
    )
    with pytest.raises(ValueError, match="unknown loss 'hinge'; valid names: 'bce', "):
        losses.loss_hyperparameters("hinge")


def test_loss_from_fields_binds_what_the_loss_accepts():
    fields = {"name": "weighted", "gamma_focal": 2.0, "min_length_weight": 0.0}
    assert losses.loss_from_fields(fields).hyperparameters == {"min_length_weight": 0.0}
    assert losses.loss_from_fields({"name": "bce", "gamma_focal": 2.0}).hyperparameters == {}
    with pytest.raises(ValueError, match="gama_focal are not a hyperparameter of any loss"):
        losses.loss_from_fields({"name": "focal", "gama_focal": 2.0})
    with pytest.raises(ValueError, match="must include 'name'"):
        losses.loss_from_fields({"gamma_focal": 2.0})
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.loss_from_fields({"name": "hinge"})
    with pytest.raises(ValueError, match=r"label_smoothing_epsilon must be in \[0, 1\)"):
        losses.loss_from_fields({"name": "focal", "label_smoothing_epsilon": -0.1})


def test_presets_are_those_the_study_needs():
    p = losses.LOSS_PRESETS
    assert set(p) >= {
        "bce",
        "bce_ls",
        "length_only",
        "confidence_only",
        "weighted",
        "focal_seed",
        "focal_gamma2",
        "reversed_focal",
        "weighted_stopgrad",
    }
    assert p["bce"]["name"] == "bce"
    assert p["weighted"]["name"] == p["weighted_stopgrad"]["name"] == "weighted"
    # The seed's focal loss with its own defaults.
    assert p["focal_seed"]["name"] == "focal"
    defaults = {
        k: v.default
        for k, v in inspect.signature(losses.sentiment_focal_loss).parameters.items()
        if v.kind is v.KEYWORD_ONLY and k != "where"
    }
    assert {k: p["focal_seed"][k] for k in defaults} == defaults
    assert p["focal_gamma2"]["gamma_focal"] == 2.0
    assert p["reversed_focal"]["gamma_focal"] < 0
    assert p["bce_ls"]["label_smoothing_epsilon"] == 0.05
    with pytest.raises(TypeError):
        p["bce"]["gamma_focal"] = 1.0  # read-only: a study cannot change them by accident


# Each documented hypothesis: (preset, compared with, the fields that differ).
HYPOTHESES = [
    ("length_only", "bce", {"length_weighting"}),
    ("confidence_only", "bce", {"confidence_weighting"}),
    ("bce_ls", "bce", {"label_smoothing_epsilon"}),
    ("focal_gamma2", "bce", {"gamma_focal"}),
    ("reversed_focal", "bce", {"gamma_focal"}),
    ("weighted", "bce", {"length_weighting", "confidence_weighting"}),
    ("focal_seed", "weighted", {"gamma_focal", "label_smoothing_epsilon"}),
    ("weighted_stopgrad", "weighted", {"stop_gradient_weights"}),
]


@pytest.mark.parametrize("preset,baseline,terms", HYPOTHESES, ids=[h[0] for h in HYPOTHESES])
def test_each_hypothesis_differs_from_its_baseline_in_its_terms_only(preset, baseline, terms):
    a, b = losses.LOSS_PRESETS[preset], losses.LOSS_PRESETS[baseline]
    assert {k for k in a if k != "name" and a[k] != b[k]} == terms
    for line in (preset, baseline):
        assert f"``{line}``" in _presets.__doc__  # the table documents both


def default_loss_fields():
    return default_config.get_config().loss


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_is_a_complete_truthful_config_loss(name):
    """The preset sets every ``config.loss`` field, with the field's type; the trainer's
    ``loss_from_config`` builds it; and ``sentiment_loss`` with the same fields computes
    the same loss bit for bit, so the run's config.json says exactly what ran."""
    preset = losses.LOSS_PRESETS[name]
    config = default_config.get_config()
    assert set(preset) == set(config.loss), "a preset must set every config.loss field"
    for key, value in preset.items():
        assert type(value) is type(config.loss[key]), (key, value)
    config.loss.update(preset)
    assert dict(config.loss) == dict(preset)

    logits, labels, lengths = random_batch(13)
    from_config = value_and_grad(loop.loss_from_config(config), logits, labels, lengths)
    assert_identical(
        from_config, value_and_grad(losses.get_loss_preset(name), logits, labels, lengths)
    )
    described = {k: v for k, v in preset.items() if k != "name"}
    assert_identical(
        from_config,
        value_and_grad(
            lambda x, y, n: losses.sentiment_loss(x, y, n, **described), logits, labels, lengths
        ),
        "the fields describe what ran",
    )


def test_default_config_fields_describe_its_loss():
    """The default config's loss is the `bce` preset (the loss study's evidence, docs/study.md),
    and 'sentiment' computes the same loss from the same fields."""
    config = default_loss_fields()
    assert config.to_dict() == dict(losses.LOSS_PRESETS["bce"])
    logits, labels, lengths = random_batch(14)
    fields = {k: v for k, v in config.items() if k != "name"}
    assert_identical(
        value_and_grad(losses.loss_from_fields(config), logits, labels, lengths),
        value_and_grad(
            lambda x, y, n: losses.sentiment_loss(x, y, n, **fields), logits, labels, lengths
        ),
    )


def test_loss_from_config_passes_exactly_the_accepted_fields():
    config = default_config.get_config()
    for name in losses.LOSS_NAMES:
        config.loss.name = name
        bound = loop.loss_from_config(config).hyperparameters
        assert set(bound) == set(losses.loss_hyperparameters(name)), name
        assert bound == {k: config.loss[k] for k in bound}


def test_unknown_preset_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss preset 'focal'; valid presets: 'bce', "):
        losses.get_loss_preset("focal")
    fn = losses.get_loss_preset("reversed_focal")
    assert fn.preset == "reversed_focal"
    assert fn.hyperparameters["gamma_focal"] == -0.5


@pytest.mark.parametrize("module", [_presets, _registry, _sentiment], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize(
    "fields",
    [dict(losses.LOSS_PRESETS[p]) for p in PRESET_NAMES]
    + [{"name": n} for n in losses.LOSS_NAMES if n != "sentiment"],
    ids=PRESET_NAMES + [n for n in losses.LOSS_NAMES if n != "sentiment"],
)
def test_length_bucketing_warning_exactly_when_lengths_change_the_loss(fields):
    """The oracle is the loss itself: it weights by length iff other lengths give another value."""
    config = default_config.get_config()
    config.loss.update(fields)
    loss_fn = loop.loss_from_config(config)
    logits, labels = jnp.array([2.0, -1.0, 0.5]), jnp.array([1, 1, 0])
    weights_length = loss_fn(logits, labels, jnp.array([4, 100, 30])) != loss_fn(
        logits, labels, jnp.array([100, 100, 100])
    )
    warning = loop.length_bucketing_warning(config.loss, (64, 128, 256))
    assert (warning is not None) == bool(weights_length)
    if warning is not None:
        assert "3 buckets" in warning and "data.num_buckets=1" in warning
    assert loop.length_bucketing_warning(config.loss, (256,)) is None
