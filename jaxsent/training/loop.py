"""`train_and_evaluate(config, workdir)`: the whole fine-tuning run.

Data in (HF `datasets`, length-bucketed), one jitted step over a mesh of every device, periodic
and best-on-validation orbax checkpoints, validation for model selection, and one final report
on the evaluation split from the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxsent import calibration, evaluation, export, losses, reporting, sharding, storage
from jaxsent import data as data_lib
from jaxsent.models import load_tokenizer
from jaxsent.training import recipe
from jaxsent.training.build import training_steps
from jaxsent.training.checkpointing import Checkpoints
from jaxsent.training.config_check import ConfigError, check_config, metric_names
from jaxsent.training.preemption import StopSignals, TrainingInterrupted
from jaxsent.training.splits import Split, load_splits
from jaxsent.training.steps import StepFunctions, merge_model
from jaxsent.training.timing import PhaseTimer
from jaxsent.training.writers import MetricsWriter

log = logging.getLogger(__name__)

# Config fields that fix the shape of the state or the order of the data: a checkpoint written
# under other values cannot be resumed without silently mixing two runs.
RESUME_KEYS = (
    "seed",
    "data.name",
    "data.train_split",
    "data.validation_size",
    "data.train_size",
    "data.max_length",
    "data.truncation",
    "data.head_fraction",
    "model.name",
    "model.pooling",
    "model.scan_layers",  # stacked or per-layer parameters
    "train.global_batch_size",
    "mesh.strategy",
)
# The value a key added to RESUME_KEYS later had in the checkpoints written before it.
RESUME_KEY_DEFAULTS = {"model.scan_layers": False}


def _get(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def resume_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {key: _get(config, key) for key in RESUME_KEYS}


def loss_from_config(config: ml_collections.ConfigDict):
    """The loss ``config.loss.name`` with the ``config.loss`` fields it accepts bound."""
    return losses.loss_from_fields(config.loss)


def length_bucketing_warning(loss_fields, boundaries) -> str | None:
    """A warning when the loss weights by length but batches are length-bucketed, else None.

    The seed's length weights are normalised by their batch mean; in a batch of similar lengths
    they are nearly equal, so bucketing all but switches the term off (on IMDB at 256 tokens
    the weight relative to its batch mean has a standard deviation of 0.027 with 8 buckets
    against 0.160 in random batches; docs/study.md).
    """
    name = loss_fields["name"]
    weights_length = name in ("weighted", "focal") or (
        name == "sentiment" and bool(loss_fields.get("length_weighting", False))
    )
    if not weights_length or len(boundaries) < 2:
        return None
    return (
        f"loss {name!r} weights examples by length relative to their batch, but batches are "
        f"length-bucketed ({len(boundaries)} buckets), so the weights within a batch are "
        "nearly equal; set data.num_buckets=1 for random batches as in the seed (docs/study.md)"
    )


class BatchPlacer:
    """Turns a global `BatchSpec` into device arrays sharded over the mesh's `data` axis.

    Each process builds only its own rows; `make_array_from_process_local_data` assembles the
    global array, so the same code serves one CPU and a multi-host pod.
    """

    def __init__(self, mesh: jax.sharding.Mesh, *, pad_id: int):
        self.sharding = NamedSharding(mesh, P("data"))
        self.pad_id = pad_id

    def __call__(self, arrays, spec) -> dict[str, jax.Array]:
        local = data_lib.make_batch(
            arrays,
            spec,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            pad_id=self.pad_id,
        )
        local.pop("example_id", None)
        return {
            key: jax.make_array_from_process_local_data(self.sharding, value)
            for key, value in local.items()
        }


def eval_batch_plan(split: Split, *, batch_size: int, boundaries) -> list[data_lib.BatchSpec]:
    """The batches that score `split`: row order within each bucket, shortest bucket first."""
    return data_lib.batch_plan(
        split.arrays.lengths,
        global_batch_size=batch_size,
        boundaries=boundaries,
        shuffle=False,
        seed=0,
        epoch=0,
    )


def predict_split(
    steps: StepFunctions,
    state: nnx.State,
    split: Split,
    *,
    batch_size: int,
    boundaries,
    place: BatchPlacer,
) -> dict[str, np.ndarray]:
    """The logits of every example of `split`, with their ids, labels and lengths.

    The last batch is padded and masked, never dropped; the count of scored examples is checked
    against the split's size.

    Returns:
      ``example_ids``, ``logits`` (float32), ``labels``, ``lengths`` (tokens the model read) and
      ``full_lengths`` (tokens of the whole texts), each ``[len(split)]``, in scoring order.
    """
    plan = eval_batch_plan(split, batch_size=batch_size, boundaries=boundaries)
    ids, logits_out = [], []
    for spec in plan:
        logits = steps.eval_step(state, place(split.arrays, spec))
        logits = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
        real = spec.indices >= 0
        ids.append(spec.indices[real])
        logits_out.append(logits[real])
    ids = np.concatenate(ids)
    if len(ids) != len(split) or len(np.unique(ids)) != len(split):
        raise RuntimeError(
            f"evaluation of split {split.name!r} scored {len(np.unique(ids))} distinct of "
            f"{len(split)} examples"
        )
    return {
        "example_ids": split.arrays.example_ids[ids],
        "logits": np.concatenate(logits_out).astype(np.float32),
        "labels": split.arrays.labels[ids],
        "lengths": split.arrays.lengths[ids],
        "full_lengths": split.arrays.full_lengths[ids],
    }


def _describe_subsets(config, splits: dict[str, Split], full_sizes: dict[str, int]) -> list[str]:
    notes = []
    if len(splits["train"]) < full_sizes["train"]:
        notes.append(
            f"trained on a stratified subset of {len(splits['train']):,} of the "
            f"{full_sizes['train']:,} {config.data.name} {config.data.train_split} examples left "
            "after holding out validation"
        )
    if len(splits["eval"]) < full_sizes["eval"]:
        notes.append(
            f"'{config.data.eval_split}' metrics are on a fixed stratified sample of "
            f"{len(splits['eval']):,} of its {full_sizes['eval']:,} examples"
        )
    return notes


class NonFiniteGuard:
    """Counts skipped (non-finite) updates in a row and stops the run at `limit`.

    `optax.apply_if_finite` already skips each such update; a long run of them means the model
    or the data is broken, and training on would only burn compute.
    """

    def __init__(self, limit: int, *, checkpoint_dir: epath.Path):
        if limit < 1:
            raise ValueError(f"optim.max_consecutive_nonfinite={limit} must be >= 1")
        self.limit = limit
        self.checkpoint_dir = checkpoint_dir
        self.consecutive = 0

    def update(self, finite_flags: list[bool], *, last_step: int) -> None:
        """Feed the per-step flags of the steps up to `last_step`, in order."""
        for finite in finite_flags:
            self.consecutive = 0 if finite else self.consecutive + 1
            if self.consecutive >= self.limit:
                raise FloatingPointError(
                    f"{self.consecutive} consecutive non-finite gradients (up to step "
                    f"{last_step}, limit optim.max_consecutive_nonfinite={self.limit}); those "
                    f"updates were skipped and the last good state is in {self.checkpoint_dir}"
                )


def _check_divisible(name: str, batch: int, mesh: jax.sharding.Mesh) -> None:
    n = mesh.shape["data"]
    if batch % n or batch % jax.process_count():
        raise ValueError(
            f"{name}={batch} must be divisible by the mesh's data axis ({n} devices) and by the "
            f"process count ({jax.process_count()})"
        )


def _stop_agreed(stop: StopSignals, *, check: bool) -> bool:
    """Whether every process stops after this step.

    One process acts on its own signal at once. Several must stop after the same step (a process
    that stops alone leaves the others blocked in the next step's collectives), and a signal may
    reach them at different steps or reach only some: they agree with one all-gather at the
    `check` steps (the log steps, which already wait for the device), so a stop takes effect
    within `train.log_every_steps` steps.
    """
    if jax.process_count() == 1:
        return stop.requested
    if not check:
        return False
    return bool(np.any(multihost_utils.process_allgather(np.int32(stop.requested))))


@dataclasses.dataclass
class Run:
    """What a run builds before its first step, shared by the parts of `train_and_evaluate`."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    mesh: jax.sharding.Mesh
    splits: dict[str, Split]
    full_sizes: dict[str, int]
    boundaries: tuple[int, ...]
    place: BatchPlacer
    steps: StepFunctions
    state: nnx.State  # model and optimiser arrays; the single source of truth once built
    schedule: Any
    steps_per_epoch: int
    total_steps: int
    ckpts: Checkpoints
    writer: MetricsWriter
    fingerprint: dict[str, Any]
    timer: PhaseTimer
    notes: list[str]  # how the splits were made, for the final report
    best: float | None = None  # best validation score so far (restored on resume)
    # (step, predictions) of the best validation in this process, so that the final phase need
    # not score the validation split again; None after a resume until a new best is found.
    best_validation: tuple[int, dict[str, np.ndarray]] | None = None

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    @property
    def classes(self) -> data_lib.ClassLabels:
        return self.splits["train"].classes

    def report_options(self, *, scalar: bool = False) -> dict[str, Any]:
        """The keyword arguments of `jaxsent.evaluation`'s reports for this run's classes."""
        if self.classes.num_classes == 2:
            return {}
        options: dict[str, Any] = {"ordinal": self.classes.ordinal}
        if not scalar:
            options["class_names"] = list(self.classes.names)
        return options

    def predict(self, split: Split) -> dict[str, np.ndarray]:
        return predict_split(
            self.steps,
            self.state,
            split,
            batch_size=self.config.train.eval_batch_size,
            boundaries=self.boundaries,
            place=self.place,
        )

    def checkpoint_meta(self, step: int) -> dict[str, Any]:
        epoch, next_batch = divmod(step, self.steps_per_epoch)
        return {
            "step": step,
            "epoch": epoch,
            "next_batch": next_batch,
            "best": self.best,
            "fingerprint": self.fingerprint,
        }


def make_run_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The run's ('data', 'model') mesh, with the batch sizes checked against it."""
    mesh = sharding.make_mesh(data=config.mesh.data, model=config.mesh.model)
    _check_divisible("train.global_batch_size", config.train.global_batch_size, mesh)
    _check_divisible("train.eval_batch_size", config.train.eval_batch_size, mesh)
    return mesh


@dataclasses.dataclass(frozen=True)
class RunData:
    """A run's tokenizer and tokenised splits (`load_run_data`): everything read before the
    run writes anything."""

    tokenizer: Any
    splits: dict[str, Split]
    full_sizes: dict[str, int]
    notes: list[str]


def check_best_metric(config: ml_collections.ConfigDict, classes: data_lib.ClassLabels) -> None:
    """``train.best_metric`` is one that validation writes for the data's classes.

    Raises:
      ConfigError: it is not (the config check could not tell before the data named the
        classes).
    """
    names = metric_names(classes.num_classes, classes.ordinal)
    if config.train.best_metric not in names:
        raise ConfigError(
            "train.best_metric",
            config.train.best_metric,
            f"must be one of {', '.join(map(repr, names))} for the data's "
            f"{classes.num_classes} classes",
        )


def load_run_data(config: ml_collections.ConfigDict, timer: PhaseTimer | None = None) -> RunData:
    """The run's tokenizer and splits (`jaxsent.training.splits.load_splits`)."""
    timer = timer or PhaseTimer()
    with timer.phase("load"):
        tokenizer = load_tokenizer(config.model.name)
    return RunData(tokenizer, *load_splits(config, tokenizer, timer))


def build_run(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    mesh: jax.sharding.Mesh,
    timer: PhaseTimer | None = None,
    data: RunData | None = None,
) -> Run:
    """Data (unless given), model, optimiser, compiled steps and checkpoints for a run over
    `mesh`."""
    tc = config.train
    timer = timer or PhaseTimer()
    data = data or load_run_data(config, timer)
    tokenizer, splits, full_sizes, notes = data.tokenizer, data.splits, data.full_sizes, data.notes
    boundaries = data_lib.make_bucket_boundaries(
        config.data.max_length,
        num_buckets=config.data.num_buckets,
        lengths=splits["train"].arrays.lengths,
    )
    if warning := length_bucketing_warning(config.loss, boundaries):
        log.warning(warning)
    steps_per_epoch = math.ceil(len(splits["train"]) / tc.global_batch_size)
    total_steps = tc.num_steps or steps_per_epoch * tc.num_epochs
    log.info(
        "mesh %s, %d train / %d validation / %d eval examples, %d steps",
        dict(mesh.shape),
        len(splits["train"]),
        len(splits["validation"]),
        len(splits["eval"]),
        total_steps,
    )

    # The model, optimiser and steps that `python -m train.plan` compiles for a TPU topology.
    with timer.phase("load"):
        steps, state, schedule = training_steps(
            config, mesh, total_steps=total_steps, label_names=splits["train"].classes.names
        )
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        splits=splits,
        full_sizes=full_sizes,
        boundaries=boundaries,
        place=BatchPlacer(mesh, pad_id=tokenizer.pad_token_id or 0),
        steps=steps,
        state=state,
        schedule=schedule,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        ckpts=Checkpoints(
            workdir,
            max_to_keep=tc.max_checkpoints,
            best_metric=tc.best_metric,
            best_mode=tc.best_mode,
        ),
        writer=MetricsWriter(workdir),
        fingerprint=resume_fingerprint(config),
        timer=timer,
        notes=notes,
    )


def resume(run: Run) -> int:
    """Restore the newest readable checkpoint into `run`; returns the step to continue from."""
    if run.ckpts.latest_step() is None:
        return 0
    run.state, meta = run.ckpts.restore_latest(run.state)
    stored = RESUME_KEY_DEFAULTS | meta["fingerprint"]
    if stored != run.fingerprint:
        changed = {k: (stored.get(k), v) for k, v in run.fingerprint.items() if stored.get(k) != v}
        raise ValueError(
            f"{run.workdir} holds a run with another config; cannot resume "
            f"(checkpoint value, new value): {changed}. Use a new --workdir."
        )
    run.best = meta.get("best")
    log.info("resumed from step %d", int(meta["step"]))
    return int(meta["step"])


def validate(run: Run, step: int) -> None:
    """Validation metrics at `step`, offered to the best-checkpoint manager."""
    tc = run.config.train
    with run.timer.phase("validate"):
        predictions = run.predict(run.splits["validation"])
        values = evaluation.scalar_metrics(
            predictions["logits"], predictions["labels"], **run.report_options(scalar=True)
        )
    run.writer.write(step, "validation", values)
    score = values[tc.best_metric]
    # On a tie the newest step is the best, as orbax's best-checkpoint manager keeps it.
    if run.best is None or (score >= run.best if tc.best_mode == "max" else score <= run.best):
        run.best = score
        run.best_validation = (step, predictions)
    run.ckpts.save_best(step, run.state, run.checkpoint_meta(step), values)
    if run.is_main:
        shown = ", ".join(
            f"{k}={values[k]:.4f}"
            for k in ("accuracy", "f1", "macro_f1", "nll", "ece")
            if k in values
        )
        tqdm.write(f"step {step}: validation {shown}")


class _TrainLog:
    """Per-window training summaries (loss, grad norm, throughput) at the log steps."""

    def __init__(self, run: Run):
        self.run = run
        self.pending: list[dict[str, jax.Array]] = []
        self.nonfinite = NonFiniteGuard(
            run.config.optim.max_consecutive_nonfinite,
            checkpoint_dir=run.workdir / "checkpoints",
        )
        self.window_start = time.perf_counter()

    def flush(self, done: int, epoch: int) -> dict[str, float]:
        """Fetch the pending step metrics (one device sync), check them and write a summary."""
        fetched = jax.device_get(self.pending)
        self.pending.clear()
        self.nonfinite.update([bool(m["finite"]) for m in fetched], last_step=done)
        elapsed = time.perf_counter() - self.window_start
        examples = sum(int(m["examples"]) for m in fetched)
        tokens = sum(int(m["real_tokens"]) for m in fetched)
        finite = [m for m in fetched if m["finite"]]

        def mean(key: str) -> float:
            return float(np.mean([m[key] for m in finite])) if finite else float("nan")

        summary = {
            "loss": mean("loss"),
            "grad_norm": mean("grad_norm"),
            "learning_rate": float(self.run.schedule(done - 1)),
            "skipped_nonfinite": len(fetched) - len(finite),
            "examples_per_sec": examples / elapsed,
            "real_tokens_per_sec": tokens / elapsed,
            "epoch": epoch,
        }
        self.run.writer.write(done, "train", summary)
        self.window_start = time.perf_counter()
        return summary


def train_batch_plan(run: Run, epoch: int) -> list[data_lib.BatchSpec]:
    """Epoch `epoch`'s training batches (a function of the seed and the epoch alone)."""
    return data_lib.batch_plan(
        run.splits["train"].arrays.lengths,
        global_batch_size=run.config.train.global_batch_size,
        boundaries=run.boundaries,
        shuffle=True,
        seed=run.config.seed,
        epoch=epoch,
    )


def step_shapes(run: Run, start_step: int) -> list[tuple[str, int, int]]:
    """The ``(step, global batch, length)`` shapes the run uses from `start_step`, in order of
    first use: this epoch's remaining training batches, then the validation and eval splits."""
    tc = run.config.train
    shapes = []
    if start_step < run.total_steps:
        epoch, index = divmod(start_step, run.steps_per_epoch)
        plan = train_batch_plan(run, epoch)[index:]
        shapes += [("train", tc.global_batch_size, spec.seq_len) for spec in plan]
    for key, split in run.splits.items():
        if key != "train":
            plan = eval_batch_plan(split, batch_size=tc.eval_batch_size, boundaries=run.boundaries)
            shapes += [("eval", tc.eval_batch_size, spec.seq_len) for spec in plan]
    return list(dict.fromkeys(shapes))


def train_steps(run: Run, start_step: int, stop: StopSignals) -> None:
    """Steps `start_step`..`total_steps` with logging, validation and checkpoints.

    Raises `TrainingInterrupted` after saving when a stop signal arrives.
    """
    tc = run.config.train
    eval_every = tc.eval_every_steps or run.steps_per_epoch
    train_log = _TrainLog(run)
    plans: dict[int, list] = {}
    bar = tqdm(
        total=run.total_steps,
        initial=start_step,
        desc="train",
        disable=not run.is_main,
        dynamic_ncols=True,
    )
    for step in range(start_step, run.total_steps):
        epoch, index = divmod(step, run.steps_per_epoch)
        if epoch not in plans:
            plans.clear()
            plans[epoch] = train_batch_plan(run, epoch)
        batch = run.place(run.splits["train"].arrays, plans[epoch][index])
        run.state, step_metrics = run.steps.train_step(run.state, batch)
        train_log.pending.append(step_metrics)
        done = step + 1
        at_log_step = done % tc.log_every_steps == 0 or done == run.total_steps
        if at_log_step:
            summary = train_log.flush(done, epoch)
            bar.set_postfix(
                loss=f"{summary['loss']:.4f}", ex_s=f"{summary['examples_per_sec']:.1f}"
            )
        bar.update(1)
        if done % eval_every == 0 or done == run.total_steps:
            validate(run, done)
        stopping = _stop_agreed(stop, check=at_log_step)
        if done % tc.checkpoint_every_steps == 0 or done == run.total_steps or stopping:
            run.writer.flush()  # rows up to `done` stored before its checkpoint (object stores)
            run.ckpts.save_latest(done, run.state, run.checkpoint_meta(done))
        if stopping:
            bar.close()
            by = f"signal {stop.received}" if stop.requested else "a signal to another process"
            raise TrainingInterrupted(
                f"stopped by {by} after step {done}; checkpoint saved in "
                f"{run.workdir / 'checkpoints'}. Rerun the same command to resume."
            )
    bar.close()
    run.ckpts.wait()


FinalReports = dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]


def evaluate_best(run: Run) -> FinalReports:
    """The final reports, from the best checkpoint: the eval split and every extra evaluation set.

    A temperature is fitted on the validation split's logits (Guo et al. 2017) and every report
    carries the temperature-scaled calibration metrics beside the raw ones. The eval split is
    touched only here.

    Returns:
      ``{"eval": (results, predictions), "<name>:<split>": (results, predictions), ...}``.
    """
    best_step = run.ckpts.best_step()
    if best_step != run.total_steps:  # else the state in memory, the last step's, is the best
        run.state, _ = run.ckpts.restore_best(run.state)
    if run.best_validation is not None and run.best_validation[0] == best_step:
        validation = run.best_validation[1]
    else:  # a resumed run whose best checkpoint was chosen before the restart
        validation = run.predict(run.splits["validation"])
    temperature = float(calibration.fit_temperature(validation["logits"], validation["labels"]))
    reports = {}
    extra = [key for key in run.splits if key not in ("train", "validation")]
    for key in extra:
        predictions = run.predict(run.splits[key])
        results = evaluation.evaluation_report(
            predictions["logits"],
            predictions["labels"],
            predictions["full_lengths"],
            temperature=temperature,
            **run.report_options(),
        )
        results["best_step"] = int(best_step)
        results["split"] = run.config.data.eval_split if key == "eval" else key
        reports[key] = (results, predictions)
    reports["eval"][0]["notes"] = run.notes + _describe_subsets(
        run.config, run.splits, run.full_sizes
    )
    return reports


def extra_eval_dir(key: str) -> str:
    """The subfolder of `extra_evals/` for the extra evaluation set `key` ('name:split')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key.replace(":", "-"))


def write_final_outputs(run: Run, reports: FinalReports) -> dict[str, Any]:
    """`eval_results.json`, `predictions.parquet`, `reliability.png` (process 0 only).

    The eval split's go in the work directory, each extra evaluation set's in
    `extra_evals/<name>-<split>/`; the top-level `eval_results.json` also lists every extra set's
    metrics under `extra_evals`. Returns the top-level results.
    """
    results, predictions = reports["eval"]
    results = dict(results)
    extra = {key: report for key, report in reports.items() if key != "eval"}
    if extra:
        results["extra_evals"] = {key: report[0] for key, report in extra.items()}
    run.writer.write(run.total_steps, "final_eval", _scalars(results))
    if not run.is_main:
        return results
    loss = f"{run.config.loss.name} loss"
    for key, (extra_results, extra_predictions) in extra.items():
        reporting.write_report(
            run.workdir / "extra_evals" / extra_eval_dir(key),
            extra_results,
            extra_predictions,
            title=f"{key} ({loss})",
        )
    reporting.write_report(
        run.workdir,
        results,
        predictions,
        title=f"{run.config.data.name} {run.config.data.eval_split} ({loss})",
    )
    return results


def _scalars(results: dict[str, Any]) -> dict[str, Any]:
    """The flat numeric entries of a report (what metrics.jsonl and TensorBoard take)."""
    return {
        k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def export_run(run: Run, results: dict[str, Any]) -> epath.Path | None:
    """Exports the model a finished run holds (its best checkpoint) to ``workdir/export``.

    Every process calls it (sharded parameters are gathered); process 0 writes.

    Args:
      run: the run, its state restored from the best checkpoint.
      results: the final report; its ``temperature`` and ``best_step`` are recorded.

    Returns:
      The export folder on process 0, else None.
    """
    model = export.gathered_params(merge_model(run.steps, run.state))
    if jax.process_index() != 0:
        return None
    config = run.config
    temperature = results.get("temperature")
    settings = export.InferenceSettings(
        max_length=config.data.max_length,
        clean_markup=config.data.clean_markup,
        truncation=config.data.truncation,
        head_fraction=config.data.head_fraction,
        bucket_boundaries=tuple(int(b) for b in run.boundaries),
        batch_size=config.train.eval_batch_size,
        temperature=None if temperature is None else float(temperature),
        classes=None if run.classes == data_lib.BINARY else run.classes.to_json(),
    )
    run_info = {
        "workdir": os.fspath(run.workdir),
        "best_step": results.get("best_step"),
        "config": json.loads(config.to_json_best_effort()),
    }
    directory = export.write_export(
        model,
        epath.Path(run.workdir) / export.EXPORT_DIR,
        tokenizer=load_tokenizer(config.model.name),
        settings=settings,
        run_info=run_info,
    )
    log.info("exported the best checkpoint to %s", directory)
    return directory


def resume_changes(
    config: ml_collections.ConfigDict, workdir: epath.Path
) -> dict[str, tuple[Any, Any]] | None:
    """What a rerun in `workdir` changes of its run's config, or None for a fresh run.

    Raises:
      recipe.ResumeRefused: a change a resume may not make (`jaxsent.training.recipe`).
    """
    if not recipe.has_checkpoint(workdir):
        return None
    started = recipe.started_config(workdir)
    if started is None:  # no record to compare with: the checkpoint's fingerprint decides
        return {}
    return recipe.resume_changes(started, config, workdir=os.fspath(workdir))


def write_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    """``config.json``, the config a run starts with (process 0)."""
    if jax.process_index() == 0:
        for stale in (recipe.CONFIG_FILE, recipe.CHANGES_FILE):
            if (workdir / stale).exists():
                (workdir / stale).unlink()
        (workdir / recipe.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2) + "\n")


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: epath.PathLike
) -> dict[str, Any]:
    """Fine-tune, select on validation, report on the eval split; returns the eval metrics.

    `workdir` is a local path or a bucket URL (``gs://bucket/run``, any `etils.epath` backend).
    Every config field is checked first (`check_config`): a bad one raises `ConfigError` before
    anything is written. A `workdir` holding a checkpoint is resumed when the config changes
    nothing a step computes (`jaxsent.training.recipe`; the changes are recorded in
    ``config_changes.jsonl``), else `recipe.ResumeRefused` is raised before anything is written.
    The data is read and checked (rows, labels, classes) before anything is written too.
    """
    check_config(config)
    workdir = storage.as_path(workdir)
    changes = resume_changes(config, workdir)  # a refused resume stops here, nothing written
    mesh = make_run_mesh(config)
    with PhaseTimer() as timer:
        data = load_run_data(config, timer)  # bad data stops here too, nothing written
        check_best_metric(config, data.splits["train"].classes)
        storage.make_dirs(workdir)
        if changes is None:
            write_config(config, workdir)
        run = build_run(config, workdir, mesh, timer, data)
        with jax.set_mesh(mesh), StopSignals() as stop:
            try:
                with timer.phase("load"):
                    start_step = resume(run)
                    if start_step == 0 and changes is not None:  # no checkpoint read back
                        write_config(config, workdir)
                    elif changes and run.is_main:
                        recipe.record_changes(workdir, start_step, changes)
                        log.info("config changed at step %d: %s", start_step, changes)
                    if config.train.compile_ahead:
                        run.steps.compile_ahead(run.state, step_shapes(run, start_step), mesh)
                with timer.phase("train"):
                    train_steps(run, start_step, stop)
                with timer.phase("evaluate"):
                    results = write_final_outputs(run, evaluate_best(run))
                with timer.phase("export"):
                    export_run(run, results)  # the best checkpoint, as a folder others can load
            finally:
                run.ckpts.close()
                run.writer.close()
                log.info("%s", timer.summary())
        results["phase_seconds"] = timer.as_dict()
        if run.is_main:
            (workdir / "timing.json").write_text(json.dumps(results["phase_seconds"], indent=2))
    return results
