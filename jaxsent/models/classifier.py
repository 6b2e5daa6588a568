"""Sentiment classifier: an encoder (BERT, RoBERTa, ModernBERT) + pooling + dropout + a head.

A two-class model's head emits one logit per example (the binary losses are sigmoid
cross-entropy on logits); a K-class model's (K > 2) emits K (softmax cross-entropy). A K-class
folder's ``config.json`` carries ``num_labels = K`` and the class names as ``id2label`` /
``label2id``; with ``pooling="cls"`` on a BERT encoder with a pooler it is exactly HF's
``BertForSequenceClassification`` with ``num_labels=K``.
``save_pretrained`` writes a Hugging Face folder: ``config.json`` + ``model.safetensors`` with
the encoder and the head, and :data:`METADATA_FILE` (``jaxsent.json``: pooling, dropout rate,
compute dtype, and whatever the caller adds). With ``pooling="cls"`` on an encoder with a
pooler, the folder is exactly HF's ``BertForSequenceClassification`` with ``num_labels=1``
(keys ``bert.*`` and ``classifier.weight`` [1, D] / ``classifier.bias`` [1]), so
``transformers`` loads it and computes the same logits. Any other pooling is not what
``BertForSequenceClassification`` computes: the encoder keys stay bare (``BertModel``) and the
head is stored as ``jaxsent_head.weight`` / ``jaxsent_head.bias``, so that a PyTorch user who
loads it as a sequence classifier is warned of a missing head instead of getting wrong logits.
Folders of the earlier layout (head in ``jaxsent_head.safetensors``) still load.

RoBERTa and ModernBERT have no ``transformers`` classifier that computes what ours does (theirs
put a dense layer before the output), so their folders always take the second layout: the bare
encoder (``RobertaModel`` / ``ModernBertModel``, which ``transformers.AutoModel`` loads) and
``jaxsent_head.*``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsent import storage
from jaxsent.models import checkpoint, loading

__all__ = [
    "POOLINGS",
    "HEAD_FILE",
    "METADATA_FILE",
    "SentimentClassifier",
    "masked_mean",
    "pool",
    "default_label_names",
    "load_tokenizer",
    "num_logits",
    "read_metadata",
    "save_pretrained",
    "uses_hf_head",
]

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "cls_mean")
HEAD_FILE = "jaxsent_head.safetensors"  # the earlier layout's head file, still read
METADATA_FILE = "jaxsent.json"
HF_HEAD = "classifier"  # BertForSequenceClassification's head: pooling="cls" with a pooler
JAXSENT_HEAD = "jaxsent_head"  # every other pooling
DEFAULT_DROPOUT_RATE = 0.1


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


def pool(out: Any, mask: jax.Array, pooling: str) -> jax.Array:
    """Sentence features from encoder outputs.

    Args:
      out: encoder outputs (``last_hidden_state``, ``pooler_output`` or None).
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
    """Encoder + pooling + dropout + Linear(D, 1) (two classes) or Linear(D, K) (K > 2).

    Args:
      config: encoder architecture, a ``BertConfig`` or ``ModernBertConfig`` (a fresh random
        encoder of its family is built unless ``encoder`` is given).
      pooling: one of :data:`POOLINGS`.
      dropout_rate: dropout on the pooled features (the encoder's own dropout follows its
        config, like HF).
      dtype: encoder compute dtype; pooling, head and logits are float32.
      rngs: ``params`` initialises the head (and a random encoder); ``dropout`` (or
        ``default``) feeds every dropout layer in train mode.
      encoder: an existing encoder (e.g. from :func:`jaxsent.models.from_pretrained`) to wrap; its
        config must equal ``config``.
      num_labels: the classes, >= 2: two get one logit (the positive class's), K > 2 get K.
      label_names: the classes' names in class-id order (exported as ``id2label``); default
        ``negative``, ``positive`` for two classes, ``"0"`` .. ``"K-1"`` otherwise.

    The model starts in eval mode (dropout off); ``model.train()`` / ``model.eval()`` switch.
    """

    def __init__(
        self,
        config: loading.Config,
        *,
        pooling: str = "cls",
        dropout_rate: float = 0.1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
        encoder: loading.Encoder | None = None,
        num_labels: int = 2,
        label_names: tuple[str, ...] | None = None,
    ):
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2:
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        label_names = default_label_names(num_labels) if label_names is None else label_names
        if len(label_names) != num_labels:
            raise ValueError(
                f"label_names {list(label_names)} must name num_labels={num_labels} classes"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
        if encoder is None:
            encoder = loading.make_encoder(config, dtype=dtype, rngs=rngs)
        elif encoder.config != config:
            raise ValueError(f"encoder.config {encoder.config} does not match config {config}")
        if pooling != "mean" and not config.use_pooler:
            logger.warning("encoder has no pooler: pooling=%r uses the raw [CLS] state", pooling)
        self.config = config
        self.pooling = pooling
        self.num_labels = num_labels
        self.label_names = tuple(str(n) for n in label_names)
        self.encoder = encoder
        self.dropout = nnx.Dropout(dropout_rate, deterministic=True)
        features = config.hidden_size * (2 if pooling == "cls_mean" else 1)
        self.head = nnx.Linear(
            features,
            num_logits(num_labels),
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
          float32 logits: [B] with two classes (positive class = larger logit), [B, K] with
          K > 2.
        """
        out = self.encoder(input_ids, attention_mask, token_type_ids, rngs=self.rngs)
        features = self.dropout(pool(out, attention_mask, self.pooling), rngs=self.rngs)
        logits = self.head(features)
        return logits[:, 0] if self.num_labels == 2 else logits

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        pooling: str | None = None,
        dropout_rate: float | None = None,
        dtype=None,
        rngs: nnx.Rngs | None = None,
        attention_impl: str | None = None,
        config_overrides: dict[str, Any] | None = None,
        num_labels: int | None = None,
        label_names: tuple[str, ...] | None = None,
        replace_mismatched_head: bool = False,
    ) -> SentimentClassifier:
        """Pretrained encoder + head: the saved head if the folder has one, else a fresh one.

        A folder written by :func:`save_pretrained` gives back the model that was saved (same
        parameters, pooling, dropout rate, compute dtype and classes). A ``transformers``
        ``BertForSequenceClassification`` folder with ``num_labels=1`` loads with
        ``pooling="cls"`` as a two-class model, one with ``num_labels = K > 2`` as a K-class
        model (class names from its ``id2label``); one with two labels (two softmax logits)
        gets a fresh one-logit head (with a warning).

        Args:
          name_or_path: folder, short name or hub id (see :func:`checkpoint.resolve`); its
          ``config.json``'s ``model_type`` chooses the encoder family.
          pooling: one of :data:`POOLINGS`; ``None`` takes the saved head's pooling, or
            ``"cls"`` when there is no saved head. A value contradicting a head saved by
            jaxsent raises; one contradicting a ``transformers`` head gets a fresh head.
          dropout_rate: ``None`` takes the saved one, else 0.1.
          dtype: encoder compute dtype; ``None`` takes the saved one, else float32.
          rngs: defaults to ``nnx.Rngs(params=0, dropout=1)``.
          attention_impl, config_overrides: as in :func:`jaxsent.models.from_pretrained`.
          num_labels: the classes; ``None`` takes the saved head's, else 2. A value
            contradicting a head saved by jaxsent raises; one contradicting a ``transformers``
            head gets a fresh head.
          label_names: the classes' names; None keeps a saved head's own.
          replace_mismatched_head: a head saved by jaxsent for another number of classes gets a
            fresh head (with a warning) instead of raising: fine-tuning a trained model for
            another task.

        Returns:
          The classifier, in eval mode.

        Raises:
          CheckpointError: a head that does not fit (shape, missing tensor or pooling).
        """
        directory = checkpoint.resolve(name_or_path)
        model_type = loading.model_type_of(
            checkpoint.read_config_json(directory), source=os.path.join(directory, "config.json")
        )
        meta = read_metadata(directory)
        tensors = checkpoint.read_safetensors(directory)
        head = _pop_head(tensors, meta, directory, hf_head=model_type == "bert")
        if head is None and not meta:
            head = _read_head_file(directory)
        encoder = loading.build_encoder(
            directory,
            tensors,
            dtype=jnp.dtype(dtype or meta.get("dtype", "float32")),
            attention_impl=attention_impl,
            config_overrides=config_overrides,
        )
        if head is not None and pooling is not None and pooling != head["pooling"]:
            if meta:
                raise ValueError(
                    f"pooling={pooling!r} contradicts the saved head in {directory!r} "
                    f"(pooling={head['pooling']!r})"
                )
            # A transformers classifier used as the start of a differently pooled one.
            logger.warning(
                "%s: its head reads pooling='cls'; pooling=%r gets a fresh head",
                head["source"],
                pooling,
            )
            head = None
        if head is not None and num_labels is not None and num_labels != head["num_labels"]:
            if meta and not replace_mismatched_head:
                raise ValueError(
                    f"num_labels={num_labels} contradicts the saved head in {directory!r} "
                    f"({head['num_labels']} classes: {list(head['label_names'])})"
                )
            logger.warning(
                "%s: its head has %d classes; num_labels=%d gets a fresh head",
                head["source"],
                head["num_labels"],
                num_labels,
            )
            head = None
        if head is not None:
            pooling = head["pooling"]
            num_labels, label_names = head["num_labels"], label_names or head["label_names"]
        num_labels = 2 if num_labels is None else num_labels
        if dropout_rate is None:
            dropout_rate = float(meta.get("dropout_rate", DEFAULT_DROPOUT_RATE))
        rngs = nnx.Rngs(params=0, dropout=1) if rngs is None else rngs
        model = cls(
            encoder.config,
            pooling=pooling or "cls",
            dropout_rate=dropout_rate,
            dtype=encoder.dtype,
            rngs=rngs,
            encoder=encoder,
            num_labels=num_labels,
            label_names=label_names,
        )
        if head is not None:
            kernel, bias = head["weight"].T, head["bias"]
            if kernel.shape != model.head.kernel.shape or bias.shape != model.head.bias.shape:
                raise checkpoint.CheckpointError(
                    f"{head['source']}: head weight {head['weight'].shape} and bias "
                    f"{bias.shape} do not fit pooling={pooling!r}, which needs "
                    f"{model.head.kernel.shape[::-1]} and {model.head.bias.shape}"
                )
            model.head.kernel.set_value(jnp.asarray(kernel, jnp.float32))
            model.head.bias.set_value(jnp.asarray(bias, jnp.float32))
        return model


def num_logits(num_labels: int) -> int:
    """The head's outputs for ``num_labels`` classes: one for two, else one per class."""
    return 1 if num_labels == 2 else num_labels


def default_label_names(num_labels: int) -> tuple[str, ...]:
    """``("negative", "positive")`` for two classes, ``("0", ..., "K-1")`` otherwise."""
    return ("negative", "positive") if num_labels == 2 else tuple(map(str, range(num_labels)))


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The folder's :data:`METADATA_FILE` as a dict (empty when the folder has none)."""
    path = os.path.join(os.fspath(directory), METADATA_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict):
        raise checkpoint.CheckpointError(f"{path}: expected a JSON object, got {meta!r}")
    return meta


def _pop_head(
    tensors: dict[str, np.ndarray], meta: dict[str, Any], directory: str, *, hf_head: bool
) -> dict[str, Any] | None:
    """Removes the head tensors from ``tensors`` and returns the head, or None if there is none.

    ``classifier.*`` without jaxsent metadata is a ``transformers`` head: with ``hf_head``
    (BERT, whose classifier reads the pooler output) kept as a ``pooling="cls"`` head when it
    has one logit, left out (a fresh head follows) otherwise; without (ModernBERT, whose
    classifier reads its own dense + norm head) always left out.
    """
    source = os.path.join(directory, checkpoint.SAFETENSORS)
    found = {}
    for name in (HF_HEAD, JAXSENT_HEAD):
        keys = {f"{name}.weight", f"{name}.bias"} & set(tensors)
        if keys:
            found[name] = {key.rsplit(".", 1)[1]: tensors.pop(key) for key in sorted(keys)}
    if not found:
        if meta.get("head") is not None:
            raise checkpoint.CheckpointError(
                f"{source}: {METADATA_FILE} names head {meta['head']!r} but the file has no "
                f"{meta['head']}.weight / {meta['head']}.bias"
            )
        return None
    if len(found) > 1:
        raise checkpoint.CheckpointError(
            f"{source}: holds two heads, {HF_HEAD}.* and {JAXSENT_HEAD}.*; expected one"
        )
    ((name, head),) = found.items()
    missing = sorted({"weight", "bias"} - set(head))
    if missing:
        raise checkpoint.CheckpointError(f"{source}: {name}.{missing[0]} is missing")
    if not meta:
        if name == HF_HEAD and not hf_head:
            logger.warning(
                "%s: its %s.* follows a transformers head that jaxsent does not build; "
                "a fresh one-logit head is built instead",
                source,
                name,
            )
            return None
        if name == JAXSENT_HEAD:
            raise checkpoint.CheckpointError(
                f"{source}: has a {JAXSENT_HEAD} but no {METADATA_FILE} saying its pooling"
            )
        outputs = head["weight"].shape[0]
        if outputs == 2:
            logger.warning(
                "%s: %s.weight has shape %s (2 labels: two softmax logits); a one-logit head "
                "is built fresh instead",
                source,
                name,
                head["weight"].shape,
            )
            return None
        classes = 2 if outputs == 1 else outputs
        names = _hf_label_names(directory, classes)
        return {**head, "pooling": "cls", "source": source, **names}
    if "pooling" not in meta:
        raise checkpoint.CheckpointError(
            f"{os.path.join(directory, METADATA_FILE)}: no 'pooling' for the saved head"
        )
    outputs = head["weight"].shape[0]
    classes = int(meta.get("num_labels", 2 if outputs == 1 else outputs))
    names = tuple(meta.get("label_names") or default_label_names(classes))
    return {
        **head,
        "pooling": meta["pooling"],
        "source": source,
        "num_labels": classes,
        "label_names": names,
    }


def _hf_label_names(directory: str, num_labels: int) -> dict[str, Any]:
    """``num_labels`` and the class names of a transformers head (its ``id2label``, when it
    names every class; else the defaults)."""
    names = default_label_names(num_labels)
    if num_labels > 2:
        id2label = checkpoint.read_config_json(directory).get("id2label") or {}
        try:
            found = tuple(str(id2label[str(i)]) for i in range(num_labels))
        except KeyError:
            found = ()
        if found and len(set(found)) == num_labels:
            names = found
    return {"num_labels": num_labels, "label_names": names}


def _read_head_file(directory: str) -> dict[str, Any] | None:
    """The head of a folder in the earlier layout (:data:`HEAD_FILE`), or None."""
    path = os.path.join(directory, HEAD_FILE)
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        missing = {"classifier.weight", "classifier.bias"} - set(f.keys())
        if missing or "pooling" not in meta:
            raise checkpoint.CheckpointError(
                f"{path}: expected tensors classifier.weight/bias and 'pooling' metadata; "
                f"missing {sorted(missing) or ['pooling metadata']}"
            )
        return {
            "weight": f.get_tensor("classifier.weight"),
            "bias": f.get_tensor("classifier.bias"),
            "pooling": meta["pooling"],
            "source": path,
            "num_labels": 2,
            "label_names": default_label_names(2),
        }


def uses_hf_head(model: SentimentClassifier) -> bool:
    """Whether ``model`` computes exactly ``transformers.BertForSequenceClassification``."""
    return model.pooling == "cls" and model.config.use_pooler and model.config.model_type == "bert"


def save_pretrained(
    model: SentimentClassifier | loading.Encoder,
    directory: str | os.PathLike,
    *,
    tokenizer: Any = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Saves in the Hugging Face layout (see the module docstring).

    Writes ``config.json`` + ``model.safetensors``: for a bare encoder, what
    ``transformers.AutoModel`` loads; for a classifier, the encoder and the head (a
    ``BertForSequenceClassification`` with ``num_labels=1`` when :func:`uses_hf_head`) and
    :data:`METADATA_FILE`, read back by :meth:`SentimentClassifier.from_pretrained`. With
    ``tokenizer``, also its files.

    Args:
      model: a classifier or a bare encoder.
      directory: created if missing; existing files of the same names are overwritten. A bucket
        URL (``gs://...``) gets the files written to a local temporary folder, then copied.
      tokenizer: optional HF tokenizer to save alongside.
      metadata: JSON-serialisable entries added to a classifier's :data:`METADATA_FILE`
        (e.g. how the model was trained to read text).
    """
    from safetensors.numpy import save_file

    if storage.is_remote(directory):
        remote = storage.as_path(directory)
        with tempfile.TemporaryDirectory(prefix="jaxsent-export-") as staging:
            save_pretrained(model, staging, tokenizer=tokenizer, metadata=metadata)
            for folder, _, names in os.walk(staging):
                for name in sorted(names):
                    local = os.path.join(folder, name)
                    with open(local, "rb") as f:
                        (remote / os.path.relpath(local, staging)).write_bytes(f.read())
        return

    directory = os.fspath(directory)
    if isinstance(model, loading.ENCODER_TYPES):
        if metadata:
            raise ValueError("metadata is saved with a classifier only, not a bare encoder")
        loading.save_encoder(model, directory)
    elif isinstance(model, SentimentClassifier):
        hf_head = uses_hf_head(model)
        head = HF_HEAD if hf_head else JAXSENT_HEAD
        tensors = loading.export_tensors(model.encoder, prefix="bert." if hf_head else "")
        tensors[f"{head}.weight"] = np.ascontiguousarray(
            np.asarray(jax.device_get(model.head.kernel.get_value()), np.float32).T
        )
        tensors[f"{head}.bias"] = np.asarray(
            jax.device_get(model.head.bias.get_value()), np.float32
        )
        config = model.config.to_hf_dict()
        if model.num_labels == 2:
            # One logit, for the positive class (transformers' pipelines apply a sigmoid).
            id2label, label2id = {"0": "positive"}, {"positive": 0}
        else:
            id2label = {str(i): name for i, name in enumerate(model.label_names)}
            label2id = {name: i for i, name in enumerate(model.label_names)}
        config.update(
            architectures=(
                ["BertForSequenceClassification"] if hf_head else config["architectures"]
            ),
            id2label=id2label,
            label2id=label2id,
            classifier_dropout=model.dropout.rate,
        )
        meta = {
            "format_version": 1,
            "head": head,
            "pooling": model.pooling,
            "dropout_rate": model.dropout.rate,
            "dtype": jnp.dtype(model.encoder.dtype).name,
        }
        if model.num_labels != 2:  # two-class folders stay as they always were
            meta.update(num_labels=model.num_labels, label_names=list(model.label_names))
        clash = sorted(set(meta) & set(metadata or {}))
        if clash:
            raise ValueError(f"metadata must not redefine {clash}: the model sets them")
        os.makedirs(directory, exist_ok=True)
        _write_json(os.path.join(directory, "config.json"), config)
        save_file(
            tensors, os.path.join(directory, checkpoint.SAFETENSORS), metadata={"format": "pt"}
        )
        _write_json(os.path.join(directory, METADATA_FILE), meta | dict(metadata or {}))
    else:
        raise TypeError(
            f"model must be a SentimentClassifier or an encoder {loading.ENCODER_TYPES}, "
            f"got {type(model)}"
        )
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def _write_json(path: str, value: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def load_tokenizer(name_or_path: str | os.PathLike):
    """The fast ``transformers.AutoTokenizer`` for a folder, short name or hub id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint.resolve(name_or_path), use_fast=True)
    if not tokenizer.is_fast:
        raise ValueError(f"no fast tokenizer (tokenizer.json) for {os.fspath(name_or_path)!r}")
    return tokenizer
