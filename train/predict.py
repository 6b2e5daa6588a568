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
"""

import os
import sys

from absl import app, flags

from train.cli import setup_process

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A training work directory or an export folder.")
flags.DEFINE_multi_string("text", [], "A text to classify (repeatable).")
flags.DEFINE_string("input", None, "A CSV, JSON Lines (.jsonl) or Parquet file of texts.")
flags.DEFINE_string("output", None, "Where to write --input's rows with the predictions.")
flags.DEFINE_string(
    "text_column", None, "--input's text column (default: text, sentence, review or content)."
)
flags.DEFINE_bool("raw", False, "Probabilities without the run's fitted temperature.")
flags.DEFINE_integer("batch_size", None, "Rows per batch (default: the run's eval batch size).")
flags.DEFINE_integer("chunk_rows", 8192, "Rows of --input read, scored and written at a time.")
flags.DEFINE_string(
    "prefix", "", "Prefix for the added columns, e.g. pred_ when --input has a 'label' column."
)
flags.mark_flags_as_required(["model"])

ADDED_COLUMNS = ("logit", "probability", "label", "tokens", "truncated")
PREVIEW_CHARS = 60


def _check_flags() -> None:
    """Fails on contradictory or missing flags before anything is loaded."""
    if bool(FLAGS.text) == bool(FLAGS.input):
        raise app.UsageError("pass either --text (repeatable) or --input FILE --output FILE")
    if FLAGS.input:
        if not FLAGS.output:
            raise app.UsageError("--input needs --output (.parquet, .csv or .jsonl)")
        from jaxsent.data.tables import OUTPUT_FORMATS, table_format

        table_format(FLAGS.output, OUTPUT_FORMATS, argument="--output")
        if os.path.abspath(FLAGS.output) == os.path.abspath(FLAGS.input):
            raise app.UsageError("--output must not be --input")
    elif FLAGS.output or FLAGS.text_column:
        raise app.UsageError("--output and --text_column go with --input")


def _note_temperature(predictor) -> None:
    temperature = predictor.trained.settings.temperature
    if temperature is None:
        note = "the run has no fitted temperature: probabilities are sigmoid(logit)"
    elif predictor.temperature is None:
        note = f"--raw: probabilities are sigmoid(logit), not the fitted T={temperature:.4f}"
    else:
        note = (
            f"probabilities use the run's fitted temperature T={temperature:.4f}, "
            "sigmoid(logit / T) (--raw for sigmoid(logit))"
        )
    print(f"model: {predictor.trained.describe()}; {note}", file=sys.stderr)


def _print_texts(predictor, texts: list[str]) -> None:
    out = predictor.predict(texts, what="--text", first_row=1)
    print(f"{'label':<9} {'P(positive)':>11} {'tokens':>6}  {'truncated':<9}  text")
    for i, text in enumerate(texts):
        preview = " ".join(text.split())
        if len(preview) > PREVIEW_CHARS:
            preview = preview[: PREVIEW_CHARS - 3] + "..."
        label = "positive" if out.labels[i] else "negative"
        truncated = "yes" if out.truncated[i] else "no"
        print(
            f"{label:<9} {out.probabilities[i]:>11.4f} {int(out.num_tokens[i]):>6}  "
            f"{truncated:<9}  {preview}"
        )


def _text_column(schema, requested: str | None) -> str:
    from jaxsent.data.sources import TEXT_COLUMN_CANDIDATES

    names = schema.names
    if requested is not None:
        if requested not in names:
            raise ValueError(f"--text_column={requested!r} is not a column of --input: {names}")
        return requested
    for name in TEXT_COLUMN_CANDIDATES:
        if name in names:
            return name
    raise ValueError(
        f"--input has no text column named {', '.join(TEXT_COLUMN_CANDIDATES)}; its columns "
        f"are {names}: pass --text_column"
    )


def _predict_file(predictor) -> None:
    import pyarrow as pa
    from tqdm.auto import tqdm

    from jaxsent.data import tables

    column = _text_column(tables.read_schema(FLAGS.input), FLAGS.text_column)
    stream = tables.read_chunks(FLAGS.input, chunk_rows=FLAGS.chunk_rows, string_columns=[column])
    field = stream.schema.field(column)
    if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
        raise ValueError(
            f"--input column {column!r} holds {field.type} values, not text; pass --text_column"
        )
    added = [FLAGS.prefix + name for name in ADDED_COLUMNS]
    clash = sorted(set(added) & set(stream.schema.names))
    if clash:
        raise ValueError(
            f"--input already has column(s) {clash}; pass --prefix (e.g. --prefix=pred_) to "
            "name the predictions apart (to measure a labelled file, use python -m "
            "train.evaluate)"
        )
    types = (pa.float32(), pa.float32(), pa.int64(), pa.int32(), pa.bool_())
    schema = stream.schema
    for name, kind in zip(added, types, strict=True):
        schema = schema.append(pa.field(name, kind))
    bar = tqdm(total=stream.num_rows, unit=" rows", desc="predict", dynamic_ncols=True)
    row = 0
    with tables.AtomicTableWriter(FLAGS.output, schema) as writer:
        for chunk in stream.chunks:
            texts = chunk.column(column).to_pylist()
            out = predictor.predict(texts, what=f"--input column {column!r} row", first_row=row)
            values = (out.logits, out.probabilities, out.labels, out.num_tokens, out.truncated)
            for name, kind, value in zip(added, types, values, strict=True):
                chunk = chunk.append_column(pa.field(name, kind), pa.array(value, type=kind))
            writer.write(chunk)
            row += chunk.num_rows
            bar.update(chunk.num_rows)
    bar.close()
    print(f"wrote {row:,} rows to {writer.path}", file=sys.stderr)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _check_flags()
    setup_process()
    from jaxsent.inference import Predictor, load_trained

    try:
        predictor = Predictor(
            load_trained(FLAGS.model), batch_size=FLAGS.batch_size, calibrated=not FLAGS.raw
        )
        _note_temperature(predictor)
        if FLAGS.text:
            _print_texts(predictor, FLAGS.text)
        else:
            _predict_file(predictor)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    app.run(main)
