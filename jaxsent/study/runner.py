"""A loss study as a list of ordinary training runs, run in order, resumable at any point.

A study config (``configs/study/*.py``, an `ml_collections.ConfigDict`) names a base training
config, overrides of it, the variants and the seeds::

    config.base = "configs/smoke.py"          # a training config file
    config.overrides = {"train": {"num_steps": 40}}  # nested, applied to the base
    config.variants = ("bce", "focal_seed")   # loss presets (jaxsent.losses.LOSS_PRESETS) ...
    config.custom_variants = {"lr3e5": {"optim": {"learning_rate": 3e-5}}}  # ... or named overrides
    config.seeds = (0, 1, 2)
    config.baseline = "bce"                   # what every variant is compared against

Each (variant, seed) trains in ``DIR/<variant>/seed_<seed>/`` through
`jaxsent.training.loop.train_and_evaluate`, binary or K-class as its data has classes (e.g.
``data.name = "sst5"``: five ordered classes). A run whose ``eval_results.json`` exists is done and
skipped; any other run folder resumes from its own checkpoint, so a study killed at any point and
started again loses at most the unsaved steps of one run.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import runpy
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections
from etils import epath

from jaxsent import losses, reporting

log = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"
# What a finished run keeps in a study archive: small text files, enough to summarise it again
# (predictions as CSV: float32 logits round-trip exactly through pyarrow's CSV writer).
ARCHIVED_FILES = ("config.json", "metrics.jsonl", RESULTS_FILE)
PREDICTIONS_PARQUET = "predictions.parquet"
PREDICTIONS_CSV = "predictions.csv"
# The archived prediction columns: enough to compare runs again and to stratify by length
# (probability and predicted label follow from the logit). K-class runs keep one logit column per
# class instead of `logit` (`archived_columns`).
ARCHIVED_COLUMNS = ("example_id", "label", "logit", "full_length")


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One training run of a study."""

    variant: str
    seed: int
    workdir: epath.Path
    config: ml_collections.ConfigDict

    @property
    def done(self) -> bool:
        return (self.workdir / RESULTS_FILE).exists()

    @property
    def name(self) -> str:
        return f"{self.variant} seed {self.seed}"


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file (paths relative to the working directory)."""
    namespace = runpy.run_path(str(path))
    if "get_config" not in namespace:
        raise ValueError(f"config file {path!r} has no get_config()")
    return namespace["get_config"]()


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], *, where: str
) -> None:
    """Sets every (nested) field of `overrides` on `config`; unknown fields are an error."""
    for key, value in overrides.items():
        if key not in config:
            raise KeyError(f"{where}: {key!r} is not a field of the training config")
        if isinstance(value, Mapping):
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise TypeError(f"{where}: {key!r} is a value, not a group of fields")
            apply_overrides(config[key], value, where=f"{where}.{key}")
        else:
            config[key] = value


def variant_overrides(study: ml_collections.ConfigDict, variant: str) -> dict[str, Any]:
    """The training-config overrides that make `variant`: a loss preset or a custom variant."""
    custom = study.get("custom_variants") or {}
    if variant in custom:
        value = custom[variant]
        return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else dict(value)
    if variant in losses.LOSS_PRESETS:
        return {"loss": dict(losses.LOSS_PRESETS[variant])}
    raise ValueError(
        f"study variant {variant!r} is neither a loss preset ({', '.join(losses.LOSS_PRESETS)}) "
        f"nor in custom_variants ({', '.join(custom) or 'none'})"
    )


def plan_study(study: ml_collections.ConfigDict, workdir: str | epath.PathLike) -> list[PlannedRun]:
    """Every run of `study`, seed-major (all variants of seed 0 first), with its config.

    Seed-major order makes a partly finished study useful: its first complete seed already
    compares every variant on the same data order.
    """
    workdir = epath.Path(workdir)
    variants = list(study.variants)
    if len(set(variants)) != len(variants):
        raise ValueError(f"study variants repeat a name: {variants}")
    if study.baseline not in variants:
        raise ValueError(f"study baseline {study.baseline!r} is not among the variants {variants}")
    seeds = [int(s) for s in study.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"study seeds must be distinct and at least one, got {seeds}")
    overrides = study.get("overrides") or {}
    if isinstance(overrides, ml_collections.ConfigDict):
        overrides = overrides.to_dict()
    runs = []
    for seed in seeds:
        for variant in variants:
            config = load_config_file(study.base)
            apply_overrides(config, overrides, where="overrides")
            apply_overrides(config, variant_overrides(study, variant), where=f"variant {variant}")
            config.seed = seed
            runs.append(PlannedRun(variant, seed, workdir / variant / f"seed_{seed}", config))
    return runs


def _report_folders(workdir: epath.Path):
    """The run folder and its extra evaluation folders (each holds results and predictions)."""
    yield workdir
    extra = workdir / "extra_evals"
    if extra.exists():
        yield from sorted(p for p in extra.iterdir() if p.is_dir())


def archived_columns(predictions: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a run's archived ``predictions.csv``, from `reporting.read_predictions`.

    Binary predictions keep `ARCHIVED_COLUMNS`. K-class predictions (``logits`` ``[N, K]`` and
    ``class_names``) keep ``example_id``, ``label``, one float32 column ``logit_<name>`` per
    class in class order (the names of ``predictions.parquet``; the class order is the
    run's ``eval_results.json`` ``class_names``) and ``full_length``.
    """
    if "logits" not in predictions:
        return {c: predictions[c] for c in ARCHIVED_COLUMNS if c in predictions}
    out = {"example_id": predictions["example_id"], "label": predictions["label"]}
    for k, name in enumerate(predictions["class_names"]):
        out[f"logit_{name}"] = predictions["logits"][:, k]
    if "full_length" in predictions:
        out["full_length"] = predictions["full_length"]
    return out


def archive_run(run: PlannedRun, archive: epath.Path) -> None:
    """Copies the small result files of a finished run into `archive/<variant>/seed_<n>/`."""
    import pyarrow
    import pyarrow.csv

    for folder in _report_folders(run.workdir):
        target = archive / folder.relative_to(run.workdir.parent.parent)
        target.mkdir(parents=True, exist_ok=True)
        for name in ARCHIVED_FILES:
            if (folder / name).exists():
                (target / name).write_bytes((folder / name).read_bytes())
        columns = reporting.read_predictions(folder / PREDICTIONS_PARQUET)
        table = pyarrow.table(archived_columns(columns))
        buffer = io.BytesIO()
        pyarrow.csv.write_csv(table, buffer)
        (target / PREDICTIONS_CSV).write_bytes(buffer.getvalue())


def restore_archived(runs: Iterable[PlannedRun], archive: epath.Path) -> int:
    """Copies archived runs that the work directory lacks back into it (they count as done).

    Returns how many were restored. A run folder that exists without results (an interrupted
    run) is left alone: it resumes from its own checkpoint.
    """
    restored = 0
    for run in runs:
        source = archive / run.workdir.relative_to(run.workdir.parent.parent)
        if run.workdir.exists() or not (source / RESULTS_FILE).exists():
            continue
        for folder in _report_folders(source):
            target = run.workdir / folder.relative_to(source)
            target.mkdir(parents=True, exist_ok=True)
            for name in (*ARCHIVED_FILES, PREDICTIONS_CSV):
                if (folder / name).exists():
                    (target / name).write_bytes((folder / name).read_bytes())
        restored += 1
    return restored


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def run_study(
    runs: Iterable[PlannedRun],
    train_fn: Callable[[ml_collections.ConfigDict, epath.Path], Any],
    *,
    archive: epath.Path | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Trains every run that is not done, in order, with a progress line per run.

    With an `archive`, each run's small result files are copied there as soon as it finishes
    (and runs archived earlier are restored first), so a study can continue on another machine
    from a committed archive.

    The estimate of the time left is the mean duration of the runs trained in this invocation
    times the runs left (runs of one study are sized alike).
    """
    runs = list(runs)
    if archive is not None:
        restored = restore_archived(runs, archive)
        if restored:
            echo(f"study: {restored} finished runs restored from {archive}")
        for run in runs:
            source = archive / run.workdir.relative_to(run.workdir.parent.parent)
            if run.done and not (source / RESULTS_FILE).exists():
                archive_run(run, archive)
    todo = [run for run in runs if not run.done]
    echo(f"study: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to train")
    start = time.monotonic()
    for trained, run in enumerate(todo):
        elapsed = time.monotonic() - start
        left = len(todo) - trained
        estimate = f", about {_duration(elapsed / trained * left)} left" if trained else ""
        resuming = " (resuming)" if run.workdir.exists() else ""
        echo(
            f"[{runs.index(run) + 1}/{len(runs)}] {run.name}{resuming}: {left} runs left, "
            f"{_duration(elapsed)} elapsed{estimate} -> {run.workdir}"
        )
        train_fn(run.config, run.workdir)
        if archive is not None:
            archive_run(run, archive)
    echo(f"study: all {len(runs)} runs done ({_duration(time.monotonic() - start)} this time)")
