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
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxsent import data as data_lib
from jaxsent import losses, metrics, reporting, sharding
from jaxsent.models import SentimentClassifier, load_tokenizer
from jaxsent.training.checkpointing import Checkpoints
from jaxsent.training.optim import make_optimizer
from jaxsent.training.preemption import StopSignals, TrainingInterrupted
from jaxsent.training.steps import StepFunctions, build_steps, trainable_filter
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
    "model.name",
    "model.pooling",
    "train.global_batch_size",
    "mesh.strategy",
)


@dataclasses.dataclass
class Split:
    """A tokenized split and its columnar arrays for fast batching."""

    name: str
    dataset: Any  # datasets.Dataset
    arrays: data_lib.TokenArrays

    def __len__(self) -> int:
        return len(self.dataset)


def _get(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def resume_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {key: _get(config, key) for key in RESUME_KEYS}


def loss_from_config(config: ml_collections.ConfigDict):
    hyper = dict(config.loss)
    name = hyper.pop("name")
    if name == "bce":
        hyper = {}
    elif name == "weighted":
        hyper = {k: hyper[k] for k in ("min_length_weight", "stop_gradient_weights")}
    return losses.get_loss(name, **hyper)


def load_splits(
    config: ml_collections.ConfigDict, tokenizer
) -> tuple[dict[str, Split], dict[str, int]]:
    """Train / validation (carved from train, fixed seed) / eval splits, tokenized.

    Also returns the sizes before any subsetting, so the run can say what it left out.
    """
    dc = config.data
    kwargs = dict(
        data_dir=dc.data_dir or None,
        text_column=dc.text_column or None,
        label_column=dc.label_column or None,
    )
    raw_train = data_lib.load_raw(dc.name, split=dc.train_split, **kwargs)
    raw_eval = data_lib.load_raw(dc.name, split=dc.eval_split, **kwargs)

    def prepare(ds, split_name):
        return data_lib.prepare(
            ds,
            tokenizer,
            max_length=dc.max_length,
            split_name=split_name,
            clean_markup=dc.clean_markup,
            on_bad_rows=dc.on_bad_rows,
        )

    train_all = prepare(raw_train, dc.train_split)
    # ml_collections keeps the field's float type, so a count given as 256 arrives as 256.0.
    validation_size = dc.validation_size
    if validation_size >= 1:
        validation_size = int(validation_size)
    train, validation = data_lib.split_train_validation(
        train_all, validation_size=validation_size, seed=config.seed
    )
    full_sizes = {"train": len(train)}
    if dc.train_size and dc.train_size < len(train):
        train = data_lib.stratified_subset(train, size=dc.train_size, seed=config.seed)
    evaluation = prepare(raw_eval, dc.eval_split)
    full_sizes["eval"] = len(evaluation)
    if dc.eval_size and dc.eval_size < len(evaluation):
        evaluation = data_lib.stratified_subset(evaluation, size=dc.eval_size, seed=config.seed)
    splits = {"train": train, "validation": validation, "eval": evaluation}
    splits = {name: Split(name, ds, data_lib.to_numpy_columns(ds)) for name, ds in splits.items()}
    return splits, full_sizes


_jit_metrics = jax.jit(metrics.binary_classification_metrics, static_argnames="num_bins")


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


def evaluate(
    steps: StepFunctions,
    state: nnx.State,
    split: Split,
    *,
    batch_size: int,
    boundaries,
    place: BatchPlacer,
    num_bins: int = 15,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics over every example of `split` and the per-example predictions.

    The last batch is padded and masked, never dropped; the count of scored examples is checked
    against the split's size.
    """
    plan = data_lib.batch_plan(
        split.arrays.lengths,
        global_batch_size=batch_size,
        boundaries=boundaries,
        shuffle=False,
        seed=0,
        epoch=0,
    )
    ids, logits_out = [], []
    for spec in plan:
        logits = steps.eval_step(state, place(split.arrays, spec))
        logits = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
        real = spec.indices >= 0
        ids.append(spec.indices[real])
        logits_out.append(logits[real])
    ids = np.concatenate(ids)
    logits = np.concatenate(logits_out).astype(np.float32)
    if len(ids) != len(split) or len(np.unique(ids)) != len(split):
        raise RuntimeError(
            f"evaluation of split {split.name!r} scored {len(np.unique(ids))} distinct of "
            f"{len(split)} examples"
        )
    labels = split.arrays.labels[ids]
    values = _jit_metrics(jnp.asarray(logits), jnp.asarray(labels), num_bins=num_bins)
    values = {k: float(v) for k, v in values.items()}
    values["n_examples"] = int(values["n_examples"])
    example_ids = split.arrays.example_ids[ids]
    return values, {"example_ids": example_ids, "logits": logits, "labels": labels}


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

    def __init__(self, limit: int, *, checkpoint_dir: Path):
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Fine-tune, select on validation, report on the eval split; returns the eval metrics."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

    tc = config.train
    mesh = sharding.make_mesh(data=config.mesh.data, model=config.mesh.model)
    rules = sharding.SHARDING_RULES[config.mesh.strategy]
    _check_divisible("train.global_batch_size", tc.global_batch_size, mesh)
    _check_divisible("train.eval_batch_size", tc.eval_batch_size, mesh)
    loss_fn = loss_from_config(config)

    tokenizer = load_tokenizer(config.model.name)
    splits, full_sizes = load_splits(config, tokenizer)
    boundaries = data_lib.make_bucket_boundaries(
        config.data.max_length,
        num_buckets=config.data.num_buckets,
        lengths=splits["train"].arrays.lengths,
    )
    place = BatchPlacer(mesh, pad_id=tokenizer.pad_token_id or 0)

    steps_per_epoch = math.ceil(len(splits["train"]) / tc.global_batch_size)
    total_steps = tc.num_steps or steps_per_epoch * tc.num_epochs
    eval_every = tc.eval_every_steps or steps_per_epoch
    log.info(
        "mesh %s, %d train / %d validation / %d eval examples, %d steps",
        dict(mesh.shape),
        len(splits["train"]),
        len(splits["validation"]),
        len(splits["eval"]),
        total_steps,
    )

    # Built outside the mesh context: parameters carry logical axis names, which only become
    # mesh axes through the sharding rules when the state is placed (in build_steps).
    model = SentimentClassifier.from_pretrained(
        config.model.name,
        pooling=config.model.pooling,
        dropout_rate=config.model.dropout_rate,
        dtype=jnp.dtype(config.model.dtype),
        rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
    )
    tx, schedule = make_optimizer(config.optim, total_steps=total_steps)
    optimizer = nnx.Optimizer(model, tx, wrt=trainable_filter(model))

    with jax.set_mesh(mesh), StopSignals() as stop:
        steps, state = build_steps(
            model,
            optimizer,
            loss_fn=loss_fn,
            dropout_key=jax.random.key(config.seed),
            state_shardings_fn=lambda tree: sharding.tree_shardings(tree, mesh, rules),
        )
        del model, optimizer  # the state is the single source of truth from here on

        ckpts = Checkpoints(
            workdir,
            max_to_keep=tc.max_checkpoints,
            best_metric=tc.best_metric,
            best_mode=tc.best_mode,
        )
        fingerprint = resume_fingerprint(config)
        start_step, best = 0, None
        if ckpts.latest_step() is not None:
            state, meta = ckpts.restore_latest(state)
            if meta["fingerprint"] != fingerprint:
                changed = {
                    k: (meta["fingerprint"].get(k), v)
                    for k, v in fingerprint.items()
                    if meta["fingerprint"].get(k) != v
                }
                raise ValueError(
                    f"{workdir} holds a run with another config; cannot resume "
                    f"(checkpoint value, new value): {changed}. Use a new --workdir."
                )
            start_step, best = int(meta["step"]), meta.get("best")
            log.info("resumed from step %d", start_step)

        writer = MetricsWriter(workdir)

        def meta_for(step: int) -> dict[str, Any]:
            epoch, next_batch = divmod(step, steps_per_epoch)
            return {
                "step": step,
                "epoch": epoch,
                "next_batch": next_batch,
                "best": best,
                "fingerprint": fingerprint,
            }

        def run_validation(step: int) -> None:
            nonlocal best
            values, _ = evaluate(
                steps,
                state,
                splits["validation"],
                batch_size=tc.eval_batch_size,
                boundaries=boundaries,
                place=place,
            )
            writer.write(step, "validation", values)
            score = values[tc.best_metric]
            better = best is None or (score > best if tc.best_mode == "max" else score < best)
            if better:
                best = score
            ckpts.save_best(step, state, meta_for(step), values)
            if is_main:
                tqdm.write(
                    f"step {step}: validation "
                    + ", ".join(f"{k}={values[k]:.4f}" for k in ("accuracy", "f1", "nll", "ece"))
                )

        plan_cache: dict[int, list] = {}
        pending: list[dict[str, jax.Array]] = []
        nonfinite = NonFiniteGuard(
            config.optim.max_consecutive_nonfinite, checkpoint_dir=workdir / "checkpoints"
        )
        bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc="train",
            disable=not is_main,
            dynamic_ncols=True,
        )
        window_start, window_examples, window_tokens = time.perf_counter(), 0, 0
        for step in range(start_step, total_steps):
            epoch, index = divmod(step, steps_per_epoch)
            if epoch not in plan_cache:
                plan_cache.clear()
                plan_cache[epoch] = data_lib.batch_plan(
                    splits["train"].arrays.lengths,
                    global_batch_size=tc.global_batch_size,
                    boundaries=boundaries,
                    shuffle=True,
                    seed=config.seed,
                    epoch=epoch,
                )
            state, step_metrics = steps.train_step(
                state, place(splits["train"].arrays, plan_cache[epoch][index])
            )
            pending.append(step_metrics)
            done = step + 1
            if done % tc.log_every_steps == 0 or done == total_steps:
                fetched = jax.device_get(pending)
                pending.clear()
                try:
                    nonfinite.update([bool(m["finite"]) for m in fetched], last_step=done)
                except FloatingPointError:
                    ckpts.close()
                    raise
                elapsed = time.perf_counter() - window_start
                window_examples += sum(int(m["examples"]) for m in fetched)
                window_tokens += sum(int(m["real_tokens"]) for m in fetched)
                finite = [m for m in fetched if m["finite"]]
                summary = {
                    "loss": float(np.mean([m["loss"] for m in finite])) if finite else float("nan"),
                    "grad_norm": float(np.mean([m["grad_norm"] for m in finite]))
                    if finite
                    else float("nan"),
                    "learning_rate": float(schedule(done - 1)),
                    "skipped_nonfinite": len(fetched) - len(finite),
                    "examples_per_sec": window_examples / elapsed,
                    "real_tokens_per_sec": window_tokens / elapsed,
                    "epoch": epoch,
                }
                writer.write(done, "train", summary)
                bar.set_postfix(
                    loss=f"{summary['loss']:.4f}", ex_s=f"{summary['examples_per_sec']:.1f}"
                )
                window_start, window_examples, window_tokens = time.perf_counter(), 0, 0
            bar.update(1)
            if done % eval_every == 0 or done == total_steps:
                run_validation(done)
            stopping = _stop_agreed(
                stop, check=done % tc.log_every_steps == 0 or done == total_steps
            )
            if done % tc.checkpoint_every_steps == 0 or done == total_steps or stopping:
                ckpts.save_latest(done, state, meta_for(done))
            if stopping:
                bar.close()
                ckpts.close()
                writer.close()
                by = f"signal {stop.received}" if stop.requested else "a signal to another process"
                raise TrainingInterrupted(
                    f"stopped by {by} after step {done}; checkpoint saved in "
                    f"{workdir / 'checkpoints'}. Rerun the same command to resume."
                )
        bar.close()
        ckpts.wait()

        state, best_meta = ckpts.restore_best(state)
        results, predictions = evaluate(
            steps,
            state,
            splits["eval"],
            batch_size=tc.eval_batch_size,
            boundaries=boundaries,
            place=place,
        )
        ckpts.close()

    results["best_step"] = int(best_meta["step"])
    results["split"] = config.data.eval_split
    notes = _describe_subsets(config, splits, full_sizes)
    results["notes"] = notes
    if is_main:
        writer.write(total_steps, "final_eval", results)
        (workdir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
        reporting.save_predictions(workdir / "predictions.parquet", **predictions)
        reporting.plot_reliability_diagram(
            predictions["logits"],
            predictions["labels"],
            workdir / "reliability.png",
            title=f"{config.data.name} {config.data.eval_split} ({config.loss.name} loss)",
        )
    writer.close()
    return results
