"""Every training-config field checked before any work starts: `check_config`.

A bad value raises `ConfigError`, whose message is one line naming the field, the value and what
is allowed::

    config.train.global_batch_size=-3: must be a positive multiple of the data axis (1)

The rules are a table, `FIELDS`: one per field of ``configs/default.py`` (type, range, allowed
names), then the `COMBINATIONS` of fields (mesh against the devices, ``mesh.model`` against the
attention heads, warmup against the steps, ...). Allowed names come from the modules that use
them (`jaxsent.losses`, `jaxsent.data`, `jaxsent.models`, `jaxsent.sharding`, the optimiser's
schedules), so a new name there is allowed here too. The checks are cheap: no data is read, no
model is loaded; the model's ``config.json`` is read when it is on this machine (a folder, a
short name, a hub cache entry).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import glob
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsent import losses, metrics, multiclass_metrics, sharding, storage
from jaxsent.data import preprocess
from jaxsent.data.sources import DATA_DIR_ENV, KNOWN_DATASETS
from jaxsent.models import POOLINGS, bert_params, loading
from jaxsent.models.architectures import ARCHITECTURES
from jaxsent.training.optim import SCHEDULES

__all__ = [
    "ConfigError",
    "check_config",
    "configured_classes",
    "is_ordinal",
    "metric_names",
    "parse_extra_evals",
    "parse_label_names",
    "FIELDS",
    "OPTIONAL_FIELDS",
]

COMPUTE_DTYPES = ("float32", "bfloat16")  # parameters stay float32 (configs/default.py)
BEST_MODES = ("max", "min")
REMAT_MODES = ("none", "full", "dots")
# The direction of the validation metrics a run can select on (mode checked against it).
HIGHER_IS_BETTER = frozenset(
    {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "auroc",
        "macro_f1",
        "macro_recall",
        "accuracy_within_one",
    }
)
LOWER_IS_BETTER = frozenset({"nll", "brier", "ece", "classwise_ece", "mae"})
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_MISSING = object()


class ConfigError(ValueError):
    """A config field with a value the run cannot use; ``str()`` is one line.

    Attributes:
      field: the dotted path under ``config`` (``"train.global_batch_size"``).
      value: the offending value.
      allowed: what the field accepts, in words.
    """

    def __init__(self, field: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        shown = "config" if not field else f"config.{field}"
        shown += "" if value is _MISSING else f"={value!r}"
        super().__init__(re.sub(r"\s*\n\s*", " ", f"{shown}: {allowed}"))


# --- what the rules see ------------------------------------------------------------------------


@dataclasses.dataclass
class _Context:
    """The config and the facts about this machine that rules compare it with."""

    config: ml_collections.ConfigDict
    num_devices: int
    process_count: int
    needs_weights: bool = True  # training loads the checkpoint; a plan needs shapes only

    def get(self, field: str, default: Any = None) -> Any:
        value = self.config
        for part in field.split("."):
            if not _is_group(value) or part not in value:
                return default
            value = value[part]
        return value

    @property
    def data_axis(self) -> int | None:
        """The size of the mesh's data axis, when the mesh fields allow one."""
        data, model = self.get("mesh.data"), self.get("mesh.model")
        if not (_is_int(data) and _is_int(model) and model >= 1):
            return None
        if data == -1:
            return self.num_devices // model if self.num_devices % model == 0 else None
        return data if data >= 1 else None

    @functools.cached_property
    def model_config(self) -> dict[str, Any] | None:
        """The model's ``config.json``, when it can be read without a download."""
        name = self.get("model.name")
        return _read_model_config(name) if isinstance(name, str) else None


Rule = Callable[[Any, _Context], "str | None"]  # None = fine, else what is allowed


def _is_group(value: Any) -> bool:
    return isinstance(value, (Mapping, ml_collections.ConfigDict))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(value)


_KINDS: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "number": _is_number,  # floats, ints given for floats; never bool, never inf or nan
    "bool": lambda v: isinstance(v, (bool, np.bool_)),
    "str": lambda v: isinstance(v, str),
}


def _rule(kind: str, allowed: str, test: Callable[[Any], bool] = lambda v: True) -> Rule:
    """A context-free rule: the value has `kind` and passes `test`, else `allowed` is said."""
    is_kind = _KINDS[kind]
    return lambda value, ctx: None if is_kind(value) and test(value) else allowed


def _one_of(names) -> Rule:
    names = tuple(names)
    allowed = "must be one of " + ", ".join(repr(n) for n in names)
    return lambda value, ctx: None if isinstance(value, str) and value in names else allowed


def _from_validator(validate: Callable[[Any], None], kind: str) -> Rule:
    """A rule that asks an existing validator; its message, less the argument name, is used."""

    def rule(value, ctx):
        if not _KINDS[kind](value):
            return "must be True or False" if kind == "bool" else "must be a finite number"
        try:
            validate(value)
        except (ValueError, TypeError) as err:
            return _reword(str(err))
        return None

    return rule


def _reword(message: str) -> str:
    """``"head_fraction must lie in [0, 1], got 2"`` -> ``"must lie in [0, 1]"``."""
    message = re.sub(r"^\w+(=\S+)? ", "", message)
    return re.sub(r"[,;] got .*$", "", message)


# --- names: data sets and models ---------------------------------------------------------------


def data_source_problem(name: str, *, data_dir: str = "") -> str | None:
    """Why `jaxsent.data.load_raw` cannot read `name`, or None; looks only at local files.

    A known name needs ``<data_dir or $JAXSENT_DATA_DIR>/<name>/*.parquet`` when a directory is
    set (the hub otherwise); any other name must be an existing file or folder (bucket URLs are
    taken on trust: looking would cost a request).
    """
    known = ", ".join(sorted(KNOWN_DATASETS))
    if not isinstance(name, str) or not name:
        return f"must be a known data set ({known}) or an existing file or folder"
    if name in KNOWN_DATASETS:
        root = data_dir or os.environ.get(DATA_DIR_ENV, "")
        if root and not storage.is_remote(root):
            if not glob.glob(os.path.join(root, name, "*.parquet")):
                where = "data.data_dir" if data_dir else f"${DATA_DIR_ENV}"
                return f"no {name}/*.parquet under {where}={root!r}"
        return None
    if storage.is_remote(name) or os.path.exists(name):
        return None
    return f"is neither a known data set ({known}) nor an existing file or folder"


def _data_name(value, ctx: _Context) -> str | None:
    data_dir = ctx.get("data.data_dir", "")
    return data_source_problem(value, data_dir=data_dir if isinstance(data_dir, str) else "")


def _data_dir(value, ctx: _Context) -> str | None:
    if not isinstance(value, str):
        return "must be a folder path or '' (then $JAXSENT_DATA_DIR, else the hub)"
    if value and not storage.is_remote(value) and not os.path.isdir(value):
        return "is not a folder"
    return None


def parse_label_names(spec: str) -> tuple[str, ...]:
    """``"very negative, negative,neutral"`` -> ``("very negative", "negative", "neutral")``;
    ``""`` -> ``()``."""
    return tuple(name.strip() for name in spec.split(",")) if spec.strip() else ()


def _label_names(value, ctx: _Context) -> str | None:
    allowed = "must be '' or two or more distinct class names, comma-separated"
    if not isinstance(value, str):
        return allowed
    names = parse_label_names(value)
    if not names:
        return None
    if len(names) < 2 or not all(names) or len({n.casefold() for n in names}) != len(names):
        return allowed
    num_labels = ctx.get("model.num_labels", 0)
    if _is_int(num_labels) and num_labels and num_labels != len(names):
        return f"names {len(names)} classes but model.num_labels={num_labels}"
    return None


def parse_extra_evals(spec: str) -> dict[str, tuple[str, str]]:
    """Parses `data.extra_evals`: ``"rotten_tomatoes:all,imdb"`` -> ``{key: (name, split)}``.

    Each comma-separated entry is a data set `load_raw` accepts and, after the last ``:``, one of
    its splits (``test`` when omitted); the key is ``name:split``.
    """
    entries = {}
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name, _, split = entry.rpartition(":")
        if not name or "/" in split:  # no split given ('imdb', 'gs://bucket/folder')
            name, split = entry, "test"
        if not split:
            raise ValueError(
                f"data.extra_evals entry {entry!r} must be 'name_or_path[:split]' (in {spec!r})"
            )
        if f"{name}:{split}" in entries:
            raise ValueError(f"data.extra_evals names {name}:{split} twice (in {spec!r})")
        entries[f"{name}:{split}"] = (name, split)
    return entries


def _extra_evals(value, ctx: _Context) -> str | None:
    if not isinstance(value, str):
        return "must be a string 'name_or_path[:split],...' ('' = none)"
    try:
        entries = parse_extra_evals(value)
    except ValueError as err:
        return re.sub(r"^data\.extra_evals | \(in .*\)$", "", str(err))
    data_dir = ctx.get("data.data_dir", "")
    for name, _ in entries.values():
        # Extra sets are read with data.data_dir only (no text/label columns).
        problem = data_source_problem(name, data_dir=data_dir if isinstance(data_dir, str) else "")
        if problem:
            return f"entry {name!r} {problem}"
    return None


def _read_model_config(name: str) -> dict[str, Any] | None:
    """``config.json`` of a model folder, short name, named architecture or cached hub id."""
    try:
        found = loading.read_model_config(name, download=False)
    except (OSError, ValueError):
        return None
    return None if found is None else found[0]


def _model_type_problem(raw: dict[str, Any] | None) -> str | None:
    if raw is None:
        return None
    try:
        loading.model_type_of(raw)
    except ValueError as err:
        return str(err)
    return None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _model_name(value, ctx: _Context) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a short name, a folder with config.json, or a Hugging Face hub id"
    if value in bert_params.SHORT_NAMES:
        try:
            bert_params.resolve(value)
        except (ModuleNotFoundError, FileNotFoundError) as err:
            return str(err)
        return None
    if os.path.isdir(value):
        if not os.path.isfile(os.path.join(value, "config.json")):
            return "is a folder without config.json"
        return _model_type_problem(ctx.model_config)
    if value in ARCHITECTURES:
        if not ctx.needs_weights:
            return None
        return (
            "is a named architecture: shapes without weights, for `python -m train.plan`; to "
            f"train it, name its checkpoint ({ARCHITECTURES[value][0]!r}) or a local folder"
        )
    looks_like_path = value.startswith(("/", ".", "~")) or value.count("/") > 1
    if looks_like_path or os.path.exists(value) or not _HUB_ID.match(value):
        return (
            f"is not a folder; expected a short name ({', '.join(bert_params.SHORT_NAMES)}), "
            "a folder with config.json, or a Hugging Face hub id (org/name)"
        )
    if _hub_offline() and ctx.model_config is None:
        return (
            "is not in the Hugging Face cache and HF_HUB_OFFLINE is set (short names: "
            f"{', '.join(bert_params.SHORT_NAMES)}; or a folder with config.json)"
        )
    return None


# --- metrics and batches -----------------------------------------------------------------------


def configured_classes(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """The class names a config implies before any data is read: ``data.label_names``, the
    known data set's (``sst5``), or ``model.num_labels`` unnamed ones; None when it names
    none (the training labels decide: binary, or the classes they hold).

    What a plan and the config check build the head for; a training run takes its classes from
    the data (`jaxsent.training.splits.run_classes`), which agrees wherever this names them.
    """
    from jaxsent.models.classifier import default_label_names

    names = parse_label_names(config.data.get("label_names", ""))
    known = KNOWN_DATASETS.get(config.data.get("name"))
    if not names and known is not None and known.label_names:
        names = known.label_names
    num_labels = config.model.get("num_labels", 0)
    if names and (not num_labels or num_labels == len(names)):
        return tuple(names)
    return default_label_names(num_labels) if num_labels else None


def is_ordinal(config: ml_collections.ConfigDict) -> bool:
    """``data.ordinal``, or a known data set of ordered classes (``sst5``)."""
    known = KNOWN_DATASETS.get(config.data.get("name"))
    return bool(config.data.get("ordinal", False)) or bool(known and known.ordinal)


@functools.cache
def metric_names(num_classes: int | None = 2, ordinal: bool = False) -> tuple[str, ...]:
    """The validation metrics the training loop writes (and can select the best step on).

    Args:
      num_classes: the run's classes; None when only the data will tell (the names of two and
        of more classes together).
      ordinal: ordered classes (the ordinal metrics, for more than two classes).
    """
    if num_classes is None:
        return tuple(sorted(set(metric_names(2)) | set(metric_names(3, ordinal))))
    if num_classes == 2:
        shapes = jax.eval_shape(
            metrics.binary_classification_metrics,
            jax.ShapeDtypeStruct((2,), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.int32),
        )
    else:
        shapes = jax.eval_shape(
            functools.partial(
                multiclass_metrics.multiclass_classification_metrics, ordinal=ordinal
            ),
            jax.ShapeDtypeStruct((2, num_classes), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.int32),
        )
    return tuple(sorted(k for k in shapes if k != "n_examples"))


def _best_metric(value, ctx: _Context) -> str | None:
    classes = configured_classes(ctx.config) if _is_group(ctx.get("data")) else None
    names = metric_names(None if classes is None else len(classes), is_ordinal(ctx.config))
    ok = isinstance(value, str) and value in names
    return None if ok else "must be one of " + ", ".join(repr(n) for n in names)


def _batch_size(value, ctx: _Context) -> str | None:
    """A positive multiple of the data axis and of the process count (each host its rows)."""
    divisors = []
    if ctx.data_axis is not None:
        divisors.append(f"the data axis ({ctx.data_axis})")
    if ctx.process_count > 1:
        divisors.append(f"the process count ({ctx.process_count})")
    allowed = (
        "must be a positive multiple of " + " and of ".join(divisors)
        if divisors
        else "must be a positive integer"
    )
    if not _is_int(value) or value < 1:
        return allowed
    if ctx.data_axis is not None and value % ctx.data_axis:
        return allowed
    return allowed if value % ctx.process_count else None


def _loss_hyperparameter(name: str) -> Rule:
    """A `config.loss` field checked by the losses' own validation (a loss taking it, bound).

    Its type is that of the field in the presets, which set every field.
    """
    kind = "bool" if isinstance(losses.LOSS_PRESETS["bce"].get(name), bool) else "number"
    return _from_validator(
        lambda value: losses.get_loss(
            next(n for n in losses.LOSS_NAMES if name in losses.loss_hyperparameters(n)),
            **{name: value},
        ),
        kind,
    )


def _loss_fields() -> dict[str, Rule]:
    names = sorted({h for n in losses.LOSS_NAMES for h in losses.loss_hyperparameters(n)})
    return {f"loss.{h}": _loss_hyperparameter(h) for h in names}


# --- the table ---------------------------------------------------------------------------------

_INT_GE0 = "must be an integer >= 0"
_INT_GE1 = "must be an integer >= 1"
_FRACTION_OR_COUNT = _rule(
    "number",
    "must be a fraction in (0, 1) or a whole count >= 1",
    lambda v: 0 < v < 1 or (v >= 1 and float(v).is_integer()),
)

#: Every field of configs/default.py and its rule (table order = check order).
FIELDS: dict[str, Rule] = {
    "seed": _rule("int", _INT_GE0, lambda v: v >= 0),
    "data.data_dir": _data_dir,  # before data.name, which is looked for in it
    "data.name": _data_name,
    "data.text_column": _rule("str", "must be a column name or '' (the data set's own)"),
    "data.label_column": _rule("str", "must be a column name or '' (the data set's own)"),
    "data.label_names": _label_names,
    "data.ordinal": _rule("bool", "must be True or False"),
    "data.train_split": _rule("str", "must be a split name", bool),
    "data.eval_split": _rule("str", "must be a split name", bool),
    "data.validation_size": _FRACTION_OR_COUNT,
    "data.validation_split": _rule("str", "must be a split name or '' (carved from train)"),
    "data.train_size": _rule("int", f"{_INT_GE0} (0 = every train example)", lambda v: v >= 0),
    "data.eval_size": _rule("int", f"{_INT_GE0} (0 = the whole eval split)", lambda v: v >= 0),
    "data.eval_sample_seed": _rule("int", _INT_GE0, lambda v: v >= 0),
    "data.eval_holdout": _FRACTION_OR_COUNT,
    "data.extra_evals": _extra_evals,
    "data.max_length": _rule("int", "must be an integer >= 2", lambda v: v >= 2),
    "data.truncation": _one_of(preprocess.TRUNCATION_MODES),
    "data.head_fraction": _from_validator(
        lambda v: preprocess.check_truncation(preprocess.TRUNCATION_MODES[0], v), "number"
    ),
    "data.num_buckets": _rule("int", _INT_GE1, lambda v: v >= 1),
    "data.clean_markup": _rule("bool", "must be True or False"),
    "data.on_bad_rows": _one_of(preprocess.ON_BAD_ROWS),
    "model.name": _model_name,
    "model.pooling": _one_of(POOLINGS),
    "model.num_labels": _rule(
        "int",
        "must be 0 (as many as the data's classes) or an integer >= 2",
        lambda v: v in (0,) or v >= 2,
    ),
    "model.dropout_rate": _rule("number", "must be a number in [0, 1)", lambda v: 0 <= v < 1),
    "model.dtype": _one_of(COMPUTE_DTYPES),
    "model.remat": _one_of(REMAT_MODES),
    "model.scan_layers": _rule("bool", "must be True or False"),
    "loss.name": _one_of(losses.LOSS_NAMES),
    **_loss_fields(),
    "optim.learning_rate": _rule("number", "must be a finite number > 0", lambda v: v > 0),
    "optim.schedule": _one_of(SCHEDULES),
    "optim.warmup_steps": _rule(
        "int", "must be -1 (use optim.warmup_fraction) or an integer >= 0", lambda v: v >= -1
    ),
    "optim.warmup_fraction": _rule("number", "must be a number in [0, 1]", lambda v: 0 <= v <= 1),
    "optim.weight_decay": _rule("number", "must be a finite number >= 0", lambda v: v >= 0),
    "optim.b1": _rule("number", "must be a number in [0, 1)", lambda v: 0 <= v < 1),
    "optim.b2": _rule("number", "must be a number in [0, 1)", lambda v: 0 <= v < 1),
    "optim.eps": _rule("number", "must be a finite number > 0", lambda v: v > 0),
    "optim.grad_clip_norm": _rule(
        "number", "must be a finite number >= 0 (0 = no clipping)", lambda v: v >= 0
    ),
    "optim.max_consecutive_nonfinite": _rule("int", _INT_GE1, lambda v: v >= 1),
    "train.global_batch_size": _batch_size,
    "train.eval_batch_size": _batch_size,
    "train.num_epochs": _rule("int", _INT_GE0, lambda v: v >= 0),
    "train.num_steps": _rule("int", f"{_INT_GE0} (0 = train.num_epochs)", lambda v: v >= 0),
    "train.compile_ahead": _rule("bool", "must be True or False"),
    "train.micro_batch_size": _rule(
        "int", f"{_INT_GE0} (0 = the whole batch at once)", lambda v: v >= 0
    ),
    "train.log_every_steps": _rule("int", _INT_GE1, lambda v: v >= 1),
    "train.eval_every_steps": _rule("int", f"{_INT_GE0} (0 = once per epoch)", lambda v: v >= 0),
    "train.checkpoint_every_steps": _rule("int", _INT_GE1, lambda v: v >= 1),
    "train.best_metric": _best_metric,
    "train.best_mode": _one_of(BEST_MODES),
    "train.max_checkpoints": _rule("int", _INT_GE1, lambda v: v >= 1),
    "mesh.data": _rule(
        "int",
        "must be -1 (every device the model axis leaves) or an integer >= 1",
        lambda v: v == -1 or v >= 1,
    ),
    "mesh.model": _rule("int", _INT_GE1, lambda v: v >= 1),
    "mesh.strategy": _one_of(sharding.SHARDING_RULES),
}

#: Fields a config may leave out: the loss's hyperparameters (the loss's defaults apply) and
#: fields that configs written before them lack.
OPTIONAL_FIELDS = frozenset(
    {
        "data.eval_holdout",
        "data.label_names",
        "data.ordinal",
        "data.validation_split",
        "model.num_labels",
        "model.remat",
        "model.scan_layers",
        "train.micro_batch_size",
        *(f for f in FIELDS if f.startswith("loss.") and f != "loss.name"),
    }
)


_GROUPS = frozenset(f.rpartition(".")[0] for f in FIELDS) - {""}


# --- combinations ------------------------------------------------------------------------------


def _mesh_devices(ctx: _Context) -> ConfigError | None:
    data, model = ctx.get("mesh.data"), ctx.get("mesh.model")
    n = ctx.num_devices
    if data == -1 and n % model:
        return ConfigError("mesh.model", model, f"must divide the number of devices ({n})")
    if data != -1 and data * model != n:
        return ConfigError(
            "mesh.data", data, f"times mesh.model ({model}) must equal the number of devices ({n})"
        )
    return None


def _model_config_fields(ctx: _Context) -> ConfigError | None:
    """The model's own config.json read as its family reads it (its fields checked there)."""
    raw = ctx.model_config
    if raw is None:
        return None
    try:
        loading.config_from_hf(raw)
    except (ValueError, TypeError) as err:
        return ConfigError("model.name", ctx.get("model.name"), f"has a config.json {err}")
    return None


def _mesh_heads(ctx: _Context) -> ConfigError | None:
    model, shape = ctx.get("mesh.model"), ctx.model_config
    heads = (shape or {}).get("num_attention_heads")
    if model > 1 and _is_int(heads) and heads % model:
        return ConfigError(
            "mesh.model", model, f"must divide the model's attention heads ({heads})"
        )
    return None


def _max_length_positions(ctx: _Context) -> ConfigError | None:
    max_length, raw = ctx.get("data.max_length"), ctx.model_config
    if raw is None:
        return None
    try:
        limit = loading.config_from_hf(raw).max_length
    except (ValueError, TypeError):  # an unreadable config: the model's own check names it
        return None
    if max_length > limit:
        return ConfigError(
            "data.max_length",
            max_length,
            f"must be <= the longest sequence the model reads ({limit}, from its "
            f"max_position_embeddings={raw.get('max_position_embeddings')})",
        )
    return None


def _epochs_or_steps(ctx: _Context) -> ConfigError | None:
    if ctx.get("train.num_steps") == 0 and ctx.get("train.num_epochs") < 1:
        return ConfigError(
            "train.num_epochs", ctx.get("train.num_epochs"), "must be >= 1 when train.num_steps=0"
        )
    return None


def _warmup_steps(ctx: _Context) -> ConfigError | None:
    """Warmup longer than the run, where the run's length is known before the data is."""
    warmup, steps = ctx.get("optim.warmup_steps"), ctx.get("train.num_steps")
    if warmup < 0:
        return None
    if steps:
        bound, what = steps, f"train.num_steps ({steps})"
    elif ctx.get("data.train_size"):
        per_epoch = math.ceil(ctx.get("data.train_size") / ctx.get("train.global_batch_size"))
        bound = per_epoch * ctx.get("train.num_epochs")
        what = f"the run's at most {bound} steps (data.train_size, batch size, epochs)"
    else:
        return None
    if warmup > bound:
        return ConfigError("optim.warmup_steps", warmup, f"must be <= {what}")
    return None


def _micro_batch_size(ctx: _Context) -> ConfigError | None:
    micro = ctx.get("train.micro_batch_size")
    if not micro:
        return None
    batch, loss = ctx.get("train.global_batch_size"), ctx.get("loss.name")
    if batch % micro:
        return ConfigError(
            "train.micro_batch_size",
            micro,
            f"must divide train.global_batch_size ({batch}), or be 0 (the whole batch)",
        )
    if ctx.data_axis is not None and micro % ctx.data_axis:
        return ConfigError(
            "train.micro_batch_size",
            micro,
            f"must be a multiple of the data axis ({ctx.data_axis}), or be 0 (the whole batch)",
        )
    if loss != "bce":
        return ConfigError(
            "train.micro_batch_size",
            micro,
            f"splits the batch, which only loss.name='bce' allows (loss.name={loss!r} "
            "normalises its weights over the whole batch); use 0",
        )
    return None


def _validation_split(ctx: _Context) -> ConfigError | None:
    split = ctx.get("data.validation_split", "")
    if split and split in (ctx.get("data.eval_split"), ctx.get("data.train_split")):
        return ConfigError(
            "data.validation_split",
            split,
            "must differ from data.train_split and data.eval_split (the evaluation split is "
            "touched once, for the final report)",
        )
    return None


def _best_mode(ctx: _Context) -> ConfigError | None:
    metric, mode = ctx.get("train.best_metric"), ctx.get("train.best_mode")
    better = "max" if metric in HIGHER_IS_BETTER else "min" if metric in LOWER_IS_BETTER else mode
    if mode != better:
        return ConfigError(
            "train.best_mode",
            mode,
            f"train.best_metric={metric!r} is {'higher' if better == 'max' else 'lower'}-is-"
            f"better, so the mode must be {better!r}",
        )
    return None


#: Checks between fields, run once every field has passed its own rule.
COMBINATIONS: tuple[Callable[[_Context], ConfigError | None], ...] = (
    _model_config_fields,
    _mesh_devices,
    _mesh_heads,
    _max_length_positions,
    _epochs_or_steps,
    _warmup_steps,
    _micro_batch_size,
    _validation_split,
    _best_mode,
)


# --- the check ---------------------------------------------------------------------------------


def _leaves(config, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        path = f"{prefix}{key}"
        if _is_group(value):
            yield from _leaves(value, f"{path}.")
        else:
            yield path, value


def _unknown_field(path: str, value: Any) -> ConfigError:
    close = difflib.get_close_matches(path, FIELDS, n=1, cutoff=0.6) or difflib.get_close_matches(
        path.rpartition(".")[2], {f.rpartition(".")[2]: f for f in FIELDS}, n=1, cutoff=0.6
    )
    if close and close[0] not in FIELDS:  # matched on the last part: back to the full path
        close = [f for f in FIELDS if f.rpartition(".")[2] == close[0]][:1]
    hint = f"; did you mean config.{close[0]}?" if close else ""
    return ConfigError(path, value, f"is not a field of the training config{hint}")


def check_config(
    config: ml_collections.ConfigDict,
    *,
    num_devices: int | None = None,
    needs_weights: bool = True,
    trace_steps: bool = True,
    devices: Sequence[Any] | None = None,
) -> None:
    """Checks every field of a training config before any work starts.

    Field by field (`FIELDS`), then the fields that must fit together (`COMBINATIONS`), and
    last the run itself: the model is built abstractly from its ``config.json`` (no weights)
    and the train and eval steps are traced on abstract batches of ``data.max_length`` tokens
    over the run's mesh (no data, nothing compiled), so that fields that each pass but do not
    work together fail here, in one line, instead of after the run has written anything.

    Args:
      config: a training config (``configs/default.py`` and the configs built on it).
      num_devices: the devices the run's mesh spans; default ``len(devices)`` or
        ``jax.device_count()``.
      needs_weights: the run loads the checkpoint (training); False for a plan, which may name
        an architecture alone (``bert-large``).
      trace_steps: trace the steps (skipped when the model's ``config.json`` is not on this
        machine: a hub id the run will download).
      devices: the devices to trace over (a plan's topology descriptions); default the first
        ``num_devices`` local devices (no trace when there are fewer).

    Raises:
      ConfigError: the first bad field, as one line ``config.<field>=<value>: <allowed>``:
        an unknown field (a misspelt one), a missing one, a value of the wrong type, out of
        range, not finite or not an allowed name, or fields that do not fit together (batch
        sizes against the mesh's data axis and the process count, the mesh against the
        devices, ``mesh.model`` against the model's attention heads, ...).
    """
    ctx = _Context(
        config,
        num_devices=(
            num_devices
            if num_devices is not None
            else len(devices)
            if devices is not None
            else jax.device_count()
        ),
        process_count=jax.process_count(),
        needs_weights=needs_weights,
    )
    for path, value in _leaves(config):
        if path in _GROUPS:
            raise ConfigError(path, value, "must be a group of fields")
        if path not in FIELDS:
            raise _unknown_field(path, value)
    for field, rule in FIELDS.items():
        value = ctx.get(field, _MISSING)
        if value is _MISSING:
            if field in OPTIONAL_FIELDS:
                continue
            group = field.rpartition(".")[0]
            if group and not _is_group(ctx.get(group)):
                raise ConfigError(group, ctx.get(group, _MISSING), "must be a group of fields")
            raise ConfigError(field, _MISSING, "is missing (configs/default.py sets every field)")
        if (allowed := rule(value, ctx)) is not None:
            raise ConfigError(field, value, allowed)
    for combination in COMBINATIONS:
        if (error := combination(ctx)) is not None:
            raise error
    if trace_steps and ctx.model_config is not None:
        if devices is None and ctx.num_devices <= jax.device_count():
            devices = jax.devices()[: ctx.num_devices]
        if devices is not None:
            mesh = sharding.make_mesh(
                data=config.mesh.data, model=config.mesh.model, devices=devices
            )
            _trace_steps(config, mesh)


_TRACED: set[tuple[str, tuple[int, ...], tuple[tuple[str, int], ...]]] = set()


def _trace_steps(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """Traces the run's train and eval steps on abstract arguments; one line if they fail.

    A config traced once in this process over the same mesh is not traced again.
    """
    key = (
        config.to_json_best_effort(sort_keys=True),
        tuple(d.id for d in mesh.devices.flat),
        tuple(mesh.shape.items()),
    )
    if key in _TRACED:
        return
    from jaxsent.training import build  # the trainer's own builder (it imports this module's peers)

    length = int(config.data.max_length)
    what = "model"
    try:
        steps, state_args, rng_args = build.abstract_steps(config, mesh)
        with jax.set_mesh(mesh):
            for what, fn, batch in (  # noqa: B007 - `what` names the failure below
                ("train step", steps.train_step_fn, config.train.global_batch_size),
                ("eval step", steps.eval_step_fn, config.train.eval_batch_size),
            ):
                fn.trace(state_args, rng_args, build.abstract_batch(int(batch), length, mesh))
    except Exception as err:  # noqa: BLE001 - any failure is this config's; --debug has the chain
        detail = " ".join(f"{type(err).__name__}: {err}".split())
        raise ConfigError(
            "",
            _MISSING,
            f"the run's {what} cannot be built from these fields (model.name="
            f"{config.model.name!r}, max_length {length}): {detail}",
        ) from err
    _TRACED.add(key)
