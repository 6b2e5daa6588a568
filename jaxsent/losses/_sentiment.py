r"""The seed's two sentiment losses, the plain BCE baseline, and the composable loss with
every term of the seed's switchable, as pure JAX functions, binary or K-class.

Two forms, chosen by the logits' shape (the same function handles both):

* binary: ``logits`` [B] or [B, 1], ``labels`` [B] bool/int/float with values 0/1;
  sigmoid BCE and the seed's terms exactly as the seed states them;
* K classes: ``logits`` [B, K] with K >= 2, ``labels`` [B] integer class indices in
  [0, K); softmax cross entropy, and each of the seed's terms in its K-class form
  (:mod:`jaxsent.losses._multiclass_terms`): label smoothing gives the true class
  :math:`1 - \epsilon` and every other class :math:`\epsilon / (K - 1)`, the focal
  modulator uses the softmax probability of the true class, the confidence weight is
  the margin of the two top probabilities. Length weights and the batch-mean
  normalisation are unchanged. At K = 2 with logits :math:`[0, z]` every loss equals
  its binary form on :math:`z` (within float32 rounding), so a 2-logit head trains as a
  1-logit one does.

Shared conventions:

* ``logits`` floating (bf16/f16 are computed in float32, float64 stays float64);
  ``lengths`` [B] int/float token counts >= 0; ``where`` optional bool [B], True for the
  real rows of a fixed-shape batch. Padding rows may hold anything (NaN included): they
  are replaced before any arithmetic, so they reach neither the loss nor its gradient.
* Every batch statistic (mean, maximum length, normalisation) is over the real rows, so
  ``loss(x, where=m) == loss(x[m])``.
* An empty batch, or one with every row masked, has loss 0.0 and zero gradient.
* The result is a scalar of the computation dtype (float32 unless the logits are
  float64). Under ``jax.jit`` on a batch sharded over a mesh the reductions are global.
"""

from __future__ import annotations

import functools
import operator

import chex
import jax
import jax.numpy as jnp

from jaxsent.losses import _multiclass_terms, _terms, _validation


def _prepare(logits, labels, lengths, where):
    """Flattens and casts the inputs and neutralises padding rows.

    K-class logits stay [B, K] and their labels stay integers (class indices).
    """
    x = jnp.asarray(logits)
    dtype = _terms._float_dtype(x)  # pylint: disable=protected-access
    if _validation.num_classes(x) is not None:
        return _prepare_multiclass(x.astype(dtype), labels, lengths, where)
    x = jnp.ravel(x).astype(dtype)
    y = jnp.asarray(labels).astype(dtype)
    n = None if lengths is None else jnp.asarray(lengths).astype(dtype)
    if where is not None:
        where = jnp.asarray(where)
        x = jnp.where(where, x, 0.0)
        y = jnp.where(where, y, 0.0)
        if n is not None:
            n = jnp.where(where, n, 0.0)
    return x, y, n, where


def _prepare_multiclass(x, labels, lengths, where):
    y = jnp.asarray(labels)
    n = None if lengths is None else jnp.asarray(lengths).astype(x.dtype)
    if where is not None:
        where = jnp.asarray(where)
        x = jnp.where(where[:, None], x, 0.0)
        y = jnp.where(where, y, 0)
        if n is not None:
            n = jnp.where(where, n, 0.0)
    return x, y, n, where


def _cross_entropy(x, y):
    """The per-example unsmoothed cross entropy: sigmoid BCE for logits [B], softmax for
    [B, K]."""
    if x.ndim == 2:
        return _multiclass_terms.softmax_cross_entropy_with_integer_labels(x, y)
    return _terms.sigmoid_binary_cross_entropy(x, y)


def _focal_smoothed_cross_entropy(x, y, *, gamma, epsilon, detach_modulator):
    """The per-example modulated smoothed cross entropy of either form (fused)."""
    focal = (
        _multiclass_terms.focal_smoothed_softmax_cross_entropy
        if x.ndim == 2
        else _terms.focal_smoothed_bce
    )
    return focal(x, y, gamma=gamma, epsilon=epsilon, detach_modulator=detach_modulator)


def _mean_over_real_rows(values, where):
    if where is None:
        return jnp.sum(values) / max(values.shape[0], 1)
    count = jnp.maximum(jnp.sum(where), 1).astype(values.dtype)
    return jnp.sum(jnp.where(where, values, 0.0)) / count


def _mean_with_normalized_weights(values, weights, where, stop_gradient_weights):
    """``mean(values * normalize_weights(weights, where=where))`` over the real rows.

    Computed as ``sum(values * weights) / (count * (mean(weights) + 1e-8))``: the same
    value up to rounding, but the gradient of the normaliser then reuses the forward
    sum instead of needing another pass over the batch.
    """
    if stop_gradient_weights:
        weights = jax.lax.stop_gradient(weights)
    if where is None:
        count = max(values.shape[0], 1)
    else:
        weights = jnp.where(where, weights, 0.0)
        values = jnp.where(where, values, 0.0)
        count = jnp.maximum(jnp.sum(where), 1).astype(values.dtype)
    total = jnp.sum(weights)
    use_weights = total > _terms.STABILIZER
    # Uniform weights (all ones) when the weights sum to at most 1e-8, as in the seed.
    weights = jnp.where(use_weights, weights, 1.0)
    scale = jnp.where(use_weights, 1.0 / (total / count + _terms.STABILIZER), 1.0)
    return jnp.sum(values * weights) * scale / count


def _combined_weights(x, n, where, min_length_weight, *, confidence=True, length=True):
    """The product of the enabled weights, unnormalised; None if none is enabled.

    Both enabled (the default): confidence x length, the seed's ``external_weights``.
    """
    factors = []
    if confidence:
        # Binary logits are [B] here (_prepare flattens [B, 1]); K-class ones [B, K].
        confidence_weights = (
            _multiclass_terms.softmax_confidence_weights
            if x.ndim == 2
            else _terms.confidence_weights
        )
        factors.append(confidence_weights(x))
    if length:
        factors.append(_terms.length_weights(n, min_length_weight=min_length_weight, where=where))
    return functools.reduce(operator.mul, factors) if factors else None


def _is_static_zero(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def bce_loss(
    logits: chex.Array,
    labels: chex.Array,
    lengths: chex.Array | None = None,
    *,
    where: chex.Array | None = None,
) -> chex.Array:
    """Plain mean cross entropy over the real rows (the 'bce' baseline).

    Sigmoid binary cross entropy for logits [B] or [B, 1]; softmax cross entropy
    (:func:`softmax_cross_entropy_with_integer_labels`) for logits [B, K], of which the
    binary form is the K = 2 case. ``lengths`` is accepted and ignored, so that the
    losses share one call signature.

    >>> import jax.numpy as jnp
    >>> bce_loss(jnp.array([0.0, 0.0]), jnp.array([0, 1]))
    Array(0.6931472, dtype=float32)
    >>> bce_loss(jnp.zeros((2, 3)), jnp.array([0, 2]))  # K = 3 classes: log 3
    Array(1.0986123, dtype=float32)

    Args:
      logits: floating logits [B] or [B, 1] (binary), or [B, K] with K >= 2.
      labels: hard labels [B]: 0/1 (bool, int or float) for binary logits, integer
        class indices in [0, K) for logits [B, K].
      lengths: ignored.
      where: optional bool [B]; True marks the real rows.

    Returns:
      Scalar loss (float32, or float64 for float64 logits); 0.0 if no row is real.
    """
    del lengths
    _validation.check_loss_inputs(logits, labels, where=where)
    x, y, _, where = _prepare(logits, labels, None, where)
    return _mean_over_real_rows(_cross_entropy(x, y), where)


def sentiment_weighted_loss(
    logits: chex.Array,
    labels: chex.Array,
    lengths: chex.Array,
    *,
    min_length_weight: chex.Numeric = 0.1,
    where: chex.Array | None = None,
    stop_gradient_weights: bool = False,
) -> chex.Array:
    r"""The seed's ``SentimentWeightedLoss``: BCE with normalised confidence x length weights.

    .. math::
      L = \frac{1}{B} \sum_i \ell_i \, \frac{w_i}{\bar w + 10^{-8}}, \qquad
      w_i = |\tanh(x_i/2)| \cdot \mathrm{clip}\bigl(\sqrt{L_i / L_{\max}}, m, 1\bigr),

    with :math:`\ell_i` the sigmoid BCE against the hard label and the sum, mean and
    maximum over the real rows. Gradients flow through the confidence weights and the
    normalisation, as in the seed; ``stop_gradient_weights=True`` treats the weights
    as constants instead. For logits [B, K], :math:`\ell_i` is the softmax cross entropy
    and :math:`|\tanh(x_i/2)|` becomes :func:`softmax_confidence_weights` (the margin
    of the two top probabilities; the same at K = 2).

    Edge cases: all lengths 0 gives length weights 1; if the weights sum to at most
    :math:`10^{-8}` (every logit exactly 0) they become uniform, so the loss is the mean
    BCE (the seed's code returned 0 here, or NaN when all lengths were also 0); no real
    row gives 0.0 with zero gradient.

    >>> import jax.numpy as jnp
    >>> sentiment_weighted_loss(jnp.array([2.0, -1.0, 0.5]), jnp.array([1, 1, 0]),
    ...                         jnp.array([100, 25, 4]))
    Array(0.4299215, dtype=float32)

    Args:
      logits: floating logits [B] or [B, 1] (binary), or [B, K] with K >= 2; finite on
        real rows.
      labels: hard labels [B]: 0/1 (bool, int or float) for binary logits, integer
        class indices in [0, K) for logits [B, K].
      lengths: token counts [B] (int or float, >= 0).
      min_length_weight: lower clamp of the length weight, in [0, 1].
      where: optional bool [B]; True marks the real rows.
      stop_gradient_weights: if True, no gradient flows through the weights.

    Returns:
      Scalar loss (float32, or float64 for float64 logits).

    Raises:
      AssertionError, TypeError: wrong shape or dtype (at trace time).
      ValueError: invalid concrete values; see :func:`check_loss_inputs`.
    """
    _validation.check_loss_inputs(
        logits,
        labels,
        lengths,
        where=where,
        min_length_weight=min_length_weight,
        stop_gradient_weights=stop_gradient_weights,
    )
    x, y, n, where = _prepare(logits, labels, lengths, where)
    return _mean_with_normalized_weights(
        _cross_entropy(x, y),
        _combined_weights(x, n, where, min_length_weight),
        where,
        stop_gradient_weights,
    )


def sentiment_focal_loss(
    logits: chex.Array,
    labels: chex.Array,
    lengths: chex.Array,
    *,
    gamma_focal: chex.Numeric = 0.1,
    label_smoothing_epsilon: chex.Numeric = 0.05,
    min_length_weight: chex.Numeric = 0.1,
    where: chex.Array | None = None,
    stop_gradient_weights: bool = False,
) -> chex.Array:
    r"""The seed's ``SentimentFocalLoss``: smoothed BCE x focal modulator x normalised weights.

    .. math::
      L = \frac{1}{B} \sum_i f_i \, \ell'_i \, \frac{w_i}{\bar w + 10^{-8}},

    with :math:`\ell'_i` the sigmoid BCE against the smoothed label
    (:func:`smooth_binary_labels`), :math:`f_i` the :func:`focal_modulator` of the
    *unsmoothed* label, and :math:`w_i` the confidence x length weight of
    :func:`sentiment_weighted_loss`. Gradients flow through the modulator, the weights
    and the normalisation, as in the seed; ``stop_gradient_weights=True`` treats the
    modulator and the weights as constants.

    For logits [B, K] each term takes its K-class form: :math:`\ell'_i` the softmax cross
    entropy against :func:`smooth_class_labels` (true class :math:`1 - \epsilon`, others
    :math:`\epsilon / (K - 1)`), :math:`f_i` the :func:`softmax_focal_modulator`, the
    confidence the :func:`softmax_confidence_weights` margin.

    ``min_length_weight=0.1`` follows the seed's document; ``0.0`` reproduces the seed's
    original focal code. With ``gamma_focal=0``, ``label_smoothing_epsilon=0`` and equal
    ``min_length_weight`` this is :func:`sentiment_weighted_loss`. Edge cases are those of
    :func:`sentiment_weighted_loss` (uniform weights when they sum to at most
    :math:`10^{-8}` is the seed focal code's own guard).

    >>> import jax.numpy as jnp
    >>> sentiment_focal_loss(jnp.array([2.0, -1.0, 0.5]), jnp.array([1, 1, 0]),
    ...                      jnp.array([100, 25, 4]), gamma_focal=2.0)
    Array(0.16941284, dtype=float32)

    Args:
      logits: floating logits [B] or [B, 1] (binary), or [B, K] with K >= 2; finite on
        real rows.
      labels: hard labels [B]: 0/1 (bool, int or float) for binary logits, integer
        class indices in [0, K) for logits [B, K].
      lengths: token counts [B] (int or float, >= 0).
      gamma_focal: focal exponent; > 0 standard, < 0 reversed, 0 none.
      label_smoothing_epsilon: label smoothing, in [0, 1).
      min_length_weight: lower clamp of the length weight, in [0, 1].
      where: optional bool [B]; True marks the real rows.
      stop_gradient_weights: if True, no gradient flows through the modulator and the
        weights.

    Returns:
      Scalar loss (float32, or float64 for float64 logits).

    Raises:
      AssertionError, TypeError: wrong shape or dtype (at trace time).
      ValueError: invalid concrete values; see :func:`check_loss_inputs`.
    """
    _validation.check_loss_inputs(
        logits,
        labels,
        lengths,
        where=where,
        gamma_focal=gamma_focal,
        label_smoothing_epsilon=label_smoothing_epsilon,
        min_length_weight=min_length_weight,
        stop_gradient_weights=stop_gradient_weights,
    )
    x, y, n, where = _prepare(logits, labels, lengths, where)
    # = focal_modulator(x, y, gamma=...) * sigmoid_binary_cross_entropy(x, y, ...) (or
    # their softmax forms), fused (see _terms._focal_bce); the tests check the equality.
    modulated_bce = _focal_smoothed_cross_entropy(
        x,
        y,
        gamma=gamma_focal,
        epsilon=label_smoothing_epsilon,
        detach_modulator=stop_gradient_weights,
    )
    return _mean_with_normalized_weights(
        modulated_bce,
        _combined_weights(x, n, where, min_length_weight),
        where,
        stop_gradient_weights,
    )


def sentiment_loss(
    logits: chex.Array,
    labels: chex.Array,
    lengths: chex.Array | None = None,
    *,
    length_weighting: bool = False,
    confidence_weighting: bool = False,
    label_smoothing_epsilon: chex.Numeric = 0.0,
    gamma_focal: chex.Numeric = 0.0,
    min_length_weight: chex.Numeric = 0.1,
    stop_gradient_weights: bool = False,
    where: chex.Array | None = None,
) -> chex.Array:
    r"""The seed's losses with every term switchable: BCE plus the terms that are enabled.

    .. math::
      L = \frac{1}{B} \sum_i f_i \, \ell'_i \, \frac{w_i}{\bar w + 10^{-8}}, \qquad
      w_i = \prod_{\text{enabled}} \bigl\{\, |\tanh(x_i/2)|, \;
            \mathrm{clip}\bigl(\sqrt{L_i / L_{\max}}, m, 1\bigr) \,\bigr\},

    with :math:`\ell'_i` the sigmoid BCE against the smoothed label
    (:func:`smooth_binary_labels`, ``label_smoothing_epsilon``), :math:`f_i` the
    :func:`focal_modulator` (``gamma_focal``; 1 when it is 0), and :math:`w_i` the product
    of :func:`confidence_weights` (``confidence_weighting``) and :func:`length_weights`
    (``length_weighting``), normalised by their batch mean exactly as the seed does
    (:func:`normalize_weights`). With neither weight enabled the loss is the plain mean
    :math:`\frac{1}{B} \sum_i f_i \ell'_i` over the real rows. ``stop_gradient_weights``
    treats the modulator and the weights as constants.

    The defaults are each term's neutral value, so the defaults give :func:`bce_loss` and
    every enabled term shows at the call site. The seed's losses are special cases, equal
    bit for bit, value and gradient (the same terms are computed in the same order):

    * the defaults: :func:`bce_loss`;
    * ``length_weighting=True, confidence_weighting=True``:
      :func:`sentiment_weighted_loss`;
    * the same and ``gamma_focal``, ``label_smoothing_epsilon`` (not both 0):
      :func:`sentiment_focal_loss` with those values.

    For logits [B, K] every term takes its K-class form, as in
    :func:`sentiment_focal_loss`, and the same special cases hold.

    ``lengths`` is read only with ``length_weighting=True`` (otherwise ignored, as by
    :func:`bce_loss`). Conventions (``where``, dtypes, validation, empty batch -> 0) are
    those of :func:`sentiment_focal_loss`.

    >>> import jax.numpy as jnp
    >>> x, y, n = jnp.array([2.0, -1.0, 0.5]), jnp.array([1, 1, 0]), jnp.array([100, 25, 4])
    >>> sentiment_loss(x, y)  # plain BCE
    Array(0.8047555, dtype=float32)
    >>> sentiment_loss(x, y, n, length_weighting=True)  # one term: the length weights
    Array(0.57551426, dtype=float32)
    >>> sentiment_loss(x, y, n, length_weighting=True, confidence_weighting=True)
    Array(0.4299215, dtype=float32)
    >>> sentiment_loss(x, y, gamma_focal=-0.5)  # reversed focal, no weights
    Array(0.46622995, dtype=float32)

    Args:
      logits: floating logits [B] or [B, 1] (binary), or [B, K] with K >= 2; finite on
        real rows.
      labels: hard labels [B]: 0/1 (bool, int or float) for binary logits, integer
        class indices in [0, K) for logits [B, K].
      lengths: token counts [B] (int or float, >= 0); required if ``length_weighting``.
      length_weighting: multiply the weights by :func:`length_weights`.
      confidence_weighting: multiply the weights by :func:`confidence_weights`.
      label_smoothing_epsilon: label smoothing, in [0, 1); 0 means none.
      gamma_focal: focal exponent; > 0 standard, < 0 reversed, 0 none.
      min_length_weight: lower clamp of the length weight, in [0, 1] (used only with
        ``length_weighting``, checked always).
      stop_gradient_weights: if True, no gradient flows through the modulator and the
        weights.
      where: optional bool [B]; True marks the real rows.

    Returns:
      Scalar loss (float32, or float64 for float64 logits); 0.0 if no row is real.

    Raises:
      AssertionError, TypeError: wrong shape or dtype (at trace time), or a switch that is
        not a Python bool.
      ValueError: ``length_weighting=True`` without ``lengths``, or invalid concrete
        values; see :func:`check_loss_inputs`.
    """
    # The switches first: they decide which inputs are read.
    _validation.check_hyperparameters(
        length_weighting=length_weighting, confidence_weighting=confidence_weighting
    )
    if not length_weighting:
        lengths = None
    elif lengths is None:
        raise ValueError("lengths is required with length_weighting=True, got lengths=None")
    _validation.check_loss_inputs(
        logits,
        labels,
        lengths,
        where=where,
        gamma_focal=gamma_focal,
        label_smoothing_epsilon=label_smoothing_epsilon,
        min_length_weight=min_length_weight,
        stop_gradient_weights=stop_gradient_weights,
        length_weighting=length_weighting,
        confidence_weighting=confidence_weighting,
    )
    x, y, n, where = _prepare(logits, labels, lengths, where)
    # The per-example term each seed loss computes for the same setting: the plain BCE of
    # bce_loss and sentiment_weighted_loss, or sentiment_focal_loss's fused modulated BCE.
    if _is_static_zero(gamma_focal) and _is_static_zero(label_smoothing_epsilon):
        per_example = _cross_entropy(x, y)
    else:
        per_example = _focal_smoothed_cross_entropy(
            x,
            y,
            gamma=gamma_focal,
            epsilon=label_smoothing_epsilon,
            detach_modulator=stop_gradient_weights,
        )
    weights = _combined_weights(
        x,
        n,
        where,
        min_length_weight,
        confidence=confidence_weighting,
        length=length_weighting,
    )
    if weights is None:
        return _mean_over_real_rows(per_example, where)
    return _mean_with_normalized_weights(per_example, weights, where, stop_gradient_weights)
