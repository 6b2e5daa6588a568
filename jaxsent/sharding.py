"""Device meshes and rule-based parameter placement.

Model parameters carry *logical* axis names in their ``out_sharding`` metadata (see
``jaxsent.models.bert``): ``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``, ``norm`` or ``None``.
A strategy in :data:`SHARDING_RULES` maps each logical name to a mesh axis (or ``None`` =
replicated), so the same model runs data-parallel, FSDP or tensor-parallel without edits.
nnx copies the metadata onto optimizer moments, so :func:`tree_shardings` places an
``nnx.Optimizer``'s state with the same rules.

Axis types: :func:`make_mesh` builds **Auto** axes. The model's computation carries one kind of
sharding annotation, :func:`constrain_batch` at the embeddings' and every layer's output (the
batch over ``data``); with Auto axes XLA propagates the parameter and batch shardings from there
and inserts the collectives (all-gathers of the weights for FSDP, reductions for TP).
``jax.make_mesh``'s default, Explicit axes, needs an ``out_sharding`` at every op whose
operand shardings conflict: measured here, a train step under an Explicit mesh fails with
``ShardingTypeError`` already at the embedding gather (batch on ``data``, table replicated), for
every strategy including ``dp``. Steps on an Auto mesh work both inside
``with jax.set_mesh(mesh):`` and outside it.

Placement rules for one dimension, in order: ``None`` -> replicated; a mesh axis of size 1 ->
replicated; a mesh axis already used by an earlier dimension of the same array -> replicated;
a dimension not divisible by the mesh axis size -> replicated (e.g. MiniLM's vocabulary of
30522 over 4 devices). So every strategy is valid on every mesh; what it shards depends on
the shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "MESH_AXES",
    "LOGICAL_AXES",
    "SHARDING_RULES",
    "make_mesh",
    "resolve_rules",
    "logical_to_spec",
    "tree_shardings",
    "shard_model",
    "batch_sharding",
    "constrain_batch",
]

logger = logging.getLogger(__name__)

MESH_AXES = ("data", "model")
LOGICAL_AXES = ("vocab", "embed", "heads", "kv", "mlp", "norm")

Rules = tuple[tuple[str, str | None], ...]

SHARDING_RULES: dict[str, Rules] = {
    # Pure data parallel: every parameter replicated on every device.
    "dp": tuple((name, None) for name in LOGICAL_AXES),
    # FSDP (ZeRO-3 style): every matrix split along its hidden (`embed`) axis over `data`;
    # XLA all-gathers each weight where it is used. Replicated over `model`.
    "fsdp": (
        ("vocab", None),
        ("embed", "data"),
        ("heads", None),
        ("kv", None),
        ("mlp", None),
        ("norm", None),
    ),
    # Megatron-style tensor parallel over `model`: attention heads, the MLP hidden layer and
    # the vocabulary are split; replicated over `data`.
    "tp": (
        ("vocab", "model"),
        ("embed", None),
        ("heads", "model"),
        ("kv", None),
        ("mlp", "model"),
        ("norm", None),
    ),
    # Both: FSDP over `data` and tensor parallel over `model` (2-D).
    "fsdp_tp": (
        ("vocab", "model"),
        ("embed", "data"),
        ("heads", "model"),
        ("kv", None),
        ("mlp", "model"),
        ("norm", None),
    ),
}

T = TypeVar("T")


def make_mesh(
    *,
    data: int = -1,
    model: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ('data', 'model') device mesh.

    Args:
      data: size of the data-parallel axis; ``-1`` = all devices left after ``model``.
      model: size of the model-parallel axis.
      devices: devices to use (default ``jax.devices()``); all of them go into the mesh.

    Returns:
      A ``jax.sharding.Mesh`` with axis names ``('data', 'model')``, both ``AxisType.Auto``.

    Raises:
      ValueError: sizes that do not multiply to the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if not isinstance(model, int) or model < 1:
        raise ValueError(f"model must be a positive int, got {model!r}")
    if data == -1:
        if n % model:
            raise ValueError(f"model={model} does not divide the number of devices {n}")
        data = n // model
    if not isinstance(data, int) or data < 1 or data * model != n:
        raise ValueError(
            f"data={data!r} x model={model} must equal the number of devices ({n}); "
            "pass devices=... to use a subset"
        )
    return jax.make_mesh((data, model), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def resolve_rules(rules: str | Rules | Mapping[str, str | None]) -> dict[str, str | None]:
    """A strategy name of :data:`SHARDING_RULES`, or explicit rules, as a dict."""
    if isinstance(rules, str):
        if rules not in SHARDING_RULES:
            raise ValueError(f"rules={rules!r}; expected one of {sorted(SHARDING_RULES)}")
        rules = SHARDING_RULES[rules]
    return dict(rules.items() if isinstance(rules, Mapping) else rules)


def logical_to_spec(
    logical: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: str | Rules | Mapping[str, str | None],
) -> PartitionSpec:
    """The mesh ``PartitionSpec`` for one array (placement rules in the module docstring).

    Args:
      logical: one logical axis name (or ``None``) per dimension.
      shape: the array shape.
      mesh: the target mesh.
      rules: a strategy name or logical -> mesh axis pairs.

    Returns:
      A ``PartitionSpec`` with one entry per dimension.

    Raises:
      ValueError: a logical name missing from the rules, a rule naming an axis the mesh
        does not have, or ``logical`` and ``shape`` of different lengths.
    """
    table = resolve_rules(rules)
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[str | None] = []
    for name, size in zip(logical, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; rules cover {sorted(table)}")
        axis = table[name]
        if axis is not None and axis not in mesh.shape:
            raise ValueError(
                f"rule {name!r} -> {axis!r} names an axis missing from the mesh {dict(mesh.shape)}"
            )
        if axis is None or mesh.shape[axis] == 1 or axis in used or size % mesh.shape[axis]:
            spec.append(None)
            continue
        used.add(axis)
        spec.append(axis)
    return PartitionSpec(*spec)


def _variable_sharding(x: Any, mesh: Mesh, table: Mapping[str, str | None]) -> Any:
    if isinstance(x, nnx.Variable):
        value = x.get_value()
        logical = x.get_metadata().get("out_sharding")
        shape = getattr(value, "shape", ())
        spec = logical_to_spec(logical, shape, mesh, table) if logical else PartitionSpec()
        return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, PartitionSpec())


def tree_shardings(state: T, mesh: Mesh, rules: str | Rules | Mapping[str, str | None]) -> T:
    """``NamedSharding`` for every leaf of an ``nnx.State`` (model or optimizer).

    Variables with ``out_sharding`` metadata get :func:`logical_to_spec`; anything else
    (RNG keys, step counters, un-annotated variables) is replicated.

    Args:
      state: e.g. ``nnx.state(model)`` or ``nnx.state(optimizer)``; abstract states from
        ``nnx.eval_shape`` work too.
      mesh: the target mesh.
      rules: a strategy name or logical -> mesh axis pairs.

    Returns:
      A tree of the same structure (Variables holding ``NamedSharding`` values), usable with
      ``jax.device_put(state, shardings)`` and as ``jax.jit`` in/out shardings.
    """
    table = resolve_rules(rules)
    return jax.tree.map(
        lambda x: _variable_sharding(x, mesh, table),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def shard_model(
    model: nnx.Module, mesh: Mesh, rules: str | Rules | Mapping[str, str | None]
) -> None:
    """Places every variable of ``model`` (an encoder, classifier or optimizer) in place.

    Args:
      model: any NNX graph node; its state is moved with ``jax.device_put``.
      mesh: the target mesh.
      rules: a strategy name of :data:`SHARDING_RULES` or logical -> mesh axis pairs.
    """
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, tree_shardings(state, mesh, rules)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for [B, ...] batch arrays: the batch split over ``data``, rest replicated."""
    return NamedSharding(mesh, PartitionSpec("data"))


def constrain_batch(x: jax.Array) -> jax.Array:
    """`x` [B, ...] pinned to the batch layout (B over ``data``) under the current mesh.

    Layer boundaries carry this constraint so that sharding propagation keeps activations split
    by example. Without it, FSDP (weights split along ``embed`` over the same ``data`` axis)
    lets XLA split activations along ``embed`` instead and all-gather them, layer after layer:
    on TPU, BERT-large at batch 256 all-gathered ~300 GB per step instead of its weights. A
    no-op outside a mesh, when ``data`` has size 1, or when B does not divide over it.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "data" not in mesh.axis_names:
        return x
    size = mesh.shape["data"]
    if size == 1 or x.ndim == 0 or x.shape[0] % size:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec("data"))
