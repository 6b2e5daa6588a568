"""Classify texts with a trained model.

    python -m train.predict --model runs/imdb --text "A gem of a film." --text "Dull."
    python -m train.predict --model runs/imdb --input reviews.csv --output scored.parquet

`--model` is a training work directory (its `export/`, else its best checkpoint) or an export
folder. `--text` prints one line per text: the label, P(positive), the tokens the model read and
whether the text was cut to the run's `max_length`. `--input` (CSV, JSON Lines or Parquet) is
streamed in chunks and written to `--output` (`.parquet`, `.csv` or `.jsonl`) with its columns
plus `logit`, `probability`, `label` (1 = positive), `tokens` and `truncated`; the output file
appears only once every row is written. Probabilities use the temperature fitted on the run's
validation split when it has one (`--raw`: the model's own sigmoid(logit)).

A model of K > 2 classes prints the predicted class, its probability and the runner-up's; a
file gets `label` (the class id), `label_name`, `probability` (of the predicted class) and
`probability_<class name>` per class (the name verbatim, spaces included), with `--raw` also
`logit_<class name>` per class, then `tokens` and `truncated`. Probabilities are
softmax(logits / T) (`--raw`: softmax(logits)).
"""

import os
import sys

import numpy as np
from absl import app, flags

from train.cli import run_cli, setup_process

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A training work directory or an export folder.")
flags.DEFINE_multi_string("text", [], "A text to classify (repeatable).")
flags.DEFINE_string("input", None, "A CSV, JSON Lines (.jsonl) or Parquet file of texts.")
flags.DEFINE_string("output", None, "Where to write --input's rows with the predictions.")
flags.DEFINE_string(
    "text_column", None, "--input's text column (default: text, sentence, review or content)."
)
flags.DEFINE_bool(
    "raw",
    False,
    "Probabilities without the run's fitted temperature (K > 2 classes: and the logit columns).",
)
flags.DEFINE_integer(
    "batch_size", None, "Rows per batch (default: the run's eval batch size).", lower_bound=1
)
flags.DEFINE_integer(
    "chunk_rows", 8192, "Rows of --input read, scored and written at a time.", lower_bound=1
)
flags.DEFINE_string(
    "prefix", "", "Prefix for the added columns, e.g. pred_ when --input has a 'label' column."
)
flags.mark_flags_as_required(["model"])

PREVIEW_CHARS = 60


def _check_flags() -> None:
    """Fails on contradictory or missing flags before anything is loaded."""
    if bool(FLAGS.text) == bool(FLAGS.input):
        raise app.UsageError("pass either --text (repeatable) or --input FILE --output FILE")
    if FLAGS.input:
        if not FLAGS.output:
            raise app.UsageError("--input needs --output (.parquet, .csv or .jsonl)")
        from jaxsent.data.tables import OUTPUT_FORMATS, table_format

        try:
            table_format(FLAGS.output, OUTPUT_FORMATS, argument="--output")
        except ValueError as err:
            raise app.UsageError(str(err)) from err
        if os.path.abspath(FLAGS.output) == os.path.abspath(FLAGS.input):
            raise app.UsageError("--output must not be --input")
        if "://" not in FLAGS.input and not os.path.isfile(FLAGS.input):
            raise app.UsageError(f"--input={FLAGS.input!r}: no such file")
    elif FLAGS.output or FLAGS.text_column:
        raise app.UsageError("--output and --text_column go with --input")


def _note_temperature(predictor) -> None:
    temperature = predictor.trained.settings.temperature
    # Two classes: P(positive) of the one logit; K: every class's, of K logits.
    function = "sigmoid(logit" if predictor.classes.num_classes == 2 else "softmax(logits"
    raw, scaled = f"{function})", f"{function} / T)"
    if temperature is None:
        note = f"the run has no fitted temperature: probabilities are {raw}"
    elif predictor.temperature is None:
        note = f"--raw: probabilities are {raw}, not the fitted T={temperature:.4f}"
    else:
        note = (
            f"probabilities use the run's fitted temperature T={temperature:.4f}, "
            f"{scaled} (--raw for {raw})"
        )
    print(f"model: {predictor.trained.describe()}; {note}", file=sys.stderr)


def _preview(text: str) -> str:
    preview = " ".join(text.split())
    if len(preview) > PREVIEW_CHARS:
        preview = preview[: PREVIEW_CHARS - 3] + "..."
    return preview


def _print_texts(predictor, texts: list[str]) -> None:
    out = predictor.predict(texts, what="--text", first_row=1)
    names = predictor.classes.names
    if len(names) > 2:
        _print_classes(out, names, texts)
        return
    header = f"P({names[1]})"  # P(positive)
    label_width, p_width = max(9, *map(len, names)), max(11, len(header))
    print(f"{'label':<{label_width}} {header:>{p_width}} {'tokens':>6}  {'truncated':<9}  text")
    for i, text in enumerate(texts):
        truncated = "yes" if out.truncated[i] else "no"
        print(
            f"{names[out.labels[i]]:<{label_width}} {out.probabilities[i]:>{p_width}.4f} "
            f"{int(out.num_tokens[i]):>6}  {truncated:<9}  {_preview(text)}"
        )


def _print_classes(out, names: tuple[str, ...], texts: list[str]) -> None:
    """K classes: the predicted class and its probability, then the runner-up's."""
    width = max(len("runner-up"), *map(len, names))
    print(
        f"{'label':<{width}} {'P(label)':>8}  {'runner-up':<{width}} {'P(runner-up)':>12} "
        f"{'tokens':>6}  {'truncated':<9}  text"
    )
    for i, text in enumerate(texts):
        # Ordered by logit (the temperature keeps the order), ties to the lower class id.
        first, second = np.argsort(-out.logits[i], kind="stable")[:2]
        truncated = "yes" if out.truncated[i] else "no"
        print(
            f"{names[first]:<{width}} {out.probabilities[i, first]:>8.4f}  "
            f"{names[second]:<{width}} {out.probabilities[i, second]:>12.4f} "
            f"{int(out.num_tokens[i]):>6}  {truncated:<9}  {_preview(text)}"
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _check_flags()
    setup_process()
    from jaxsent.inference import Predictor, load_trained, predict_file

    # Errors (no such model, a bad row, ...) reach run_cli: one line, exit status 2.
    predictor = Predictor(
        load_trained(FLAGS.model), batch_size=FLAGS.batch_size, calibrated=not FLAGS.raw
    )
    _note_temperature(predictor)
    if FLAGS.text:
        _print_texts(predictor, FLAGS.text)
    else:
        rows = predict_file(
            predictor,
            FLAGS.input,
            FLAGS.output,
            text_column=FLAGS.text_column,
            chunk_rows=FLAGS.chunk_rows,
            prefix=FLAGS.prefix,
            logits=FLAGS.raw,
        )
        print(f"wrote {rows:,} rows to {os.path.abspath(FLAGS.output)}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
