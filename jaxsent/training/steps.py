"""Jitted train and eval steps over a device mesh.

The model and optimiser live as one `nnx.State` pytree (`TrainState.state`) that is passed through
`jax.jit` functionally (`nnx.merge` inside, `nnx.split` out). That keeps the state donatable,
checkpointable as plain arrays and explicitly sharded, and avoids `nnx.jit`'s per-call graph walk.
Dropout keys are not state: each step reseeds the `dropout` stream with `fold_in(key, step)`, so a
resumed run draws exactly the masks an uninterrupted run would.

A run knows every batch shape it will use before its first step (the bucket lengths), so
`StepFunctions.compile_ahead` can compile them on a background thread while the first steps run
(``train.compile_ahead``); a step whose shape is ready runs the ahead-of-time executable, which is
what `jax.jit` would have compiled for it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxsent import data as data_lib
from jaxsent import sharding
from jaxsent.training.timing import COMPILE_WAIT_EVENT

Batch = dict[str, jax.Array]
LossFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """Graph definitions and the compiled steps for one (model, optimizer) pair."""

    train_graphdef: Any
    eval_graphdef: Any
    rng_state: nnx.State
    train_step_fn: Callable[..., tuple[nnx.State, dict[str, jax.Array]]]
    eval_step_fn: Callable[..., jax.Array]
    # ("train" | "eval", global batch, length) -> future executable, from `compile_ahead`.
    ahead: dict[tuple[str, int, int], concurrent.futures.Future] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )

    def train_step(self, state: nnx.State, batch: Batch) -> tuple[nnx.State, dict[str, jax.Array]]:
        return self._call("train", self.train_step_fn, state, batch)

    def eval_step(self, state: nnx.State, batch: Batch) -> jax.Array:
        return self._call("eval", self.eval_step_fn, state, batch)

    def _call(self, step: str, fn: Callable[..., Any], state: nnx.State, batch: Batch) -> Any:
        future = self.ahead.get((step, *batch["input_ids"].shape))
        if future is None:
            return fn(state, self.rng_state, batch)
        if not future.done():
            start = time.perf_counter()
            concurrent.futures.wait([future])
            jax.monitoring.record_event_duration_secs(
                COMPILE_WAIT_EVENT, time.perf_counter() - start
            )
        return future.result()(state, self.rng_state, batch)

    def compile_ahead(
        self,
        state: nnx.State,
        shapes: Iterable[tuple[str, int, int]],
        mesh: jax.sharding.Mesh,
    ) -> None:
        """Compiles the steps for `shapes`, in order, on one background thread.

        While the first steps run, XLA compiles the shapes still to come on the host's spare
        cores. That pays where the host idles while a device steps; on a CPU the compiles take
        cores from the steps beside them (2 cores: `make train` no faster, so the config
        default, ``train.compile_ahead``, is off). `train_step` and `eval_step` then run the
        executables (waiting for one still compiling); other shapes go through `jax.jit` as
        before. A compile error surfaces at the first step of its shape.

        Args:
          state: the run's state (only its shapes, dtypes and shardings are read).
          shapes: ``("train" | "eval", global_batch, length)`` in order of first use; shapes
            already submitted are skipped.
          mesh: the mesh the steps run under.
        """
        state_args = jax.tree.map(_abstract_like, state)
        rng_args = jax.tree.map(_abstract_like, self.rng_state)
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxsent-compile")
        for step, global_batch, length in shapes:
            key = (step, int(global_batch), int(length))
            if key in self.ahead:
                continue
            fn = self.train_step_fn if step == "train" else self.eval_step_fn
            batch = abstract_batch(key[1], key[2], mesh)
            self.ahead[key] = executor.submit(_compile, fn, mesh, state_args, rng_args, batch)
        executor.shutdown(wait=False)


def _abstract_like(x: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=x.sharding, weak_type=getattr(x, "weak_type", False)
    )


def _compile(fn, mesh: jax.sharding.Mesh, *args: Any) -> Any:
    with jax.set_mesh(mesh):
        return fn.lower(*args).compile()


def abstract_batch(global_batch: int, length: int, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """The batch a step receives, as shapes: what `jaxsent.data.make_batch` assembles.

    Built by `make_batch` itself on a one-example data set, so the keys and dtypes are the
    training loop's; sharded over ``data`` as the loop's `BatchPlacer` places it.
    """
    arrays = data_lib.token_arrays([[1]])
    indices = np.full(global_batch, -1, dtype=np.int64)
    indices[0] = 0
    batch = data_lib.make_batch(arrays, data_lib.BatchSpec(indices=indices, seq_len=length))
    batch.pop("example_id", None)
    placement = sharding.batch_sharding(mesh)
    return {
        key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=placement)
        for key, value in batch.items()
    }


def trainable_filter(model: nnx.Module):
    """What the optimiser updates: every `nnx.Param`, less the pooler under mean pooling.

    Mean pooling never reads the pretrained tanh pooler, so it gets no gradient; leaving it out
    also keeps weight decay from silently shrinking it in the exported checkpoint.
    """
    if getattr(model, "pooling", None) == "mean":
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("pooler")))
    return nnx.Param


def split_train_state(model: nnx.Module, optimizer: nnx.Optimizer):
    """(graphdef, rng_state, state): RNG streams apart, so checkpoints hold arrays only."""
    return nnx.split((model, optimizer), nnx.RngState, ...)


def _place_keys(tree: nnx.State, shardings: Any) -> nnx.State:
    """`jax.device_put(tree, shardings)` that also works for PRNG keys across processes.

    jax 0.10.2's `device_put` rejects a typed key array for a sharding spanning several processes
    ("must be a Device or a Sharding which represents addressable devices"); its raw key data
    is placed like any array and re-wrapped.
    """

    def put(x, sharding):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.device_put(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(x, sharding)

    return jax.tree.map(put, tree, shardings)


def make_steps(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    *,
    loss_fn: LossFn,
    dropout_key: jax.Array,
    state_shardings_fn: Callable[[nnx.State], Any] | None = None,
    donate: bool = True,
    micro_batches: int = 1,
) -> tuple[StepFunctions, nnx.State]:
    """The jitted train/eval steps and the state they take, placed nowhere.

    Needs no arrays: `model` and `optimizer` may be abstract (from `nnx.eval_shape`), and then
    the returned state and `StepFunctions.rng_state` hold `jax.ShapeDtypeStruct`s. With
    `abstract_arguments` the steps lower and compile for any mesh, a TPU topology's included
    (`python -m train.plan`). `build_steps` is this plus placing the concrete state.

    Args:
      model, optimizer, loss_fn, dropout_key, state_shardings_fn, donate, micro_batches: as in
        `build_steps`.

    Returns:
      The step functions and the (unplaced) state.
    """
    model.eval()
    eval_graphdef, _, _ = split_train_state(model, optimizer)
    model.train()
    train_graphdef, rng_state, state = split_train_state(model, optimizer)
    state_shardings = None if state_shardings_fn is None else state_shardings_fn(state)

    # The RNG streams are passed as (undonated) arguments rather than closed over: NNX refuses to
    # reseed a Variable that was created outside the trace.
    def train_step(state: nnx.State, rng_state: nnx.State, batch: Batch):
        model, optimizer = nnx.merge(train_graphdef, rng_state, state)
        nnx.reseed(model, dropout=jax.random.fold_in(dropout_key, optimizer.step[...]))

        def compute_loss(model):
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss = loss_fn(logits, batch["labels"], batch["lengths"], where=batch["where"])
            return loss, logits

        if micro_batches == 1:
            (loss, _), grads = nnx.value_and_grad(
                compute_loss, argnums=nnx.DiffState(0, optimizer.wrt), has_aux=True
            )(model)
        else:
            loss, grads = _accumulated_loss_and_grads(
                model, optimizer.wrt, loss_fn, batch, micro_batches
            )
        grad_norm = optax.tree.norm(grads)
        optimizer.update(model, grads)
        _, _, new_state = split_train_state(model, optimizer)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            # apply_if_finite skipped the update iff some gradient is not finite.
            "finite": jnp.isfinite(grad_norm),
            "examples": jnp.sum(batch["where"]),
            "real_tokens": jnp.sum(jnp.where(batch["where"], batch["lengths"], 0)),
        }
        return new_state, metrics

    def eval_step(state: nnx.State, rng_state: nnx.State, batch: Batch) -> jax.Array:
        model, _ = nnx.merge(eval_graphdef, rng_state, state)
        return model(batch["input_ids"], batch["attention_mask"])

    steps = StepFunctions(
        train_graphdef=train_graphdef,
        eval_graphdef=eval_graphdef,
        rng_state=rng_state,
        train_step_fn=jax.jit(
            train_step,
            out_shardings=(state_shardings, None),
            donate_argnums=(0,) if donate else (),
        ),
        eval_step_fn=jax.jit(eval_step),
    )
    return steps, state


def _micro_batches(batch: Batch, count: int) -> Batch:
    """[B, ...] -> [count, B / count, ...], micro-batch m holding rows m, m + count, ...

    Strided, not contiguous: a batch split over ``data`` keeps each micro-batch split over it
    the same way (every device holds B / (count x devices) rows of each).
    """

    def split(x):
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def _accumulated_loss_and_grads(
    model: nnx.Module, wrt: Any, loss_fn: LossFn, batch: Batch, count: int
) -> tuple[jax.Array, nnx.State]:
    """The batch's mean loss and its gradient, `count` micro-batches at a time (one `scan`).

    For a loss that is a mean over the real rows (``where``) of per-example terms, such as
    ``bce``: micro-batch m contributes its own mean times its share of the batch's real rows, so
    the sum is the whole batch's mean, and its gradient the whole batch's. A loss that normalises
    over the batch (the seed's weights) does not split this way; `check_config` refuses it. The
    dropout stream runs on through the micro-batches, so each draws its own masks.
    """
    graphdef, params, rest = nnx.split(model, wrt, ...)
    real_rows = jnp.maximum(jnp.sum(batch["where"]), 1).astype(jnp.float32)

    def micro_loss(params, rest, micro):
        # copy: fresh Variables at this trace level, which the dropout stream may advance
        model = nnx.merge(graphdef, params, rest, copy=True)
        logits = model(micro["input_ids"], micro["attention_mask"])
        loss = loss_fn(logits, micro["labels"], micro["lengths"], where=micro["where"])
        share = jnp.sum(micro["where"]) / real_rows
        return loss * share, nnx.split(model, wrt, ...)[2]  # the advanced dropout stream

    def body(carry, micro):
        loss_sum, grad_sum, rest = carry
        (loss, rest), grads = jax.value_and_grad(micro_loss, has_aux=True)(params, rest, micro)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads), rest), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    init = (jnp.zeros((), jnp.float32), zeros, rest)
    (loss, grads, rest), _ = jax.lax.scan(body, init, _micro_batches(batch, count))
    nnx.update(model, rest)
    return loss, grads


def build_steps(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    *,
    loss_fn: LossFn,
    dropout_key: jax.Array,
    state_shardings_fn: Callable[[nnx.State], Any] | None = None,
    donate: bool = True,
    micro_batches: int = 1,
) -> tuple[StepFunctions, nnx.State]:
    """Compile-ready train/eval steps and the initial state.

    Args:
      model: the classifier (`model(input_ids, attention_mask) -> logits [B]`).
      optimizer: `nnx.Optimizer(model, tx, wrt=trainable_filter(model))`; gradients are
        taken with respect to the same filter.
      loss_fn: `loss_fn(logits, labels, lengths, *, where) -> scalar`, e.g. from
        `jaxsent.losses.get_loss`.
      dropout_key: base key for dropout; step `s` uses `fold_in(dropout_key, s)`.
      state_shardings_fn: maps the state to a matching pytree of `NamedSharding` (e.g.
        `partial(jaxsent.sharding.tree_shardings, mesh=mesh, rules=rules)`); the initial state is
        placed by it and every step's output keeps that layout. None leaves placement to JAX.
      donate: donate the input state buffers to the output state.
      micro_batches: run the train step's forward and backward passes on this many equal
        micro-batches in turn and sum their gradients (gradient accumulation inside the step):
        the same gradient for a loss that is a mean over per-example terms (``bce``), with
        smaller working sets. A batch's row count must be a multiple of it. On CPU, 4
        micro-batches of 8 train faster than one batch of 32 (docs/benchmarks.md).

    Returns:
      The step functions and the (placed) initial state.
    """
    steps, state = make_steps(
        model,
        optimizer,
        loss_fn=loss_fn,
        dropout_key=dropout_key,
        state_shardings_fn=state_shardings_fn,
        donate=donate,
        micro_batches=micro_batches,
    )
    if state_shardings_fn is not None:
        state = jax.device_put(state, state_shardings_fn(state))
        rng_state = _place_keys(steps.rng_state, state_shardings_fn(steps.rng_state))
        steps = dataclasses.replace(steps, rng_state=rng_state)
    return steps, state


def abstract_arguments(tree: Any, shardings: Any) -> Any:
    """`tree` as `jax.ShapeDtypeStruct`s carrying `shardings` (a matching tree of shardings).

    What `jax.jit(...).lower` takes to compile for a mesh without any array on its devices:
    `abstract_arguments(state, state_shardings_fn(state))` for the state and the RNG state of
    `make_steps`, or a batch of arrays or structs with the batch sharding.
    """
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        tree,
        shardings,
    )


@dataclasses.dataclass(frozen=True)
class EvalStep:
    """The eval step alone, for a model without an optimiser (evaluation, prediction).

    `eval_step(state, batch)` computes what `StepFunctions.eval_step` computes for the same
    parameters, so it can stand in for it (e.g. in `jaxsent.training.loop.evaluate`).
    """

    graphdef: Any
    rng_state: nnx.State
    eval_step_fn: Callable[..., jax.Array]

    def eval_step(self, state: nnx.State, batch: Batch) -> jax.Array:
        return self.eval_step_fn(state, self.rng_state, batch)


def build_eval_step(
    model: nnx.Module, *, state_shardings_fn: Callable[[nnx.State], Any] | None = None
) -> tuple[EvalStep, nnx.State]:
    """The jitted eval step of `model` and its (placed) state.

    Args:
      model: the classifier; put in eval mode.
      state_shardings_fn: as in `build_steps`.

    Returns:
      The step and the state to pass it.
    """
    model.eval()
    graphdef, rng_state, state = nnx.split(model, nnx.RngState, ...)
    if state_shardings_fn is not None:
        state = jax.device_put(state, state_shardings_fn(state))
        rng_state = _place_keys(rng_state, state_shardings_fn(rng_state))

    def eval_step(state: nnx.State, rng_state: nnx.State, batch: Batch) -> jax.Array:
        model = nnx.merge(graphdef, rng_state, state)
        return model(batch["input_ids"], batch["attention_mask"])

    return EvalStep(graphdef, rng_state, jax.jit(eval_step)), state


def merge_model(steps: StepFunctions, state: nnx.State, *, train: bool = False) -> nnx.Module:
    """The model (in eval mode unless `train`) holding `state`'s parameters."""
    graphdef = steps.train_graphdef if train else steps.eval_graphdef
    model, _ = nnx.merge(graphdef, steps.rng_state, state)
    return model
