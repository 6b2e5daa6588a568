"""BERT encoder in Flax NNX, numerically matching Hugging Face's PyTorch ``BertModel``.

The layout follows HF BERT exactly (post-LN blocks, exact erf GELU for ``"gelu"``, tanh
pooler over the first token) so any BERT checkpoint loads with
:func:`jaxsent.models.from_pretrained`. This module imports nothing of the checkpoint layer.

Parameters are float32 and carry *logical* axis names in their ``out_sharding`` metadata
(``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``, ``norm``, or ``None``); ``jaxsent.sharding``
maps those names to mesh axes by rules, so one model definition runs replicated, FSDP or
tensor-parallel. ``eager_sharding=False`` keeps creation independent of any mesh: placement
happens once, in ``jaxsent.sharding.shard_model``.

Modules start in eval mode (dropout off), like HF's ``from_pretrained``; ``model.train()``
switches dropout on, and a call in train mode needs dropout keys (``rngs=``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsent import sharding

__all__ = [
    "BertConfig",
    "BertModel",
    "BertOutput",
    "SUPPORTED_ACTIVATIONS",
]


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x/2 * (1 + erf(x/sqrt(2)))``, the formula of HF's ``"gelu"``.

    ``jax.nn.gelu(approximate=False)`` computes the same function through ``erfc``, whose
    XLA CPU expansion (an exponential and range selects) made the MiniLM train step ~5%
    slower than XLA's ``erf`` polynomial (bench/bench_train_step.py).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


# HF ACT2FN names -> JAX functions. HF "gelu" is the exact erf form; jax.nn.gelu defaults to
# the tanh approximation, which differs by up to ~4e-4.
SUPPORTED_ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn", "einsum")

# config.json model types this module implements, with their base architecture name. RoBERTa
# and XLM-RoBERTa are BERT with one token type and position ids counted past the padding id.
MODEL_TYPES = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT encoder (the subset of HF ``BertConfig`` that shapes the model).

    Defaults are HF's ``BertConfig`` defaults (BERT-base), so a tiny test model is
    ``BertConfig(vocab_size=1000, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
    intermediate_size=100, max_position_embeddings=64, type_vocab_size=3)``.

    Attributes:
      vocab_size: number of token ids.
      hidden_size: model width H; must be divisible by ``num_attention_heads``.
      num_hidden_layers: number of transformer blocks.
      num_attention_heads: attention heads per block.
      intermediate_size: width of the feed-forward hidden layer.
      hidden_act: feed-forward activation, a key of ``SUPPORTED_ACTIVATIONS``.
      hidden_dropout_prob: dropout on embeddings and block outputs (train mode only).
      attention_probs_dropout_prob: dropout on attention probabilities (train mode only).
      max_position_embeddings: longest supported sequence.
      type_vocab_size: number of token-type (segment) ids.
      layer_norm_eps: LayerNorm epsilon.
      initializer_range: std of the normal initialiser (random init only).
      pad_token_id: padding token id. For BERT it is only recorded (the mask decides what is
        padding); for RoBERTa it is also the ``padding_idx`` the position ids are counted from.
      use_pooler: whether the model has the tanh pooler (HF ``add_pooling_layer``).
      model_type: ``"bert"``, ``"roberta"`` or ``"xlm-roberta"`` (see :data:`MODEL_TYPES`).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    use_pooler: bool = True
    model_type: str = "bert"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"BertConfig.model_type={self.model_type!r}; expected one of {sorted(MODEL_TYPES)}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"BertConfig.hidden_act={self.hidden_act!r} is not supported; "
                f"expected one of {sorted(SUPPORTED_ACTIVATIONS)}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"BertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.positions_from_ids and not 0 <= self.pad_token_id < self.max_position_embeddings:
            raise ValueError(
                f"BertConfig.pad_token_id={self.pad_token_id!r} must index the position table "
                f"(max_position_embeddings={self.max_position_embeddings}) for {self.model_type}"
            )
        if self.max_length <= 0:
            raise ValueError(
                f"BertConfig.max_position_embeddings={self.max_position_embeddings} leaves no "
                f"position after pad_token_id={self.pad_token_id} for {self.model_type}"
            )

    @property
    def positions_from_ids(self) -> bool:
        """Whether position ids are counted past ``pad_token_id`` from the input ids (RoBERTa)."""
        return self.model_type != "bert"

    @property
    def max_length(self) -> int:
        """The longest sequence: RoBERTa's positions start at ``pad_token_id + 1``."""
        if self.positions_from_ids:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides: Any) -> BertConfig:
        """Maps a ``transformers`` ``BertConfig``/``AutoConfig`` (or its ``config.json`` dict).

        Args:
          hf_config: a transformers config object, or the parsed ``config.json`` mapping.
          **overrides: fields of this dataclass to replace (e.g. ``hidden_dropout_prob=0.0``).

        Returns:
          The config.

        Raises:
          ValueError: for a model type not in :data:`MODEL_TYPES`, or BERT variants this
            encoder does not implement (decoder, cross-attention, relative position embeddings).
        """
        raw = dict(hf_config) if isinstance(hf_config, Mapping) else hf_config.to_dict()
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"config.json model_type={model_type!r} (architectures="
                f"{raw.get('architectures')!r}) is not a BERT-family checkpoint; "
                f"jaxsent.models.bert loads model_type in {sorted(MODEL_TYPES)}"
            )
        position_type = raw.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"config.json position_embedding_type={position_type!r} is not supported "
                "(only 'absolute')"
            )
        for flag in ("is_decoder", "add_cross_attention"):
            if raw.get(flag):
                raise ValueError(f"config.json {flag}=True is not supported (encoder only)")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: raw[k] for k in fields if k in raw and raw[k] is not None}
        kwargs.update(overrides)
        unknown = set(overrides) - fields
        if unknown:
            raise ValueError(f"unknown BertConfig override(s): {sorted(unknown)}")
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """Returns a ``config.json`` dict that ``transformers.AutoConfig`` reads back."""
        out = {
            "architectures": [MODEL_TYPES[self.model_type]],
            "position_embedding_type": "absolute",
        }
        out.update(dataclasses.asdict(self))
        out.pop("use_pooler")
        return out


class BertOutput(NamedTuple):
    """Encoder outputs.

    Attributes:
      last_hidden_state: [B, L, H] in the compute dtype.
      pooler_output: [B, H] ``tanh(dense(h[:, 0]))``, or ``None`` when the model has no
        pooler (``config.use_pooler=False``, e.g. a checkpoint without ``pooler.*`` tensors).
    """

    last_hidden_state: jax.Array
    pooler_output: jax.Array | None


# Dropout masks. nnx.Dropout draws them with jax.random.bernoulli, whose threefry2x32 hash JAX
# lowers on CPU as a rolled loop: five passes over mask-sized arrays, ~20% of the MiniLM train
# step (attention-probability masks are [B, heads, L, L]). `Dropout` below computes the same
# hash round by round, which XLA fuses into the ops that use the mask, and gives bit-identical
# masks; other key implementations and settings take nnx's own path.
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1: jax.Array, k2: jax.Array, x0: jax.Array, x1: jax.Array):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), as ``jax.random``'s threefry2x32."""

    def rotate_left(x, bits):
        return (x << jnp.uint32(bits)) | (x >> jnp.uint32(32 - bits))

    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for bits in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ rotate_left(x1, bits)
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _fast_bernoulli_applies(key: jax.Array, size: int) -> bool:
    return (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        and key.shape == ()
        and str(jax.random.key_impl(key)) == "threefry2x32"
        and jax.config.jax_threefry_partitionable
        and not jax.config.jax_enable_x64  # a Python float p would draw float64 uniforms
        and size < 2**32  # counters then fit the low word
    )


def bernoulli(key: jax.Array, p: float, shape: tuple[int, ...], *, out_sharding=None):
    """``jax.random.bernoulli(key, p, shape)`` with a Python float ``p``, fusible on CPU.

    For a scalar ``threefry2x32`` key (the default) the result is bit-identical to
    ``jax.random.bernoulli``: element ``i`` (row-major) hashes the counter ``(0, i)``, the
    two output words are XORed and the top 23 bits, as a float in [0, 1), are compared with
    ``float32(p)``. Any other key takes ``jax.random.bernoulli`` itself.

    Args:
      key: a typed PRNG key.
      p: probability of True.
      shape: the mask shape.
      out_sharding: as in ``jax.random.bernoulli``.

    Returns:
      bool array of ``shape``.
    """
    size = 1
    for dim in shape:
        size *= dim
    if not shape or not _fast_bernoulli_applies(key, size):
        return jax.random.bernoulli(key, p, shape, out_sharding=out_sharding)
    index = jnp.uint32(0)
    stride = 1
    for axis in reversed(range(len(shape))):
        iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis, out_sharding=out_sharding)
        index = index + iota * jnp.uint32(stride)
        stride *= shape[axis]
    data = jax.random.key_data(key)
    bits = functools.reduce(
        jnp.bitwise_xor, _threefry2x32(data[0], data[1], jnp.zeros_like(index), index)
    )
    # uniform = (bits >> 9) * 2**-23 exactly, so uniform < p  <=>  (bits >> 9) < ceil(p * 2**23).
    threshold = math.ceil(float(np.float32(p)) * 2**23)
    return (bits >> jnp.uint32(9)) < jnp.uint32(threshold)


class Dropout(nnx.Dropout):
    """``nnx.Dropout`` with the same masks, drawn by :func:`bernoulli` (fused on CPU)."""

    def __call__(self, inputs, *, deterministic=None, rngs=None):
        deterministic = self.deterministic if deterministic is None else deterministic
        rngs = self.rngs if rngs is None else rngs
        if (
            deterministic
            or self.rate in (0.0, 1.0)
            or self.broadcast_dims
            or not isinstance(rngs, (nnx.Rngs, nnx.RngStream))
        ):
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        key = rngs[self.rng_collection]() if isinstance(rngs, nnx.Rngs) else rngs()
        keep_prob = 1.0 - self.rate
        mask = bernoulli(key, keep_prob, inputs.shape, out_sharding=jax.typeof(inputs).sharding)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


def _meta(*axes: str | None) -> dict[str, Any]:
    """Variable metadata for logical axis names (no placement at creation time)."""
    return {"out_sharding": tuple(axes), "eager_sharding": False}


def _normal(config: BertConfig):
    return nnx.initializers.normal(stddev=config.initializer_range)


def _layer_norm(config: BertConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.layer_norm_eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,  # mean((x - mu)^2), as torch's LayerNorm
        scale_metadata=_meta("norm"),
        bias_metadata=_meta("norm"),
        rngs=rngs,
    )


def _dense(in_features, out_features, in_axes, out_axes, config, dtype, rngs, *, axis=-1):
    """Dense layer with logical axes; multi-dim features give head-shaped kernels."""
    return nnx.LinearGeneral(
        in_features,
        out_features,
        axis=axis,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_normal(config),
        bias_init=nnx.initializers.zeros_init(),
        kernel_metadata=_meta(*in_axes, *out_axes),
        bias_metadata=_meta(*out_axes),
        rngs=rngs,
    )


def padded_position_ids(input_ids: jax.Array, padding_idx: int) -> jax.Array:
    """RoBERTa's position ids: real tokens count from ``padding_idx + 1``, padding gets it.

    The same as transformers' ``create_position_ids_from_input_ids``: a token equal to
    ``padding_idx`` is padding wherever it stands, whatever the attention mask says.

    Args:
      input_ids: [B, L] int token ids.
      padding_idx: the padding token id.

    Returns:
      [B, L] int32 position ids.
    """
    real = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(real, axis=1, dtype=jnp.int32) * real + padding_idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def embed_rows(table: jax.Array, ids: jax.Array, dtype) -> jax.Array:
    """`nnx.Embed`'s lookup, ``jnp.take(table.astype(dtype), ids, axis=0)``, with its gradient
    summed in float32 on a GPU.

    A gather's gradient is a scatter-add of the cotangent into the table, in the compute dtype,
    which XLA:GPU runs with atomic adds: under bfloat16 compute scalar bfloat16 ones (in the H200
    program), rows that many tokens share (padding, [CLS], frequent words) accumulating in
    bfloat16. On a GPU the gradient is a float32 scatter-add instead (4-wide float32 atomics),
    of the same sums. CPU and TPU keep the gather's own gradient (`jax.lax.platform_dependent`):
    float32 training on CPU stays bit-identical, and a TPU program is unchanged (its
    data-parallel all-reduce of the table's gradient stays bfloat16, as every other gradient's
    is there; float32 would add the table's size to it).

    Args:
      table: [V, H] float32 parameters.
      ids: integer row indices, any shape.
      dtype: the compute dtype.

    Returns:
      ``[*ids.shape, H]`` in ``dtype``.
    """
    return jnp.take(table.astype(dtype), ids, axis=0)


def _embed_rows_fwd(table, ids, dtype):
    return embed_rows(table, ids, dtype), (table, ids)


def _embed_rows_bwd(dtype, residuals, cotangent):
    table, ids = residuals

    def gather_form(table, ids, cotangent):
        _, vjp = jax.vjp(lambda table: jnp.take(table.astype(dtype), ids, axis=0), table)
        return vjp(cotangent)[0]

    def float32_sum(table, ids, cotangent):
        zeros = jnp.zeros(table.shape, jnp.float32)
        grad = zeros.at[ids].add(cotangent.astype(jnp.float32), mode="drop")
        return grad.astype(table.dtype)

    grad = jax.lax.platform_dependent(
        table, ids, cotangent, cpu=gather_form, tpu=gather_form, default=float32_sum
    )
    return grad, None


embed_rows.defvjp(_embed_rows_fwd, _embed_rows_bwd)


def _first_row_gradient_on_cpu(table: jax.Array, cotangent: jax.Array) -> jax.Array:
    """The gradient the gather form had: `nnx.Embed`'s (cast the table, take rows 0; a
    one-row table is broadcast), by its own transpose.

    A gather's transpose is a scatter-add, which XLA:CPU runs token after token; a reduction
    would sum them pairwise (its tree rewrite) and differ in the last bits. Kept on CPU so
    that float32 training there stays bit-identical to the gather form.
    """

    def gather_form(table):
        table = table.astype(cotangent.dtype)
        if table.shape[0] == 1:
            return jnp.broadcast_to(table, cotangent.shape)
        return jnp.take(table, jnp.zeros(cotangent.shape[:-1], jnp.int32), axis=0)

    _, vjp = jax.vjp(gather_form, table)
    return vjp(cotangent)[0]


def _first_row_gradient(table: jax.Array, cotangent: jax.Array) -> jax.Array:
    """Row 0's gradient as one float32 column sum: no scatter, no atomics, no bf16 accumulation."""
    row = jnp.sum(cotangent, axis=tuple(range(cotangent.ndim - 1)), dtype=jnp.float32)
    return jnp.pad(row.astype(table.dtype)[None], ((0, table.shape[0] - 1), (0, 0)))


@jax.custom_vjp
def add_first_row(x: jax.Array, table: jax.Array) -> jax.Array:
    """``x + table[0]`` in ``x``'s dtype: the token-type embedding of all-zero token types.

    The same values as ``x + jnp.take(table, zeros).astype(x.dtype)``. Its gradient with respect
    to ``table`` sums the cotangent over every token into row 0: on a GPU or TPU as one float32
    reduction, where the gather's transpose was a scatter-add that every token of the batch sends
    to the same row (a bfloat16 one under bfloat16 compute: 16,384 contended atomic adds per
    column at 32 x 512, accumulated in bfloat16); on CPU as that scatter-add, in its order, so
    float32 numerics there do not change (`jax.lax.platform_dependent`).

    Args:
      x: [..., H] activations, any float dtype.
      table: [T, H] the token-type table (float32 parameters).

    Returns:
      [..., H] in ``x``'s dtype.
    """
    return x + table[0].astype(x.dtype)


def _add_first_row_fwd(x, table):
    return add_first_row(x, table), table


def _add_first_row_bwd(table, cotangent):
    grad = jax.lax.platform_dependent(
        table,
        cotangent,
        cpu=_first_row_gradient_on_cpu,
        default=_first_row_gradient,
    )
    return cotangent, grad


add_first_row.defvjp(_add_first_row_fwd, _add_first_row_bwd)


class BertEmbeddings(nnx.Module):
    """word + position + token-type embeddings, LayerNorm, dropout.

    The tables are float32 parameters (``nnx.Embed`` modules, for their checkpoint names). With
    ``gather_free`` (the default) the token-type table is not gathered, and no gradient of a
    table is a scatter-add in bfloat16 on a GPU (issue 27; docs/benchmarks.md "On a GPU"):

    * token types ``None`` (all zeros, what the classifier passes): row 0 added to every token
      (:func:`add_first_row`), no lookup, where the gather's gradient sent every token of the
      batch to one row; given token types: a one-hot product with the tiny type table, whose
      gradient is a matmul rather than a scatter;
    * word ids and positions: gathered as ``nnx.Embed`` does (:func:`embed_rows`), with the
      gradient summed in float32 on a GPU (see ``_embed`` for why positions are no slice).

    The values are those of the gathers, bit for bit, in every dtype: a gather copies rows and
    a one-hot product adds exact zeros to a single exact product. The gradients are the same
    sums (on CPU, in float32: bit-identical, but for given token types). Setting
    ``gather_free = False`` gives the earlier program (``nnx.Embed`` gathers), kept to measure
    the difference on a device.
    """

    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        def embed(num, axes):
            return nnx.Embed(
                num,
                config.hidden_size,
                dtype=dtype,
                param_dtype=jnp.float32,
                embedding_init=_normal(config),
                embedding_metadata=_meta(*axes),
                rngs=rngs,
            )

        self.word_embeddings = embed(config.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(config.max_position_embeddings, (None, "embed"))
        self.token_type_embeddings = embed(config.type_vocab_size, (None, "embed"))
        self.layer_norm = _layer_norm(config, dtype, rngs)
        self.dropout = Dropout(config.hidden_dropout_prob, deterministic=True)
        self.padding_idx = config.pad_token_id if config.positions_from_ids else None
        self.dtype = dtype
        self.gather_free = True  # False: nnx.Embed's gathers, the earlier program (issue 27)

    def __call__(self, input_ids, token_type_ids=None, *, deterministic=None, rngs=None):
        """Args: input_ids [B, L] int; token_type_ids [B, L] int or None (all zeros).

        Returns: [B, L, H] in the compute dtype.
        """
        if self.gather_free:
            x = self._embed(input_ids, token_type_ids)
        else:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
            if self.padding_idx is None:
                x = x + self.position_embeddings(jnp.arange(input_ids.shape[1]))[None]
            else:
                x = x + self.position_embeddings(padded_position_ids(input_ids, self.padding_idx))
        x = self.layer_norm(x)
        return sharding.constrain_batch(self.dropout(x, deterministic=deterministic, rngs=rngs))

    def _embed(self, input_ids, token_type_ids):
        """The sum of the three embeddings, in the order (word + type) + position."""
        dtype = self.dtype
        words = embed_rows(self.word_embeddings.embedding[...], input_ids, dtype)
        types = self.token_type_embeddings.embedding[...]
        if token_type_ids is None:
            x = add_first_row(words, types)
        else:
            one_hot = jax.nn.one_hot(token_type_ids, types.shape[0], dtype=dtype)
            # HIGHEST: a float32 product must not be rounded to bfloat16 passes (TPU) or TF32.
            x = words + jnp.einsum(
                "blt,th->blh", one_hot, types.astype(dtype), precision=jax.lax.Precision.HIGHEST
            )
        # Positions stay a gather. BERT's are 0 .. L-1, so a slice would do, but its gradient, a
        # sum over the batch, made XLA:GPU lay out the network's activations batch-minor
        # ([L, H, B]; 21 more kernels in a 2-layer BERT-base 32 x 512 H200 program,
        # docs/benchmarks.md). The gather's gradient is the same sum, then a scatter of L
        # distinct rows: no row is shared, nothing contends.
        table = self.position_embeddings.embedding[...]
        if self.padding_idx is None:
            return x + embed_rows(table, jnp.arange(input_ids.shape[1]), dtype)[None]
        return x + embed_rows(table, padded_position_ids(input_ids, self.padding_idx), dtype)


class BertSelfAttention(nnx.Module):
    """Multi-head self-attention with head-shaped projections [H, heads, head_dim]."""

    def __init__(self, config: BertConfig, *, dtype, attention_impl=None, rngs: nnx.Rngs):
        heads = (config.num_attention_heads, config.head_dim)
        hidden = config.hidden_size

        def proj():
            return _dense(hidden, heads, ("embed",), ("heads", "kv"), config, dtype, rngs)

        self.query = proj()
        self.key = proj()
        self.value = proj()
        self.out = _dense(
            heads, hidden, ("heads", "kv"), ("embed",), config, dtype, rngs, axis=(-2, -1)
        )
        self.attention_impl = attention_impl
        self.dropout = Dropout(config.attention_probs_dropout_prob, deterministic=True)
        # The einsum path's q k^T in float32 (preferred_element_type) rather than the compute
        # dtype: the earlier program, kept to measure it on a device (issue 27).
        self.float32_scores = False

    def __call__(self, x, mask, *, deterministic=None, rngs=None):
        """Args: x [B, L, H]; mask [B, L] bool (True = real token). Returns: [B, L, H]."""
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, L, heads, head_dim]
        dropout_on = self.dropout.rate > 0 and not (
            self.dropout.deterministic if deterministic is None else deterministic
        )
        if dropout_on or self.attention_impl == "einsum":
            # jax.nn.dot_product_attention has no dropout on the probabilities; HF applies
            # it in training, so this path spells the attention out (same math).
            scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32))
            # The scores in the compute dtype, the softmax in float32 (what autocast does): with
            # float32 scores the backward's dQ and dK matmuls read float32 [B, h, L, L]
            # operands under bfloat16 compute (issue 27). The same program in float32.
            scores_dtype = jnp.float32 if self.float32_scores else None
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=scores_dtype)
            logits = logits.astype(jnp.float32)
            logits = jnp.where(mask[:, None, None, :], logits * scale, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            probs = self.dropout(probs, deterministic=deterministic, rngs=rngs)
            context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        elif self.attention_impl == "cudnn":
            # cuDNN flash attention takes padding as lengths: right-padded batches only.
            lengths = jnp.sum(mask, axis=-1, dtype=jnp.int32)
            context = jax.nn.dot_product_attention(
                q,
                k,
                v,
                query_seq_lengths=lengths,
                key_value_seq_lengths=lengths,
                implementation="cudnn",
            )
        else:
            context = jax.nn.dot_product_attention(
                q, k, v, mask=mask[:, None, None, :], implementation=self.attention_impl
            )
        return self.out(context)


class BertLayer(nnx.Module):
    """Post-LN transformer block: LN(x + attn(x)), then LN(h + ffn(h))."""

    def __init__(self, config: BertConfig, *, dtype, attention_impl=None, rngs: nnx.Rngs):
        hidden, inter = config.hidden_size, config.intermediate_size
        self.attention = BertSelfAttention(
            config, dtype=dtype, attention_impl=attention_impl, rngs=rngs
        )
        self.attention_dropout = Dropout(config.hidden_dropout_prob, deterministic=True)
        self.attention_norm = _layer_norm(config, dtype, rngs)
        self.intermediate = _dense(hidden, inter, ("embed",), ("mlp",), config, dtype, rngs)
        self.output = _dense(inter, hidden, ("mlp",), ("embed",), config, dtype, rngs)
        self.output_dropout = Dropout(config.hidden_dropout_prob, deterministic=True)
        self.output_norm = _layer_norm(config, dtype, rngs)
        self.activation = SUPPORTED_ACTIVATIONS[config.hidden_act]

    def __call__(self, x, mask, *, deterministic=None, rngs=None):
        """Args: x [B, L, H]; mask [B, L] bool. Returns: [B, L, H]."""
        kw = {"deterministic": deterministic, "rngs": rngs}
        attn = self.attention(x, mask, **kw)
        h = self.attention_norm(x + self.attention_dropout(attn, **kw))
        ffn = self.output(self.activation(self.intermediate(h)))
        return sharding.constrain_batch(self.output_norm(h + self.output_dropout(ffn, **kw)))


# Encoder layouts (`remat`, `scan_layers`): how the layers run, not what they compute. A stacked
# encoder keeps its parameters in one BertLayer under this attribute, each with a leading layer
# axis; checkpoints and exports stay per layer (`unrolled` converts at the edge).
STACKED_LAYERS = "stacked_layers"
# 'none' keeps every activation for the backward pass; 'full' keeps only each layer's input and
# recomputes the layer; 'dots' keeps the outputs of the matmuls without batch dimensions (the
# projections and the feed-forward layers) and recomputes the rest (attention scores,
# softmax, GELU, LayerNorm), as MaxText's 'minimal' policy.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _stack(variables: list[nnx.Variable]) -> nnx.Variable:
    axes = variables[0].get_metadata().get("out_sharding")
    value = jnp.stack([v.get_value() for v in variables])
    if axes is None:
        return variables[0].replace(value)
    return variables[0].replace(value, out_sharding=(None, *axes))


def _unstack(variable: nnx.Variable, index: int) -> nnx.Variable:
    axes = variable.get_metadata().get("out_sharding")
    value = variable.get_value()[index]
    if axes is None:
        return variable.replace(value)
    return variable.replace(value, out_sharding=tuple(axes[1:]))


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def stack_layers(layers: list[nnx.Module]) -> nnx.Module:
    """One module of ``layers[0]``'s structure whose every variable stacks the layers' values
    along a new leading axis (logical axis ``None``), for ``jax.lax.scan`` over the layers.

    The layers must share one structure; static attributes are ``layers[0]``'s.
    """
    states = [nnx.state(layer) for layer in layers]
    stacked = jax.tree.map(lambda *vs: _stack(list(vs)), *states, is_leaf=_is_variable)
    return nnx.merge(nnx.graphdef(layers[0]), stacked)


def unstack_layers(stacked: nnx.Module, count: int) -> list[nnx.Module]:
    """The ``count`` layers of a :func:`stack_layers` module, one by one (slices of its values)."""
    graphdef, state = nnx.split(stacked)
    return [
        nnx.merge(
            graphdef,
            jax.tree.map(functools.partial(_unstack, index=i), state, is_leaf=_is_variable),
        )
        for i in range(count)
    ]


class BertEncoder(nnx.Module):
    """A stack of ``num_hidden_layers`` :class:`BertLayer`.

    Args:
      config, dtype, attention_impl, rngs: as in :class:`BertModel`.
      remat: what the backward pass recomputes, a key of :data:`REMAT_POLICIES`.
      scan_layers: run the layers as one ``jax.lax.scan`` over parameters stacked along a
        leading layer axis (held in :data:`STACKED_LAYERS`), so the compiler sees one layer
        body instead of ``num_hidden_layers`` copies; else ``self.layers`` lists the layers.

    Every layout computes the same function with the same dropout masks: the dropout stream is
    threaded through the layers in order, each layer drawing its keys as the unrolled stack does.
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        dtype,
        attention_impl=None,
        remat: str = "none",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        layers = [
            BertLayer(config, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
            for _ in range(config.num_hidden_layers)
        ]
        self._set_layers(layers, remat=remat, scan_layers=scan_layers)

    def _set_layers(self, layers: list[BertLayer], *, remat: str, scan_layers: bool) -> None:
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        if not isinstance(scan_layers, bool):
            raise ValueError(f"scan_layers must be a bool, got {scan_layers!r}")
        self.remat = remat
        self.scan_layers = scan_layers
        self.num_layers = len(layers)
        if scan_layers:
            # nnx.data: the attributes switch between a module and None under set_layout.
            self.stacked_layers = nnx.data(stack_layers(layers))
            self.layers = nnx.data(None)
        else:
            self.layers = nnx.data(nnx.List(layers))
            self.stacked_layers = nnx.data(None)

    def layer_list(self) -> list[BertLayer]:
        """The layers one by one (slices of the stacked parameters under ``scan_layers``)."""
        if not self.scan_layers:
            return list(self.layers)
        return unstack_layers(self.stacked_layers, self.num_layers)

    def set_layout(self, *, remat: str, scan_layers: bool) -> None:
        """Re-lays the same parameters out for ``remat`` and ``scan_layers`` (in place)."""
        self._set_layers(self.layer_list(), remat=remat, scan_layers=scan_layers)

    def __call__(self, x, mask, *, deterministic=None, rngs=None):
        if not self.scan_layers and self.remat == "none":
            for layer in self.layers:
                x = layer(x, mask, deterministic=deterministic, rngs=rngs)
            return x
        # The functional form: each layer applied by a pure function of (parameters, x, dropout
        # stream state), which jax.checkpoint and jax.lax.scan take.
        rng_graphdef, rng_state = (None, None) if rngs is None else nnx.split(rngs)

        def apply(graphdef, params, x, mask, rng_state):
            layer = nnx.merge(graphdef, params)
            stream = None if rng_graphdef is None else nnx.merge(rng_graphdef, rng_state)
            y = layer(x, mask, deterministic=deterministic, rngs=stream)
            return y, None if stream is None else nnx.state(stream)

        policy = REMAT_POLICIES[self.remat]
        if self.scan_layers:
            graphdef, stacked = nnx.split(self.stacked_layers)

            def body(carry, params):
                return apply(graphdef, params, carry[0], mask, carry[1]), None

            if self.remat != "none":
                body = jax.checkpoint(body, policy=policy, prevent_cse=False)
            (x, rng_state), _ = jax.lax.scan(body, (x, rng_state), stacked)
        else:
            for layer in self.layers:
                graphdef, params = nnx.split(layer)
                step = jax.checkpoint(functools.partial(apply, graphdef), policy=policy)
                x, rng_state = step(params, x, mask, rng_state)
        if rngs is not None:
            nnx.update(rngs, rng_state)
        return x


class BertModel(nnx.Module):
    """BERT encoder: embeddings, transformer blocks, optional tanh pooler.

    Args:
      config: the architecture.
      dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32.
      attention_impl: how attention runs when attention-probability dropout is off
        (with it on, always the explicit ``"einsum"`` form, since
        ``jax.nn.dot_product_attention`` has no dropout): ``None``/``"xla"`` is
        ``jax.nn.dot_product_attention`` with a boolean padding mask (any padding layout);
        ``"cudnn"`` its fused GPU kernel (padding passed as lengths, so right padding only;
        on an H200, 11% faster per BERT-base train step than ``"xla"`` and within bf16
        rounding of it, docs/benchmarks.md); ``"einsum"`` the explicit softmax(q k^T / sqrt(d)) v.
      remat, scan_layers: the encoder's layout (see :class:`BertEncoder`); the same function.
      rngs: parameter initialisation keys (``rngs.params``). Dropout keys are passed at
        call time, so the encoder holds parameters only.
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        dtype=jnp.float32,
        attention_impl: str | None = None,
        remat: str = "none",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        if attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention_impl={attention_impl!r}; expected one of {ATTENTION_IMPLEMENTATIONS}"
            )
        self.config = config
        self.dtype = dtype
        self.embeddings = BertEmbeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = BertEncoder(
            config,
            dtype=dtype,
            attention_impl=attention_impl,
            remat=remat,
            scan_layers=scan_layers,
            rngs=rngs,
        )
        if config.use_pooler:
            # Output axis unnamed: splitting [B, H] pooled features over `model` only to
            # gather them again for the head costs more than it saves.
            self.pooler = _dense(
                config.hidden_size, config.hidden_size, ("embed",), (None,), config, dtype, rngs
            )
        else:
            self.pooler = None

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ) -> BertOutput:
        """Encodes a batch.

        Args:
          input_ids: [B, L] int token ids, L <= ``config.max_length``
            (``max_position_embeddings``, less ``pad_token_id + 1`` for RoBERTa).
          attention_mask: [B, L], nonzero/True on real tokens; ``None`` means no padding.
          token_type_ids: [B, L] int segment ids; ``None`` means all zeros.
          deterministic: ``True`` disables dropout, ``False`` enables it, ``None`` follows
            the module mode (``train()``/``eval()``; eval after construction).
          rngs: dropout keys, required when dropout is enabled.

        Returns:
          :class:`BertOutput` with ``last_hidden_state`` [B, L, H] and ``pooler_output``
          [B, H] (or ``None`` without a pooler). Hidden states at padded positions are
          computed but meaningless; mask them before any reduction.
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        length = input_ids.shape[1]
        if length > self.config.max_length:
            raise ValueError(
                f"input_ids length {length} exceeds the longest sequence, "
                f"{self.config.max_length} (max_position_embeddings="
                f"{self.config.max_position_embeddings}, model_type={self.config.model_type!r})"
            )
        for name, arr in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if arr is not None and arr.shape != input_ids.shape:
                raise ValueError(
                    f"{name} shape {arr.shape} does not match input_ids shape {input_ids.shape}"
                )
        config = self.config
        has_dropout = config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0
        dropout_on = has_dropout and not (
            self.embeddings.dropout.deterministic if deterministic is None else deterministic
        )
        if dropout_on and rngs is None:
            raise ValueError(
                "dropout is enabled (train mode or deterministic=False) but no rngs were given; "
                "pass rngs=nnx.Rngs(dropout=...) or call model.eval()"
            )
        mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask != 0
        x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic, rngs=rngs)
        x = self.encoder(x, mask, deterministic=deterministic, rngs=rngs)
        pooled = None if self.pooler is None else jnp.tanh(self.pooler(x[:, 0]))
        return BertOutput(last_hidden_state=x, pooler_output=pooled)


def unrolled(model):
    """``model`` itself when its layers are unrolled, else a copy with per-layer parameters.

    Checkpoint export (the Hugging Face layout names every layer) goes through this. ``model``
    is a :class:`BertModel` or any encoder model whose ``encoder`` has the same ``remat``,
    ``scan_layers`` and ``set_layout`` (``jaxsent.models.modernbert.ModernBertModel``).
    """
    if not model.encoder.scan_layers:
        return model
    copy = nnx.merge(*nnx.split(model))
    copy.encoder.set_layout(remat=model.encoder.remat, scan_layers=False)
    return copy


def read_config(directory: str | os.PathLike, **overrides: Any) -> BertConfig:
    """Reads ``config.json`` in ``directory`` into a :class:`BertConfig`."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in {os.fspath(directory)!r}")
    with open(path, encoding="utf-8") as f:
        return BertConfig.from_hf(json.load(f), **overrides)
