"""Selecting a loss by name, as a training configuration does."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from jaxsent.losses import _sentiment, _validation

_LOSSES: dict[str, Callable] = {
    "bce": _sentiment.bce_loss,
    "weighted": _sentiment.sentiment_weighted_loss,
    "focal": _sentiment.sentiment_focal_loss,
    "sentiment": _sentiment.sentiment_loss,
}

LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def _hyperparameter_names(fn: Callable) -> tuple[str, ...]:
    return tuple(
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "where"
    )


def _check_name(name: str) -> Callable:
    if name not in _LOSSES:
        valid = ", ".join(repr(n) for n in LOSS_NAMES)
        raise ValueError(f"unknown loss {name!r}; valid names: {valid}")
    return _LOSSES[name]


def loss_hyperparameters(name: str) -> tuple[str, ...]:
    """The hyperparameters the loss ``name`` accepts, in signature order.

    Read from the loss's signature (its keyword-only arguments, ``where`` excluded), so
    they cannot drift from the function.

    >>> loss_hyperparameters("weighted")
    ('min_length_weight', 'stop_gradient_weights')
    >>> loss_hyperparameters("bce")
    ()

    Args:
      name: a registered loss name (see :data:`LOSS_NAMES`).

    Returns:
      A tuple of argument names.

    Raises:
      ValueError: unknown name (the message lists the valid names).
    """
    return _hyperparameter_names(_check_name(name))


def get_loss(name: str, **hyperparameters) -> Callable:
    """Returns the loss ``name`` with its hyperparameters bound.

    >>> import jax.numpy as jnp
    >>> loss_fn = get_loss("focal", gamma_focal=2.0)
    >>> loss_fn(jnp.array([2.0, -1.0, 0.5]), jnp.array([1, 1, 0]), jnp.array([100, 25, 4]))
    Array(0.16941284, dtype=float32)
    >>> get_loss("hinge")
    Traceback (most recent call last):
      ...
    ValueError: unknown loss 'hinge'; valid names: 'bce', 'weighted', 'focal', 'sentiment'

    Args:
      name: one of ``'bce'`` (:func:`bce_loss`), ``'weighted'``
        (:func:`sentiment_weighted_loss`), ``'focal'`` (:func:`sentiment_focal_loss`) or
        ``'sentiment'`` (:func:`sentiment_loss`, every term switchable).
      **hyperparameters: keyword-only hyperparameters of that loss (``where`` excluded);
        values are checked now.

    Returns:
      ``loss_fn(logits, labels, lengths, *, where=None) -> scalar``, for binary logits [B]
      (or [B, 1]) with 0/1 labels and for K-class logits [B, K] with integer labels alike.

    Raises:
      ValueError: unknown name, unknown hyperparameter, or invalid hyperparameter value.
      TypeError: a switch (e.g. ``stop_gradient_weights``) is not a Python bool.
    """
    fn = _check_name(name)
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


def loss_from_fields(fields: Mapping[str, Any]) -> Callable:
    """The loss a ``config.loss``-like mapping describes.

    ``fields["name"]`` selects the loss; of the other fields, those the loss accepts
    (:func:`loss_hyperparameters`) are bound and the rest are left out: they belong to
    other losses (a config holds the fields of every loss). A field that no registered
    loss accepts is an error, so a misspelt field cannot be silently dropped.

    >>> import jax.numpy as jnp
    >>> loss_fn = loss_from_fields({"name": "weighted", "gamma_focal": 2.0,
    ...                             "min_length_weight": 0.0})
    >>> loss_fn.hyperparameters
    {'min_length_weight': 0.0}
    >>> loss_from_fields({"name": "focal", "gama_focal": 2.0})
    Traceback (most recent call last):
      ...
    ValueError: loss field(s) gama_focal are not a hyperparameter of any loss; ...

    Args:
      fields: a mapping (e.g. an ``ml_collections.ConfigDict``) with a ``"name"`` (see
        :data:`LOSS_NAMES`) and hyperparameter values.

    Returns:
      ``loss_fn(logits, labels, lengths, *, where=None) -> scalar``, as from
      :func:`get_loss`.

    Raises:
      ValueError: no or unknown name, a field no loss accepts, or an invalid value.
    """
    fields = dict(fields)
    if "name" not in fields:
        raise ValueError(f"loss fields must include 'name'; got fields {sorted(fields)}")
    name = fields.pop("name")
    known = {h for fn in _LOSSES.values() for h in _hyperparameter_names(fn)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"loss field(s) {', '.join(unknown)} are not a hyperparameter of any loss; "
            f"known: {', '.join(sorted(known))}"
        )
    accepted = loss_hyperparameters(name)
    return get_loss(name, **{k: v for k, v in fields.items() if k in accepted})
