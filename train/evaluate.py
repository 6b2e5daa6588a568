"""Evaluate a trained model on any data set, as the training run's final report does.

    python -m train.evaluate --model runs/imdb --data rotten_tomatoes --split test
    python -m train.evaluate --model runs/imdb/export --data reviews.csv --split reviews \\
        --workdir runs/imdb_on_reviews

`--model` is a training work directory (its `export/`, else its best checkpoint) or an export
folder; `--data` anything `jaxsent.data.load_raw` accepts (a known name, a file or a folder of
files, one split per file stem). The data is cleaned, tokenised and batched as the run's own
evaluation was, scored by the same evaluation code and reported with the same metrics (with the
run's fitted temperature): `eval_results.json`, `predictions.parquet` and `reliability.png` in
`--workdir` (default: `<run>/evaluations/<data>-<split>`).

A model of K > 2 classes gets the K-class report (per-class metrics, the confusion matrix, the
ordinal metrics of ordered classes; `reliability_classwise.png`, `confusion_matrix.png`). The
data's labels are read as the model's classes (class names, or integers as the run's labels
were); data of another number of classes (a five-class model on `sst2`, a binary one on `sst5`),
a label naming none of the model's classes, or labels of a single class stop the command with
one line (exit status 2).
"""

import os

from absl import app, flags

from train.cli import result_lines, run_cli, setup_process

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A training work directory or an export folder.")
flags.DEFINE_string("data", None, "A data set name (imdb, sst2, rotten_tomatoes) or path.")
flags.DEFINE_string("split", "test", "The split to evaluate (a file stem for local files).")
flags.DEFINE_string(
    "workdir", None, "Where to write the report (default: <run>/evaluations/<data>-<split>)."
)
flags.DEFINE_integer(
    "size", 0, "Evaluate a fixed stratified sample of this many examples.", lower_bound=0
)
flags.DEFINE_integer(
    "sample_seed",
    None,
    "The sample's seed (default: the run's data.eval_sample_seed or seed).",
    lower_bound=0,
)
flags.DEFINE_string("data_dir", None, "Overrides $JAXSENT_DATA_DIR for known data set names.")
flags.DEFINE_string("text_column", None, "The data's text column when not a usual name.")
flags.DEFINE_string("label_column", None, "The data's label column when not a usual name.")
flags.DEFINE_enum(
    "on_bad_rows", "error", ["error", "filter"], "Malformed rows: stop, or leave out and say so."
)
flags.DEFINE_integer(
    "batch_size", None, "Rows per batch (default: the run's eval batch size).", lower_bound=1
)
flags.mark_flags_as_required(["model", "data"])


def _output_dir(trained) -> str:
    if FLAGS.workdir:
        return FLAGS.workdir
    if trained.run_dir is None:
        raise ValueError(
            f"--model={FLAGS.model!r} is an export outside a run's work directory: pass --workdir"
        )
    stem = os.path.splitext(os.path.basename(os.path.normpath(FLAGS.data)))[0]
    name = f"{stem}-{FLAGS.split}" + (f"-sample{FLAGS.size}" if FLAGS.size else "")
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return os.path.join(os.fspath(trained.run_dir), "evaluations", name)


def _print_results(results, directory: str) -> None:
    print()
    print(
        f"== {FLAGS.data} {results['split']} metrics ({results['n_examples']:,} examples, "
        f"{results['model']}) =="
    )
    for line in result_lines(results):
        print(line)
    for note in results["notes"]:
        print(f"NOTE: {note}")
    print(f"full results: {os.path.join(directory, 'eval_results.json')}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_process()
    from jaxsent.inference import Scorer, evaluation_results, load_eval_split, load_trained
    from jaxsent.reporting import write_report
    from jaxsent.training.config_check import data_source_problem

    # Errors (no such model or data, a bad row, ...) reach run_cli: one line, exit status 2.
    if problem := data_source_problem(FLAGS.data, data_dir=FLAGS.data_dir or ""):
        raise app.UsageError(f"--data={FLAGS.data!r}: {problem}")
    trained = load_trained(FLAGS.model)
    directory = _output_dir(trained)
    split, notes = load_eval_split(
        trained,
        FLAGS.data,
        split=FLAGS.split,
        size=FLAGS.size,
        sample_seed=FLAGS.sample_seed,
        data_dir=FLAGS.data_dir,
        text_column=FLAGS.text_column,
        label_column=FLAGS.label_column,
        on_bad_rows=FLAGS.on_bad_rows,
    )
    scorer = Scorer(
        trained.model,
        batch_size=FLAGS.batch_size or trained.settings.batch_size,
        boundaries=trained.settings.bucket_boundaries,
        pad_id=trained.tokenizer.pad_token_id or 0,
    )
    predictions = scorer.predict_split(split)
    results = evaluation_results(predictions, trained)
    results.update(split=FLAGS.split, data=FLAGS.data, model=trained.describe(), notes=notes)
    write_report(directory, results, predictions, title=f"{FLAGS.data} {FLAGS.split}")
    _print_results(results, directory)


if __name__ == "__main__":
    run_cli(main)
