"""What a step costs: the compiler's FLOPs and bytes with every loop iteration counted, and the
model's analytic FLOPs.
"""

from __future__ import annotations

import functools
import re

import jax

from jaxsent.models import modernbert
from jaxsent.training.plan.hlo import (
    _INSTRUCTION,
    _called,
    _computations,
    _instructions,
    _trip_count,
)

__all__ = [
    "COST_KEYS",
    "hlo_cost",
    "loop_iterations_cost",
    "matmul_params",
    "model_flops",
    "step_cost",
]


def matmul_params(config) -> int:
    """Weights every token multiplies through: the encoder layers' kernels.

    Per layer: query, key, value and attention output (4 H^2) and the feed-forward pair: 2 H I
    for BERT's, 3 H I for ModernBERT's GeGLU (its input projection is H x 2I). Embeddings are
    lookups, and the pooler and head act once per sequence.
    """
    hidden, inter = config.hidden_size, config.intermediate_size
    feed_forward = (3 if isinstance(config, modernbert.ModernBertConfig) else 2) * hidden * inter
    return config.num_hidden_layers * (4 * hidden * hidden + feed_forward)


def _attended_keys(config, length: int) -> int:
    """Keys per query, summed over the layers: ``L`` each, at most ``2 w + 1`` in a local layer."""
    if not isinstance(config, modernbert.ModernBertConfig):
        return config.num_hidden_layers * length
    local = min(length, 2 * config.window + 1)
    return sum(length if t == modernbert.GLOBAL else local for t in config.layer_types)


def model_flops(config, *, step: str, global_batch: int, length: int) -> float:
    """Analytic FLOPs of one step over the whole batch (padding included).

    Forward: ``2 N T`` for the matmul weights (N = `matmul_params`, T = batch x length tokens)
    plus ``4 B L K H`` for attention (scores and their product with the values), where K is the
    keys a query attends to, summed over the layers (``layers x L``; a ModernBERT local layer
    counts only its window). A train step adds the backward pass, twice the forward:
    ``6 N T + 12 B L K H`` (Kaplan et al. 2020; PaLM's MFU, Chowdhery et al. 2022, appendix B).
    Recomputation under remat is not model FLOPs.
    """
    tokens = global_batch * length
    forward = 2 * matmul_params(config) * tokens + (
        4 * global_batch * length * _attended_keys(config, length) * config.hidden_size
    )
    return float(3 * forward if step == "train" else forward)


COST_KEYS = ("flops", "bytes accessed")


def hlo_cost(hlo_text: str, *, entry: str | None = None) -> dict[str, float]:
    """XLA's generic HloCostAnalysis of an HLO module's text, run on the CPU client.

    Args:
      hlo_text: the module, as ``compiled.as_text()`` prints it (any backend's).
      entry: cost this computation of the module as if it were the ENTRY (default: the ENTRY).

    Returns ``{"flops", "bytes accessed"}``. Uses private jax APIs (``jax._src.lib``): the only
    way to cost a program without its backend, e.g. a GPU program compiled without a GPU.
    """
    from jax._src.lib import _jax, hlo

    if entry is not None:
        # The header's aliasing and layouts describe the old ENTRY's signature: drop them.
        hlo_text = re.sub(r"^(HloModule\s+[^,\s]+).*$", r"\1", hlo_text, count=1, flags=re.M)
        hlo_text = re.sub(r"^ENTRY\s+", "", hlo_text, flags=re.M)
        entry_line = rf"^(%?{re.escape(entry)}\s)"
        hlo_text = re.sub(entry_line, r"ENTRY \1", hlo_text, count=1, flags=re.M)
    module = hlo.hlo_module_from_text(hlo_text)
    cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
    return {key: float(cost.get(key, 0.0)) for key in COST_KEYS}


def loop_iterations_cost(hlo_text: str) -> dict[str, float]:
    """The FLOPs and bytes of every while loop's iterations after its first (`hlo_cost`).

    XLA's cost analysis costs one iteration of a while loop (``HloCostAnalysis::HandleWhile``:
    the trip count is not always known), so a ``scan_layers`` encoder's step is costed as if it
    had one layer. Adding this to the module's cost counts each loop ``trip count`` times; a
    loop nested in a loop's body counts for every iteration of the outer one.
    """
    computations, entry = _computations(hlo_text)
    instructions = functools.cache(lambda name: _instructions(computations.get(name, ())))

    @functools.cache
    def extra(name: str) -> tuple[float, ...]:
        total = [0.0] * len(COST_KEYS)
        for line in computations.get(name, ()):
            match = _INSTRUCTION.match(line)
            if match is None:
                continue
            for role, names in _called(line).items():
                if role == "body":
                    times = _trip_count(line, computations, instructions, name)
                    for body in names:
                        once = hlo_cost(hlo_text, entry=body)
                        inner = extra(body)
                        for i, key in enumerate(COST_KEYS):
                            total[i] += (times - 1) * once[key] + times * inner[i]
                elif role in ("calls", "branch_computations") and match.group(2) != "fusion":
                    for called in names:
                        total = [t + e for t, e in zip(total, extra(called), strict=True)]
        return tuple(total)

    if entry is None:
        return dict.fromkeys(COST_KEYS, 0.0)
    return dict(zip(COST_KEYS, extra(entry), strict=True))


def step_cost(backend_cost: dict[str, float] | None, hlo_text: str) -> dict[str, float]:
    """A compiled step's FLOPs and bytes accessed per chip, every loop iteration counted.

    Args:
      backend_cost: the backend's ``compiled.cost_analysis()`` (a compile-only GPU executable
        has none: XLA's generic analysis, `hlo_cost`, stands in).
      hlo_text: the compiled module (``compiled.as_text()``).

    The backend costs a while loop's body once. The iterations after the first are costed by the
    generic analysis (`loop_iterations_cost`) and scaled by the backend's figure over the
    generic one for the whole program, so that both parts are counted the backend's way (the
    TPU compiler's bytes include its tiled layouts' padding).
    """
    try:
        generic = hlo_cost(hlo_text)
        extra = loop_iterations_cost(hlo_text)
    except Exception:  # private jax APIs (`hlo_cost`) missing: the backend's figures, one pass
        generic, extra = {}, {}
    base = backend_cost or generic
    cost = {}
    for key in COST_KEYS:
        value = float(base.get(key, 0.0))
        if extra.get(key) and generic.get(key):
            value += extra[key] * value / generic[key]
        cost[key] = value
    return cost
