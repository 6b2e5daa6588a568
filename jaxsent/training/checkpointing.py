"""Orbax checkpoints of the whole training state: periodic ("latest") and best-on-validation.

A checkpoint holds the model and optimiser arrays (as a pure dict, so it is independent of NNX's
object graph) plus JSON metadata: step, data position (epoch, next batch), best-so-far metric
and the config fingerprint that must match for a resume.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from jaxsent import storage

log = logging.getLogger(__name__)


def to_arrays(state: nnx.State) -> dict:
    """The state as a nested dict of arrays: what a checkpoint stores."""
    return nnx.to_pure_dict(state)


def abstract_like(state: nnx.State) -> dict:
    """Shape/dtype/sharding targets for restoring into `state`'s layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), to_arrays(state)
    )


class Checkpoints:
    """Two orbax managers under `workdir`: `checkpoints/` (latest N) and `best/` (best one).

    `workdir` may be local or a bucket URL (``gs://...``): orbax writes there itself.

    Saves are asynchronous; `close()` (or `wait()`) blocks until every save is on disk, so a run
    that ends normally never loses its last checkpoint.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        max_to_keep: int = 2,
        best_metric: str = "accuracy",
        best_mode: str = "max",
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode={best_mode!r} must be 'max' or 'min'")
        workdir = storage.as_path(workdir)
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )
        self.best = ocp.CheckpointManager(
            workdir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda metrics: float(metrics[best_metric]),
                best_mode=best_mode,
                create=True,
            ),
        )

    @staticmethod
    def _save_args(state: nnx.State, meta: dict[str, Any]) -> ocp.args.Composite:
        return ocp.args.Composite(
            state=ocp.args.StandardSave(to_arrays(state)), meta=ocp.args.JsonSave(meta)
        )

    def save_latest(self, step: int, state: nnx.State, meta: dict[str, Any]) -> None:
        """Save `state` as step `step`.

        A resumed run can reach a step that already has a checkpoint only when that one was
        unreadable (the resume skipped it): it is replaced.
        """
        if step in self.latest.all_steps():
            log.warning("replacing checkpoint %s", epath.Path(self.latest.directory) / str(step))
            self.latest.delete(step)
        self.latest.save(step, args=self._save_args(state, meta), force=True)

    def save_best(
        self, step: int, state: nnx.State, meta: dict[str, Any], metrics: dict[str, float]
    ) -> None:
        """Offer `state` as a best candidate; orbax keeps it only if `metrics` beat the kept one."""
        if step in self.best.all_steps():
            # Written before an interruption by the same deterministic run: already the same.
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        self.best.save(step, args=self._save_args(state, meta), metrics=metrics, force=True)

    @staticmethod
    def _restore(manager, step, like: nnx.State):
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(like)), meta=ocp.args.JsonRestore()
            ),
        )
        nnx.replace_by_pure_dict(like, restored["state"])
        return like, dict(restored["meta"])

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, like: nnx.State) -> tuple[nnx.State, dict[str, Any]]:
        """Restore the newest checkpoint that reads back whole, skipping damaged ones.

        Orbax only lists checkpoints whose save was finalised, so a save cut short by a crash is
        never offered; a finalised one that was damaged afterwards (truncated or deleted files)
        fails to restore and is skipped with a warning naming it.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint under {self.latest.directory}")
        for step in steps:
            try:
                return self._restore(self.latest, step, like)
            except Exception as err:  # noqa: BLE001 - any read failure means "damaged"
                log.warning(
                    "checkpoint %s is unreadable (%s: %s); falling back to an older one",
                    epath.Path(self.latest.directory) / str(step),
                    type(err).__name__,
                    err,
                )
        raise RuntimeError(
            f"every checkpoint under {self.latest.directory} is unreadable (steps {steps})"
        )

    def best_step(self) -> int | None:
        """The step of the best checkpoint (after every pending save), or None."""
        self.best.wait_until_finished()
        return self.best.best_step()

    def restore_best(self, like: nnx.State) -> tuple[nnx.State, dict[str, Any]]:
        step = self.best_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint under {self.best.directory}")
        log.info("restoring best checkpoint, step %d", step)
        return self._restore(self.best, step, like)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


# Checkpoints hold the state of the pair (model, optimizer): the model's arrays under "0".
MODEL_KEY = "0"


def restore_best_model(
    workdir: str | os.PathLike, like: nnx.State, *, best_metric: str, best_mode: str
) -> tuple[dict, dict[str, Any]]:
    """The model arrays of a run's best checkpoint, without reading its optimiser state.

    Args:
      workdir: the run's work directory (holding `best/`); nothing is written to it.
      like: the model's state less its RNG state (`nnx.split(model, nnx.RngState, ...)[2]`),
        as restore targets (shapes, dtypes, shardings).
      best_metric, best_mode: the run's `train.best_metric` / `train.best_mode`.

    Returns:
      The restored arrays (a pure dict for `nnx.replace_by_pure_dict(like, ...)`) and the
      checkpoint's metadata.

    Raises:
      FileNotFoundError: no best checkpoint under `workdir`.
    """
    directory = epath.Path(workdir) / "best"
    if not directory.is_dir():
        raise FileNotFoundError(f"no best checkpoint: {directory} does not exist")
    target = {MODEL_KEY: abstract_like(like)}
    options = ocp.CheckpointManagerOptions(
        read_only=True,
        create=False,
        save_interval_steps=0,
        max_to_keep=None,
        best_fn=lambda metrics: float(metrics[best_metric]),
        best_mode=best_mode,
    )
    with ocp.CheckpointManager(directory, options=options) as manager:
        step = manager.best_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint under {directory}")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                ),
                meta=ocp.args.JsonRestore(),
            ),
        )
    return restored["state"][MODEL_KEY], dict(restored["meta"])
