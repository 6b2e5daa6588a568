"""A run's model, optimiser and jitted steps from its config, built in one place.

The trainer (`jaxsent.training.loop.build_run`) builds them from the pretrained weights and
places the state on its mesh; the planner (`python -m train.plan`) builds the same model,
optimiser, loss, sharding rules and steps abstractly (`nnx.eval_shape`: shapes only, no weights,
no data) and compiles them for a TPU topology. Both call :func:`training_steps`, so the planned
program is the trained one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxsent import losses, sharding
from jaxsent.models import SentimentClassifier, bert, bert_params, loading
from jaxsent.models.classifier import default_label_names
from jaxsent.training.config_check import configured_classes
from jaxsent.training.optim import make_optimizer
from jaxsent.training.steps import (
    StepFunctions,
    abstract_arguments,
    abstract_batch,
    build_steps,
    make_steps,
    trainable_filter,
)

__all__ = [
    "abstract_batch",
    "abstract_steps",
    "build_model",
    "encoder_config",
    "training_steps",
]


def _has_pooler(directory: str, model_type: str | None) -> bool:
    """Whether the folder's weights have ``pooler.*`` tensors (read from the file header only).

    `bert_params.build_encoder` gives the encoder a pooler exactly then.
    """
    path = os.path.join(directory, bert_params.SAFETENSORS)
    if not os.path.isfile(path) or model_type not in bert_params.WRAPPER_PREFIX:
        return True  # BertConfig.from_hf names a model type it cannot build
    from safetensors import safe_open

    names = bert_params.key_map(model_type)
    with safe_open(path, framework="numpy") as f:
        return any(names.canonical(k).startswith("pooler.") for k in f.keys())


def encoder_config(name: str) -> loading.Config:
    """The encoder architecture of ``config.model.name``, without reading any weights.

    Args:
      name: a named architecture (``jaxsent.models.architectures``, e.g. ``"bert-large"``), a
        local folder or short name (its ``config.json``), or a hub id (only its ``config.json``
        is fetched, or read from the hub cache).

    Returns:
      The family's config (a BERT-family one with a pooler unless a local checkpoint's weights
      have none).
    """
    raw, directory = loading.read_model_config(name, download=True)
    config = loading.config_from_hf(raw)
    if isinstance(config, bert.BertConfig) and directory is not None:  # ModernBERT: no pooler
        config = dataclasses.replace(
            config, use_pooler=_has_pooler(directory, raw.get("model_type"))
        )
    return config


def build_model(
    config: ml_collections.ConfigDict,
    *,
    pretrained: bool = True,
    label_names: tuple[str, ...] | None = None,
):
    """The classifier that ``config.model`` describes, in the encoder layout it asks for.

    Args:
      config: a run config (``configs/default.py``).
      pretrained: load ``config.model.name``'s weights; False initialises the architecture
        (:func:`encoder_config`) at random: call it under ``nnx.eval_shape`` for shapes alone.
      label_names: the classes, in class-id order (the head has one logit for two, else one
        per class); default those the config names (`config_check.configured_classes`), else
        the two binary classes.

    Returns:
      The `SentimentClassifier` (eval mode), with ``model.remat`` and ``model.scan_layers``
      applied to its encoder.
    """
    mc = config.model
    label_names = tuple(label_names or configured_classes(config) or default_label_names(2))
    kwargs = dict(
        pooling=mc.pooling,
        dropout_rate=mc.dropout_rate,
        dtype=jnp.dtype(mc.dtype),
        rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
        num_labels=len(label_names),
        label_names=label_names,
    )
    if pretrained:
        model = SentimentClassifier.from_pretrained(mc.name, replace_mismatched_head=True, **kwargs)
    else:
        model = SentimentClassifier(encoder_config(mc.name), **kwargs)
    # Checkpoints load per layer (the Hugging Face layout); the layout changes here, at the edge.
    model.encoder.encoder.set_layout(remat=mc.remat, scan_layers=mc.scan_layers)
    return model


def _model_and_optimizer(
    config, tx: optax.GradientTransformation, *, pretrained: bool, label_names, edit_model
):
    model = build_model(config, pretrained=pretrained, label_names=label_names)
    if edit_model is not None:
        model = edit_model(model)
    return model, nnx.Optimizer(model, tx, wrt=trainable_filter(model))


def micro_batches(config: ml_collections.ConfigDict) -> int:
    """How many micro-batches a train step splits its batch into (``train.micro_batch_size``)."""
    micro = config.train.get("micro_batch_size", 0)
    return config.train.global_batch_size // micro if micro else 1


def training_steps(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    *,
    total_steps: int,
    abstract: bool = False,
    label_names: tuple[str, ...] | None = None,
    pretrained: bool = True,
    edit_model: Callable[[nnx.Module], nnx.Module] | None = None,
    nonfinite_guard: str = "select",
) -> tuple[StepFunctions, nnx.State, optax.Schedule]:
    """The run's jitted train and eval steps, their state and the learning-rate schedule.

    Args:
      config: a run config.
      mesh: the run's ('data', 'model') mesh; ``config.mesh.strategy`` names the rules that
        place the state on it.
      total_steps: the schedule's length.
      abstract: build from the architecture alone, under ``nnx.eval_shape``: the state holds
        `jax.ShapeDtypeStruct`s and is not placed (see `jaxsent.training.steps.make_steps`).
        Else build the weights (see ``pretrained``) and place the state on ``mesh``.
      label_names: the run's classes (see `build_model`).
      pretrained: load the checkpoint's weights (else random ones, e.g. to time a step);
        ignored when ``abstract``.
      edit_model: applied to the built model before the optimiser is made (for variants of
        the run's program, e.g. bench/gpu_leads.py's switches); returns the model to train.
      nonfinite_guard: see `jaxsent.training.optim.make_optimizer`.

    Returns:
      ``(steps, state, schedule)``.
    """
    tx, schedule = make_optimizer(
        config.optim, total_steps=total_steps, nonfinite_guard=nonfinite_guard
    )
    kwargs: dict[str, Any] = dict(
        loss_fn=losses.loss_from_fields(config.loss),
        dropout_key=jax.random.key(config.seed),
        state_shardings_fn=functools.partial(
            sharding.tree_shardings, mesh=mesh, rules=config.mesh.strategy
        ),
        micro_batches=micro_batches(config),
    )
    if abstract:
        model, optimizer = nnx.eval_shape(
            lambda: _model_and_optimizer(
                config, tx, pretrained=False, label_names=label_names, edit_model=edit_model
            )
        )
        steps, state = make_steps(model, optimizer, **kwargs)
    else:
        # Built outside the mesh context: parameters carry logical axis names, which only become
        # mesh axes through the sharding rules when the state is placed (in build_steps).
        model, optimizer = _model_and_optimizer(
            config, tx, pretrained=pretrained, label_names=label_names, edit_model=edit_model
        )
        with jax.set_mesh(mesh):
            steps, state = build_steps(model, optimizer, **kwargs)
    return steps, state, schedule


def abstract_steps(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[StepFunctions, nnx.State, nnx.State]:
    """The run's steps built abstractly, with their state and RNG state as sharded shapes.

    What `jax.jit(...).trace`, ``.lower`` and ``.compile`` take to build the run's program for
    ``mesh`` (any mesh: local devices, or a TPU or GPU topology's descriptions) without
    weights, data or arrays: ``step_fn.lower(state, rng_state, abstract_batch(...))``. The
    schedule is as long as ``train.num_steps`` (at least the warmup and 1): its length does
    not change the program.

    Returns:
      ``(steps, state, rng_state)``, the last two `jax.ShapeDtypeStruct` trees carrying the
      shardings of ``config.mesh.strategy`` on ``mesh``.
    """
    total_steps = max(int(config.train.num_steps), int(config.optim.warmup_steps), 1)
    steps, state, _ = training_steps(config, mesh, total_steps=total_steps, abstract=True)
    shardings = functools.partial(sharding.tree_shardings, mesh=mesh, rules=config.mesh.strategy)
    return (
        steps,
        abstract_arguments(state, shardings(state)),
        abstract_arguments(steps.rng_state, shardings(steps.rng_state)),
    )
