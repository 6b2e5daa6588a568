"""ModernBERT encoder in Flax NNX, numerically matching transformers' ``ModernBertModel`` (5.x).

The layout follows HF's (Warner et al. 2024, "Smarter, Better, Faster, Longer"): token
embeddings then a LayerNorm, no position table and no token types; pre-norm blocks (the first
block's attention norm is the identity) with a fused ``Wqkv`` projection, rotary position
embeddings, and a GeGLU MLP (``Wi`` to 2 x intermediate, ``act(input) * gate``, ``Wo``);
a final LayerNorm. Biases follow ``attention_bias`` / ``mlp_bias`` / ``norm_bias`` (all off in
the published checkpoints). ``layer_types`` makes each block global (``full_attention``,
rotary base ``global_rope_theta``) or local (``sliding_attention``, base ``local_rope_theta``),
where a token attends to keys within ``local_attention // 2`` positions on either side:
``abs(q - k) <= local_attention // 2``, as transformers' bidirectional sliding-window mask.

Parameters are float32 with the same logical axis names as :mod:`jaxsent.models.bert`
(``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``, ``norm``), so the rules of
``jaxsent.sharding`` shard it. ``Wqkv`` is stored as ``[H, 3, heads, head_dim]`` and ``Wi`` as
``[H, 2, intermediate]``, so tensor parallelism splits heads and the MLP hidden layer without
splitting the fused halves apart. The module imports nothing of the checkpoint layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsent import sharding
from jaxsent.models.bert import (
    REMAT_POLICIES,
    SUPPORTED_ACTIVATIONS,
    Dropout,
    embed_rows,
    stack_layers,
    unstack_layers,
)

__all__ = [
    "LAYER_TYPES",
    "ModernBertConfig",
    "ModernBertEncoder",
    "ModernBertModel",
    "ModernBertOutput",
    "banded_attention",
    "materialized_cotangent",
    "rotary_cos_sin",
]

GLOBAL, LOCAL = "full_attention", "sliding_attention"
LAYER_TYPES = (GLOBAL, LOCAL)
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn", "einsum")


def default_layer_types(num_layers: int, every: int = 3) -> tuple[str, ...]:
    """transformers' default pattern: layer ``i`` is global when ``i % every == 0``."""
    return tuple(LOCAL if i % every else GLOBAL for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    """Architecture of a ModernBERT encoder (the fields of HF ``ModernBertConfig`` that shape it).

    Defaults are HF's (ModernBERT-base). ``layer_types=None`` means the default pattern (every
    third layer global, from layer 0). Token ids other than ``pad_token_id`` are recorded for
    export only.

    Attributes:
      vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads: shapes.
      hidden_activation: the GeGLU activation, a key of ``SUPPORTED_ACTIVATIONS``.
      max_position_embeddings: recorded (rotary embeddings have no table; like HF, longer
        inputs are not refused).
      initializer_range, initializer_cutoff_factor: truncated-normal init (random init only).
      norm_eps, norm_bias: LayerNorm epsilon and whether LayerNorms have a bias.
      attention_bias, mlp_bias: whether ``Wqkv``/``Wo`` and ``Wi``/``Wo`` have biases.
      attention_dropout: on attention probabilities and on the attention output.
      embedding_dropout: after the embedding norm. mlp_dropout: on ``act(input) * gate``.
      local_attention: the local window in total (keys within ``local_attention // 2``).
      layer_types: one of :data:`LAYER_TYPES` per layer.
      global_rope_theta, local_rope_theta: rotary bases of global and local layers.
    """

    model_type: ClassVar[str] = "modernbert"
    use_pooler: ClassVar[bool] = False  # no pooler: pooling="cls" reads the first token's state

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    embedding_dropout: float = 0.0
    mlp_dropout: float = 0.0
    local_attention: int = 128
    layer_types: tuple[str, ...] | None = None
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    pad_token_id: int = 50283
    bos_token_id: int = 50281
    eos_token_id: int = 50282
    cls_token_id: int = 50281
    sep_token_id: int = 50282

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "local_attention",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModernBertConfig.{name} must be a positive int, got {value!r}")
        if self.local_attention < 2:  # a window of local_attention // 2 = 0 keys a side
            raise ValueError(
                f"ModernBertConfig.local_attention={self.local_attention} must be >= 2 (the "
                "window in total; a token attends to local_attention // 2 keys on each side)"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ModernBertConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"ModernBertConfig head_dim={self.head_dim} must be even for rotary embeddings"
            )
        if self.hidden_activation not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"ModernBertConfig.hidden_activation={self.hidden_activation!r} is not "
                f"supported; expected one of {sorted(SUPPORTED_ACTIVATIONS)}"
            )
        for name in ("attention_dropout", "embedding_dropout", "mlp_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ModernBertConfig.{name} must be in [0, 1), got {value!r}")
        for name in ("norm_eps", "global_rope_theta", "local_rope_theta"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"ModernBertConfig.{name} must be > 0, got {getattr(self, name)!r}"
                )
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", default_layer_types(self.num_hidden_layers))
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        bad = sorted({t for t in self.layer_types if t not in LAYER_TYPES})
        if bad or len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"ModernBertConfig.layer_types={list(self.layer_types)!r} must hold "
                f"num_hidden_layers={self.num_hidden_layers} entries of {LAYER_TYPES}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def window(self) -> int:
        """Keys a local layer's token attends to on each side (``local_attention // 2``)."""
        return self.local_attention // 2

    @property
    def max_length(self) -> int:
        """The position budget the checkpoint was trained for (not enforced)."""
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides: Any) -> ModernBertConfig:
        """Maps a ``transformers`` ``ModernBertConfig`` (or its ``config.json`` dict).

        Reads both spellings of the published files: transformers 5's ``layer_types`` and
        ``rope_parameters``, and the earlier ``global_attn_every_n_layers``,
        ``global_rope_theta`` and ``local_rope_theta``.

        Raises:
          ValueError: another model type, a rotary scaling this encoder does not implement,
            or an unknown override.
        """
        raw = dict(hf_config) if isinstance(hf_config, Mapping) else hf_config.to_dict()
        if raw.get("model_type") != cls.model_type:
            raise ValueError(
                f"config.json model_type={raw.get('model_type')!r} is not a ModernBERT "
                "checkpoint; jaxsent.models.modernbert loads model_type='modernbert' only"
            )
        if raw.get("rope_scaling"):
            raise ValueError(f"config.json rope_scaling={raw['rope_scaling']!r} is not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: raw[k] for k in fields if k in raw and raw[k] is not None}
        if raw.get("layer_types") is None:
            every = int(raw.get("global_attn_every_n_layers") or 3)
            layers = int(raw.get("num_hidden_layers", cls.num_hidden_layers))
            kwargs["layer_types"] = default_layer_types(layers, every)
        rope = raw.get("rope_parameters") or {}
        for layer_type, field in ((GLOBAL, "global_rope_theta"), (LOCAL, "local_rope_theta")):
            params = rope.get(layer_type) or {}
            if params.get("rope_type", "default") != "default":
                raise ValueError(
                    f"config.json rope_parameters[{layer_type!r}]={params!r}: only rope_type "
                    "'default' is supported"
                )
            if params.get("rope_theta") is not None:
                kwargs[field] = float(params["rope_theta"])
        unknown = set(overrides) - fields
        if unknown:
            raise ValueError(f"unknown ModernBertConfig override(s): {sorted(unknown)}")
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers.ModernBertConfig`` reads back."""
        out = dataclasses.asdict(self)
        out["layer_types"] = list(self.layer_types)
        out.update(
            architectures=["ModernBertModel"],
            model_type=self.model_type,
            rope_parameters={
                GLOBAL: {"rope_type": "default", "rope_theta": self.global_rope_theta},
                LOCAL: {"rope_type": "default", "rope_theta": self.local_rope_theta},
            },
        )
        return out


class ModernBertOutput(NamedTuple):
    """Encoder outputs: ``last_hidden_state`` [B, L, H]; ``pooler_output`` is always None."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array | None = None


def rotary_cos_sin(length: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """``cos``, ``sin`` [L, head_dim] float32 of positions ``0..L-1``, as HF's default rope.

    The inverse frequencies are computed in float32 as transformers does
    (``1 / theta ** (arange(0, d, 2) / d)``), then duplicated across the two halves.
    """
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = np.float32(1.0) / (np.float32(theta) ** exponent)
    freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq)[None]
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x`` [B, L, heads, head_dim] in float32 (``x cos + rotate_half(x) sin``)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return (x32 * cos + rotated * sin).astype(x.dtype)


def banded_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    real: jax.Array,
    window: int,
    *,
    scores_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """Softmax attention in which query ``i`` sees the real keys ``j`` with ``|i - j| <= window``.

    The same function as the masked full attention, computed on blocks: the sequence is cut
    into blocks of ``window`` positions, and a block's queries score only the keys of its own
    and its two neighbouring blocks, the only ones within reach: 3 x window keys per query
    instead of L (ModernBERT-base at 512 tokens: 192 instead of 512).

    Args:
      q, k, v: [B, L, heads, head_dim].
      real: [B, L] bool, True on real (non-padding) keys, in any layout.
      window: keys within this distance on either side (ModernBERT's ``local_attention // 2``).
      scores_dtype: the dtype of q k^T (None: the inputs'); the softmax is float32 either way.

    Returns:
      [B, L, heads, head_dim], in ``v``'s dtype.
    """
    batch, length, heads, head_dim = q.shape
    blocks = -(-length // window)
    tail = blocks * window - length

    def neighbourhoods(x):  # [B, L, ...] -> [B, blocks, 3 x window, ...]
        pad = [(0, 0), (window, tail + window)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, pad).reshape(batch, blocks + 2, window, *x.shape[2:])
        return jnp.concatenate([x[:, :-2], x[:, 1:-1], x[:, 2:]], axis=2)

    q = jnp.pad(q, [(0, 0), (0, tail), (0, 0), (0, 0)]).reshape(
        batch, blocks, window, heads, head_dim
    )
    keys, values = neighbourhoods(k), neighbourhoods(v)
    offset = np.arange(3 * window)[None, :] - window - np.arange(window)[:, None]  # key - query
    allowed = neighbourhoods(real)[:, :, None, None, :] & (np.abs(offset) <= window)
    scale = 1.0 / np.sqrt(head_dim)
    logits = jnp.einsum("bnqhd,bnkhd->bnhqk", q, keys, preferred_element_type=scores_dtype)
    logits = jnp.where(allowed, logits.astype(jnp.float32) * scale, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    context = jnp.einsum("bnhqk,bnkhd->bnqhd", probs, values)
    return context.reshape(batch, blocks * window, heads, head_dim)[:, :length]


def key_lengths(mask: jax.Array) -> jax.Array:
    """Real keys per sequence [B] of a right-padded [B, 1, L, L] attention mask.

    A key is real when some query may attend to it. A local layer's first row holds only the
    window, so the lengths cannot be read off one row (cuDNN would then drop every key past
    the first window).
    """
    return jnp.sum(jnp.any(mask[:, 0], axis=-2), axis=-1, dtype=jnp.int32)


@jax.custom_vjp
def materialized_cotangent(x: jax.Array) -> jax.Array:
    """The identity, whose gradient XLA:CPU must compute once, as one array.

    In a pre-norm stack the residual stream's gradient is a chain of elementwise adds through
    every block. XLA:CPU fuses that chain into each of its consumers (the transposed copies the
    weight-gradient dots read) and recomputes it there, from the last block back: work that
    grows with the square of the depth (~16% of a 6-layer ModernBERT step's CPU time,
    docs/benchmarks.md). ``optimization_barrier`` does not stop it (XLA:CPU removes barriers
    before fusion); a conditional does, as fusion never crosses one. Its two branches are the
    identity, written differently so that XLA cannot merge them; which one runs does not
    matter. Other platforms (``jax.lax.platform_dependent``) get the plain identity.
    """
    return x


def _materialized_cotangent_fwd(x):
    return x, None


def _materialized_on_cpu(cotangent):
    def identity(g):
        return g

    def also_identity(g):  # bit for bit, signed zeros, infinities and NaNs included
        return jnp.copysign(jnp.abs(g), g)

    pick = jnp.isfinite(cotangent[(0,) * cotangent.ndim])
    return jax.lax.cond(pick, identity, also_identity, cotangent)


def _materialized_cotangent_bwd(_, cotangent):
    return (jax.lax.platform_dependent(cotangent, cpu=_materialized_on_cpu, default=lambda g: g),)


materialized_cotangent.defvjp(_materialized_cotangent_fwd, _materialized_cotangent_bwd)


def _meta(*axes: str | None) -> dict[str, Any]:
    return {"out_sharding": tuple(axes), "eager_sharding": False}


def _truncated_normal(config: ModernBertConfig, std: float):
    cutoff = config.initializer_cutoff_factor
    return nnx.initializers.truncated_normal(stddev=std, lower=-cutoff, upper=cutoff)


def _layer_norm(config: ModernBertConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.norm_eps,
        use_bias=config.norm_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,  # mean((x - mu)^2), as torch's LayerNorm
        scale_metadata=_meta("norm"),
        bias_metadata=_meta("norm"),
        rngs=rngs,
    )


def _dense(in_features, out_features, in_axes, out_axes, *, bias, std, config, dtype, rngs,
           axis=-1):  # fmt: skip
    return nnx.LinearGeneral(
        in_features,
        out_features,
        axis=axis,
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_truncated_normal(config, std),
        bias_init=nnx.initializers.zeros_init(),
        kernel_metadata=_meta(*in_axes, *out_axes),
        bias_metadata=_meta(*out_axes),
        rngs=rngs,
    )


class ModernBertEmbeddings(nnx.Module):
    """Token embeddings, LayerNorm, dropout (no positions, no token types)."""

    def __init__(self, config: ModernBertConfig, *, dtype, rngs: nnx.Rngs):
        self.tok_embeddings = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=_truncated_normal(config, config.initializer_range),
            embedding_metadata=_meta("vocab", "embed"),
            rngs=rngs,
        )
        self.norm = _layer_norm(config, dtype, rngs)
        self.dropout = Dropout(config.embedding_dropout, deterministic=True)
        self.dtype = dtype
        # nnx.Embed's lookup with its gradient summed in float32 on a GPU (bert.embed_rows; the
        # same values); False: nnx.Embed itself, the earlier program (issue 27).
        self.gather_free = True

    def __call__(self, input_ids, *, deterministic=None, rngs=None):
        if self.gather_free:
            table = self.tok_embeddings.embedding[...]
            x = self.norm(embed_rows(table, input_ids, self.dtype))
        else:
            x = self.norm(self.tok_embeddings(input_ids))
        return sharding.constrain_batch(self.dropout(x, deterministic=deterministic, rngs=rngs))


class ModernBertAttention(nnx.Module):
    """Self-attention with a fused ``Wqkv`` [H, 3, heads, head_dim] and rotary q, k."""

    def __init__(self, config: ModernBertConfig, *, dtype, attention_impl=None, rngs: nnx.Rngs):
        heads, head_dim, hidden = config.num_attention_heads, config.head_dim, config.hidden_size
        common = dict(bias=config.attention_bias, config=config, dtype=dtype, rngs=rngs)
        out_std = config.initializer_range / np.sqrt(2.0 * config.num_hidden_layers)
        self.Wqkv = _dense(
            hidden,
            (3, heads, head_dim),
            ("embed",),
            (None, "heads", "kv"),
            std=config.initializer_range,
            **common,
        )
        self.Wo = _dense(
            (heads, head_dim), hidden, ("heads", "kv"), ("embed",), std=out_std, axis=(-2, -1),
            **common,
        )  # fmt: skip
        self.attention_impl = attention_impl
        self.window = config.window
        self.dropout = Dropout(config.attention_dropout, deterministic=True)
        self.out_dropout = Dropout(config.attention_dropout, deterministic=True)
        # q k^T in float32 (preferred_element_type) rather than the compute dtype: the earlier
        # program, kept to measure it on a device (issue 27, as `bert.BertSelfAttention`).
        self.float32_scores = False

    def path(self, *, local: bool, dropout_on: bool, length: int) -> str:
        """How a layer of one type computes its attention: ``"banded"`` (block by block, a local
        layer over more than three windows without attention dropout, whatever
        ``attention_impl`` says), ``"cudnn"``, ``"xla"`` or ``"einsum"`` (the masked forms)."""
        if local and not dropout_on and length > 3 * self.window:
            return "banded"
        if self.attention_impl == "cudnn" and not local and not dropout_on:
            # cuDNN's sliding window is causal only (jax 0.11: "cuDNN doesn't support right
            # window"), so local layers take the banded or masked path.
            return "cudnn"
        if self.attention_impl == "xla" and not dropout_on:
            return "xla"
        # The explicit form: the default, as it is faster on CPU than
        # jax.nn.dot_product_attention's XLA form (docs/benchmarks.md), and the only one with
        # dropout on the probabilities.
        return "einsum"

    def attend(self, path, q, k, v, mask, real, *, deterministic=None, rngs=None):
        """The attention context [B, L, heads, head_dim] of rotated ``q``, ``k`` and ``v`` by
        ``path`` (:meth:`path`), under ``mask`` [B, 1, L or 1, L] (True = may attend);
        ``real`` [B, L] marks the real tokens (what the banded path reads)."""
        # The scores in the compute dtype, the softmax in float32 (what autocast does): with
        # float32 scores the backward's dQ and dK matmuls read float32 [B, h, L, L] operands
        # under bfloat16 compute (issue 27). The same program in float32.
        scores_dtype = jnp.float32 if self.float32_scores else None
        if path == "banded":
            return banded_attention(q, k, v, real, self.window, scores_dtype=scores_dtype)
        if path == "cudnn":
            # cuDNN takes padding as lengths (right padding only).
            lengths = key_lengths(mask)
            return jax.nn.dot_product_attention(
                q,
                k,
                v,
                query_seq_lengths=lengths,
                key_value_seq_lengths=lengths,
                implementation="cudnn",
            )
        if path == "xla":
            return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
        scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=scores_dtype)
        logits = jnp.where(mask, logits.astype(jnp.float32) * scale, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        probs = self.dropout(probs, deterministic=deterministic, rngs=rngs)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

    def __call__(self, x, masks, ropes, *, local, deterministic=None, rngs=None):
        """Args: x [B, L, H]; ``masks`` and ``ropes`` by layer type (:data:`LAYER_TYPES`):
        [B, 1, 1, L] (global, padding) and [B, 1, L, L] (local, padding and window) bool masks
        (True = may attend), ``(cos, sin)`` [L, d] tables.

        ``local``: a sliding-window layer, a Python bool, or a traced bool scalar in a
        ``scan_layers`` encoder, where the rotary table and the mask are selected by it, and
        when the two layer types attend by different paths (:meth:`path`), a ``lax.cond`` runs
        the one of this layer (each layer computes one attention, as unrolled).
        """
        qkv = self.Wqkv(x)  # [B, L, 3, heads, head_dim]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if isinstance(local, bool):
            cos, sin = ropes[LOCAL if local else GLOBAL]
        else:
            pairs = zip(ropes[LOCAL], ropes[GLOBAL], strict=True)
            cos, sin = (jnp.where(local, a, b) for a, b in pairs)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        dropout_on = self.dropout.rate > 0 and not (
            self.dropout.deterministic if deterministic is None else deterministic
        )
        real = masks[GLOBAL][:, 0, 0, :]
        kw = {"deterministic": deterministic, "rngs": rngs}
        paths = {
            kind: self.path(local=kind == LOCAL, dropout_on=dropout_on, length=q.shape[1])
            for kind in LAYER_TYPES
        }
        if isinstance(local, bool):
            kind = LOCAL if local else GLOBAL
            context = self.attend(paths[kind], q, k, v, masks[kind], real, **kw)
        elif paths[LOCAL] == paths[GLOBAL]:  # one masked path (dropout included): pick the mask
            mask = jnp.where(local, masks[LOCAL], masks[GLOBAL])
            context = self.attend(paths[LOCAL], q, k, v, mask, real, **kw)
        else:  # different paths never draw dropout (only the einsum path does, and then both do)

            def branch(kind):
                return lambda q, k, v: self.attend(paths[kind], q, k, v, masks[kind], real)

            context = jax.lax.cond(local, branch(LOCAL), branch(GLOBAL), q, k, v)
        return self.out_dropout(self.Wo(context), **kw)


class ModernBertMLP(nnx.Module):
    """GeGLU: ``Wo(dropout(act(input) * gate))`` with ``input, gate = Wi(x)``."""

    def __init__(self, config: ModernBertConfig, *, dtype, rngs: nnx.Rngs):
        hidden, inter = config.hidden_size, config.intermediate_size
        common = dict(bias=config.mlp_bias, config=config, dtype=dtype, rngs=rngs)
        out_std = config.initializer_range / np.sqrt(2.0 * config.num_hidden_layers)
        self.Wi = _dense(
            hidden, (2, inter), ("embed",), (None, "mlp"), std=config.initializer_range, **common
        )
        self.Wo = _dense(inter, hidden, ("mlp",), ("embed",), std=out_std, **common)
        self.activation = SUPPORTED_ACTIVATIONS[config.hidden_activation]
        self.dropout = Dropout(config.mlp_dropout, deterministic=True)

    def __call__(self, x, *, deterministic=None, rngs=None):
        h = self.Wi(x)  # [B, L, 2, I]
        h = self.activation(h[:, :, 0]) * h[:, :, 1]
        return self.Wo(self.dropout(h, deterministic=deterministic, rngs=rngs))


class ModernBertLayer(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``h + mlp(norm(h))``.

    The block's type (local or global) is an argument of the call, given by the encoder, so that
    the blocks after the first have one structure and stack for ``scan_layers``.
    """

    def __init__(
        self, config: ModernBertConfig, index: int, *, dtype, attention_impl=None, rngs: nnx.Rngs
    ):
        # The first block reads the embedding norm's output directly (HF: nn.Identity).
        self.attn_norm = _layer_norm(config, dtype, rngs) if index > 0 else None
        self.attn = ModernBertAttention(
            config, dtype=dtype, attention_impl=attention_impl, rngs=rngs
        )
        self.mlp_norm = _layer_norm(config, dtype, rngs)
        self.mlp = ModernBertMLP(config, dtype=dtype, rngs=rngs)

    def __call__(self, x, masks, ropes, *, local, deterministic=None, rngs=None):
        """Args: as :meth:`ModernBertAttention.__call__`. Returns: [B, L, H]."""
        kw = {"deterministic": deterministic, "rngs": rngs}
        h = x if self.attn_norm is None else self.attn_norm(x)
        x = x + self.attn(h, masks, ropes, local=local, **kw)
        return sharding.constrain_batch(x + self.mlp(self.mlp_norm(x), **kw))


class ModernBertEncoder(nnx.Module):
    """The blocks, in one of two layouts (the same function, the same parameters).

    Unrolled (``scan_layers=False``), ``self.layers`` lists them. Under ``scan_layers`` the first
    block (which has no attention norm) stays apart, ``self.first_layer``, and the others run as
    one ``jax.lax.scan`` over parameters stacked along a leading layer axis, held under
    :data:`jaxsent.models.bert.STACKED_LAYERS` (what the optimiser's weight decay mask reads),
    with each block's type a scanned flag: the compiler sees two blocks, not
    ``num_hidden_layers``. The flag selects the block's rotary table and mask; where local and
    global blocks attend by different paths (a local block over more than three windows is
    banded, see :func:`banded_attention`; cuDNN global blocks), a ``lax.cond`` on it runs the
    block's own path only. Checkpoints and exports stay per layer
    (:func:`jaxsent.models.bert.unrolled` converts at the edge).

    Memory: without remat, the backward pass of a ``lax.cond`` keeps what both paths save (the
    untaken one's as zeros), so every scanned block holds a global block's attention
    probabilities: a 7-block model at 1,024 tokens needed 1.8x the unrolled model's temporaries
    on CPU. With ``remat="full"`` or ``"dots"`` nothing of the attention is saved, and the scan
    needed about half the unrolled model's (XLA's ``memory_analysis``, jax 0.10.2).

    Every layout computes the same function with the same dropout masks: the dropout stream is
    threaded through the blocks in order, each drawing its keys as the unrolled stack does.

    Args:
      config, dtype, attention_impl, rngs: as in :class:`ModernBertModel`.
      remat: what the backward pass recomputes, a key of
        :data:`jaxsent.models.bert.REMAT_POLICIES` (``"none"``, ``"full"``, ``"dots"``).
      scan_layers: the stacked layout above.
    """

    def __init__(
        self,
        config: ModernBertConfig,
        *,
        dtype,
        attention_impl=None,
        remat: str = "none",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        self.layer_types = tuple(config.layer_types)
        layers = [
            ModernBertLayer(config, i, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
            for i in range(config.num_hidden_layers)
        ]
        self._set_layers(layers, remat=remat, scan_layers=scan_layers)

    def _set_layers(self, layers: list[ModernBertLayer], *, remat: str, scan_layers: bool):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        if not isinstance(scan_layers, bool):
            raise ValueError(f"scan_layers must be a bool, got {scan_layers!r}")
        self.remat = remat
        self.scan_layers = scan_layers
        # nnx.data: the attributes switch between a module and None under set_layout.
        if scan_layers:
            self.layers = nnx.data(None)
            self.first_layer = nnx.data(layers[0])
            stacked = stack_layers(layers[1:]) if len(layers) > 1 else None
            self.stacked_layers = nnx.data(stacked)
        else:
            self.layers = nnx.data(nnx.List(layers))
            self.first_layer = nnx.data(None)
            self.stacked_layers = nnx.data(None)

    def layer_list(self) -> list[ModernBertLayer]:
        """The blocks one by one (slices of the stacked parameters under ``scan_layers``)."""
        if not self.scan_layers:
            return list(self.layers)
        rest = len(self.layer_types) - 1
        return [self.first_layer, *(unstack_layers(self.stacked_layers, rest) if rest else [])]

    def set_layout(self, *, remat: str, scan_layers: bool) -> None:
        """Re-lays the same parameters out for ``remat`` and ``scan_layers`` (in place)."""
        self._set_layers(self.layer_list(), remat=remat, scan_layers=scan_layers)

    def __call__(self, x, masks, ropes, *, deterministic=None, rngs=None):
        """Args: x [B, L, H]; masks and ropes by layer type. Returns: [B, L, H]."""

        def block(layer, x, masks, ropes, local, rngs):
            return layer(x, masks, ropes, local=local, deterministic=deterministic, rngs=rngs)

        if self.remat != "none":
            block = nnx.remat(block, policy=REMAT_POLICIES[self.remat], static_argnums=4)
        layers = self.layers if not self.scan_layers else [self.first_layer]
        for layer, kind in zip(layers, self.layer_types, strict=False):
            x = block(layer, materialized_cotangent(x), masks, ropes, kind == LOCAL, rngs)
        if not self.scan_layers or self.stacked_layers is None:
            return x
        # The other blocks: one scan of a pure function of (parameters, type, x, dropout
        # stream state). The backward loop's carry holds the residual gradient as one array per
        # block already; the barrier stays in the body so that this holds even where XLA would
        # unroll the loop (one conditional per block on CPU, as unrolled).
        rng_graphdef, rng_state = (None, None) if rngs is None else nnx.split(rngs)
        graphdef, stacked = nnx.split(self.stacked_layers)
        local = jnp.asarray([kind == LOCAL for kind in self.layer_types[1:]])

        def body(carry, per_layer):
            x, rng_state = carry
            params, local = per_layer
            stream = None if rng_graphdef is None else nnx.merge(rng_graphdef, rng_state)
            y = nnx.merge(graphdef, params)(
                materialized_cotangent(x),
                masks,
                ropes,
                local=local,
                deterministic=deterministic,
                rngs=stream,
            )
            return (y, None if stream is None else nnx.state(stream)), None

        if self.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        (x, rng_state), _ = jax.lax.scan(body, (x, rng_state), (stacked, local))
        if rngs is not None:
            nnx.update(rngs, rng_state)
        return x


class ModernBertModel(nnx.Module):
    """ModernBERT encoder: embeddings, pre-norm blocks, final LayerNorm.

    Args:
      config: the architecture.
      dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32,
        rotary embeddings are applied in float32 (as HF).
      attention_impl: how the attention is computed where it is not block by block (a local
        layer over more than three windows without attention dropout is always banded, see
        :func:`banded_attention`). ``None`` (default) and ``"einsum"``: the explicit
        ``softmax(q k^T) v`` einsums under a boolean mask that combines padding and the local
        window (also whenever attention dropout is on); on CPU it is faster than
        ``jax.nn.dot_product_attention``'s XLA form at small (micro-)batches (docs/benchmarks.md),
        which is why ModernBERT's default differs from BERT's. ``"xla"``:
        ``jax.nn.dot_product_attention`` with that mask. ``"cudnn"``: the fused GPU kernel in
        global layers (right padding only; cuDNN's sliding window is causal only).
      remat, scan_layers: the layout of the blocks (see :class:`ModernBertEncoder`).
      rngs: parameter initialisation keys. Dropout keys are passed at call time.
    """

    def __init__(
        self,
        config: ModernBertConfig,
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
        self.embeddings = ModernBertEmbeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = ModernBertEncoder(
            config,
            dtype=dtype,
            attention_impl=attention_impl,
            remat=remat,
            scan_layers=scan_layers,
            rngs=rngs,
        )
        self.final_norm = _layer_norm(config, dtype, rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ) -> ModernBertOutput:
        """Encodes a batch.

        Args:
          input_ids: [B, L] int token ids.
          attention_mask: [B, L], nonzero/True on real tokens; ``None`` means no padding.
          token_type_ids: must be ``None`` (ModernBERT has no token types); accepted so that
            every encoder family takes the same call.
          deterministic, rngs: as in :class:`jaxsent.models.bert.BertModel`.

        Returns:
          :class:`ModernBertOutput`; hidden states at padded positions are meaningless.
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {attention_mask.shape} does not match input_ids shape "
                f"{input_ids.shape}"
            )
        if token_type_ids is not None:
            raise ValueError("token_type_ids must be None: ModernBERT has no token types")
        config = self.config
        has_dropout = max(config.attention_dropout, config.embedding_dropout, config.mlp_dropout)
        dropout_on = has_dropout > 0 and not (
            self.embeddings.dropout.deterministic if deterministic is None else deterministic
        )
        if dropout_on and rngs is None:
            raise ValueError(
                "dropout is enabled (train mode or deterministic=False) but no rngs were given; "
                "pass rngs=nnx.Rngs(dropout=...) or call model.eval()"
            )
        length = input_ids.shape[1]
        real = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask != 0
        global_mask = real[:, None, None, :]  # [B, 1, 1, L]: padded keys are never attended
        pos = np.arange(length)
        window = np.abs(pos[:, None] - pos[None, :]) <= config.window  # a static [L, L]
        local_mask = global_mask & jnp.asarray(window)[None, None]
        masks = {GLOBAL: global_mask, LOCAL: local_mask}
        ropes = {
            GLOBAL: rotary_cos_sin(length, config.head_dim, config.global_rope_theta),
            LOCAL: rotary_cos_sin(length, config.head_dim, config.local_rope_theta),
        }
        x = self.embeddings(input_ids, deterministic=deterministic, rngs=rngs)
        x = self.encoder(x, masks, ropes, deterministic=deterministic, rngs=rngs)
        return ModernBertOutput(last_hidden_state=self.final_norm(x))
