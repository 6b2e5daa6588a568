"""Per-example building blocks of the sentiment losses.

Each function maps per-example inputs of shape [B] to per-example values of shape [B];
none of them reduces over the batch except :func:`length_weights` and
:func:`normalize_weights`, whose definitions need batch statistics (the batch maximum
length, the batch mean weight), taken over the real rows marked by ``where``.

Numerics. The seed computes ``1 - sigmoid(x)`` and ``sigmoid(x) - 0.5``, which cancel
catastrophically in float32 (``1 - sigmoid(20)`` is exactly 0). Here every quantity is
formed without cancellation: ``1 - p_t`` is ``sigmoid(-s)`` for the signed logit ``s``,
``|2 sigmoid(x) - 1|`` is ``|tanh(x / 2)|``, the BCE terms are softplus values, and the
smoothed target and its complement are each formed directly from the label.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

# The seed's stabiliser: added to the focal base and to the mean weight, and the
# threshold below which the combined weights count as all zero.
STABILIZER = 1e-8


def _float_dtype(x) -> jnp.dtype:
    """The computation dtype for ``x``: at least float32 for floating ``x`` (bf16 and f16
    compute in float32), the default float dtype for bool and integer ``x``."""
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.promote_types(dtype, jnp.float32)
    return jnp.result_type(float)


@jax.custom_jvp
def _logistic_parts(x: chex.Array):
    """Returns sigmoid(x), sigmoid(-x), softplus(x), softplus(-x) without cancellation.

    All four share one exp and one log1p of ``-|x|`` (they otherwise cost two each).
    The derivatives are stated explicitly: differentiating through ``|x|`` would get
    them wrong at ``x = 0`` exactly (a zero-initialised classifier's logit).
    """
    e = jnp.exp(-jnp.abs(x))
    sigmoid_abs = 1.0 / (1.0 + e)
    sigmoid_neg_abs = e * sigmoid_abs
    nonneg = x >= 0
    log1p_e = jnp.log1p(e)
    return (
        jnp.where(nonneg, sigmoid_abs, sigmoid_neg_abs),
        jnp.where(nonneg, sigmoid_neg_abs, sigmoid_abs),
        jnp.maximum(x, 0.0) + log1p_e,
        jnp.maximum(-x, 0.0) + log1p_e,
    )


@_logistic_parts.defjvp
def _logistic_parts_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    out = sigmoid, sigmoid_neg, _, _ = _logistic_parts(x)
    slope = sigmoid * sigmoid_neg * t
    return out, (slope, -slope, sigmoid * t, -sigmoid_neg * t)


def _power(base, exponent):
    """``base ** exponent`` for base > 0, accurate where it matters and cheap.

    A whole or half-whole Python ``exponent`` (the usual 0.5, 1, 2) uses multiplications
    and a square root: within a few ulp. Otherwise ``exp(exponent * log(base))``, whose
    relative error is about ``|exponent * log(base)|`` ulp (<= 2e-6 for |exponent| <= 2 and
    base >= 1e-8, in float32), 3.5x cheaper than XLA's ``pow`` on CPU; its derivative
    ``exponent * power / base`` then reuses the forward values.
    """
    if isinstance(exponent, float) and (2 * exponent).is_integer():
        whole = int(exponent)
        result = jax.lax.integer_pow(base, whole) if whole else None
        if exponent != whole:
            result = jnp.sqrt(base) if result is None else result * jnp.sqrt(base)
        return jnp.ones_like(base) if result is None else result
    return jnp.exp(exponent * jnp.log(base))


def smooth_binary_labels(labels: chex.Array, *, epsilon: chex.Numeric) -> chex.Array:
    r"""Binary label smoothing, :math:`y (1 - \epsilon) + (1 - y) \epsilon`.

    A hard 1 becomes ``1 - epsilon`` and a hard 0 becomes ``epsilon``. (Unlike
    ``optax.smooth_labels``, which smooths one-hot vectors over their last axis.)

    >>> import jax.numpy as jnp
    >>> smooth_binary_labels(jnp.array([0.0, 1.0]), epsilon=0.25)
    Array([0.25, 0.75], dtype=float32)

    Args:
      labels: targets in [0, 1], any shape; bool and integer labels become float.
      epsilon: smoothing amount in [0, 1).

    Returns:
      Smoothed targets, same shape as ``labels``.
    """
    y = jnp.asarray(labels)
    y = y.astype(_float_dtype(y))
    return y * (1.0 - epsilon) + (1.0 - y) * epsilon


def sigmoid_binary_cross_entropy(
    logits: chex.Array,
    labels: chex.Array,
    *,
    label_smoothing_epsilon: chex.Numeric = 0.0,
) -> chex.Array:
    r"""Per-example sigmoid binary cross entropy against (optionally smoothed) labels.

    .. math::
      \ell = -\bigl[y' \log \sigma(x) + (1 - y') \log(1 - \sigma(x))\bigr]
           = y' \operatorname{softplus}(-x) + (1 - y') \operatorname{softplus}(x),

    with :math:`y' =` ``smooth_binary_labels(labels, epsilon=label_smoothing_epsilon)``.
    The complement :math:`1 - y' = y \epsilon + (1 - y)(1 - \epsilon)` is formed directly
    rather than as ``1 - y'``, which would cancel for small ``epsilon``.

    >>> import jax.numpy as jnp
    >>> sigmoid_binary_cross_entropy(jnp.array([0.0, 40.0]), jnp.array([1, 1]))
    Array([6.931472e-01, 4.248354e-18], dtype=float32)

    Args:
      logits: floating logits, any shape.
      labels: targets in [0, 1], broadcastable to ``logits``.
      label_smoothing_epsilon: smoothing amount in [0, 1); 0 means hard labels.

    Returns:
      Per-example losses, shape of ``logits``, in at least float32.
    """
    x = jnp.asarray(logits)
    dtype = _float_dtype(x)
    x = x.astype(dtype)
    y = jnp.asarray(labels).astype(dtype)
    e = label_smoothing_epsilon
    target = y * (1.0 - e) + (1.0 - y) * e
    complement = y * e + (1.0 - y) * (1.0 - e)
    _, _, softplus_x, softplus_neg_x = _logistic_parts(x)
    return target * softplus_neg_x + complement * softplus_x


def focal_modulator(
    logits: chex.Array,
    labels: chex.Array,
    *,
    gamma: chex.Numeric,
) -> chex.Array:
    r"""The seed's focal modulator, standard for ``gamma > 0`` and reversed for ``gamma < 0``.

    With :math:`p_t = \sigma(x)` for label 1 and :math:`1 - \sigma(x)` for label 0 (the
    *unsmoothed* label):

    * ``gamma > 0``: :math:`(1 - p_t + 10^{-8})^{\gamma}` (down-weights easy examples);
    * ``gamma < 0``: :math:`(p_t + 10^{-8})^{|\gamma|}` (down-weights hard examples);
    * ``gamma = 0``: 1.

    :math:`p_t` and :math:`1 - p_t` are computed as :math:`\sigma(\pm s)` with the signed
    logit :math:`s = x` (label 1) or :math:`-x` (label 0), so neither cancels. The seed's
    :math:`10^{-8}` keeps the base at least :math:`10^{-8}`, which also keeps the
    gradient finite where :math:`u^{|\gamma|}` has an infinite slope at :math:`u = 0`
    (:math:`0 < |\gamma| < 1`): the slope is at most :math:`|\gamma| 10^{-8(|\gamma| - 1)}`
    times :math:`du/dx`, and :math:`|du/dx| \le u`.

    A Python ``gamma`` selects the branch statically; whole and half-whole ``|gamma|``
    (0.5, 1, 2, ...) are computed with multiplications and ``sqrt`` (a few ulp), other
    values as :math:`\exp(|\gamma| \log b)` (relative error about
    :math:`|\gamma \log b|` ulp: at most 2.2e-6 in float32 for :math:`|\gamma| \le 2`).
    ``gamma`` may also be traced (e.g. swept under ``jax.jit``); it then always takes
    the ``exp``/``log`` form.

    >>> import jax.numpy as jnp
    >>> focal_modulator(jnp.array([0.0, 2.0]), jnp.array([1, 0]), gamma=2.0)
    Array([0.25     , 0.7758034], dtype=float32)

    Args:
      logits: floating logits, any shape.
      labels: hard labels (0 or 1, or bool), broadcastable to ``logits``.
      gamma: focal exponent, any finite real.

    Returns:
      Modulators in [0, 1 + 1e-8], shape of ``logits``, in at least float32.
    """
    x = jnp.asarray(logits)
    x = x.astype(_float_dtype(x))
    sigmoid_x, sigmoid_neg_x, _, _ = _logistic_parts(x)
    positive = jnp.asarray(labels) != 0
    p_t = jnp.where(positive, sigmoid_x, sigmoid_neg_x)
    one_minus_p_t = jnp.where(positive, sigmoid_neg_x, sigmoid_x)
    return focal_power(p_t, one_minus_p_t, gamma)


def focal_power(p_t: chex.Array, one_minus_p_t: chex.Array, gamma: chex.Numeric) -> chex.Array:
    r"""The seed's modulator from :math:`p_t` and :math:`1 - p_t` (each formed without
    cancellation by the caller): :math:`(1 - p_t + 10^{-8})^{\gamma}` for ``gamma > 0``,
    :math:`(p_t + 10^{-8})^{|\gamma|}` for ``gamma < 0``, 1 for ``gamma = 0``. A Python
    ``gamma`` selects the branch statically; a traced one selects it with ``jnp.where``.
    Shared by the binary and the K-class modulators."""
    if isinstance(gamma, (int, float)):
        if gamma == 0:
            return jnp.ones_like(p_t)
        base = one_minus_p_t if gamma > 0 else p_t
        exponent = abs(float(gamma))
    else:
        base = jnp.where(gamma >= 0, one_minus_p_t, p_t)
        exponent = jnp.abs(gamma).astype(p_t.dtype)
    return _power(base + STABILIZER, exponent)


@jax.custom_jvp
def _confidence(x):
    return jnp.abs(jnp.tanh(0.5 * x))


@_confidence.defjvp
def _confidence_jvp(primals, tangents):
    # d|tanh(x/2)|/dx = sign(x) / (2 cosh^2(x/2)) = 2 sign(x) sigmoid(x) sigmoid(-x). The
    # autodiff form 1 - tanh^2 cancels: tanh(8) rounds to 1 in float32, zeroing a slope
    # of 2e-7 that, multiplied by a BCE term of ~16, moves the gradient by 1e-6 relative.
    (x,), (t,) = primals, tangents
    sigmoid, sigmoid_neg, _, _ = _logistic_parts(x)
    return _confidence(x), 2.0 * jnp.sign(x) * sigmoid * sigmoid_neg * t


def confidence_weights(logits: chex.Array) -> chex.Array:
    r"""The seed's confidence weight :math:`|\sigma(x) - 0.5| \cdot 2 = |\tanh(x / 2)|`.

    0 for an undecided prediction, approaching 1 for a confident one; computed as
    :math:`|\tanh(x/2)|`, which keeps full relative precision near :math:`x = 0`, with
    its derivative :math:`2\,\mathrm{sign}(x)\,\sigma(x)\,\sigma(-x)` (0 at
    :math:`x = 0`, like ``abs``), which keeps it for large :math:`|x|`.

    >>> import jax.numpy as jnp
    >>> confidence_weights(jnp.array([-40.0, 0.0, 1e-4]))
    Array([1.e+00, 0.e+00, 5.e-05], dtype=float32)

    Args:
      logits: floating logits, any shape.

    Returns:
      Weights in [0, 1], shape of ``logits``, in at least float32.
    """
    x = jnp.asarray(logits)
    return _confidence(x.astype(_float_dtype(x)))


def length_weights(
    lengths: chex.Array,
    *,
    min_length_weight: chex.Numeric = 0.1,
    where: chex.Array | None = None,
) -> chex.Array:
    r"""The seed's length weight :math:`\mathrm{clip}(\sqrt{L} / \sqrt{L_{\max}}, m, 1)`.

    :math:`L_{\max}` is the largest length among the real rows. If it is 0 (every real
    row is empty) all weights are 1. Lengths are data: no gradient flows into them.

    ``min_length_weight=0.1`` is the seed's documented clamp; ``0.0`` is the clamp of the
    seed's original focal-loss code, whose extra ``1e-8`` in the denominator
    (:math:`\sqrt{L_{\max}} + 10^{-8}`) is omitted here: it scales every length weight by
    the same factor, which the batch-mean normalisation cancels (to ~1e-17 relative).

    >>> import jax.numpy as jnp
    >>> length_weights(jnp.array([0, 1, 4, 100]))
    Array([0.1, 0.1, 0.2, 1. ], dtype=float32)

    Args:
      lengths: token counts >= 0, shape [B], integer or floating.
      min_length_weight: lower clamp in [0, 1].
      where: optional bool [B]; True marks the real rows.

    Returns:
      Weights in [min_length_weight, 1], shape [B], in at least float32; 0 in masked rows.
    """
    n = jax.lax.stop_gradient(jnp.asarray(lengths))
    n = n.astype(_float_dtype(n))
    if where is not None:
        n = jnp.where(where, n, 0.0)
    max_length = jnp.max(n, initial=0.0)
    any_positive = max_length > 0
    ratio = jnp.sqrt(n) * (1.0 / jnp.sqrt(jnp.where(any_positive, max_length, 1.0)))
    weights = jnp.where(any_positive, jnp.clip(ratio, min_length_weight, 1.0), 1.0)
    if where is not None:
        weights = jnp.where(where, weights, 0.0)
    return weights


def normalize_weights(
    weights: chex.Array,
    *,
    where: chex.Array | None = None,
) -> chex.Array:
    r"""Batch-mean normalisation :math:`w / (\bar w + 10^{-8})` over the real rows.

    If the real weights sum to at most :math:`10^{-8}` (e.g. every prediction exactly
    0.5, so every confidence weight is 0) the result is uniform: all ones, as the seed's
    focal loss does. (The seed's weighted loss had no such guard and returned 0 there, or
    NaN when all lengths were also 0.) Gradients flow through the normalisation.

    >>> import jax.numpy as jnp
    >>> normalize_weights(jnp.array([1.0, 3.0]))
    Array([0.5, 1.5], dtype=float32)
    >>> normalize_weights(jnp.zeros(3))
    Array([1., 1., 1.], dtype=float32)

    Args:
      weights: non-negative weights, shape [B].
      where: optional bool [B]; True marks the real rows.

    Returns:
      Normalised weights, shape [B], in at least float32; 0 in masked rows.
    """
    w = jnp.asarray(weights)
    w = w.astype(_float_dtype(w))
    if where is None:
        count = max(w.shape[0], 1)
    else:
        w = jnp.where(where, w, 0.0)
        count = jnp.maximum(jnp.sum(where), 1).astype(w.dtype)
    total = jnp.sum(w)
    normalized = jnp.where(total > STABILIZER, w / (total / count + STABILIZER), 1.0)
    if where is not None:
        normalized = jnp.where(where, normalized, 0.0)
    return normalized


def _focal_base_and_slope(sigmoid_x, sigmoid_neg_x, positive, gamma_is_negative):
    """The focal base b (1 - p_t, or p_t for negative gamma) and db/dx."""
    p_t = jnp.where(positive, sigmoid_x, sigmoid_neg_x)
    one_minus_p_t = jnp.where(positive, sigmoid_neg_x, sigmoid_x)
    slope = jnp.where(positive, sigmoid_x, -sigmoid_x) * sigmoid_neg_x  # dp_t/dx
    if isinstance(gamma_is_negative, bool):
        return (p_t, slope) if gamma_is_negative else (one_minus_p_t, -slope)
    return (
        jnp.where(gamma_is_negative, p_t, one_minus_p_t),
        jnp.where(gamma_is_negative, slope, -slope),
    )


def _focal_bce_and_slope(x, positive, epsilon, gamma, static_gamma, detach_modulator):
    """``focal_modulator * sigmoid_binary_cross_entropy`` for hard labels, and d/dx."""
    sigmoid_x, sigmoid_neg_x, softplus_x, softplus_neg_x = _logistic_parts(x)
    # smooth_binary_labels for a hard label, bit for bit: y(1-e) + (1-y)e.
    target = jnp.where(positive, 1.0 - epsilon, epsilon)
    complement = jnp.where(positive, epsilon, 1.0 - epsilon)
    bce = target * softplus_neg_x + complement * softplus_x
    bce_slope = complement * sigmoid_x - target * sigmoid_neg_x
    if static_gamma == 0:
        return bce, bce_slope
    if static_gamma is not None:
        gamma_is_negative, exponent = static_gamma < 0, abs(static_gamma)
    else:
        gamma_is_negative, exponent = gamma < 0, jnp.abs(gamma)
    base, base_slope = _focal_base_and_slope(sigmoid_x, sigmoid_neg_x, positive, gamma_is_negative)
    base = base + STABILIZER
    modulator = _power(base, exponent)
    slope = modulator * bce_slope
    if not detach_modulator:
        slope = slope + exponent * modulator * base_slope / base * bce
    return modulator * bce, slope


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _focal_bce(x, positive, epsilon, gamma, static_gamma, detach_modulator):
    """Fused ``focal_modulator(x, y, gamma) * sigmoid_binary_cross_entropy(x, y, eps)``.

    The same values as composing the public functions (for hard labels), with the
    derivative in x written out so that the forward and backward passes share one
    set of exp/log evaluations: left to autodiff, XLA on CPU materialises each
    intermediate in its own pass (1.5x the time of plain BCE instead of ~1x).
    ``detach_modulator`` drops the modulator's own derivative (stop-gradient). No
    derivative is taken with respect to ``positive``, ``epsilon`` or ``gamma``.

    Args:
      x: logits [B].
      positive: bool [B], the hard labels.
      epsilon: label smoothing in [0, 1).
      gamma: traced focal exponent (ignored when ``static_gamma`` is not None).
      static_gamma: the focal exponent as a Python float, or None if traced.
      detach_modulator: Python bool.

    Returns:
      Per-example modulated smoothed BCE, [B].
    """
    return _focal_bce_and_slope(x, positive, epsilon, gamma, static_gamma, detach_modulator)[0]


@_focal_bce.defjvp
def _focal_bce_jvp(static_gamma, detach_modulator, primals, tangents):
    x, positive, epsilon, gamma = primals
    value, slope = _focal_bce_and_slope(x, positive, epsilon, gamma, static_gamma, detach_modulator)
    return value, slope * tangents[0]


def focal_smoothed_bce(x, labels, *, gamma, epsilon, detach_modulator=False):
    """Dispatches to :func:`_focal_bce` with a static or traced ``gamma``."""
    if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
        static_gamma, gamma = float(gamma), 0.0
    else:
        static_gamma, gamma = None, jnp.asarray(gamma, x.dtype)
    positive = jnp.asarray(labels) != 0
    epsilon = jnp.asarray(epsilon, x.dtype)
    return _focal_bce(x, positive, epsilon, gamma, static_gamma, detach_modulator)
