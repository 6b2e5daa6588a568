"""One entry point for every encoder family, chosen by ``config.json``'s ``model_type``.

Families: BERT (``bert``), RoBERTa (``roberta``, ``xlm-roberta``), both in
:mod:`jaxsent.models.bert`; ModernBERT (``modernbert``) in :mod:`jaxsent.models.modernbert`.
Every encoder takes the same call, ``encoder(input_ids, attention_mask=mask,
deterministic=True).last_hidden_state``.

The layering is one way: the model modules import nothing of the checkpoint layer
(``checkpoint``, ``bert_params``, ``modernbert_params``), which imports them; this module sits
above both, and the classifier above it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsent.models import bert, bert_params, checkpoint, modernbert, modernbert_params
from jaxsent.models.architectures import ARCHITECTURES, architecture_config

__all__ = [
    "ENCODER_TYPES",
    "Config",
    "Encoder",
    "SUPPORTED_MODEL_TYPES",
    "build_encoder",
    "config_from_hf",
    "export_tensors",
    "from_pretrained",
    "make_encoder",
    "model_type_of",
    "read_model_config",
    "save_encoder",
]

Config = bert.BertConfig | modernbert.ModernBertConfig
Encoder = bert.BertModel | modernbert.ModernBertModel
ENCODER_TYPES = (bert.BertModel, modernbert.ModernBertModel)

# model_type -> the params module that loads it.
_PARAMS = {
    **{model_type: bert_params for model_type in bert.MODEL_TYPES},
    modernbert.ModernBertConfig.model_type: modernbert_params,
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_PARAMS))


def model_type_of(raw_config: Mapping[str, Any], *, source: str = "config.json") -> str:
    """The supported ``model_type`` of a parsed ``config.json``.

    Raises:
      ValueError: a missing or unsupported model type; the message names the supported ones.
    """
    model_type = raw_config.get("model_type")
    if model_type not in _PARAMS:
        raise ValueError(
            f"{source}: model_type={model_type!r} (architectures="
            f"{raw_config.get('architectures')!r}) is not supported; jaxsent loads "
            f"model_type in {list(SUPPORTED_MODEL_TYPES)}"
        )
    return model_type


def read_model_config(
    name: str, *, download: bool = True
) -> tuple[dict[str, Any], str | None] | None:
    """The ``config.json`` a model name stands for, and the folder holding it.

    The one reader of a model's config for the trainer, the planner and the config check.

    Args:
      name: a named architecture (:data:`jaxsent.models.architectures.ARCHITECTURES`: shapes
        only, no folder), a local folder, a short name, or a hub id.
      download: fetch a hub id's ``config.json`` (only that file) when it is not in the hub
        cache; False reads the cache alone and returns None when it is not there.

    Returns:
      ``(raw_config, folder)``, ``folder`` None for a named architecture; None when
      ``download`` is False and nothing local holds the config.

    Raises:
      FileNotFoundError: a folder without ``config.json``, a path that is no folder, or (with
        ``download``) a hub id whose ``config.json`` cannot be fetched.
    """
    if name in ARCHITECTURES:
        return architecture_config(name), None
    if os.path.isdir(name) or name in bert_params.SHORT_NAMES:
        directory = checkpoint.resolve(name)
        return checkpoint.read_config_json(directory), directory
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_like_path:
        raise FileNotFoundError(f"model name {name!r} is not a folder")
    import huggingface_hub

    if download:
        try:
            path = huggingface_hub.hf_hub_download(name, "config.json")
        except Exception as err:  # offline, unknown repo, network: one message
            raise FileNotFoundError(
                f"{name!r} is neither a named architecture {sorted(ARCHITECTURES)}, a folder, "
                f"a short name {sorted(bert_params.SHORT_NAMES)} nor a hub id whose "
                f"config.json could be read: {type(err).__name__}: {err}"
            ) from err
    else:
        try:
            path = huggingface_hub.try_to_load_from_cache(name, "config.json")
        except ValueError:  # not a valid repo id
            return None
        if not isinstance(path, str):
            return None
    directory = os.path.dirname(path)
    return checkpoint.read_config_json(directory), directory


def config_from_hf(raw_config: Mapping[str, Any], **overrides: Any) -> Config:
    """The family config of a parsed ``config.json`` (see :func:`model_type_of`)."""
    if model_type_of(raw_config) == modernbert.ModernBertConfig.model_type:
        return modernbert.ModernBertConfig.from_hf(raw_config, **overrides)
    return bert.BertConfig.from_hf(raw_config, **overrides)


def make_encoder(config: Config, *, dtype=jnp.float32, rngs: nnx.Rngs, **kwargs: Any) -> Encoder:
    """A randomly initialised encoder of ``config``'s family (``kwargs`` go to its class)."""
    if isinstance(config, modernbert.ModernBertConfig):
        return modernbert.ModernBertModel(config, dtype=dtype, rngs=rngs, **kwargs)
    if isinstance(config, bert.BertConfig):
        return bert.BertModel(config, dtype=dtype, rngs=rngs, **kwargs)
    raise TypeError(f"config must be a BertConfig or ModernBertConfig, got {type(config)}")


def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    attention_impl: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> Encoder:
    """Loads an encoder from a local folder, a short name or a hub id.

    Args:
      name_or_path: a folder with ``config.json`` and safetensors weights, a short name
        (``"minilm-l6"``) or a hub id (see :func:`jaxsent.models.checkpoint.resolve`).
      dtype: compute dtype; parameters are float32 whatever the file stores.
      attention_impl: see :class:`jaxsent.models.bert.BertModel` and, for ModernBERT,
        :class:`jaxsent.models.modernbert.ModernBertModel` (its default differs).
      config_overrides: config fields to replace (e.g. dropout rates).

    Returns:
      A :class:`~jaxsent.models.bert.BertModel` (``bert``, ``roberta``, ``xlm-roberta``) or a
      :class:`~jaxsent.models.modernbert.ModernBertModel` (``modernbert``), in eval mode,
      every parameter assigned from the file.

    Raises:
      FileNotFoundError: no such folder, no safetensors weights (a pickled ``.bin`` is never
        read), or a hub id the hub cannot provide.
      ValueError: a ``model_type`` not in :data:`SUPPORTED_MODEL_TYPES`.
      CheckpointError: tensors that do not fit the config (all listed).
    """
    directory = checkpoint.resolve(name_or_path)
    model_type_of(checkpoint.read_config_json(directory), source=f"{directory}/config.json")
    return build_encoder(
        directory,
        checkpoint.read_safetensors(directory),
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
) -> Encoder:
    """The encoder of ``directory``'s ``config.json`` with parameters from ``tensors``."""
    raw = checkpoint.read_config_json(directory)
    params = _PARAMS[model_type_of(raw, source=os.path.join(directory, "config.json"))]
    return params.build_encoder(
        directory,
        tensors,
        dtype=dtype,
        attention_impl=attention_impl,
        config_overrides=config_overrides,
    )


def export_tensors(model: Encoder, *, prefix: str = "") -> dict[str, np.ndarray]:
    """The encoder's parameters as HF tensors of its family (torch layout, float32)."""
    return _PARAMS[model.config.model_type].export_tensors(model, prefix=prefix)


def save_encoder(model: Encoder, directory: str | os.PathLike) -> None:
    """Writes ``config.json`` + ``model.safetensors`` that ``transformers.AutoModel`` loads."""
    _PARAMS[model.config.model_type].save_encoder(model, directory)
