"""One entry point for every encoder family: :func:`from_pretrained`.

The layering is one way: the model modules (``bert``) import nothing of the checkpoint layer
(``bert_params``), which imports them; this module sits above both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from jaxsent.models import bert, bert_params

__all__ = ["from_pretrained"]


def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    attention_impl: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> bert.BertModel:
    """Loads an encoder from a local folder, a short name or a hub id.

    See :func:`jaxsent.models.bert_params.load_encoder` for the resolution rules and errors.
    """
    return bert_params.load_encoder(
        name_or_path, dtype=dtype, attention_impl=attention_impl, config_overrides=config_overrides
    )
