"""Named architectures: the ``config.json`` of well-known checkpoints, without their weights.

A plan (``python -m train.plan``) or a random-init test needs only the architecture, so a user can
plan BERT-large on a laptop without downloading it. Each entry is the hub config's shape-relevant
fields, copied from the checkpoint's published ``config.json`` (named in the comment).
"""

from __future__ import annotations

from typing import Any

# name -> (hub id it describes, config.json fields that shape the model)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    # google-bert/bert-base-uncased config.json
    "bert-base": (
        "google-bert/bert-base-uncased",
        dict(
            model_type="bert",
            vocab_size=30522,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            hidden_act="gelu",
            max_position_embeddings=512,
            type_vocab_size=2,
            layer_norm_eps=1e-12,
            pad_token_id=0,
        ),
    ),
    # google-bert/bert-large-uncased config.json
    "bert-large": (
        "google-bert/bert-large-uncased",
        dict(
            model_type="bert",
            vocab_size=30522,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            hidden_act="gelu",
            max_position_embeddings=512,
            type_vocab_size=2,
            layer_norm_eps=1e-12,
            pad_token_id=0,
        ),
    ),
}


def architecture_config(name: str) -> dict[str, Any]:
    """The ``config.json`` dict of the named architecture (a copy).

    Raises:
      KeyError: ``name`` is not in :data:`ARCHITECTURES`; the message lists the names.
    """
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return dict(ARCHITECTURES[name][1])
