"""Input validation shared by the sentiment losses.

Two kinds of problems are caught, at two different times:

* Structural problems (rank, shape, dtype) are static under ``jax.jit``, so they are
  reported at trace time: shape problems by ``chex`` assertions (``AssertionError``),
  dtype problems by ``TypeError``. Every message names the offending argument.
* Value problems (labels outside {0, 1}, or outside [0, K) for K-class logits; negative
  lengths; non-finite logits; a hyperparameter out of range) depend on data. When the
  data is concrete (eager call) they raise ``ValueError`` naming the argument and the
  offending value. When the data is traced (under ``jax.jit``) the same predicates are
  emitted as :func:`jax.experimental.checkify.debug_check` calls: they cost nothing
  unless the caller wraps the computation in :func:`jax.experimental.checkify.checkify`.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _dtype_name(x: Any) -> str:
    return str(jnp.result_type(x))


def num_classes(logits: chex.Array) -> int | None:
    """K for K-class logits [B, K] (K >= 2); None for binary logits [B] or [B, 1]."""
    if jnp.ndim(logits) == 2 and jnp.shape(logits)[1] >= 2:
        return int(jnp.shape(logits)[1])
    return None


def check_structure(
    logits: chex.Array,
    labels: chex.Array,
    lengths: chex.Array | None,
    where: chex.Array | None,
) -> int:
    """Checks ranks, shapes and dtypes (static: runs at trace time under ``jax.jit``).

    Args:
      logits: floating array of shape [B] or [B, 1] (binary), or [B, K] with K >= 2.
      labels: shape [B]; bool, integer or floating for binary logits, integer for [B, K].
      lengths: integer or floating array of shape [B], or None (not checked).
      where: bool array of shape [B], or None.

    Returns:
      The batch size B.

    Raises:
      AssertionError: (from chex) a rank or shape is wrong; the message names the argument.
      TypeError: a dtype is wrong; the message names the argument and the dtype.
    """
    chex.assert_rank(
        logits,
        {1, 2},
        custom_message="logits must have shape [B] or [B, 1] (binary) or [B, K] (K >= 2 classes)",
    )
    if jnp.ndim(logits) == 2:
        chex.assert_axis_dimension_gt(
            logits,
            1,
            0,
            custom_message="logits of rank 2 must have shape [B, 1] (binary) or [B, K] with "
            "K >= 2 classes",
        )
    if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise TypeError(f"logits must have a floating dtype, got {_dtype_name(logits)}")
    batch = jnp.shape(logits)[0]

    chex.assert_shape(
        labels, (batch,), custom_message=f"labels must have shape [B] = ({batch},) like logits"
    )
    k = num_classes(logits)
    if k is not None and not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(
            f"labels must be integer class indices in [0, {k}) for logits of shape [B, K] = "
            f"{tuple(jnp.shape(logits))}, got {_dtype_name(labels)}"
        )
    if not (
        jnp.issubdtype(jnp.result_type(labels), jnp.bool_)
        or jnp.issubdtype(jnp.result_type(labels), jnp.integer)
        or jnp.issubdtype(jnp.result_type(labels), jnp.floating)
    ):
        raise TypeError(f"labels must be bool, integer or floating, got {_dtype_name(labels)}")

    if lengths is not None:
        chex.assert_shape(
            lengths,
            (batch,),
            custom_message=f"lengths must have shape [B] = ({batch},) like logits",
        )
        if not (
            jnp.issubdtype(jnp.result_type(lengths), jnp.integer)
            or jnp.issubdtype(jnp.result_type(lengths), jnp.floating)
        ):
            raise TypeError(
                f"lengths must be integer or floating token counts, got {_dtype_name(lengths)}"
            )

    if where is not None:
        chex.assert_shape(
            where, (batch,), custom_message=f"where must have shape [B] = ({batch},) like logits"
        )
        if not jnp.issubdtype(jnp.result_type(where), jnp.bool_):
            raise TypeError(f"where must be a bool mask, got {_dtype_name(where)}")
    return batch


def _check_array_values(name, values, bad_fn, where, requirement):
    """Reports the first real row of ``values`` for which ``bad_fn`` is True.

    Eager (``values`` and ``where`` concrete): raises ValueError. Traced: emits a checkify
    ``debug_check`` carrying the offending value and its index.
    """
    if jnp.size(values) == 0:
        return
    if any(_is_traced(a) for a in (values, where) if a is not None):
        values = jnp.ravel(values)
        bad = bad_fn(jnp, values)
        if where is not None:
            bad = bad & where
        index = jnp.argmax(bad)
        # A masked sum rather than values[index]: a dynamic index into a batch sharded
        # over an explicit mesh axis does not trace.
        value = jnp.sum(jnp.where(jnp.arange(values.shape[0]) == index, values, 0))
        checkify.debug_check(
            jnp.logical_not(jnp.any(bad)),
            f"{name} {requirement}; got {{value}} at index {{index}} "
            "({count} bad value(s) in total)",
            value=value,
            index=index,
            count=jnp.sum(bad),
        )
        return
    values = np.ravel(np.asarray(values))
    bad = bad_fn(np, values)
    if where is not None:
        bad = bad & np.asarray(where)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(
            f"{name} {requirement}; got {values[index]!r} at index {index} "
            f"({int(bad.sum())} bad value(s) in total)"
        )


def _check_matrix_values(name, values, bad_fn, where, requirement):
    """:func:`_check_array_values` for values [B, K]: reports the first bad entry of a real
    row as ``at index (row, column)``.

    Traced, no reshape and no dynamic index: both would fail on a batch sharded over an
    explicit mesh axis; the offending entry is picked out with masked reductions.
    """
    if jnp.size(values) == 0:
        return
    if any(_is_traced(a) for a in (values, where) if a is not None):
        bad = bad_fn(jnp, values)
        if where is not None:
            bad = bad & where[:, None]
        row = jnp.argmax(jnp.any(bad, axis=1))
        in_row = (jnp.arange(values.shape[0]) == row)[:, None]
        column = jnp.argmax(jnp.any(bad & in_row, axis=0))
        at = in_row & (jnp.arange(values.shape[1]) == column)
        checkify.debug_check(
            jnp.logical_not(jnp.any(bad)),
            f"{name} {requirement}; got {{value}} at index ({{row}}, {{column}}) "
            "({count} bad value(s) in total)",
            value=jnp.sum(jnp.where(at, values, 0)),
            row=row,
            column=column,
            count=jnp.sum(bad),
        )
        return
    values = np.asarray(values)
    bad = bad_fn(np, values)
    if where is not None:
        bad = bad & np.asarray(where)[:, None]
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} {requirement}; got {values[row, column]!r} at index ({row}, {column}) "
            f"({int(bad.sum())} bad value(s) in total)"
        )


def _check_scalar(name, value, ok, requirement):
    """Checks one hyperparameter: ValueError if concrete, debug_check if traced."""
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    if _is_traced(value):
        checkify.debug_check(ok(jnp, value), f"{name} {requirement}; got {{value}}", value=value)
        return
    # NumPy, not jnp: under jax.jit even a constant would become a tracer.
    if not bool(ok(np, np.asarray(value))):
        raise ValueError(f"{name} {requirement}; got {value!r}")


def _check_static_bool(name, value):
    """A switch that selects the traced program must be a Python (or NumPy) bool."""
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{name} must be a Python bool (it selects the traced program), got {value!r}"
        )


def check_hyperparameters(
    *,
    gamma_focal: Any = None,
    label_smoothing_epsilon: Any = None,
    min_length_weight: Any = None,
    stop_gradient_weights: Any = None,
    length_weighting: Any = None,
    confidence_weighting: Any = None,
) -> None:
    """Checks the loss hyperparameters that are given (None means "not checked").

    Args:
      gamma_focal: any finite real number.
      label_smoothing_epsilon: a number in [0, 1).
      min_length_weight: a number in [0, 1].
      stop_gradient_weights: a Python bool (it selects the traced program).
      length_weighting: a Python bool (it selects the traced program).
      confidence_weighting: a Python bool (it selects the traced program).

    Raises:
      ValueError: a concrete value is out of range; the message names it.
      TypeError: a switch (``stop_gradient_weights``, ``length_weighting``,
        ``confidence_weighting``) is not a Python bool.
    """
    if gamma_focal is not None:
        _check_scalar(
            "gamma_focal", gamma_focal, lambda xnp, g: xnp.isfinite(g), "must be a finite number"
        )
    if label_smoothing_epsilon is not None:
        _check_scalar(
            "label_smoothing_epsilon",
            label_smoothing_epsilon,
            lambda xnp, e: (e >= 0) & (e < 1),
            "must be in [0, 1)",
        )
    if min_length_weight is not None:
        _check_scalar(
            "min_length_weight",
            min_length_weight,
            lambda xnp, m: (m >= 0) & (m <= 1),
            "must be in [0, 1]",
        )
    _check_static_bool("stop_gradient_weights", stop_gradient_weights)
    _check_static_bool("length_weighting", length_weighting)
    _check_static_bool("confidence_weighting", confidence_weighting)


def check_loss_inputs(
    logits: chex.Array,
    labels: chex.Array,
    lengths: chex.Array | None = None,
    *,
    where: chex.Array | None = None,
    gamma_focal: Any = None,
    label_smoothing_epsilon: Any = None,
    min_length_weight: Any = None,
    stop_gradient_weights: Any = None,
    length_weighting: Any = None,
    confidence_weighting: Any = None,
) -> None:
    """Validates the inputs of the sentiment losses.

    The losses call this themselves; call it directly to validate a batch up front.
    Only real rows (``where`` True) are value-checked: padding rows may hold anything,
    NaN included.

    Under ``jax.jit`` the value checks become
    :func:`jax.experimental.checkify.debug_check` calls, free unless the computation is
    wrapped in :func:`~jax.experimental.checkify.checkify`:

    >>> import jax, jax.numpy as jnp
    >>> from jax.experimental import checkify
    >>> from jaxsent.losses import sentiment_focal_loss
    >>> checked = checkify.checkify(jax.jit(sentiment_focal_loss),
    ...                             errors=checkify.user_checks)
    >>> err, loss = checked(jnp.array([0.5, -1.0]), jnp.array([1, 2]), jnp.array([3, 4]))
    >>> print(err.get())  # doctest: +ELLIPSIS
    labels must be 0 or 1; got 2 at index 1...

    Args:
      logits: floating array [B] or [B, 1] (binary) or [B, K] (K >= 2 classes); must be
        finite on real rows.
      labels: array [B]. Binary logits: bool, integer or floating, 0 or 1 on real rows.
        Logits [B, K]: integer class indices in [0, K) on real rows.
      lengths: integer or floating array [B] of token counts, finite and >= 0 on real
        rows; None skips these checks.
      where: optional bool array [B]; True marks real rows.
      gamma_focal: optional hyperparameter to check (finite).
      label_smoothing_epsilon: optional hyperparameter to check (in [0, 1)).
      min_length_weight: optional hyperparameter to check (in [0, 1]).
      stop_gradient_weights: optional hyperparameter to check (Python bool).
      length_weighting: optional switch to check (Python bool).
      confidence_weighting: optional switch to check (Python bool).

    A label outside [0, K) for K-class logits is reported the same way::

      labels must be class indices in [0, 5) for logits with K = 5 classes; got 7 at index 3 ...

    Raises:
      AssertionError: a rank or shape is wrong (chex; the message names the argument).
      TypeError: a dtype is wrong (the message names the argument and the dtype; labels of
        K-class logits must be integers), or a switch is not a Python bool.
      ValueError: a concrete value is invalid (the message names the argument, the value
        and its index; for K-class logits the index is (row, class)).
    """
    check_structure(logits, labels, lengths, where)
    check_hyperparameters(
        gamma_focal=gamma_focal,
        label_smoothing_epsilon=label_smoothing_epsilon,
        min_length_weight=min_length_weight,
        stop_gradient_weights=stop_gradient_weights,
        length_weighting=length_weighting,
        confidence_weighting=confidence_weighting,
    )
    k = num_classes(logits)
    if k is not None:
        _check_array_values(
            "labels",
            labels,
            lambda xnp, y: (y < 0) | (y >= k),
            where,
            f"must be class indices in [0, {k}) for logits with K = {k} classes",
        )
    elif not jnp.issubdtype(jnp.result_type(labels), jnp.bool_):
        _check_array_values(
            "labels", labels, lambda xnp, y: (y != 0) & (y != 1), where, "must be 0 or 1"
        )
    if lengths is not None:
        _check_array_values(
            "lengths",
            lengths,
            lambda xnp, n: ~((n >= 0) & xnp.isfinite(n)),
            where,
            "must be finite and >= 0",
        )
    if k is not None:
        _check_matrix_values(
            "logits", logits, lambda xnp, x: ~xnp.isfinite(x), where, "must be finite"
        )
    else:
        _check_array_values(
            "logits", logits, lambda xnp, x: ~xnp.isfinite(x), where, "must be finite"
        )
