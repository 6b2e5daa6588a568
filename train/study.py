"""Run a loss study: every (variant, seed) as an ordinary training run, then its summary.

    python -m train.study --config configs/study/smoke.py --workdir runs/study_smoke
    python -m train.study --config configs/study/sst2.py --workdir runs/study_sst2 --report_only

Every run's training config is checked before the first run trains (a bad field is reported in
one line, with its variant; `--debug` for a traceback). Finished runs are skipped and an
interrupted one resumes from its checkpoint, so the same command continues a study after any
stop. When every run is done (or with --report_only, from whatever is
done) it writes summary.json, summary.csv, report.md and PNG figures into --workdir.
"""

import json
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from train.cli import run_cli, setup_process

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a study config in configs/study/.")
flags.DEFINE_string("workdir", None, "Directory of the study (one subfolder per run).")
flags.DEFINE_bool("report_only", False, "Summarise the finished runs without training.")
flags.DEFINE_integer("num_resamples", 2000, "Bootstrap resamples for the paired comparisons.")
flags.DEFINE_string(
    "archive",
    None,
    "Folder that keeps every finished run's small result files and the report (e.g. a folder "
    "under docs/ that is committed): runs found there are restored instead of trained again.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _check_same_study(workdir, study: dict) -> None:
    """Refuses to mix two studies in one folder: runs are reused by name only."""
    path = workdir / "study.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before != study:
            changed = sorted(
                k for k in study.keys() | before.keys() if before.get(k) != study.get(k)
            )
            raise app.UsageError(
                f"{workdir} holds another study (fields {changed} differ from {path}); "
                "use a new --workdir"
            )
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(study, indent=2) + "\n")


def _check_runs(runs) -> None:
    """Checks every run's training config, naming the run in the error.

    The steps are traced for one seed of each variant (seeds change no shape).
    """
    from jaxsent.training.config_check import ConfigError, check_config

    traced = set()
    for run in runs:
        try:
            check_config(run.config, trace_steps=run.variant not in traced)
            traced.add(run.variant)
        except ConfigError as err:
            where = f"(study variant {run.variant!r}, seed {run.seed})"
            raise ConfigError(err.field, err.value, f"{err.allowed} {where}") from err


def main(argv):
    del argv
    setup_process()
    from etils import epath

    from jaxsent.study import plan_study, run_study, summarize, write_report
    from jaxsent.study.runner import restore_archived
    from jaxsent.training.config_check import parse_extra_evals
    from jaxsent.training.loop import train_and_evaluate
    from jaxsent.training.preemption import TrainingInterrupted

    study = FLAGS.config
    workdir = epath.Path(FLAGS.workdir)
    study_dict = json.loads(study.to_json_best_effort())
    try:
        runs = plan_study(study, workdir)
    except (KeyError, TypeError) as err:  # an override of a field the training config lacks
        raise ValueError(err.args[0] if err.args else str(err)) from err
    if not FLAGS.report_only:
        _check_runs(runs)  # before anything is written, here or in the archive
    archive = epath.Path(FLAGS.archive) if FLAGS.archive else None
    if archive is not None:
        _check_same_study(archive, study_dict)
        restore_archived(runs, archive)
    if not FLAGS.report_only:
        _check_same_study(workdir, study_dict)
        try:
            run_study(runs, train_and_evaluate, archive=archive)
        except TrainingInterrupted as stop:
            print(f"interrupted: {stop}", file=sys.stderr)
            sys.exit(TrainingInterrupted.exit_code)
    done = sum(run.done for run in runs)
    if not done:
        print("no finished run to summarise yet", file=sys.stderr)
        return
    eval_sets = ["eval", *parse_extra_evals(runs[0].config.data.extra_evals)]
    summary = summarize(
        runs,
        baseline=study.baseline,
        eval_sets=eval_sets,
        num_resamples=FLAGS.num_resamples,
        study=study_dict,
    )
    command = "python -m train.study " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for folder in (workdir, archive) if archive is not None else (workdir,):
        write_report(summary, runs, folder, eval_sets=eval_sets, command=command)
    print(f"summary of {done}/{len(runs)} runs: {(archive or workdir) / 'report.md'}")
    for line in summary["verdicts"]:
        print(f"- {line['text']}")


if __name__ == "__main__":
    run_cli(main)
