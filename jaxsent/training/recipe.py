"""A run's recipe: which config fields a resume may change, and the record of those changes.

A work directory's ``config.json`` is the config the run started with. Rerunning the same
command resumes it; rerunning with other values resumes only when every changed field is one
that does not change what a training step computes (`MAY_CHANGE`: logging, checkpoint and
validation intervals, the evaluation batch, extra evaluation sets, the mesh's shape, and a
longer run, `MAY_GROW`). Any other change (data, model, loss, optimiser and schedule,
dropout, dtype, micro-batches, mesh strategy, seed, ...) is refused in one line naming every
changed field, before anything is written. An accepted change is appended to
``config_changes.jsonl`` with the step it took effect at; ``config.json`` is never rewritten,
so the two together say what ran.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath

__all__ = [
    "CHANGES_FILE",
    "CONFIG_FILE",
    "LEGACY_DEFAULTS",
    "MAY_CHANGE",
    "MAY_GROW",
    "ResumeRefused",
    "flatten",
    "has_checkpoint",
    "record_changes",
    "resume_changes",
    "started_config",
]

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"

#: Fields a resumed run may set to other values: none changes what a step computes.
MAY_CHANGE = frozenset(
    {
        "train.log_every_steps",
        "train.checkpoint_every_steps",
        "train.max_checkpoints",
        "train.eval_every_steps",
        "train.eval_batch_size",
        "train.compile_ahead",
        "data.extra_evals",
        "data.data_dir",  # where the same data set is read from
        "mesh.data",  # the same program over another number of devices
        "mesh.model",
    }
)
#: Fields a resumed run may raise (a longer run), never lower. A longer run stretches the
#: learning-rate schedule over the new length from the step it resumes at.
MAY_GROW = frozenset({"train.num_steps", "train.num_epochs"})

#: What a run whose config.json predates a field ran with (fields added to configs/default.py
#: later); other absent fields are not compared.
LEGACY_DEFAULTS = {"model.remat": "none", "model.scan_layers": False, "train.micro_batch_size": 0}

_ABSENT = object()


class ResumeRefused(ValueError):
    """A rerun in a work directory whose run has another recipe; ``str()`` is one line."""


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """The config's leaves by dotted path, as JSON values (what ``config.json`` holds)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = json.loads(config.to_json_best_effort())

    def leaves(tree: Mapping[str, Any], prefix: str):
        for key, value in tree.items():
            if isinstance(value, Mapping):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(leaves(config, ""))


def started_config(workdir: epath.Path) -> dict[str, Any] | None:
    """The flat config the work directory's run has now: ``config.json`` and the accepted
    changes after it; None when there is no ``config.json``."""
    path = workdir / CONFIG_FILE
    if not path.exists():
        return None
    config = flatten(json.loads(path.read_text()))
    changes = workdir / CHANGES_FILE
    if changes.exists():
        for line in changes.read_text().splitlines():
            if line.strip():
                config.update({k: new for k, (_, new) in json.loads(line)["changes"].items()})
    return config


def has_checkpoint(workdir: epath.Path) -> bool:
    """Whether ``workdir/checkpoints`` holds a finished checkpoint (a step folder)."""
    folder = workdir / "checkpoints"
    return folder.exists() and any(p.name.isdigit() for p in folder.iterdir())


def _allowed(field: str, old: Any, new: Any) -> bool:
    if field in MAY_CHANGE:
        return True
    if field == "train.num_steps":  # 0 = num_epochs decides: a switch of mode is no growth
        return isinstance(old, int) and isinstance(new, int) and (old == new == 0 or new >= old > 0)
    if field in MAY_GROW:
        return isinstance(old, int) and isinstance(new, int) and new >= old
    return False


def resume_changes(
    started: Mapping[str, Any],
    config: ml_collections.ConfigDict,
    *,
    defaults: Mapping[str, Any] = LEGACY_DEFAULTS,
    workdir: str = "",
) -> dict[str, tuple[Any, Any]]:
    """The fields a resume changes, ``{field: (old, new)}``, when every one may change.

    Args:
      started: the run's flat config (`started_config`).
      config: the config of the rerun.
      defaults: the values of fields that a config written before they existed lacks; a field
        missing on either side without one is not compared.
      workdir: named in the refusal.

    Raises:
      ResumeRefused: a field changed that changes what a step computes (all such named).
    """
    new = flatten(config)
    changed = {}
    for field in sorted(set(started) | set(new)):
        old_value = started.get(field, defaults.get(field, _ABSENT))
        new_value = new.get(field, defaults.get(field, _ABSENT))
        if _ABSENT not in (old_value, new_value) and old_value != new_value:
            changed[field] = (old_value, new_value)
    refused = {f: v for f, v in changed.items() if not _allowed(f, *v)}
    if refused:
        shown = ", ".join(f"{f} ({old!r} -> {new!r})" for f, (old, new) in refused.items())
        raise ResumeRefused(
            f"cannot resume {workdir or 'the work directory'}: its run started with other "
            f"values of fields that change what a step computes: {shown}. Rerun with the run's "
            "values to resume it, or use a new --workdir (a resume may change only "
            f"{', '.join(sorted(MAY_CHANGE))}, and raise {', '.join(sorted(MAY_GROW))})"
        )
    return changed


def record_changes(workdir: epath.Path, step: int, changes: Mapping[str, tuple[Any, Any]]) -> None:
    """Appends one line to ``config_changes.jsonl``: the changes a resume at ``step`` made."""
    if not changes:
        return
    path = workdir / CHANGES_FILE
    text = path.read_text() if path.exists() else ""  # object stores cannot append
    row = {"step": int(step), "changes": {f: list(v) for f, v in changes.items()}}
    path.write_text(text + json.dumps(row) + "\n")
