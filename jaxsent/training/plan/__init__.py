"""Plan a run on a TPU slice before renting it: compile its steps for the slice on this machine.

libtpu (the TPU compiler, on PyPI) compiles for any TPU topology without a TPU. `Planner` builds a
run's train and eval steps abstractly (`jaxsent.training.build.training_steps(abstract=True)`:
the same model, loss, optimiser, sharding rules and dtype as `python -m train`, without weights or
data), lowers them with `jax.ShapeDtypeStruct` arguments on a mesh of the topology's devices and
compiles them. Per shape it reports what the compiler says (per-chip memory, FLOPs, bytes
accessed, collectives) and what follows from the chip's published figures (`CHIPS`): whether it
fits, a roofline lower bound on the step time and the MFU bound it implies. Neither is a
prediction of the time a step takes; they bound it.

Modules, one responsibility each:

- `chips`: the accelerators' published figures (`CHIPS`) and their compile-only devices.
- `hlo`: reading an optimised HLO module: computations, loop trip counts, collectives.
- `costing`: FLOPs and bytes per step with every loop iteration counted; model FLOPs.
- `planner`: `Planner` (the run's steps compiled shape by shape), `ShapePlan`, `bucket_shapes`.
- `search`: the ``--max_batch`` search (`find_max_batch`, `search_max_batch`).
- `report`: a plan as text (`describe_bytes`, `summary_rows`, `summary_table`).
"""

from jaxsent.training.plan.chips import (
    CHIPS,
    GPU_MEMORY_FRACTION,
    Chip,
    chip_for,
    cuda_plugin_installed,
    topology_devices,
)
from jaxsent.training.plan.costing import (
    COST_KEYS,
    hlo_cost,
    loop_iterations_cost,
    matmul_params,
    model_flops,
    step_cost,
)
from jaxsent.training.plan.hlo import COLLECTIVE_KINDS, collectives
from jaxsent.training.plan.planner import BYTE_FIELDS, Planner, ShapePlan, bucket_shapes
from jaxsent.training.plan.report import COLUMNS, describe_bytes, summary_rows, summary_table
from jaxsent.training.plan.search import HEADROOM_FRACTION, find_max_batch, search_max_batch

__all__ = [
    "BYTE_FIELDS",
    "CHIPS",
    "COLLECTIVE_KINDS",
    "COLUMNS",
    "COST_KEYS",
    "GPU_MEMORY_FRACTION",
    "HEADROOM_FRACTION",
    "Chip",
    "Planner",
    "ShapePlan",
    "bucket_shapes",
    "chip_for",
    "collectives",
    "cuda_plugin_installed",
    "describe_bytes",
    "find_max_batch",
    "hlo_cost",
    "loop_iterations_cost",
    "matmul_params",
    "model_flops",
    "search_max_batch",
    "step_cost",
    "summary_rows",
    "summary_table",
    "topology_devices",
]
