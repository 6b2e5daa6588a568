r"""Named loss presets: each one a complete set of ``config.loss`` fields.

A loss study applies one with ``config.loss.update(LOSS_PRESETS[name])``; since every
preset sets every field (also those its loss ignores, to the value that describes what
it computes), the run's ``config.json`` shows exactly what ran, and each preset is
:func:`sentiment_loss` with those fields. Each hypothesis is the difference of one term
between two presets:

=====================  ==================================  ===================================
preset                 loss (terms enabled)                hypothesis: compare with
=====================  ==================================  ===================================
``bce``                plain BCE                           the baseline
``bce_ls``             BCE, smoothing 0.05                 label smoothing: ``bce``
``length_only``        BCE x length weights                length weighting: ``bce``
``confidence_only``    BCE x confidence weights            confidence weighting: ``bce``
``focal_gamma2``       focal, gamma 2 (Lin et al.)         focal modulation: ``bce``
``reversed_focal``     reversed focal, gamma -0.5          reversed focal: ``bce``
``weighted``           the seed's weighted loss            the seed's weights: ``bce``
``focal_seed``         the seed's focal loss (defaults)    the seed's combination: ``bce``;
                                                           its smoothing + focal: ``weighted``
``weighted_stopgrad``  ``weighted``, weights constant      stop-gradient: ``weighted``
=====================  ==================================  ===================================

Every preset's loss takes binary logits [B] or K-class logits [B, K] with integer labels:
"BCE" is then softmax cross entropy and each term its K-class form (see
:mod:`jaxsent.losses._sentiment`); at K = 2 with logits [0, z] it is the binary loss on z.

``weighted``, ``weighted_stopgrad`` and ``focal_seed`` run the seed's own functions
(:func:`sentiment_weighted_loss`, :func:`sentiment_focal_loss` with its defaults gamma
0.1, epsilon 0.05, min_length_weight 0.1); ``bce`` runs :func:`bce_loss`; the others run
:func:`sentiment_loss`.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

from jaxsent.losses import _registry

# Every term off: the neutral value of each config.loss field.
_OFF: dict[str, Any] = {
    "length_weighting": False,
    "confidence_weighting": False,
    "label_smoothing_epsilon": 0.0,
    "gamma_focal": 0.0,
    "min_length_weight": 0.1,
    "stop_gradient_weights": False,
}
_SEED_WEIGHTS = {"length_weighting": True, "confidence_weighting": True}

#: Preset name -> the complete ``config.loss`` fields it means (read-only mappings).
LOSS_PRESETS: Mapping[str, Mapping[str, Any]] = types.MappingProxyType(
    {
        name: types.MappingProxyType({"name": loss, **_OFF, **fields})
        for name, loss, fields in (
            ("bce", "bce", {}),
            ("bce_ls", "sentiment", {"label_smoothing_epsilon": 0.05}),
            ("length_only", "sentiment", {"length_weighting": True}),
            ("confidence_only", "sentiment", {"confidence_weighting": True}),
            ("focal_gamma2", "sentiment", {"gamma_focal": 2.0}),
            ("reversed_focal", "sentiment", {"gamma_focal": -0.5}),
            ("weighted", "weighted", _SEED_WEIGHTS),
            (
                "focal_seed",
                "focal",
                {**_SEED_WEIGHTS, "gamma_focal": 0.1, "label_smoothing_epsilon": 0.05},
            ),
            ("weighted_stopgrad", "weighted", {**_SEED_WEIGHTS, "stop_gradient_weights": True}),
        )
    }
)


def get_loss_preset(name: str) -> Callable:
    """The loss of the preset ``name`` (see :data:`LOSS_PRESETS`), hyperparameters bound.

    >>> import jax.numpy as jnp
    >>> loss_fn = get_loss_preset("focal_seed")
    >>> loss_fn(jnp.array([2.0, -1.0, 0.5]), jnp.array([1, 1, 0]), jnp.array([100, 25, 4]))
    Array(0.4482719, dtype=float32)
    >>> get_loss_preset("focal")
    Traceback (most recent call last):
      ...
    ValueError: unknown loss preset 'focal'; valid presets: 'bce', 'bce_ls', ...

    Args:
      name: a key of :data:`LOSS_PRESETS`.

    Returns:
      ``loss_fn(logits, labels, lengths, *, where=None) -> scalar`` (as from
      :func:`get_loss`), with the attribute ``preset`` set to ``name``.

    Raises:
      ValueError: unknown preset (the message lists the valid ones).
    """
    if name not in LOSS_PRESETS:
        valid = ", ".join(repr(n) for n in LOSS_PRESETS)
        raise ValueError(f"unknown loss preset {name!r}; valid presets: {valid}")
    loss_fn = _registry.loss_from_fields(LOSS_PRESETS[name])
    loss_fn.preset = name
    return loss_fn
