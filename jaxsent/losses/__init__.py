"""The seed's sentiment losses as pure, jittable, shardable JAX functions.

Every loss takes binary logits [B] (or [B, 1]) with labels 0/1, or K-class logits [B, K]
(K >= 2) with integer labels in [0, K): the same function handles both, choosing by the
logits' shape. The K-class form is softmax cross entropy with the seed's terms carried
over (smoothing: true class 1 - eps, others eps / (K - 1); focal modulator on the true
class's softmax probability; confidence weight: the margin of the two top probabilities);
at K = 2 with logits [0, z] it equals the binary form on z.

Losses (scalar, mean over the real rows):

* :func:`sentiment_weighted_loss` — BCE x normalised confidence x length weights;
* :func:`sentiment_focal_loss` — smoothed BCE x focal modulator x the same weights;
* :func:`bce_loss` — plain mean sigmoid BCE (softmax cross entropy for [B, K]), the
  baseline;
* :func:`sentiment_loss` — BCE plus any of the seed's terms, each one switchable;
* :func:`get_loss` — one of the four by name ('bce', 'weighted', 'focal', 'sentiment');
  :func:`loss_hyperparameters` lists what each accepts, :func:`loss_from_fields` builds
  one from a ``config.loss``-like mapping.

Presets: :data:`LOSS_PRESETS` (name -> complete ``config.loss`` fields; the table of
which hypothesis each isolates is in its module, ``jaxsent.losses._presets``) and
:func:`get_loss_preset`.

Per-example building blocks: :func:`sigmoid_binary_cross_entropy`,
:func:`smooth_binary_labels`, :func:`focal_modulator`, :func:`confidence_weights`,
:func:`length_weights`, :func:`normalize_weights`; their K-class siblings (logits
[..., K], integer labels) :func:`softmax_cross_entropy_with_integer_labels`,
:func:`smooth_class_labels`, :func:`softmax_focal_modulator`,
:func:`softmax_confidence_weights`.

Validation: :func:`check_loss_inputs` (the losses call it). Shape and dtype problems
fail at trace time; bad values raise ``ValueError`` on concrete inputs, and under
``jax.jit`` are available through ``jax.experimental.checkify``::

    err, loss = checkify.checkify(jax.jit(sentiment_focal_loss),
                                  errors=checkify.user_checks)(logits, labels, lengths)
    err.throw()
"""

from jaxsent.losses._multiclass_terms import (
    smooth_class_labels,
    softmax_confidence_weights,
    softmax_cross_entropy_with_integer_labels,
    softmax_focal_modulator,
)
from jaxsent.losses._presets import LOSS_PRESETS, get_loss_preset
from jaxsent.losses._registry import (
    LOSS_NAMES,
    get_loss,
    loss_from_fields,
    loss_hyperparameters,
)
from jaxsent.losses._sentiment import (
    bce_loss,
    sentiment_focal_loss,
    sentiment_loss,
    sentiment_weighted_loss,
)
from jaxsent.losses._terms import (
    STABILIZER,
    confidence_weights,
    focal_modulator,
    length_weights,
    normalize_weights,
    sigmoid_binary_cross_entropy,
    smooth_binary_labels,
)
from jaxsent.losses._validation import check_loss_inputs

__all__ = (
    "LOSS_NAMES",
    "LOSS_PRESETS",
    "STABILIZER",
    "bce_loss",
    "check_loss_inputs",
    "confidence_weights",
    "focal_modulator",
    "get_loss",
    "get_loss_preset",
    "length_weights",
    "loss_from_fields",
    "loss_hyperparameters",
    "normalize_weights",
    "sentiment_focal_loss",
    "sentiment_loss",
    "sentiment_weighted_loss",
    "sigmoid_binary_cross_entropy",
    "smooth_binary_labels",
    "smooth_class_labels",
    "softmax_confidence_weights",
    "softmax_cross_entropy_with_integer_labels",
    "softmax_focal_modulator",
)
