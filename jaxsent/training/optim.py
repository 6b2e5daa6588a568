"""Optimiser construction: AdamW with a decay mask, warmup + decay schedule, clipping, NaN guard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxsent.models.bert import STACKED_LAYERS

SCHEDULES = ("linear", "cosine", "constant")
# How a non-finite update is skipped: "select" (`skip_nonfinite_updates`, the default) or
# "cond" (`optax.apply_if_finite`, the earlier program); the same state and semantics.
NONFINITE_GUARDS = ("select", "cond")


def skip_nonfinite_updates(
    inner: optax.GradientTransformation,
    *,
    max_consecutive_errors: int,
    conditional_on_cpu: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """`optax.apply_if_finite` computed with selects instead of a `jax.lax.cond` (off CPU).

    The same transformation: its state is optax's ``ApplyIfFiniteState`` (the same fields,
    dtypes and counters, so checkpoints of either read as the other's), and an update whose
    gradients hold a NaN or an infinity is skipped (zero updates, the inner state kept) until
    more than ``max_consecutive_errors`` come in a row, when it is applied.

    On a GPU or TPU the inner update is always computed and then selected, so the step's
    program holds no conditional around the optimiser, whatever a compiler would make of one
    (issue 27: XLA:GPU in jax 0.10.2 turns apply_if_finite's into selects itself; one it keeps
    waits for its predicate on the host). Skipped updates are exact zeros and the previous
    state; applied ones are the inner update's values, which XLA may fuse differently with
    the selects around them: on CPU that moved an AdamW update by one ulp now and then, so
    with ``conditional_on_cpu`` (the default) the update stays under apply_if_finite's
    conditional there (`jax.lax.platform_dependent`) and CPU results are apply_if_finite's,
    bit for bit.

    Args:
      inner: the transformation to guard.
      max_consecutive_errors: how many non-finite updates in a row are skipped.
      conditional_on_cpu: keep apply_if_finite's conditional on CPU; False selects there too.

    Returns:
      The guarded transformation.
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True, jnp.bool_),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra_args):
        isfinite = jnp.all(jnp.array([jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates)]))
        notfinite_count = jnp.where(
            isfinite, jnp.zeros([], jnp.int32), optax.safe_increment(state.notfinite_count)
        )
        apply = jnp.logical_or(isfinite, notfinite_count > max_consecutive_errors)

        def selected(updates, inner_state, params):
            new_updates, new_inner_state = inner.update(updates, inner_state, params, **extra_args)

            def pick(new, old):
                return jax.lax.select(jnp.broadcast_to(apply, jnp.shape(new)), new, old)

            return (
                jax.tree.map(lambda u: pick(u, jnp.zeros_like(u)), new_updates),
                jax.tree.map(pick, new_inner_state, inner_state),
            )

        def conditional(updates, inner_state, params):  # apply_if_finite's own
            return jax.lax.cond(
                apply,
                lambda: inner.update(updates, inner_state, params, **extra_args),
                lambda: (optax.tree.zeros_like(updates), inner_state),
            )

        arguments = (updates, state.inner_state, params)
        if conditional_on_cpu:
            new_updates, new_inner_state = jax.lax.platform_dependent(
                *arguments, cpu=conditional, default=selected
            )
        else:
            new_updates, new_inner_state = selected(*arguments)
        new_state = optax.ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=isfinite,
            total_notfinite=jnp.where(
                isfinite, state.total_notfinite, optax.safe_increment(state.total_notfinite)
            ),
            inner_state=new_inner_state,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def learning_rate_schedule(
    *, peak_value: float, total_steps: int, warmup_steps: int, kind: str = "linear"
) -> optax.Schedule:
    """Linear warmup from 0 to `peak_value`, then `kind` decay to 0 at `total_steps`."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule kind={kind!r} is not one of {SCHEDULES}")
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]")
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak_value,
            warmup_steps=warmup_steps,
            decay_steps=total_steps,
            end_value=0.0,
        )
    warmup = optax.linear_schedule(0.0, peak_value, max(warmup_steps, 1))
    if kind == "constant":
        after = optax.constant_schedule(peak_value)
    else:
        after = optax.linear_schedule(peak_value, 0.0, max(total_steps - warmup_steps, 1))
    return optax.join_schedules([warmup, after], boundaries=[warmup_steps])


def weight_decay_mask(params: Any) -> Any:
    """True for matrices (kernels, embedding tables); False for biases and LayerNorm scales.

    This is the usual BERT rule (no decay on `bias` and `LayerNorm.weight`) stated on shapes,
    so it needs no parameter names and holds for any module tree. Under the encoder's
    `scan_layers` layout the parameters below `STACKED_LAYERS` carry a leading layer axis, which
    is not counted: both layouts decay the same parameters.
    """

    def decay(path, p) -> bool:
        stacked = any(getattr(key, "key", None) == STACKED_LAYERS for key in path)
        return p.ndim - stacked > 1

    return jax.tree_util.tree_map_with_path(decay, params)


def make_optimizer(
    config: Mapping[str, Any], *, total_steps: int, nonfinite_guard: str = "select"
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW(+mask) after global-norm clipping, wrapped in a non-finite guard.

    Non-finite updates are skipped by `skip_nonfinite_updates` (`optax.apply_if_finite`'s
    semantics and state: the optimiser state and parameters stay untouched and its counters
    record the skip); the training loop stops the run after `max_consecutive_nonfinite` skips in
    a row, before the guard would give up and apply one.

    Args:
      config: the run's ``config.optim``.
      total_steps: the schedule's length.
      nonfinite_guard: ``"select"`` (`skip_nonfinite_updates`) or ``"cond"``
        (`optax.apply_if_finite`, the earlier program, kept to measure it on a device).

    Returns:
      ``(transformation, learning-rate schedule)``.
    """
    if nonfinite_guard not in NONFINITE_GUARDS:
        raise ValueError(f"nonfinite_guard={nonfinite_guard!r}; expected one of {NONFINITE_GUARDS}")
    warmup_steps = int(config["warmup_steps"])
    if warmup_steps < 0:
        warmup_steps = int(round(float(config["warmup_fraction"]) * total_steps))
    schedule = learning_rate_schedule(
        peak_value=float(config["learning_rate"]),
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        kind=str(config["schedule"]),
    )
    chain = []
    if config["grad_clip_norm"]:
        chain.append(optax.clip_by_global_norm(float(config["grad_clip_norm"])))
    chain.append(
        optax.adamw(
            learning_rate=schedule,
            b1=float(config["b1"]),
            b2=float(config["b2"]),
            eps=float(config["eps"]),
            weight_decay=float(config["weight_decay"]),
            mask=weight_decay_mask,
        )
    )
    # Larger than the loop's own limit, so the loop always stops first with a clear error.
    max_errors = int(config["max_consecutive_nonfinite"]) + 1
    if nonfinite_guard == "cond":
        tx = optax.apply_if_finite(optax.chain(*chain), max_consecutive_errors=max_errors)
    else:
        tx = skip_nonfinite_updates(optax.chain(*chain), max_consecutive_errors=max_errors)
    return tx, schedule
