"""Selecting a loss by name, as a training configuration does."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from jaxsent.losses import _sentiment, _validation

_LOSSES: dict[str, Callable] = {
    "bce": _sentiment.bce_loss,
    "weighted": _sentiment.sentiment_weighted_loss,
    "focal": _sentiment.sentiment_focal_loss,
}

LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def _hyperparameter_names(fn: Callable) -> tuple[str, ...]:
    return tuple(
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "where"
    )


def get_loss(name: str, **hyperparameters) -> Callable:
    """Returns the loss ``name`` with its hyperparameters bound.

    >>> import jax.numpy as jnp
    >>> loss_fn = get_loss("focal", gamma_focal=2.0)
    >>> loss_fn(jnp.array([2.0, -1.0, 0.5]), jnp.array([1, 1, 0]), jnp.array([100, 25, 4]))
    Array(0.16941284, dtype=float32)
    >>> get_loss("hinge")
    Traceback (most recent call last):
      ...
    ValueError: unknown loss 'hinge'; valid names: 'bce', 'weighted', 'focal'

    Args:
      name: one of ``'bce'`` (:func:`bce_loss`), ``'weighted'``
        (:func:`sentiment_weighted_loss`) or ``'focal'`` (:func:`sentiment_focal_loss`).
      **hyperparameters: keyword-only hyperparameters of that loss (``where`` excluded);
        values are checked now.

    Returns:
      ``loss_fn(logits, labels, lengths, *, where=None) -> scalar``.

    Raises:
      ValueError: unknown name, unknown hyperparameter, or invalid hyperparameter value.
    """
    if name not in _LOSSES:
        valid = ", ".join(repr(n) for n in LOSS_NAMES)
        raise ValueError(f"unknown loss {name!r}; valid names: {valid}")
    fn = _LOSSES[name]
    allowed = _hyperparameter_names(fn)
    unknown = sorted(set(hyperparameters) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for loss {name!r}; "
            f"valid: {', '.join(allowed) if allowed else 'none'}"
        )
    _validation.check_hyperparameters(**hyperparameters)

    def loss_fn(logits, labels, lengths, *, where=None):
        return fn(logits, labels, lengths, where=where, **hyperparameters)

    loss_fn.__name__ = loss_fn.__qualname__ = f"{name}_loss"
    loss_fn.__doc__ = (
        f"``{fn.__name__}`` with {hyperparameters or 'its defaults'} "
        f"bound; see :func:`jaxsent.losses.{fn.__name__}`."
    )
    loss_fn.hyperparameters = dict(hyperparameters)
    return loss_fn
