"""Issue 27's leads as switches on the run's own train step.

The train step ran at half PyTorch eager's speed on an H200 (docs/benchmarks.md "On a GPU").
Each lead is a change of the program that ``python -m train`` compiles; the library fixed
three of them and keeps the earlier program behind a switch, two are compiler or PRNG settings
that no device run has measured yet. `train_steps` builds the run's step with
`jaxsent.training.build.training_steps` itself (same model, loss, optimiser, sharding rules,
micro-batches), with random weights or as shapes, one `Lead`'s switches applied through its
``edit_model`` and ``nonfinite_guard`` arguments;
``bench_gpu_step.py`` times the leads on a GPU and ``gpu_program_leads.py`` counts what each
one changes in the compiled GPU program, on a machine without one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from jaxsent.models import bert, modernbert
from jaxsent.training.build import training_steps


@dataclasses.dataclass(frozen=True)
class Lead:
    """A variant of the library's train step.

    Attributes:
      name: the ``contender`` name in the device's rows.
      about: what it changes, in a line.
      embedding_gathers: `nnx.Embed`'s gathers (bfloat16 scatter-adds into every table under
        bfloat16 compute), not the gather-free embeddings (lead 1).
      nonfinite_guard: ``"cond"`` for `optax.apply_if_finite` (lead 2), else ``"select"``.
      float32_scores: the attention scores q k^T in float32 (lead 3).
      compiler_options: XLA debug options for this compile only (lead 4), e.g.
        ``{"xla_gpu_enable_triton_gemm": False}``.
      prng_impl: the PRNG for the dropout keys and the initialisation (lead 5), e.g.
        ``"unsafe_rbg"``; None keeps jax's default (threefry2x32).
    """

    name: str
    about: str
    embedding_gathers: bool = False
    nonfinite_guard: str = "select"
    float32_scores: bool = False
    compiler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prng_impl: str | None = None


DEFAULT = Lead("jaxsent", "the library's default train step")
# Each alone, against DEFAULT: the library's fixes switched back (1-3), the settings switched on
# (4, 5); then every fix switched back at once, the program the H200 ran in docs/gpu/h200-run*.
LEADS = {
    lead.name: lead
    for lead in (
        Lead(
            "embedding-gathers",
            "lead 1 back: nnx.Embed gathers, scatter-adds into every table in the compute dtype",
            embedding_gathers=True,
        ),
        Lead(
            "update-cond",
            "lead 2 back: optax.apply_if_finite, the update under a lax.cond",
            nonfinite_guard="cond",
        ),
        Lead(
            "float32-scores",
            "lead 3 back: q k^T in float32, so dQ and dK read float32 [B, h, L, L] operands",
            float32_scores=True,
        ),
        Lead(
            "triton-gemm-off",
            "lead 4: --xla_gpu_enable_triton_gemm=false (cuBLAS for every matmul)",
            compiler_options={"xla_gpu_enable_triton_gemm": False},
        ),
        Lead(
            "prng-unsafe-rbg",
            "lead 5: jax_default_prng_impl=unsafe_rbg (dropout masks from rng-bit-generator)",
            prng_impl="unsafe_rbg",
        ),
        Lead(
            "before-issue-27",
            "leads 1-3 back at once: the program of the first H200 runs",
            embedding_gathers=True,
            nonfinite_guard="cond",
            float32_scores=True,
        ),
    )
}


def lead_named(name: str) -> Lead:
    """`DEFAULT` or a lead of `LEADS` by name (ValueError naming the known ones)."""
    if name == DEFAULT.name:
        return DEFAULT
    if name not in LEADS:
        raise ValueError(f"lead {name!r}; expected one of {[DEFAULT.name, *LEADS]}")
    return LEADS[name]


def apply_lead(lead: Lead, model: nnx.Module) -> nnx.Module:
    """Sets the model's switches for ``lead`` (in place; returns the model)."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, (bert.BertEmbeddings, modernbert.ModernBertEmbeddings)):
            node.gather_free = not lead.embedding_gathers
        if isinstance(node, (bert.BertSelfAttention, modernbert.ModernBertAttention)):
            node.float32_scores = lead.float32_scores
    return model


def prng(lead: Lead):
    """A context in which keys are made with ``lead``'s PRNG implementation."""
    if lead.prng_impl is None:
        return contextlib.nullcontext()
    return jax.default_prng_impl(lead.prng_impl)


def train_steps(config, mesh: jax.sharding.Mesh, lead: Lead = DEFAULT, *, abstract: bool):
    """The run's steps and state, as `training_steps` builds them, with ``lead`` applied.

    Random weights (no checkpoint travels to a device machine; the speed does not depend on
    them), or, with ``abstract``, shapes only, for compiling without a device. ``DEFAULT`` gives
    `training_steps`'s very program (tests/test_gpu_leads.py checks it).

    Returns:
      ``(steps, state)``: `jaxsent.training.steps.StepFunctions` and the (placed, unless
      abstract) state.
    """
    total_steps = max(int(config.train.num_steps), int(config.optim.warmup_steps), 1)
    with prng(lead):
        steps, state, _ = training_steps(
            config,
            mesh,
            total_steps=total_steps,
            abstract=abstract,
            pretrained=False,
            edit_model=functools.partial(apply_lead, lead),
            nonfinite_guard=lead.nonfinite_guard,
        )
    return steps, state
