"""Hugging Face BERT / RoBERTa checkpoints <-> :class:`jaxsent.models.bert.BertModel`.

One explicit table, :data:`PARAM_RULES`, maps every HF tensor name to one parameter path of
ours, with the layout change between them (torch ``Linear`` stores ``[out, in]``; we store
``[in, out]`` and split attention projections into ``[H, heads, head_dim]``). Import and
export both read the table (through :mod:`jaxsent.models.checkpoint`), so they cannot drift
apart. RoBERTa and XLM-RoBERTa name their tensors as BERT does.

Import rules: keys may carry the wrapper prefix (``bert.`` for ``BertFor*`` checkpoints,
``roberta.`` for ``RobertaFor*`` / ``XLMRobertaFor*``) or not; LayerNorm may be
``weight``/``bias`` or the old ``gamma``/``beta``; every shape is checked; *all* problems are
raised together in one :class:`CheckpointError`. The model is built abstractly with
``nnx.eval_shape``, so its parameters are materialised once, from the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsent.models import bert, checkpoint
from jaxsent.models.checkpoint import (
    AS_IS,
    DENSE,
    HEADS_BIAS,
    HEADS_IN,
    HEADS_OUT,
    SAFETENSORS,
    SHORT_NAMES,
    CheckpointError,
    KeyMap,
    Layout,
    LoadReport,
    ParamRule,
    read_safetensors,
    resolve,
)

__all__ = [
    "CheckpointError",
    "LoadReport",
    "PARAM_RULES",
    "SAFETENSORS",
    "SHORT_NAMES",
    "key_map",
    "resolve",
    "read_safetensors",
    "load_state",
    "load_encoder",
    "build_encoder",
    "export_tensors",
    "save_encoder",
]

# The wrapper prefix of each model type's *For* classes (transformers' base_model_prefix).
WRAPPER_PREFIX = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta."}


def _norm_rules(hf_prefix: str, ours_prefix: str) -> list[ParamRule]:
    return [
        ParamRule(f"{hf_prefix}.LayerNorm.weight", f"{ours_prefix}/scale", AS_IS),
        ParamRule(f"{hf_prefix}.LayerNorm.bias", f"{ours_prefix}/bias", AS_IS),
    ]


def _dense_rules(hf_prefix: str, ours_prefix: str, kernel: Layout, bias: Layout) -> list[ParamRule]:
    return [
        ParamRule(f"{hf_prefix}.weight", f"{ours_prefix}/kernel", kernel),
        ParamRule(f"{hf_prefix}.bias", f"{ours_prefix}/bias", bias),
    ]


_LAYER_HF = "encoder.layer.{i}"
_LAYER = "encoder/layers/{i}"

PARAM_RULES: tuple[ParamRule, ...] = (
    ParamRule("embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding", AS_IS),
    ParamRule(
        "embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding", AS_IS
    ),
    ParamRule(
        "embeddings.token_type_embeddings.weight",
        "embeddings/token_type_embeddings/embedding",
        AS_IS,
    ),
    *_norm_rules("embeddings", "embeddings/layer_norm"),
    *[
        rule
        for proj in ("query", "key", "value")
        for rule in _dense_rules(
            f"{_LAYER_HF}.attention.self.{proj}", f"{_LAYER}/attention/{proj}", HEADS_IN, HEADS_BIAS
        )
    ],
    *_dense_rules(
        f"{_LAYER_HF}.attention.output.dense", f"{_LAYER}/attention/out", HEADS_OUT, AS_IS
    ),
    *_norm_rules(f"{_LAYER_HF}.attention.output", f"{_LAYER}/attention_norm"),
    *_dense_rules(f"{_LAYER_HF}.intermediate.dense", f"{_LAYER}/intermediate", DENSE, AS_IS),
    *_dense_rules(f"{_LAYER_HF}.output.dense", f"{_LAYER}/output", DENSE, AS_IS),
    *_norm_rules(f"{_LAYER_HF}.output", f"{_LAYER}/output_norm"),
    *_dense_rules("pooler.dense", "pooler", DENSE, AS_IS),
)


def key_map(model_type: str = "bert") -> KeyMap:
    """The checkpoint naming of a BERT-family ``model_type`` (see :data:`WRAPPER_PREFIX`)."""
    if model_type not in WRAPPER_PREFIX:
        raise ValueError(f"model_type={model_type!r}; expected one of {sorted(WRAPPER_PREFIX)}")
    return KeyMap(
        rules=PARAM_RULES,
        prefix=WRAPPER_PREFIX[model_type],
        renames=(
            (r"\.LayerNorm\.gamma$", ".LayerNorm.weight"),
            (r"\.LayerNorm\.beta$", ".LayerNorm.bias"),
        ),
        buffers=r"^embeddings\.(position_ids|token_type_ids)$",
    )


def load_state(
    abstract_model: bert.BertModel, tensors: Mapping[str, Any]
) -> tuple[nnx.State, LoadReport]:
    """:func:`jaxsent.models.checkpoint.load_state` with the model's own :func:`key_map`."""
    return checkpoint.load_state(abstract_model, tensors, key_map(abstract_model.config.model_type))


def load_encoder(
    name_or_path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    attention_impl: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> bert.BertModel:
    """Builds a :class:`BertModel` from ``config.json`` + ``model.safetensors``.

    Args:
      name_or_path: see :func:`resolve`.
      dtype: compute dtype; parameters are float32 whatever the file stores.
      attention_impl: see :class:`BertModel`.
      config_overrides: :class:`BertConfig` fields to replace, e.g. dropout rates.
        ``use_pooler`` defaults to whether the file has ``pooler.*`` tensors.

    Returns:
      The encoder in eval mode, every parameter assigned from the file.

    Raises:
      FileNotFoundError: see :func:`resolve` and :func:`read_safetensors`.
      ValueError: a config that is not BERT, RoBERTa or XLM-RoBERTa (see
        :meth:`BertConfig.from_hf`).
      CheckpointError: see :func:`load_state`.
    """
    directory = resolve(name_or_path)
    return build_encoder(
        directory,
        read_safetensors(directory),
        dtype=dtype,
        attention_impl=attention_impl,
        config_overrides=config_overrides,
    )


def build_encoder(
    directory: str | os.PathLike,
    tensors: Mapping[str, Any],
    *,
    dtype=jnp.float32,
    attention_impl: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> bert.BertModel:
    """The encoder described by ``directory``'s ``config.json``, with parameters from ``tensors``.

    Args:
      directory: a local folder holding ``config.json``.
      tensors: checkpoint name -> array (e.g. from :func:`read_safetensors`), encoder tensors
        only: any other tensor is reported as unused.
      dtype, attention_impl, config_overrides: as in :func:`load_encoder`.

    Returns:
      The encoder in eval mode.
    """
    raw = checkpoint.read_config_json(directory)
    overrides = dict(config_overrides or {})
    model_type = raw.get("model_type")
    if "use_pooler" not in overrides and model_type in WRAPPER_PREFIX:
        names = key_map(model_type)
        overrides["use_pooler"] = any(names.canonical(k).startswith("pooler.") for k in tensors)
    config = bert.BertConfig.from_hf(raw, **overrides)  # a clear error for other model types
    abstract = nnx.eval_shape(
        lambda: bert.BertModel(config, dtype=dtype, attention_impl=attention_impl, rngs=nnx.Rngs(0))
    )
    graphdef, _ = nnx.split(abstract)
    state, _ = load_state(abstract, tensors)
    return nnx.merge(graphdef, state)


# --- export ----------------------------------------------------------------------------------


def export_tensors(model: bert.BertModel, *, prefix: str = "") -> dict[str, np.ndarray]:
    """Our parameters as HF ``BertModel`` / ``RobertaModel`` tensors (torch layout, float32).

    Args:
      model: the encoder.
      prefix: prepended to every key: ``""`` for a bare encoder file, ``"bert."`` for a
        ``BertForSequenceClassification`` one.

    Raises:
      CheckpointError: a parameter without an export rule.
    """
    # A scan_layers encoder's stacked parameters are written per layer, as the format names them.
    model = bert.unrolled(model)
    return checkpoint.export_tensors(model, key_map(model.config.model_type), prefix=prefix)


def save_encoder(model: bert.BertModel, directory: str | os.PathLike) -> None:
    """Writes ``config.json`` + ``model.safetensors`` that ``transformers.AutoModel`` loads."""
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(model.config.to_hf_dict(), f, indent=2, sort_keys=True)
    path = os.path.join(directory, SAFETENSORS)
    save_file(export_tensors(model), path, metadata={"format": "pt"})
