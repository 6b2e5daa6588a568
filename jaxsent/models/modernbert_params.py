"""Hugging Face ModernBERT checkpoints <-> :class:`jaxsent.models.modernbert.ModernBertModel`.

One explicit table, :data:`PARAM_RULES`, read by :mod:`jaxsent.models.checkpoint` for import
and export. Keys may be bare (``ModernBertModel``) or carry the ``model.`` prefix of
``ModernBertForMaskedLM`` / ``ModernBertForSequenceClassification`` files (whose ``head.*``,
``decoder.*`` and ``classifier.*`` tensors are reported as unused). Layout changes: torch
``Linear`` ``[out, in]`` becomes ``[in, out]``, with ``Wqkv``'s output split into
``[3, heads, head_dim]`` and ``Wi``'s into ``[2, intermediate]`` (the order of HF's ``view``
and ``chunk``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsent.models import bert, checkpoint, modernbert
from jaxsent.models.checkpoint import (
    AS_IS,
    DENSE,
    HEADS_BIAS,
    HEADS_IN,
    HEADS_OUT,
    SAFETENSORS,
    KeyMap,
    LoadReport,
    ParamRule,
    read_safetensors,
    resolve,
)

__all__ = [
    "KEY_MAP",
    "PARAM_RULES",
    "build_encoder",
    "export_tensors",
    "load_encoder",
    "load_state",
    "save_encoder",
]

WRAPPER_PREFIX = "model."


def _norm(hf: str, ours: str) -> list[ParamRule]:
    return [
        ParamRule(f"{hf}.weight", f"{ours}/scale", AS_IS),
        ParamRule(f"{hf}.bias", f"{ours}/bias", AS_IS),
    ]


def _linear(hf: str, ours: str, kernel, bias) -> list[ParamRule]:
    return [
        ParamRule(f"{hf}.weight", f"{ours}/kernel", kernel),
        ParamRule(f"{hf}.bias", f"{ours}/bias", bias),
    ]


PARAM_RULES: tuple[ParamRule, ...] = (
    ParamRule("embeddings.tok_embeddings.weight", "embeddings/tok_embeddings/embedding", AS_IS),
    *_norm("embeddings.norm", "embeddings/norm"),
    *_norm("layers.{i}.attn_norm", "encoder/layers/{i}/attn_norm"),
    # [3*heads*head_dim, H] <-> [H, 3, heads, head_dim]; bias [3*H] <-> [3, heads, head_dim].
    *_linear("layers.{i}.attn.Wqkv", "encoder/layers/{i}/attn/Wqkv", HEADS_IN, HEADS_BIAS),
    *_linear("layers.{i}.attn.Wo", "encoder/layers/{i}/attn/Wo", HEADS_OUT, AS_IS),
    *_norm("layers.{i}.mlp_norm", "encoder/layers/{i}/mlp_norm"),
    # [2*I, H] <-> [H, 2, I] (input half first, then gate); bias [2*I] <-> [2, I].
    *_linear("layers.{i}.mlp.Wi", "encoder/layers/{i}/mlp/Wi", HEADS_IN, HEADS_BIAS),
    *_linear("layers.{i}.mlp.Wo", "encoder/layers/{i}/mlp/Wo", DENSE, AS_IS),
    *_norm("final_norm", "final_norm"),
)

KEY_MAP = KeyMap(rules=PARAM_RULES, prefix=WRAPPER_PREFIX)


def load_state(
    abstract_model: modernbert.ModernBertModel, tensors: Mapping[str, Any]
) -> tuple[nnx.State, LoadReport]:
    """:func:`jaxsent.models.checkpoint.load_state` with :data:`KEY_MAP`."""
    return checkpoint.load_state(abstract_model, tensors, KEY_MAP)


def load_encoder(
    name_or_path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    attention_impl: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> modernbert.ModernBertModel:
    """A :class:`ModernBertModel` from ``config.json`` + ``model.safetensors`` (see
    :func:`jaxsent.models.bert_params.load_encoder` for the rules and errors)."""
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
) -> modernbert.ModernBertModel:
    """The encoder of ``directory``'s ``config.json`` with parameters from ``tensors``."""
    raw = checkpoint.read_config_json(directory)
    config = modernbert.ModernBertConfig.from_hf(raw, **dict(config_overrides or {}))
    abstract = nnx.eval_shape(
        lambda: modernbert.ModernBertModel(
            config, dtype=dtype, attention_impl=attention_impl, rngs=nnx.Rngs(0)
        )
    )
    graphdef, _ = nnx.split(abstract)
    state, _ = load_state(abstract, tensors)
    return nnx.merge(graphdef, state)


def export_tensors(model: modernbert.ModernBertModel, *, prefix: str = "") -> dict[str, np.ndarray]:
    """Our parameters as HF ``ModernBertModel`` tensors (torch layout, float32)."""
    # A scan_layers encoder's stacked parameters are written per layer, as the format names them.
    return checkpoint.export_tensors(bert.unrolled(model), KEY_MAP, prefix=prefix)


def save_encoder(model: modernbert.ModernBertModel, directory: str | os.PathLike) -> None:
    """Writes ``config.json`` + ``model.safetensors`` that ``transformers.AutoModel`` loads."""
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(model.config.to_hf_dict(), f, indent=2, sort_keys=True)
    save_file(
        export_tensors(model), os.path.join(directory, SAFETENSORS), metadata={"format": "pt"}
    )
