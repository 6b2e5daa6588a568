"""A trained model, loaded from a run or an export, scoring text as its training did.

    trained = load_trained("runs/imdb")  # its export/ folder, else its best checkpoint
    out = Predictor(trained).predict(["A gem of a film.", "Two hours I will not get back."])
    out.labels, out.probabilities, out.num_tokens, out.truncated
    trained.classes.names[out.labels[0]]  # the first text's class name

Texts are cleaned, tokenised and truncated by `jaxsent.data.encode_texts` with the run's
``max_length`` and ``clean_markup``; batches are length-bucketed with the run's fitted
boundaries and scored by one jitted eval step over a mesh of every local device, as the run's
own evaluation was (`jaxsent.training.loop.evaluate`). Probabilities use the temperature fitted
on the run's validation split when there is one: sigmoid(logit / T) of the positive class for a
two-class model ([n] logits and probabilities), softmax(logits / T) over the classes for K > 2
([n, K]).
"""

from jaxsent.inference._evaluation import evaluation_results, load_eval_split
from jaxsent.inference._files import PREDICTION_COLUMNS, predict_file, prediction_columns
from jaxsent.inference._loading import TrainedModel, is_run, load_trained
from jaxsent.inference._scoring import (
    Predictions,
    Predictor,
    Scorer,
    predicted_labels,
    probabilities,
)

__all__ = [
    "PREDICTION_COLUMNS",
    "Predictions",
    "Predictor",
    "Scorer",
    "TrainedModel",
    "evaluation_results",
    "is_run",
    "load_eval_split",
    "load_trained",
    "predict_file",
    "predicted_labels",
    "prediction_columns",
    "probabilities",
]
