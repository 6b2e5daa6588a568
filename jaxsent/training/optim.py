"""Optimiser construction: AdamW with a decay mask, warmup + decay schedule, clipping, NaN guard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

from jaxsent.models.bert import STACKED_LAYERS

SCHEDULES = ("linear", "cosine", "constant")


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
    config: Mapping[str, Any], *, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW(+mask) after global-norm clipping, wrapped in `optax.apply_if_finite`.

    Non-finite updates are skipped by `apply_if_finite` (the optimiser state and parameters stay
    untouched and its counters record the skip); the training loop stops the run after
    `max_consecutive_nonfinite` skips in a row, before apply_if_finite would give up and apply one.
    """
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
    tx = optax.apply_if_finite(
        optax.chain(*chain),
        # Larger than the loop's own limit, so the loop always stops first with a clear error.
        max_consecutive_errors=int(config["max_consecutive_nonfinite"]) + 1,
    )
    return tx, schedule
