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
    # answerdotai/ModernBERT-base config.json
    "modernbert-base": (
        "answerdotai/ModernBERT-base",
        dict(
            model_type="modernbert",
            vocab_size=50368,
            hidden_size=768,
            intermediate_size=1152,
            num_hidden_layers=22,
            num_attention_heads=12,
            hidden_activation="gelu",
            max_position_embeddings=8192,
            global_attn_every_n_layers=3,
            local_attention=128,
            global_rope_theta=160000.0,
            local_rope_theta=10000.0,
            norm_eps=1e-05,
            norm_bias=False,
            attention_bias=False,
            mlp_bias=False,
            pad_token_id=50283,
            bos_token_id=50281,
            eos_token_id=50282,
            cls_token_id=50281,
            sep_token_id=50282,
        ),
    ),
    # answerdotai/ModernBERT-large config.json
    "modernbert-large": (
        "answerdotai/ModernBERT-large",
        dict(
            model_type="modernbert",
            vocab_size=50368,
            hidden_size=1024,
            intermediate_size=2624,
            num_hidden_layers=28,
            num_attention_heads=16,
            hidden_activation="gelu",
            max_position_embeddings=8192,
            global_attn_every_n_layers=3,
            local_attention=128,
            global_rope_theta=160000.0,
            local_rope_theta=10000.0,
            norm_eps=1e-05,
            norm_bias=False,
            attention_bias=False,
            mlp_bias=False,
            pad_token_id=50283,
            bos_token_id=50281,
            eos_token_id=50282,
            cls_token_id=50281,
            sep_token_id=50282,
        ),
    ),
    # FacebookAI/roberta-base config.json
    "roberta-base": (
        "FacebookAI/roberta-base",
        dict(
            model_type="roberta",
            vocab_size=50265,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            hidden_act="gelu",
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-05,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
    ),
    # FacebookAI/roberta-large config.json
    "roberta-large": (
        "FacebookAI/roberta-large",
        dict(
            model_type="roberta",
            vocab_size=50265,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            hidden_act="gelu",
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-05,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
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
