"""Sentiment classifier: BERT encoder + pooling + dropout + a one-logit head.

The head emits one logit per example (the losses are binary cross-entropy on logits).
``save_pretrained`` writes the encoder in the Hugging Face layout (``config.json`` +
``model.safetensors``, loadable by ``transformers.BertModel``) and the head in a separate
file, ``jaxsent_head.safetensors``: ``classifier.weight`` [1, D] and ``classifier.bias`` [1]
in torch ``Linear`` layout, with the pooling and dropout rate in the file's metadata. With
``pooling="cls"`` this is exactly HF's ``BertForSequenceClassification`` head (num_labels=1).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsent import storage
from jaxsent.models import bert, bert_params

__all__ = [
    "POOLINGS",
    "HEAD_FILE",
    "SentimentClassifier",
    "masked_mean",
    "pool",
    "load_tokenizer",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "cls_mean")
HEAD_FILE = "jaxsent_head.safetensors"


def masked_mean(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``hidden`` over real tokens only.

    Args:
      hidden: [B, L, H] token states.
      mask: [B, L], nonzero/True on real tokens.

    Returns:
      [B, H] float32; an example without real tokens gives zeros (not NaN).
    """
    real = (mask != 0)[..., None]
    total = jnp.sum(jnp.where(real, hidden.astype(jnp.float32), 0.0), axis=1)
    count = jnp.sum(real, axis=1, dtype=jnp.float32)
    return total / jnp.maximum(count, 1.0)


def pool(out: bert.BertOutput, mask: jax.Array, pooling: str) -> jax.Array:
    """Sentence features from encoder outputs.

    Args:
      out: encoder outputs.
      mask: [B, L] attention mask.
      pooling: ``"cls"`` (the tanh pooler over [CLS]; the raw [CLS] state if the encoder has
        no pooler), ``"mean"`` (masked mean) or ``"cls_mean"`` (both, concatenated).

    Returns:
      [B, H] float32, or [B, 2H] for ``"cls_mean"``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
    cls = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
    cls = cls.astype(jnp.float32)
    if pooling == "cls":
        return cls
    mean = masked_mean(out.last_hidden_state, mask)
    return mean if pooling == "mean" else jnp.concatenate([cls, mean], axis=-1)


class SentimentClassifier(nnx.Module):
    """Encoder + pooling + dropout + Linear(D, 1).

    Args:
      config: encoder architecture (a fresh random encoder is built unless ``encoder`` is given).
      pooling: one of :data:`POOLINGS`.
      dropout_rate: dropout on the pooled features (the encoder's own dropout follows its
        config, like HF).
      dtype: encoder compute dtype; pooling, head and logits are float32.
      rngs: ``params`` initialises the head (and a random encoder); ``dropout`` (or
        ``default``) feeds every dropout layer in train mode.
      encoder: an existing encoder (e.g. from :func:`bert.from_pretrained`) to wrap; its
        config must equal ``config``.

    The model starts in eval mode (dropout off); ``model.train()`` / ``model.eval()`` switch.
    """

    def __init__(
        self,
        config: bert.BertConfig,
        *,
        pooling: str = "cls",
        dropout_rate: float = 0.1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
        encoder: bert.BertModel | None = None,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
        if encoder is None:
            encoder = bert.BertModel(config, dtype=dtype, rngs=rngs)
        elif encoder.config != config:
            raise ValueError(f"encoder.config {encoder.config} does not match config {config}")
        if pooling != "mean" and not config.use_pooler:
            logger.warning("encoder has no pooler: pooling=%r uses the raw [CLS] state", pooling)
        self.config = config
        self.pooling = pooling
        self.encoder = encoder
        self.dropout = nnx.Dropout(dropout_rate, deterministic=True)
        features = config.hidden_size * (2 if pooling == "cls_mean" else 1)
        self.head = nnx.Linear(
            features,
            1,
            param_dtype=jnp.float32,
            kernel_init=nnx.initializers.normal(stddev=config.initializer_range),
            bias_init=nnx.initializers.zeros_init(),
            kernel_metadata={"out_sharding": ("embed", None), "eager_sharding": False},
            bias_metadata={"out_sharding": (None,), "eager_sharding": False},
            rngs=rngs,
        )
        self.rngs = rngs["dropout"].fork()

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Scores a batch.

        Args:
          input_ids: [B, L] int token ids.
          attention_mask: [B, L], nonzero/True on real tokens.
          token_type_ids: [B, L] segment ids or ``None`` (zeros).

        Returns:
          [B] float32 logits (positive class = larger logit).
        """
        out = self.encoder(input_ids, attention_mask, token_type_ids, rngs=self.rngs)
        features = self.dropout(pool(out, attention_mask, self.pooling), rngs=self.rngs)
        return self.head(features)[:, 0]

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        pooling: str | None = None,
        dropout_rate: float = 0.1,
        dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
        attention_impl: str | None = None,
        config_overrides: dict[str, Any] | None = None,
    ) -> SentimentClassifier:
        """Pretrained encoder + head: the saved head if the folder has one, else a fresh one.

        Args:
          name_or_path: folder, short name or hub id (see :func:`bert_params.resolve`).
          pooling: one of :data:`POOLINGS`; ``None`` takes the saved head's pooling, or
            ``"cls"`` when there is no saved head. A value contradicting a saved head raises.
          dropout_rate, dtype: as in the constructor.
          rngs: defaults to ``nnx.Rngs(params=0, dropout=1)``.
          attention_impl, config_overrides: as in :func:`bert.from_pretrained`.

        Returns:
          The classifier, in eval mode.
        """
        directory = bert_params.resolve(name_or_path)
        encoder = bert_params.load_encoder(
            directory, dtype=dtype, attention_impl=attention_impl, config_overrides=config_overrides
        )
        head = _read_head(directory)
        if head is not None:
            saved = head["pooling"]
            if pooling is not None and pooling != saved:
                raise ValueError(
                    f"pooling={pooling!r} contradicts the saved head in {directory!r} "
                    f"(pooling={saved!r})"
                )
            pooling = saved
        rngs = nnx.Rngs(params=0, dropout=1) if rngs is None else rngs
        model = cls(
            encoder.config,
            pooling=pooling or "cls",
            dropout_rate=dropout_rate,
            dtype=dtype,
            rngs=rngs,
            encoder=encoder,
        )
        if head is not None:
            kernel, bias = head["weight"].T, head["bias"]
            if kernel.shape != model.head.kernel.shape:
                raise bert_params.CheckpointError(
                    f"{HEAD_FILE}: classifier.weight has shape {head['weight'].shape}, "
                    f"expected {model.head.kernel.shape[::-1]}"
                )
            model.head.kernel.set_value(jnp.asarray(kernel, jnp.float32))
            model.head.bias.set_value(jnp.asarray(bias, jnp.float32))
        return model


def _read_head(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, HEAD_FILE)
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        missing = {"classifier.weight", "classifier.bias"} - set(f.keys())
        if missing or "pooling" not in meta:
            raise bert_params.CheckpointError(
                f"{path}: expected tensors classifier.weight/bias and 'pooling' metadata; "
                f"missing {sorted(missing) or ['pooling metadata']}"
            )
        return {
            "weight": f.get_tensor("classifier.weight"),
            "bias": f.get_tensor("classifier.bias"),
            "pooling": meta["pooling"],
        }


def save_pretrained(
    model: SentimentClassifier | bert.BertModel,
    directory: str | os.PathLike,
    *,
    tokenizer: Any = None,
) -> None:
    """Saves in the Hugging Face layout.

    Writes ``config.json`` + ``model.safetensors`` (loadable by
    ``transformers.BertModel.from_pretrained`` and by :func:`bert.from_pretrained`); for a
    classifier also :data:`HEAD_FILE` (read back by :meth:`SentimentClassifier.from_pretrained`);
    with ``tokenizer`` also its files.

    Args:
      model: a classifier or a bare encoder.
      directory: created if missing; existing files of the same names are overwritten. A bucket
        URL (``gs://...``) gets the files written to a local temporary folder, then copied.
      tokenizer: optional HF tokenizer to save alongside.
    """
    from safetensors.numpy import save_file

    if storage.is_remote(directory):
        remote = storage.as_path(directory)
        with tempfile.TemporaryDirectory(prefix="jaxsent-export-") as staging:
            save_pretrained(model, staging, tokenizer=tokenizer)
            for folder, _, names in os.walk(staging):
                for name in sorted(names):
                    local = os.path.join(folder, name)
                    with open(local, "rb") as f:
                        (remote / os.path.relpath(local, staging)).write_bytes(f.read())
        return

    if isinstance(model, SentimentClassifier):
        encoder = model.encoder
    elif isinstance(model, bert.BertModel):
        encoder = model
    else:
        raise TypeError(f"model must be a SentimentClassifier or BertModel, got {type(model)}")
    directory = os.fspath(directory)
    bert_params.save_encoder(encoder, directory)
    if isinstance(model, SentimentClassifier):
        tensors = {
            "classifier.weight": np.ascontiguousarray(
                np.asarray(jax.device_get(model.head.kernel.get_value()), np.float32).T
            ),
            "classifier.bias": np.asarray(jax.device_get(model.head.bias.get_value()), np.float32),
        }
        meta = {"pooling": model.pooling, "dropout_rate": str(model.dropout.rate)}
        save_file(tensors, os.path.join(directory, HEAD_FILE), metadata=meta)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def load_tokenizer(name_or_path: str | os.PathLike):
    """The fast ``transformers.AutoTokenizer`` for a folder, short name or hub id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_params.resolve(name_or_path), use_fast=True)
    if not tokenizer.is_fast:
        raise ValueError(f"no fast tokenizer (tokenizer.json) for {os.fspath(name_or_path)!r}")
    return tokenizer
