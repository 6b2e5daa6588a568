"""Post-hoc temperature scaling of a binary or K-class classifier (Guo et al., 2017).

Temperature scaling divides every logit by one scalar ``T > 0`` fitted on the
validation split by minimising the mean negative log-likelihood. It never changes a
prediction (the sign of ``z / T`` is the sign of ``z``, the argmax of ``z / T`` that of ``z``),
so accuracy is untouched and only the confidence moves; it is the baseline that any "this
loss calibrates better" claim has to beat.

How the fit works. Write ``m_i = z_i`` for a positive row and ``m_i = -z_i`` for a
negative one (the signed margin) and ``s = 1 / T``. The mean NLL of the scaled logits is

.. math::

   f(s) = \\frac{1}{n} \\sum_i -\\log \\sigma(s\\, m_i), \\qquad
   f'(s) = -\\frac{1}{n} \\sum_i m_i\\, \\sigma(-s\\, m_i), \\qquad
   f''(s) = \\frac{1}{n} \\sum_i m_i^2\\, \\sigma(s m_i)\\, \\sigma(-s m_i) \\ge 0,

a logistic regression with one weight and no bias, convex in ``s`` and strictly convex
unless every real margin is 0. So ``f'`` is increasing in ``s``, and the sign of ``f'``
at ``s = exp(-u)`` tells on which side of the optimum a candidate ``u = log T`` lies.
``fit_temperature`` bisects ``log T`` on that sign over ``[log min_temperature,
log max_temperature]`` for a fixed number of steps (64: beyond the float64 resolution of
that interval), which is exact up to rounding, cannot diverge, needs no step size, and
compiles to one ``lax.fori_loop``. Only the sign of the sum is needed, so masked rows
(margin 0) contribute exactly nothing and no row count enters the fit.

K classes (logits ``[N, K]``, K >= 2, integer labels): the mean NLL of ``softmax(s z_i)`` is

.. math::

   f(s) = \\frac{1}{n} \\sum_i \\Big(\\log \\sum_k e^{s z_{ik}} - s z_{i y_i}\\Big), \\qquad
   f'(s) = \\frac{1}{n} \\sum_i \\mathbb{E}_{p_i(s)}[z_i - z_{i y_i}], \\qquad
   f''(s) = \\frac{1}{n} \\sum_i \\operatorname{Var}_{p_i(s)}[z_i] \\ge 0,

with ``p_i(s) = softmax(s z_i)``: convex in ``s`` again, and the same bisection applies. For
logits ``[0, z]`` the slope is term by term the binary one, so the binary fit is recovered.

References:
  Guo, Pleiss, Sun and Weinberger. On Calibration of Modern Neural Networks. ICML 2017.
  https://arxiv.org/abs/1706.04599
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxsent import metrics, multiclass_metrics

__all__ = ["apply_temperature", "fit_temperature"]

# Bisection steps: the interval [log 1e-2, log 1e2] (width 9.2) halves to below the
# float64 spacing of its end points after 56 steps; 64 leaves a margin for wider bounds.
_NUM_BISECTION_STEPS = 64


def _as_vector(logits, labels):
    """Accepts ``[N]`` or ``[N, 1]`` logits (and labels of either shape); returns ``[N]``."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    elif logits.ndim != 1:
        raise ValueError(
            f"`logits` must have shape [N], [N, 1] or [N, K] (K >= 2), got shape {logits.shape}."
        )
    if labels.ndim == 2 and labels.shape == (logits.shape[0], 1):
        labels = labels[:, 0]
    if labels.shape != logits.shape:
        raise ValueError(
            f"`labels` must have shape {logits.shape} (or {logits.shape + (1,)}), "
            f"got {labels.shape}."
        )
    return logits, labels


def _check_bounds(min_temperature, max_temperature) -> tuple[float, float]:
    for name, value in (("min_temperature", min_temperature), ("max_temperature", max_temperature)):
        if isinstance(value, jax.core.Tracer) or isinstance(value, bool):
            raise TypeError(f"`{name}` must be a Python float (static), got {value!r}.")
        try:
            value = float(value)
        except TypeError as error:
            raise TypeError(f"`{name}` must be a positive float, got {value!r}.") from error
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a finite float > 0, got {value!r}.")
    low, high = float(min_temperature), float(max_temperature)
    if not low < high:
        raise ValueError(
            f"`min_temperature` must be below `max_temperature`, got {low!r} and {high!r}."
        )
    return low, high


def fit_temperature(
    logits,
    labels,
    *,
    where=None,
    min_temperature: float = 1e-2,
    max_temperature: float = 1e2,
) -> jax.Array:
    """Fits the temperature ``T > 0`` minimising the mean NLL of ``logits / T``.

    .. math::

       T^* = \\arg\\min_{T \\in [T_{min}, T_{max}]} \\frac{1}{n} \\sum_{i \\in where}
       -\\log \\sigma\\big((2 y_i - 1)\\, z_i / T\\big)

    for binary logits, and the softmax NLL ``log sum_k exp(z_ik / T) - z_iy / T`` for ``[N, K]``
    logits, found by bisection of ``log T`` on the sign of the derivative (the NLL is convex in
    ``1 / T``; see the module docstring). ``T`` is exact up to float rounding of that
    sign: in float32 the fitted NLL matches a float64 minimiser to a few ulps.

    Edge cases, all defined rather than raising so the function stays jit-compatible:

    * The optimum lies beyond a bound: the bound is returned exactly. This happens when
      the real rows are perfectly separated by the sign of the logit (every prediction
      correct, all one class included): the NLL then keeps decreasing as ``T -> 0``, so
      the result is ``min_temperature``. When every real prediction is wrong, the NLL
      decreases towards ``log 2`` as ``T -> inf`` and the result is ``max_temperature``.
      K classes: ``min_temperature`` when every real row's true-class logit is strictly its
      largest.
    * No real row (``where`` all False, or ``N = 0``), or every real logit exactly 0 (K
      classes: every real row's K logits equal): the NLL does not depend on ``T``, and ``1.0``
      (the identity) is returned.
    * A non-finite logit in a real row: ``ValueError`` when the inputs are concrete,
      NaN under ``jax.jit``. Masked rows may hold anything, NaN included.

    Args:
      logits: ``[N]`` or ``[N, 1]`` float logits of the positive class, or ``[N, K]`` (K >= 2)
        logits of K classes.
      labels: 0/1 labels (bool, integer or float) of shape ``[N]`` or ``[N, 1]``; for ``[N, K]``
        logits, integer class indices ``[N]`` in ``[0, K)``.
      where: optional ``[N]`` bool mask of the real rows (e.g. False on padding).
      min_temperature: lower bound of the search, a Python float > 0 (static).
      max_temperature: upper bound of the search, a Python float > ``min_temperature``
        (static). The defaults ``[1e-2, 1e2]`` cover every temperature reported by
        Guo et al. (fitted values of about 1 to 3) with two orders of magnitude to spare.

    Returns:
      Scalar array ``T`` in ``[min_temperature, max_temperature]`` (the bounds rounded to
      the compute dtype: float32(1e-2) is just below 1e-2), in float32 (or the
      logits' dtype when wider, e.g. float64 under x64). Use ``float(T)`` for a number.

    Raises:
      ValueError, TypeError: on bad shapes, dtypes, labels outside {0, 1} (``[0, K)``) in real
        rows, bad bounds, or (eagerly) non-finite logits in real rows.

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([4.0, -3.0, 2.0, -5.0, 1.0, -2.0])
      >>> labels = jnp.array([1, 0, 0, 0, 1, 1])
      >>> T = fit_temperature(logits, labels)
      >>> bool(T > 1)  # overconfident: two wrong predictions at |z| >= 2
      True
    """
    low, high = _check_bounds(min_temperature, max_temperature)
    if jnp.ndim(logits) == 2 and jnp.shape(logits)[1] >= 2:
        return _fit_multiclass(logits, labels, where, low, high)
    logits, labels = _as_vector(logits, labels)
    raw = logits
    logits, positive, valid = metrics._prepare(logits, labels, where)
    dtype = logits.dtype
    finite = jnp.isfinite(raw.astype(dtype))
    _check_finite(raw, finite, valid)
    margin = jnp.where(positive, logits, -logits)  # 0 in masked rows (logits cleaned)

    def slope(log_t):
        # n * f'(s) at s = exp(-log_t); masked rows have margin 0 and add exactly 0.
        scale = jnp.exp(-log_t)
        return jnp.sum(-margin * jax.nn.sigmoid(-scale * margin))

    # Every real margin 0 (or no real row): the NLL is log 2 for every T.
    return _bisect(slope, jnp.any(margin != 0), jnp.any(valid & ~finite), low, high, dtype)


def _check_finite(raw, finite, valid) -> None:
    """Raises on a non-finite logit in a real row when the inputs are concrete."""
    if metrics._is_concrete(raw) and metrics._is_concrete(valid):
        bad = np.flatnonzero(np.asarray(valid) & ~np.asarray(finite))
        if bad.size:
            raise ValueError(
                f"`logits` must be finite in real rows, got {np.asarray(raw)[bad[0]]!r} "
                f"at row {int(bad[0])}."
            )


def _fit_multiclass(logits, labels, where, low, high):
    """`fit_temperature` for ``[N, K]`` logits: softmax NLL, the same bisection of log T."""
    raw = jnp.asarray(logits)
    inputs = multiclass_metrics._prepare(logits, labels, where)
    dtype = inputs.logits.dtype
    finite = jnp.all(jnp.isfinite(raw.astype(dtype)), axis=-1)
    _check_finite(raw, finite, inputs.valid)
    # z_k - z_y: the softmax NLL's margins; every entry is 0 in a masked row (logits cleaned).
    gap = inputs.logits - jnp.take_along_axis(inputs.logits, inputs.labels[:, None], axis=-1)

    def slope(log_t):
        # n * f'(s) = sum_i E_{softmax(s z_i)}[z - z_y]; a masked row adds exactly 0.
        scale = jnp.exp(-log_t)
        return jnp.sum(jax.nn.softmax(scale * gap, axis=-1) * gap)

    # Every real row's logits all equal (or no real row): the NLL is log K for every T.
    informative = jnp.any(gap != 0)
    return _bisect(slope, informative, jnp.any(inputs.valid & ~finite), low, high, dtype)


def _bisect(slope, informative, has_bad, low: float, high: float, dtype) -> jax.Array:
    """The log-T bisection on the sign of ``slope`` (n times the NLL's derivative in 1 / T).

    Args:
      slope: ``log T -> n f'(s)`` at ``s = exp(-log T)``, increasing in ``s``.
      informative: False when the NLL does not depend on ``T`` (then ``T = 1``).
      has_bad: a real row holds a non-finite logit (then NaN).
      low, high: the temperature bounds.
      dtype: the compute dtype.
    """
    log_low = jnp.asarray(math.log(low), dtype)
    log_high = jnp.asarray(math.log(high), dtype)

    def step(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        # f'(s) > 0: the optimum has a smaller s, i.e. a larger T.
        go_up = slope(mid) > 0
        return jnp.where(go_up, mid, lo), jnp.where(go_up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _NUM_BISECTION_STEPS, step, (log_low, log_high))
    temperature = jnp.exp(0.5 * (lo + hi))
    # The bounds exactly when the optimum lies outside the range: f' <= 0 at the largest
    # s (T = min_temperature) or f' >= 0 at the smallest s (T = max_temperature).
    temperature = jnp.where(slope(log_low) <= 0, jnp.asarray(low, dtype), temperature)
    temperature = jnp.where(slope(log_high) >= 0, jnp.asarray(high, dtype), temperature)
    temperature = jnp.where(informative, temperature, jnp.asarray(1.0, dtype))
    return jnp.where(has_bad, jnp.asarray(jnp.nan, dtype), temperature)


def apply_temperature(logits, temperature) -> jax.Array:
    """Scales logits by a fitted temperature: ``logits / temperature``.

    Args:
      logits: float array of any shape (e.g. ``[N]``, ``[N, 1]`` or ``[N, K]``: dividing all K
        logits by one ``T`` keeps the argmax).
      temperature: scalar ``T > 0`` (a Python float or a scalar array, e.g. the result of
        ``fit_temperature``); checked to be finite and positive when concrete.

    Returns:
      ``logits / T`` with the shape of ``logits``, in float32 (or the logits' dtype when
      wider).

    Raises:
      TypeError: non-float logits.
      ValueError: a non-scalar temperature, or (when concrete) one that is not a finite
        number > 0.
    """
    logits = jnp.asarray(logits)
    dtype = metrics._compute_dtype(logits.dtype)
    temperature = jnp.asarray(temperature)
    if temperature.ndim != 0:
        raise ValueError(f"`temperature` must be a scalar, got shape {temperature.shape}.")
    if metrics._is_concrete(temperature):
        value = float(temperature)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"`temperature` must be a finite number > 0, got {value!r}.")
    return logits.astype(dtype) / temperature.astype(dtype)
