r"""Per-example building blocks of the K-class (softmax) forms of the sentiment losses.

Each function maps logits [..., K] (K >= 2 classes on the last axis) and integer labels
[...] in [0, K) to per-example values [...]; none reduces over the batch. The batch-level
pieces (:func:`~jaxsent.losses.length_weights`, :func:`~jaxsent.losses.normalize_weights`)
do not depend on the logits' form and are shared with the binary losses.

At K = 2 with logits :math:`[0, z]` each one equals its binary sibling on :math:`z`, the
seed's binary rule being the K = 2 case:

=================================================  =====================================
K classes                                          binary sibling
=================================================  =====================================
:func:`smooth_class_labels`                        :func:`smooth_binary_labels`
:func:`softmax_cross_entropy_with_integer_labels`  :func:`sigmoid_binary_cross_entropy`
:func:`softmax_focal_modulator`                    :func:`focal_modulator`
:func:`softmax_confidence_weights`                 :func:`confidence_weights`
=================================================  =====================================

Numerics (the standard of the binary terms: no catastrophic cancellation). With
:math:`M = \max_k z_k`, :math:`a` the first class attaining it and
:math:`s = \sum_{k \ne a} e^{z_k - M}`, every negative log-probability is

.. math::
  -\log p_k = (M - z_k) + \operatorname{log1p}(s),

a sum of two non-negative terms, so each keeps full relative precision, also the
:math:`10^{-9}` of a confidently right prediction that ``logsumexp(z) - z_y`` rounds to 0
in float32. :math:`1 - p_y` is :math:`-\operatorname{expm1}(\log p_y)`, and the margin
:math:`p_a - p_b` is :math:`p_a \cdot (-\operatorname{expm1}(z_b - z_a))`: no probability is
subtracted from another. Two sets of derivatives are written out (``jax.custom_jvp``),
each where autodiff would lose them:

* of :math:`-\log p_y`, :math:`\sum_{k \ne y} -\log p_k`, :math:`p_y` and
  :math:`1 - p_y`: autodiff forms the slope :math:`p_y - 1` by subtraction, 0 in float32
  once :math:`p_y` rounds to 1, and the slope of ``expm1`` as ``expm1(u) + 1``, 0 once
  :math:`p_y < 6 \cdot 10^{-8}`; written out, they are products and sums of
  non-negative terms (e.g. :math:`-(1 - p_y)` and :math:`p_y (1 - p_y)`), exact to a few
  ulp however confident the prediction;
* of the confidence margin: its slope on the leading class, :math:`p_a (1 - w)`, would
  cancel as :math:`w \to 1` (it is formed as :math:`p_a ((1 - p_a) + p_b)`), and at a
  tie of the two top classes (a zero-initialised head) autodiff would take a one-sided
  slope where the binary weight's is 0.

The first derivatives are exact to a few ulp; second derivatives (through the rules) are
correct, with autodiff's precision.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxsent.losses import _terms


def _as_logits(logits: chex.Array) -> jax.Array:
    """``logits`` in the computation dtype, checked to have K >= 2 classes (last axis)."""
    z = jnp.asarray(logits)
    if z.ndim == 0 or z.shape[-1] < 2:
        raise ValueError(
            f"logits must have K >= 2 classes on the last axis, got shape {tuple(z.shape)}"
        )
    return z.astype(_terms._float_dtype(z))  # pylint: disable=protected-access


def _class_mask(labels: chex.Array, num_classes: int) -> jax.Array:
    """The one-hot of integer ``labels`` as bool [..., K] (all False for a label outside
    [0, K), which the losses' validation reports)."""
    return jnp.asarray(labels)[..., None] == jnp.arange(num_classes)


def _neg_log_softmax(z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``-log softmax(z)`` [..., K] without cancellation, the first-argmax mask, ``z - max``.

    Differentiable by autodiff, ties included: the maximum is a constant shift
    (``stop_gradient``; the result does not depend on it), and the first maximum enters
    the sum as ``expm1(0)``, whose value 0 keeps ``log1p`` exact and whose slope
    ``exp(0) = 1`` is that of the ``exp`` it stands for.
    """
    top = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    shifted = z - top
    first = jnp.arange(z.shape[-1]) == jnp.argmax(z, axis=-1, keepdims=True)
    s = jnp.sum(jnp.where(first, jnp.expm1(shifted), jnp.exp(shifted)), axis=-1, keepdims=True)
    return jnp.log1p(s) - shifted, first, shifted


@jax.custom_jvp
def _true_class_terms(z: jax.Array, true: jax.Array):
    """:math:`-\\log p_y`, :math:`\\sum_{k \\ne y} -\\log p_k`, :math:`p_y`, :math:`1 - p_y`.

    Each [...]. The derivatives are written out: :math:`p_k - [k = y]` and
    :math:`(K - 1) p_k - [k \\ne y]` for the first two, with the terms that autodiff would
    form by cancellation taken from :math:`1 - p_k = -\\mathrm{expm1}(\\log p_k)`
    (:math:`-(1 - p_y)` and :math:`(K - 2) p_k - (1 - p_k)`), and :math:`\\mp p_y` times the
    first for the last two (autodiff of ``expm1`` forms the slope :math:`e^u` as
    ``expm1(u) + 1``, which is 0 in float32 once :math:`p_y = e^u < 6 \\cdot 10^{-8}`).
    """
    return _true_class_values(z, true)[0]


def _true_class_values(z, true):
    nll = _neg_log_softmax(z)[0]
    nll_true = jnp.sum(jnp.where(true, nll, 0.0), axis=-1)
    nll_other = jnp.sum(jnp.where(true, 0.0, nll), axis=-1)
    p_true = jnp.exp(-nll_true)
    return (nll_true, nll_other, p_true, -jnp.expm1(-nll_true)), nll


@_true_class_terms.defjvp
def _true_class_terms_jvp(primals, tangents):
    z, true = primals
    t = tangents[0]
    out, nll = _true_class_values(z, true)
    p = jnp.exp(-nll)
    one_minus_p = -jnp.expm1(-nll)
    k = z.shape[-1]
    slope_true = jnp.where(true, -one_minus_p, p)
    slope_other = jnp.where(true, (k - 1) * p, (k - 2) * p - one_minus_p)
    d_nll_true = jnp.sum(slope_true * t, axis=-1)
    d_p_true = -out[2] * d_nll_true
    return out, (d_nll_true, jnp.sum(slope_other * t, axis=-1), d_p_true, -d_p_true)


def _smoothed_cross_entropy(nll_true, nll_other, epsilon, num_classes):
    """:math:`(1 - \\epsilon)(-\\log p_y) + \\frac{\\epsilon}{K - 1} \\sum_{k \\ne y} -\\log p_k`:
    non-negative terms only."""
    return (1.0 - epsilon) * nll_true + (epsilon / (num_classes - 1)) * nll_other


def smooth_class_labels(
    labels: chex.Array, num_classes: int, *, epsilon: chex.Numeric
) -> chex.Array:
    r"""K-class label smoothing: the true class gets :math:`1 - \epsilon`, each other class
    :math:`\epsilon / (K - 1)`.

    .. math::
      q_k = (1 - \epsilon)\,[k = y] + \frac{\epsilon}{K - 1}\,[k \ne y].

    At K = 2 this is the seed's binary rule (:func:`smooth_binary_labels`: a hard 1 becomes
    :math:`1 - \epsilon`, a hard 0 becomes :math:`\epsilon`). Unlike
    ``optax.smooth_labels``, which spreads :math:`\epsilon / K` over every class, the true
    one included, the true class keeps exactly :math:`1 - \epsilon`, and the input is
    integer labels rather than one-hot vectors.

    >>> import jax.numpy as jnp
    >>> smooth_class_labels(jnp.array([2, 0]), 3, epsilon=0.2)
    Array([[0.1, 0.1, 0.8],
           [0.8, 0.1, 0.1]], dtype=float32)

    Args:
      labels: integer class indices in [0, K), any shape [...].
      num_classes: K >= 2 (a Python int).
      epsilon: smoothing amount in [0, 1).

    Returns:
      Target distributions [..., K] (each row sums to 1), in the default float dtype (or
      ``epsilon``'s, if it is an array).

    Raises:
      ValueError: ``num_classes`` < 2.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    true = _class_mask(labels, num_classes)
    dtype = _terms._float_dtype(epsilon)  # pylint: disable=protected-access
    return jnp.where(true, 1.0 - epsilon, epsilon / (num_classes - 1)).astype(dtype)


def softmax_cross_entropy_with_integer_labels(
    logits: chex.Array,
    labels: chex.Array,
    *,
    label_smoothing_epsilon: chex.Numeric = 0.0,
) -> chex.Array:
    r"""Per-example softmax cross entropy against (optionally smoothed) integer labels.

    .. math::
      \ell = -\sum_k q_k \log p_k
           = (1 - \epsilon)(-\log p_y) + \frac{\epsilon}{K - 1} \sum_{k \ne y} (-\log p_k),

    with :math:`p = \operatorname{softmax}(z)` and :math:`q` =
    ``smooth_class_labels(labels, K, epsilon=label_smoothing_epsilon)``. With
    ``label_smoothing_epsilon=0`` this is ``optax.softmax_cross_entropy_with_integer_labels``;
    at K = 2 with logits :math:`[0, z]` it is :func:`sigmoid_binary_cross_entropy` on
    :math:`z`. Each :math:`-\log p_k` is computed without cancellation (module docstring),
    and so is its slope: the gradient is :math:`p - q`, with :math:`p_y - (1 - \epsilon)`
    formed as :math:`\epsilon - (1 - p_y)`.

    >>> import jax.numpy as jnp
    >>> softmax_cross_entropy_with_integer_labels(
    ...     jnp.array([[0.0, 0.0, 0.0], [0.0, 40.0, 0.0]]), jnp.array([0, 1]))
    Array([1.0986123e+00, 8.4967083e-18], dtype=float32)

    Args:
      logits: floating logits [..., K], K >= 2.
      labels: integer class indices in [0, K), shape [...].
      label_smoothing_epsilon: smoothing amount in [0, 1); 0 means hard labels.

    Returns:
      Per-example losses [...], in at least float32.

    Raises:
      ValueError: ``logits`` has fewer than 2 classes (at trace time).
    """
    z = _as_logits(logits)
    k = z.shape[-1]
    nll_true, nll_other, _, _ = _true_class_terms(z, _class_mask(labels, k))
    epsilon = jnp.asarray(label_smoothing_epsilon, z.dtype)
    return _smoothed_cross_entropy(nll_true, nll_other, epsilon, k)


def softmax_focal_modulator(
    logits: chex.Array,
    labels: chex.Array,
    *,
    gamma: chex.Numeric,
) -> chex.Array:
    r"""The seed's focal modulator for K classes, with :math:`p_t = \operatorname{softmax}(z)_y`.

    * ``gamma > 0``: :math:`(1 - p_t + 10^{-8})^{\gamma}` (down-weights easy examples);
    * ``gamma < 0``: :math:`(p_t + 10^{-8})^{|\gamma|}` (down-weights hard examples);
    * ``gamma = 0``: 1.

    :math:`p_t` is the probability of the *unsmoothed* label; :math:`1 - p_t` is
    :math:`-\operatorname{expm1}(\log p_t)`, which keeps its relative precision when
    :math:`p_t \to 1` (the probabilities of the other classes are not subtracted from 1).
    At K = 2 with logits :math:`[0, z]` this is :func:`focal_modulator` on :math:`z`. The
    exponent is evaluated as in :func:`focal_modulator` (whole and half-whole
    :math:`|\gamma|` by multiplications and ``sqrt``, a traced ``gamma`` allowed).

    >>> import jax.numpy as jnp
    >>> softmax_focal_modulator(jnp.array([[0.0, 0.0], [0.0, 2.0]]), jnp.array([1, 0]),
    ...                         gamma=2.0)
    Array([0.25     , 0.7758035], dtype=float32)

    Args:
      logits: floating logits [..., K], K >= 2.
      labels: integer class indices in [0, K), shape [...].
      gamma: focal exponent, any finite real.

    Returns:
      Modulators in [0, 1 + 1e-8], shape [...], in at least float32.

    Raises:
      ValueError: ``logits`` has fewer than 2 classes (at trace time).
    """
    z = _as_logits(logits)
    _, _, p_true, one_minus_p_true = _true_class_terms(z, _class_mask(labels, z.shape[-1]))
    return _terms.focal_power(p_true, one_minus_p_true, gamma)


def _top_two(z):
    """-log softmax, the first-argmax mask, ``z - max``, and ``z_b - z_a`` <= 0 (b: runner-up)."""
    nll, first, shifted = _neg_log_softmax(z)
    gap = jnp.max(jnp.where(first, -jnp.inf, shifted), axis=-1)
    return nll, first, shifted, gap


@jax.custom_jvp
def _top_two_margin(z):
    nll, first, _, gap = _top_two(z)
    p_first = jnp.exp(-jnp.sum(jnp.where(first, nll, 0.0), axis=-1))
    return 0.0 - p_first * jnp.expm1(gap)  # 0 - x: +0.0, not -0.0, at a tie


@_top_two_margin.defjvp
def _top_two_margin_jvp(primals, tangents):
    # With m = p_a - p_b: dm/dz_j = p_a [j = a] - p_b [j = b] - m p_j. The slope on a,
    # p_a (1 - m), is formed as p_a ((1 - p_a) + p_b): 1 - m would cancel as m -> 1 (the
    # binary confidence's 1 - tanh^2 trap). At a tie for second place the slope of -p_b is
    # shared among the tied classes (the mean of the one-sided derivatives); at a tie for
    # first place (m = 0) the slope is 0, the mean of the one-sided ones, as the binary
    # confidence weight's slope is 0 at x = 0.
    (z,), (t,) = primals, tangents
    nll, first, shifted, gap = _top_two(z)
    margin = _top_two_margin(z)
    p = jnp.exp(-nll)
    runner_up = ~first & (shifted == gap[..., None])
    count = jnp.sum(runner_up, axis=-1, keepdims=True).astype(z.dtype)
    p_first = jnp.sum(jnp.where(first, p, 0.0), axis=-1, keepdims=True)
    one_minus_p_first = jnp.sum(jnp.where(first, -jnp.expm1(-nll), 0.0), axis=-1, keepdims=True)
    p_runner_up = jnp.max(jnp.where(first, 0.0, p), axis=-1, keepdims=True)
    slope = jnp.where(
        first,
        p_first * (one_minus_p_first + p_runner_up),
        -margin[..., None] * p - jnp.where(runner_up, p / count, 0.0),
    )
    slope = jnp.where(gap[..., None] == 0, 0.0, slope)
    return margin, jnp.sum(slope * t, axis=-1)


def softmax_confidence_weights(logits: chex.Array) -> chex.Array:
    r"""The seed's confidence weight for K classes: the margin of the two top probabilities.

    .. math::
      w = p_{(1)} - p_{(2)} = p_{(1)} \bigl(1 - e^{z_{(2)} - z_{(1)}}\bigr),

    with :math:`p = \operatorname{softmax}(z)` and :math:`(1), (2)` the most and second
    most probable classes. At K = 2 with logits :math:`[0, z]` it is the seed's
    :math:`|2\sigma(z) - 1| = |\tanh(z/2)|` (:func:`confidence_weights`).

    Why the margin. The seed's weight measures the distance from the decision boundary: 0
    for an undecided prediction (:math:`p = 0.5`), approaching 1 for a confident one.
    Under argmax the boundary is where the two top classes tie, and the margin is 0 on all
    of it. The other form equal to the seed's at K = 2, :math:`(K p_{(1)} - 1)/(K - 1)`,
    is 0 only at the uniform prediction: a prediction split evenly between two classes,
    exactly undecided, would get :math:`(K - 2)/(2(K - 1))` (3/8 at K = 5) and count as
    fairly confident. Gradients: like :math:`|\tanh(z/2)|` in the binary form, the margin
    has a kink where the top two classes swap; its slope there is taken as 0 (the mean of
    the one-sided slopes, as the binary weight's slope is 0 at :math:`z = 0`), and where
    several classes tie for second place the runner-up's slope is shared among them. The
    value is formed without subtracting probabilities (:math:`-\operatorname{expm1}` of the
    logit gap), so it keeps full relative precision near the boundary, and its slope
    without :math:`1 - w`, which cancels as :math:`w \to 1`.

    >>> import jax.numpy as jnp
    >>> softmax_confidence_weights(
    ...     jnp.array([[3.0, 0.0, 0.0], [1.0, 1.0, -2.0], [0.0, 0.0, 0.0], [40.0, 0.0, 0.0]]))
    Array([0.86416453, 0.        , 0.        , 1.        ], dtype=float32)

    Args:
      logits: floating logits [..., K], K >= 2.

    Returns:
      Weights in [0, 1], shape [...], in at least float32.

    Raises:
      ValueError: ``logits`` has fewer than 2 classes (at trace time).
    """
    return _top_two_margin(_as_logits(logits))


def focal_smoothed_softmax_cross_entropy(z, labels, *, gamma, epsilon, detach_modulator=False):
    """``softmax_focal_modulator(z, labels, gamma=gamma) *
    softmax_cross_entropy_with_integer_labels(z, labels, label_smoothing_epsilon=epsilon)``
    from one evaluation of the log-softmax (the losses' per-example term; the tests check
    the equality). A static ``gamma == 0`` skips the modulator; ``detach_modulator`` stops
    its gradient.
    """
    k = z.shape[-1]
    nll_true, nll_other, p_true, one_minus_p_true = _true_class_terms(z, _class_mask(labels, k))
    cross_entropy = _smoothed_cross_entropy(nll_true, nll_other, jnp.asarray(epsilon, z.dtype), k)
    if isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma == 0:
        return cross_entropy
    if not isinstance(gamma, (int, float)):
        gamma = jnp.asarray(gamma, z.dtype)
    modulator = _terms.focal_power(p_true, one_minus_p_true, gamma)
    if detach_modulator:
        modulator = jax.lax.stop_gradient(modulator)
    return modulator * cross_entropy
