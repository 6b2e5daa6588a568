"""Scoring texts: one jitted eval step over length-bucketed batches, and per-text predictions.

Two classes: one logit per text (the positive class's), P(positive) = sigmoid. K > 2 classes:
K logits per text, one probability per class = softmax. A fitted temperature divides the
logits in both cases; it never changes the predicted class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsent import calibration, sharding
from jaxsent import data as data_lib
from jaxsent.inference._loading import TrainedModel
from jaxsent.models import SentimentClassifier
from jaxsent.training import loop
from jaxsent.training.steps import build_eval_step

_BAD_TEXTS_SHOWN = 5


class Scorer:
    """Logits of tokenised texts: one jitted eval step over length-bucketed batches.

    The model's state is replicated over a mesh of every local device and each batch is split
    over its ``data`` axis, as in training's evaluation.

    Args:
      model: the classifier.
      batch_size: rows per batch; a multiple of the number of devices.
      boundaries: the padded lengths (see `InferenceSettings.bucket_boundaries`).
      pad_id: the tokenizer's padding id.
    """

    def __init__(self, model: SentimentClassifier, *, batch_size: int, boundaries, pad_id: int):
        self.mesh = sharding.make_mesh(data=-1, model=1)
        devices = self.mesh.shape["data"]
        if not isinstance(batch_size, int) or batch_size < 1 or batch_size % devices:
            raise ValueError(
                f"batch_size={batch_size!r} must be a positive multiple of the number of "
                f"devices ({devices})"
            )
        self.batch_size = batch_size
        self.boundaries = tuple(boundaries)
        rules = sharding.SHARDING_RULES["dp"]
        # Two classes: one logit per example; K: K (`SentimentClassifier.__call__`).
        self.logit_shape = () if model.num_labels == 2 else (model.num_labels,)
        self.step, self.state = build_eval_step(
            model, state_shardings_fn=lambda tree: sharding.tree_shardings(tree, self.mesh, rules)
        )
        self.place = loop.BatchPlacer(self.mesh, pad_id=pad_id)

    def logits(self, arrays: data_lib.TokenArrays) -> np.ndarray:
        """float32 logits of every example of ``arrays``, in row order: [n] (two classes) or
        [n, K]."""
        plan = data_lib.batch_plan(
            arrays.lengths,
            global_batch_size=self.batch_size,
            boundaries=self.boundaries,
            shuffle=False,
            seed=0,
            epoch=0,
        )
        out = np.full((len(arrays), *self.logit_shape), np.nan, dtype=np.float32)
        with jax.set_mesh(self.mesh):
            for spec in plan:
                logits = np.asarray(self.step.eval_step(self.state, self.place(arrays, spec)))
                real = spec.indices >= 0
                out[spec.indices[real]] = logits[real]
        return out

    def predict_split(self, split) -> dict[str, np.ndarray]:
        """`jaxsent.training.loop.predict_split` of a `loop.Split` (training's evaluation code)."""
        with jax.set_mesh(self.mesh):
            return loop.predict_split(
                self.step,
                self.state,
                split,
                batch_size=self.batch_size,
                boundaries=self.boundaries,
                place=self.place,
            )


def probabilities(logits, temperature: float | None) -> np.ndarray:
    """float32 probabilities of the logits scaled by ``temperature`` (None: unscaled).

    Args:
      logits: [n] logits of the positive class (two classes), or [n, K] logits of K classes.
      temperature: the fitted temperature, or None.

    Returns:
      [n] P(positive) = sigmoid(logits / T), or [n, K] softmax(logits / T) over the classes.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if temperature is not None:
        logits = calibration.apply_temperature(logits, temperature)
    if logits.ndim == 2:
        return np.asarray(jax.nn.softmax(logits, axis=-1), dtype=np.float32)
    return np.asarray(jax.nn.sigmoid(logits), dtype=np.float32)


def predicted_labels(logits) -> np.ndarray:
    """int64 class ids of the logits: [n] logits -> 1 (positive) iff > 0; [n, K] -> argmax
    (the first of equal ones)."""
    logits = np.asarray(logits)
    if logits.ndim == 2:
        return np.argmax(logits, axis=-1).astype(np.int64)
    return (logits > 0).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Per-text predictions.

    Attributes:
      logits: float32 [n] (two classes: the positive class's) or [n, K], the model's logits
        (no temperature).
      probabilities: float32 [n], P(positive), or [n, K], each class's probability (with the
        temperature, when one is applied).
      labels: int64 [n], the predicted class id: two classes, 1 (positive) iff ``logit > 0``;
        K, the class of the largest logit. A temperature never changes it.
      num_tokens: int32 [n], tokens the model read (special tokens included).
      truncated: bool [n], whether the text was longer than ``max_length`` tokens.
    """

    logits: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    num_tokens: np.ndarray
    truncated: np.ndarray


class Predictor:
    """Classifies texts with a `TrainedModel` (its classes: ``trained.classes``).

    Args:
      trained: the model.
      batch_size: rows per batch; default the run's evaluation batch size.
      calibrated: apply the run's fitted temperature to the probabilities (when it has one).
    """

    def __init__(
        self, trained: TrainedModel, *, batch_size: int | None = None, calibrated: bool = True
    ):
        self.trained = trained
        self.classes = trained.classes
        settings = trained.settings
        self.temperature = settings.temperature if calibrated else None
        self.scorer = Scorer(
            trained.model,
            batch_size=batch_size or settings.batch_size,
            boundaries=settings.bucket_boundaries,
            pad_id=trained.tokenizer.pad_token_id or 0,
        )

    def predict(
        self, texts: Sequence[object], *, what: str = "text", first_row: int = 0
    ) -> Predictions:
        """Predictions for ``texts``.

        Args:
          texts: the texts (strings, not empty once cleaned).
          what, first_row: how errors name a text: ``f"{what} {first_row + i}"``.

        Returns:
          The `Predictions`, in the order of ``texts``.

        Raises:
          ValueError: a text that is missing, not a string or empty; the message names the
            first few.
        """
        settings = self.trained.settings
        bad = [
            (i, problem, text)
            for i, text in enumerate(texts)
            if (problem := data_lib.text_problem(text, clean_markup=settings.clean_markup))
        ]
        if bad:
            shown = "; ".join(
                f"{what} {first_row + i}: {problem} ({_preview(text)})"
                for i, problem, text in bad[:_BAD_TEXTS_SHOWN]
            )
            more = (
                f"; and {len(bad) - _BAD_TEXTS_SHOWN} more" if len(bad) > _BAD_TEXTS_SHOWN else ""
            )
            raise ValueError(f"{len(bad)} text(s) cannot be classified: {shown}{more}")
        if not texts:
            empty = np.zeros((0, *self.scorer.logit_shape), np.float32)
            return Predictions(
                empty, empty, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)
            )
        encoded = data_lib.encode_texts(
            self.trained.tokenizer,
            list(texts),
            max_length=settings.max_length,
            clean_markup=settings.clean_markup,
            truncation=settings.truncation,
            head_fraction=settings.head_fraction,
        )
        logits = self.scorer.logits(data_lib.token_arrays(encoded.input_ids))
        return Predictions(
            logits=logits,
            probabilities=probabilities(logits, self.temperature),
            labels=predicted_labels(logits),
            num_tokens=encoded.lengths,
            truncated=encoded.truncated,
        )


def _preview(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
