"""Plan a run on a TPU slice before renting it: compile its steps for the slice on this machine.

libtpu (the TPU compiler, on PyPI) compiles for any TPU topology without a TPU. `Planner` builds a
run's train and eval steps abstractly (`jaxsent.training.build.training_steps(abstract=True)`:
the same model, loss, optimiser, sharding rules and dtype as `python -m train`, without weights or
data), lowers them with `jax.ShapeDtypeStruct` arguments on a mesh of the topology's devices and
compiles them. Per shape it reports what the compiler says (per-chip memory, FLOPs, bytes
accessed, collectives) and what follows from the chip's published figures (`CHIPS`): whether it
fits, a roofline lower bound on the step time and the MFU bound it implies. Neither is a
prediction of the time a step takes; they bound it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import importlib.util
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
from flax import nnx

from jaxsent import data as data_lib
from jaxsent import sharding
from jaxsent.models import modernbert
from jaxsent.training.build import training_steps
from jaxsent.training.steps import abstract_arguments, abstract_batch

__all__ = [
    "CHIPS",
    "Chip",
    "Planner",
    "ShapePlan",
    "bucket_shapes",
    "collectives",
    "cuda_plugin_installed",
    "find_max_batch",
    "search_max_batch",
    "hlo_cost",
    "loop_iterations_cost",
    "matmul_params",
    "model_flops",
    "step_cost",
    "topology_devices",
]

GiB = 2**30
BYTE_FIELDS = ("arguments", "outputs", "temporaries", "code", "peak")


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator's published figures.

    Attributes:
      name: the topology prefix (``v5e`` in ``v5e:2x4``, ``h100`` in ``h100:8``).
      hbm_bytes: HBM per chip.
      hbm_bytes_per_second: HBM bandwidth per chip.
      peak_flops: peak dense bfloat16 FLOP/s per chip.
      platform: ``tpu`` (libtpu compiles) or ``cuda`` (jax's CUDA plugin compiles).
      target: for a GPU, the ``GpuTargetConfigProto`` file in ``gpu_targets/`` that describes it.
      megacore: a TPU chip whose two TensorCores jax runs as one device (v4): libtpu describes
        it that way only when asked for its ``megacore`` chip configuration.
    """

    name: str
    hbm_bytes: int
    hbm_bytes_per_second: float
    peak_flops: float
    platform: str = "tpu"
    target: str | None = None
    megacore: bool = False

    @property
    def usable_bytes(self) -> int:
        """What one program may hold: the HBM on a TPU; on a GPU the share jax's allocator
        takes, ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (0.75 unless set), as the run itself would."""
        if self.platform == "tpu":
            return self.hbm_bytes
        fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEMORY_FRACTION))
        return int(self.hbm_bytes * fraction)


# Per chip, from Google Cloud's "System architecture" table for each version (read 2026-11):
#   v4   https://cloud.google.com/tpu/docs/v4   275 TFLOP/s bf16; HBM2 32 GiB, 1200 GB/s
#   v5e  https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16; HBM2 16 GB, 819 GB/s
#   v5p  https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16; HBM2e 95 GiB, 2765 GB/s
#   v6e  https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16; HBM 32 GB, 1600 GB/s
# HBM sizes are taken as GiB (the pages mix GB and GiB for the same parts); bandwidths in 1e9 B/s.
# Per GPU, from NVIDIA's data sheets (read 2026-11), dense bf16 (the sheets' headline doubles it
# for 2:4 sparsity):
#   H100 SXM  https://www.nvidia.com/en-us/data-center/h100/  989 TFLOP/s; HBM3 80 GB, 3.35 TB/s
#   H200      https://www.nvidia.com/en-us/data-center/h200/  989 TFLOP/s; HBM3e 141 GB, 4.8 TB/s
# with the memory nvidia-smi reports for the parts (81,559 MiB and 143,771 MiB).
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GiB, 1200e9, 275e12, megacore=True),
    "v5e": Chip("v5e", 16 * GiB, 819e9, 197e12),
    "v5p": Chip("v5p", 95 * GiB, 2765e9, 459e12),
    "v6e": Chip("v6e", 32 * GiB, 1600e9, 918e12),
    "h100": Chip("h100", 81559 * 2**20, 3.35e12, 989e12, platform="cuda", target="h100_sxm"),
    "h200": Chip("h200", 143771 * 2**20, 4.8e12, 989e12, platform="cuda", target="h200"),
}
# jax preallocates this share of a GPU's memory unless XLA_PYTHON_CLIENT_MEM_FRACTION says
# otherwise (https://docs.jax.dev/en/latest/gpu_memory_allocation.html).
GPU_MEMORY_FRACTION = 0.75

# A plan with --max_batch leaves this fraction of HBM free at the batch it picks.
HEADROOM_FRACTION = 0.10


def chip_for(topology: str) -> Chip:
    """The `Chip` of a topology name such as ``v5e:2x4`` or ``h100:8``.

    Raises:
      ValueError: a name that is not ``<chip>:<shape>`` with a chip of `CHIPS`.
    """
    name, sep, shape = topology.partition(":")
    if not sep or not re.fullmatch(r"\d+(x\d+)*", shape) or name not in CHIPS:
        raise ValueError(
            f"--topology={topology!r}: expected <chip>:<shape> with a chip of "
            f"{sorted(CHIPS)}, e.g. v5e:2x4, v5p:2x2x1, v6e:2x4, h100:8 (8 GPUs on one host) "
            "or h100:2x8 (2 hosts of 8)"
        )
    return CHIPS[name]


def topology_devices(topology: str) -> list[Any]:
    """The compile-only devices of ``topology``: libtpu's for a TPU, jax's CUDA plugin's for a
    GPU (no accelerator needed for either).

    Raises:
      ValueError: a topology the compiler does not know (its message, in one line).
      ModuleNotFoundError: the compiler (libtpu, or the CUDA plugin) is not installed.
    """
    chip = chip_for(topology)
    if chip.platform == "cuda":
        return _gpu_devices(topology, chip)
    if importlib.util.find_spec("libtpu") is None:
        raise ModuleNotFoundError(
            "planning needs the TPU compiler: pip install libtpu==0.0.42.1 "
            "(what jax[tpu]==0.10.2 pins; in jaxsent's test extra)",
            name="libtpu",
        )
    from jax.experimental import topologies

    # Without the megacore chip configuration libtpu gives v4 one device per TensorCore (8 for
    # v4:2x2x1), which jax's TPU mesh utilities refuse; a v4 VM runs each chip as one device.
    options = {"chip_config_name": "megacore"} if chip.megacore else {}
    try:
        devices = list(topologies.get_topology_desc(topology, "tpu", **options).devices)
    except Exception as err:  # JaxRuntimeError from libtpu: an unknown or malformed shape
        message = " ".join(str(err).split())
        raise ValueError(f"--topology={topology!r}: libtpu cannot build it: {message}") from err
    if any(getattr(d, "core_on_chip", 0) for d in devices):
        raise ValueError(
            f"--topology={topology!r}: libtpu describes it with one device per TensorCore "
            f"({len(devices)} devices), and jax builds TPU meshes with one device per chip; "
            "planning it is not supported yet"
        )
    return devices


def cuda_plugin_installed() -> bool:
    """Whether jax's CUDA plugin (the ``gpu-plan`` extra), which compiles for GPUs, is there."""
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:  # no jax_plugins package at all
        return False


def _gpu_devices(topology: str, chip: Chip) -> list[Any]:
    """``h100:8`` (one host of 8) or ``h100:2x8`` (2 hosts of 8), compile-only.

    jax's CUDA plugin compiles for a GPU it is described (XLA's ``GpuTargetConfigProto``, copied
    from ``xla/backends/gpu/target_config/specs/``) without a GPU, a driver or ``libcuda``; it
    runs under ``JAX_PLATFORMS=cpu``, which ``train.plan`` sets. XLA then has no device to
    autotune on and uses its default GEMM tiles, so memory is close to, not identical with, a
    compile on the GPU.
    """
    dims = [int(n) for n in topology.partition(":")[2].split("x")]
    if len(dims) > 2 or min(dims) < 1:
        raise ValueError(
            f"--topology={topology!r}: a GPU topology is <gpus per host> or "
            "<hosts>x<gpus per host>, e.g. h100:8 or h100:2x8"
        )
    hosts, per_host = (1, dims[0]) if len(dims) == 1 else dims
    if not cuda_plugin_installed():
        raise ModuleNotFoundError(
            "planning for a GPU needs jax's CUDA plugin and ptxas: pip install 'jaxsent[gpu-plan]'",
            name="jax_plugins.xla_cuda12",
        )
    from jax.experimental import topologies

    spec = importlib.resources.files("jaxsent.training") / "gpu_targets" / f"{chip.target}.txtpb"
    name = f"1x{hosts}x{per_host}"  # slices x hosts x devices per host
    try:
        description = topologies.get_topology_desc(
            platform="cuda", topology_name=name, target_config=spec.read_text(), topology=name
        )
    except Exception as err:
        message = " ".join(str(err).split())
        raise ValueError(
            f"--topology={topology!r}: jax's CUDA plugin cannot build it: {message}"
        ) from err
    return list(description.devices)


# --- analytic model FLOPs --------------------------------------------------------------------


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


# --- collectives in the optimised HLO --------------------------------------------------------

COLLECTIVE_KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([a-z][\w\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_CALLED = re.compile(
    r"\b(body|condition|to_apply|calls|branch_computations)=(?:\{([^}]*)\}|(%?[\w.\-]+))"
)
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    """An HLO module's computations (name -> instruction lines) and the name of its ENTRY."""
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match and "=" not in line.split("{")[0].split("(")[0]:
                current = match.group(1)
                computations[current] = []
                if line.lstrip().startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        computations[current].append(line)
    return computations, entry


def _called(line: str) -> dict[str, list[str]]:
    """The computations an instruction calls, by role (``body``, ``condition``, ``calls``, ...)."""
    return {
        role: [n.strip().lstrip("%") for n in (group or single).split(",") if n.strip()]
        for role, group, single in _CALLED.findall(line)
    }


_NAMED = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\(")
_COMMENT = re.compile(r"/\*.*?\*/")


@dataclasses.dataclass(frozen=True)
class _Instruction:
    """One HLO instruction line: its name, opcode, operand names and attributes."""

    name: str
    opcode: str
    operands: tuple[str, ...]
    attributes: str
    root: bool


def _instruction(line: str) -> _Instruction | None:
    match = _NAMED.match(line)
    if match is None:
        return None
    start = match.end()
    depth = 1
    for end in range(start, len(line)):
        depth += {"(": 1, ")": -1}.get(line[end], 0)
        if depth == 0:
            break
    else:
        return None
    operands = []
    for part in _COMMENT.sub("", line[start:end]).split(","):
        words = part.split()
        if words:
            operands.append(words[-1].lstrip("%"))
    return _Instruction(
        match.group(2), match.group(4), tuple(operands), line[end + 1 :], bool(match.group(1))
    )


def _instructions(lines: Iterable[str]) -> dict[str, _Instruction]:
    found = {}
    for line in lines:
        if (inst := _instruction(line)) is not None:
            found[inst.name] = inst
    return found


def _constant(name: str, instructions: dict[str, _Instruction]) -> int | None:
    """The integer a scalar resolves to through copies and converts, if it is a constant."""
    inst = instructions.get(name)
    while inst is not None and inst.opcode in ("copy", "convert", "bitcast") and inst.operands:
        inst = instructions.get(inst.operands[0])
    if inst is None or inst.opcode != "constant" or len(inst.operands) != 1:
        return None
    try:
        return int(inst.operands[0])
    except ValueError:
        return None


def _tuple_index(name: str, instructions: dict[str, _Instruction]) -> int | None:
    """k when ``name`` is element k of the computation's (tuple) parameter."""
    inst = instructions.get(name)
    if inst is None or inst.opcode != "get-tuple-element" or not inst.operands:
        return None
    source = instructions.get(inst.operands[0])
    match = re.search(r"\bindex=(\d+)", inst.attributes)
    if source is None or source.opcode != "parameter" or match is None:
        return None
    return int(match.group(1))


def _trip_count(
    line: str,
    computations: dict[str, list[str]],
    instructions: Callable[[str], dict[str, _Instruction]],
    caller: str,
) -> int:
    """A while loop's iterations: XLA's known_trip_count, else what its induction variable says.

    The TPU compiler's loops carry no known_trip_count. Their condition compares a counter (an
    element of the loop's tuple) with a constant bound, ``i < N``; the body adds a constant
    step to it, and the loop's initial tuple (in ``caller``) gives its start: ``ceil((N - start)
    / step)`` iterations. jax's scan loops count 0, 1, ..., N - 1 (s32); the TPU's windowed
    einsums (FSDP's collective matmuls) count 0, 2, ... below 4 (u32). A start or step that is
    not a constant is taken as 0 or 1; a condition of another form counts once.

    Args:
      line: the ``while`` instruction.
      computations: the module's computations (`_computations`).
      instructions: a computation's instructions by name (`_instructions`, cached).
      caller: the computation holding the ``while``.
    """
    if match := _TRIP_COUNT.search(line):
        return int(match.group(1))
    called = _called(line)
    if len(called.get("condition", ())) != 1 or len(called.get("body", ())) != 1:
        return 1
    condition = instructions(called["condition"][0])
    root = next((i for i in condition.values() if i.root), None)
    direction = re.search(r"\bdirection=(\w+)", root.attributes) if root else None
    if root is None or root.opcode != "compare" or len(root.operands) != 2 or not direction:
        return 1
    op = direction.group(1)
    left, right = root.operands
    index, bound = _tuple_index(left, condition), _constant(right, condition)
    if index is None:  # N > i
        index, bound = _tuple_index(right, condition), _constant(left, condition)
        op = {"GT": "LT", "GE": "LE"}.get(op, "")
    if index is None or bound is None or op not in ("LT", "LE"):
        return 1
    body = instructions(called["body"][0])
    step = None
    result = next((i for i in body.values() if i.root), None)
    if result is not None and result.opcode == "tuple" and index < len(result.operands):
        update = body.get(result.operands[index])
        if update is not None and update.opcode == "add" and len(update.operands) == 2:
            a, b = update.operands
            if _tuple_index(a, body) == index:
                step = _constant(b, body)
            elif _tuple_index(b, body) == index:
                step = _constant(a, body)
    start = None
    loop = _instruction(line)
    outer = instructions(caller)
    initial = outer.get(loop.operands[0]) if loop is not None and loop.operands else None
    if initial is not None and initial.opcode == "tuple" and index < len(initial.operands):
        start = _constant(initial.operands[index], outer)
    start, step = start or 0, step or 1
    if step < 0:
        return 1
    span = bound - start + (1 if op == "LE" else 0)
    return max(0, -(-span // step))


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Collectives of an optimised HLO module, by kind: ``{kind: {"count", "bytes"}}``.

    Counts are executions per step: an op inside a while loop (the encoder's scan under
    ``scan_layers``, a TPU windowed einsum) counts once per iteration (`_trip_count`). Bytes
    are the per-chip result size (for asynchronous pairs, the ``-done`` result; the ``-start``
    is counted).
    """
    computations, entry = _computations(hlo_text)
    instructions = functools.cache(lambda name: _instructions(computations.get(name, ())))

    @functools.cache
    def counts(name: str) -> tuple[tuple[str, int, int], ...]:
        found: dict[str, list[int]] = {}
        for line in computations.get(name, ()):
            match = _INSTRUCTION.match(line)
            if match is None:
                continue
            shape, opcode = match.groups()
            for kind in COLLECTIVE_KINDS:
                if opcode in (kind, f"{kind}-start"):
                    found.setdefault(kind, [0, 0])[0] += 1
                if opcode in (kind, f"{kind}-done"):
                    found.setdefault(kind, [0, 0])[1] += _shape_bytes(shape)
            if opcode in ("async-done", "async-update"):
                continue  # the same computation as its async-start
            for role, names in _called(line).items():
                times = _trip_count(line, computations, instructions, name) if role == "body" else 1
                for called in names:
                    for kind, count, size in counts(called):
                        entry_ = found.setdefault(kind, [0, 0])
                        entry_[0] += times * count
                        entry_[1] += times * size
        return tuple((kind, c, b) for kind, (c, b) in sorted(found.items()))

    if entry is None:
        return {}
    return {kind: {"count": c, "bytes": b} for kind, c, b in counts(entry) if c or b}


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


# --- shapes ----------------------------------------------------------------------------------


def bucket_shapes(config: ml_collections.ConfigDict, *, all_shapes: bool) -> list[int]:
    """The padded lengths to compile: ``data.max_length`` alone, or the bucket ladder.

    Without data the ladder is `jaxsent.data.make_bucket_boundaries` without lengths: evenly
    spaced ``ceil(max_length k / num_buckets)`` rounded up to a multiple of 8, k = 1..num_buckets.
    A run fits its buckets to the training lengths, but never above ``max_length``, and a step's
    memory grows with its length, so the largest shape decides whether a run fits.
    """
    max_length = int(config.data.max_length)
    if not all_shapes:
        return [max_length]
    return list(
        data_lib.make_bucket_boundaries(max_length, num_buckets=int(config.data.num_buckets))
    )


# --- compiling -------------------------------------------------------------------------------


@dataclasses.dataclass
class ShapePlan:
    """What one compiled shape needs per chip (the JSON fields of `to_json`)."""

    step: str
    global_batch: int
    length: int
    bytes: dict[str, int | None]
    fits: bool
    hbm_bytes: int
    flops: float | None
    bytes_accessed: float | None
    model_flops: float
    roofline_seconds: float | None
    mfu_bound: float | None
    collectives: dict[str, dict[str, int]]
    compile_seconds: float
    error: str | None = None  # the compiler's RESOURCE_EXHAUSTED message, when it refused
    micro_batches: int = 1  # a train step's micro-batches (train.micro_batch_size rows each)

    @property
    def name(self) -> str:
        return f"{self.step} {self.global_batch} x {self.length}"

    @property
    def overshoot(self) -> int | None:
        """Bytes over HBM (None when the compiler did not say how much it needed)."""
        peak = self.bytes["peak"]
        return None if peak is None else peak - self.hbm_bytes

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("error")
        out.pop("hbm_bytes")
        return out


_SIZE = re.compile(r"([\d.]+)\s*([KMGT]?)i?B?")


def _parse_size(text: str) -> int | None:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _refused_sizes(message: str) -> dict[str, int | None]:
    """What a RESOURCE_EXHAUSTED message says was needed (libtpu 0.0.42.1's wording).

    E.g. "the total memory required for HLO temporaries (125.17G) exceeds available HBM
    (15.75G)"; older wordings say "Used 20.5G of 15.48G hbm".
    """
    sizes: dict[str, int | None] = dict.fromkeys(BYTE_FIELDS)
    if match := re.search(r"required for HLO temporaries \(([^)]+)\)", message):
        sizes["temporaries"] = _parse_size(match.group(1))
    if match := re.search(r"Used\s+(\S+)\s+of\s+\S+\s+hbm", message):
        sizes["peak"] = _parse_size(match.group(1))
    return sizes


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


class Planner:
    """A run's steps, built abstractly for a TPU or GPU topology, compiled shape by shape.

    Args:
      config: the run config (as ``python -m train`` takes it).
      topology: a topology name of `chip_for`, e.g. ``v5e:2x4``, ``v5e:16x16``, ``h100:8``.
    """

    def __init__(self, config: ml_collections.ConfigDict, topology: str):
        self.config = config
        self.topology = topology
        self.chip = chip_for(topology)
        self.devices = topology_devices(topology)
        self.hosts = len({d.process_index for d in self.devices})
        self.mesh = sharding.make_mesh(
            data=config.mesh.data, model=config.mesh.model, devices=self.devices
        )
        self._total_steps = max(int(config.train.num_steps), int(config.optim.warmup_steps), 1)
        steps, state, _ = training_steps(
            config, self.mesh, total_steps=self._total_steps, abstract=True
        )
        self.steps = steps
        self.micro_batch_size = int(config.train.get("micro_batch_size", 0) or 0)
        # The train step at another batch splits it into another count of micro-batches.
        self._train_step_fns = {
            self.micro_batch_count(int(config.train.global_batch_size)): steps.train_step_fn
        }
        shardings = functools.partial(
            sharding.tree_shardings, mesh=self.mesh, rules=config.mesh.strategy
        )
        self.state_args = abstract_arguments(state, shardings(state))
        self.rng_args = abstract_arguments(steps.rng_state, shardings(steps.rng_state))
        model, _ = nnx.merge(steps.eval_graphdef, steps.rng_state, state)
        self.model_config = model.config
        self.params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        self._plans: dict[tuple[str, int, int], ShapePlan] = {}

    @property
    def chips(self) -> int:
        return len(self.devices)

    @property
    def eval_batch_multiple(self) -> int:
        """Eval batches must be multiples of this: the data axis and the host count."""
        return math.lcm(self.mesh.shape["data"], self.hosts)

    @property
    def batch_multiple(self) -> int:
        """Train batches must be multiples of this: the data axis, the host count and
        ``train.micro_batch_size`` (when set), so that every micro-batch holds that many rows."""
        return math.lcm(self.eval_batch_multiple, self.micro_batch_size or 1)

    def micro_batch_count(self, global_batch: int) -> int:
        """The micro-batches the run's train step splits a batch of ``global_batch`` rows into:
        ``global_batch // train.micro_batch_size`` (1 when it is 0), as `python -m train` does
        with ``train.global_batch_size=global_batch``.

        Raises:
          ValueError: ``global_batch`` is not a multiple of ``train.micro_batch_size``.
        """
        micro = self.micro_batch_size
        if not micro:
            return 1
        if global_batch % micro:
            raise ValueError(
                f"a train batch of {global_batch} does not split into micro-batches of "
                f"config.train.micro_batch_size={micro}"
            )
        return global_batch // micro

    def train_step_fn(self, global_batch: int) -> Callable[..., Any]:
        """The run's jitted train step at ``global_batch`` rows (its micro-batch count)."""
        count = self.micro_batch_count(global_batch)
        if count not in self._train_step_fns:
            config = self.config.copy_and_resolve_references()
            config.train.global_batch_size = global_batch
            steps, _, _ = training_steps(
                config, self.mesh, total_steps=self._total_steps, abstract=True
            )
            self._train_step_fns[count] = steps.train_step_fn
        return self._train_step_fns[count]

    def compile_shape(self, step: str, global_batch: int, length: int) -> ShapePlan:
        """Compiles one step (``"train"`` or ``"eval"``) for one batch shape and reports it.

        A shape already compiled is not compiled again: its first report is returned.
        """
        key = (step, global_batch, length)
        if key not in self._plans:
            self._plans[key] = self._compile_shape(step, global_batch, length)
        return self._plans[key]

    def _compile_shape(self, step: str, global_batch: int, length: int) -> ShapePlan:
        count = self.micro_batch_count(global_batch) if step == "train" else 1
        fn = self.train_step_fn(global_batch) if step == "train" else self.steps.eval_step_fn
        batch = abstract_batch(global_batch, length, self.mesh)
        flops_model = model_flops(
            self.model_config, step=step, global_batch=global_batch, length=length
        )
        start = time.perf_counter()
        try:
            with jax.set_mesh(self.mesh):
                compiled = fn.lower(self.state_args, self.rng_args, batch).compile()
        except Exception as err:  # XlaRuntimeError; only an out-of-memory refusal is a result
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            message = " ".join(str(err).split())
            return ShapePlan(
                step=step,
                global_batch=global_batch,
                length=length,
                bytes=_refused_sizes(message),
                fits=False,
                hbm_bytes=self.chip.usable_bytes,
                flops=None,
                bytes_accessed=None,
                model_flops=flops_model,
                roofline_seconds=None,
                mfu_bound=None,
                collectives={},
                compile_seconds=time.perf_counter() - start,
                error=message,
                micro_batches=count,
            )
        seconds = time.perf_counter() - start
        memory = compiled.memory_analysis()
        sizes = {
            "arguments": int(memory.argument_size_in_bytes),
            "outputs": int(memory.output_size_in_bytes),
            "temporaries": int(memory.temp_size_in_bytes),
            "code": int(memory.generated_code_size_in_bytes),
        }
        # Donated state buffers are reused for the new state: aliased outputs take no new HBM.
        sizes["peak"] = sum(sizes.values()) - int(memory.alias_size_in_bytes)
        hlo_text = compiled.as_text()
        backend_cost = compiled.cost_analysis()
        if isinstance(backend_cost, (list, tuple)):
            backend_cost = backend_cost[0] if backend_cost else None
        cost = step_cost(backend_cost, hlo_text)
        flops, accessed = cost["flops"], cost["bytes accessed"]
        # The chip's share of the model FLOPs also bounds the work it does (were the compiler's
        # count short of it).
        work = max(flops, flops_model / self.chips)
        roofline = max(work / self.chip.peak_flops, accessed / self.chip.hbm_bytes_per_second)
        mfu = flops_model / (self.chips * self.chip.peak_flops * roofline) if roofline else None
        return ShapePlan(
            step=step,
            global_batch=global_batch,
            length=length,
            bytes=sizes,
            fits=sizes["peak"] <= self.chip.usable_bytes,
            hbm_bytes=self.chip.usable_bytes,
            flops=flops,
            bytes_accessed=accessed,
            model_flops=flops_model,
            roofline_seconds=roofline,
            mfu_bound=mfu,
            collectives=collectives(hlo_text),
            compile_seconds=seconds,
            micro_batches=count,
        )

    def plan(self, *, all_shapes: bool, train_batch: int | None = None) -> list[ShapePlan]:
        """Every shape of a run: the train step at each length, then the eval step."""
        lengths = bucket_shapes(self.config, all_shapes=all_shapes)
        train_batch = train_batch or int(self.config.train.global_batch_size)
        eval_batch = int(self.config.train.eval_batch_size)
        shapes = [("train", train_batch, n) for n in reversed(lengths)]
        shapes += [("eval", eval_batch, n) for n in reversed(lengths)]
        return [self.compile_shape(*shape) for shape in shapes]


def _peak(plans: list[ShapePlan]) -> float | None:
    peaks = [p.bytes["peak"] for p in plans]
    return None if any(p is None for p in peaks) else max(peaks)


def find_max_batch(
    measure: Callable[[int], list[ShapePlan]],
    *,
    multiple: int,
    start: int,
    limit_bytes: float,
    largest: int = 1 << 20,
) -> tuple[int, dict[int, list[ShapePlan]]]:
    """A multiple of ``multiple`` that fits under ``limit_bytes`` and whose next multiple does not.

    A batch fits when every plan ``measure(batch)`` returns fits in HBM with a peak of at most
    ``limit_bytes``. After ``start`` (rounded to a multiple) and its double (or half), a secant
    through their peaks (memory grows about linearly with the batch) guesses the boundary, and
    the guess and its neighbour usually bracket it; then the search doubles until a batch does
    not fit, and bisects between the largest batch that fits and the smallest larger one that
    does not until they are neighbours. Every probe is a compile.

    What it guarantees: the batch ``b`` it returns fits, and ``b + multiple`` was probed and does
    not fit (unless ``b`` is ``largest`` rounded down); so does every other probed batch above
    ``b``. It does not guarantee that ``b`` is the largest batch that fits: the compiler's memory
    is not monotone in the batch (BERT-base on v5e-8 without remat: 436 sequences take 14.53 GiB
    per chip, 496 take 14.46 GiB; docs/tpu/base-v5e8-tp-none-unrolled.txt), so an unprobed
    batch above ``b + multiple`` may fit.

    Args:
      measure: the plans of one batch (a compile per shape).
      multiple: every probed batch is a multiple of this.
      start: the first batch to probe (rounded down to a multiple, at least ``multiple``).
      limit_bytes: the most a chip may hold at the batch returned.
      largest: no batch above this is probed.

    Returns:
      ``(batch, probes)``: the batch (0 when even ``multiple`` does not fit) and the plans of every
      batch probed.
    """
    probes: dict[int, list[ShapePlan]] = {}
    top = max(1, largest // multiple)
    fitting: set[int] = set()  # in units of `multiple`

    def probe(k: int) -> bool:
        if k not in probes:
            probes[k] = measure(k * multiple)
            if all(p.fits and p.bytes["peak"] <= limit_bytes for p in probes[k]):
                fitting.add(k)
        return k in fitting

    k0 = min(max(1, start // multiple), top)
    k1 = min(2 * k0, top) if probe(k0) else max(1, k0 // 2)
    probe(k1)
    p0, p1 = _peak(probes[k0]), _peak(probes[k1])
    if p0 is not None and p1 is not None and p0 != p1 and k0 != k1:
        slope = (p1 - p0) / (k1 - k0)
        k = int(k0 + (limit_bytes - p0) / slope) if slope > 0 else top
        k = min(max(1, k), top)
        if probe(k) and k < top:
            probe(k + 1)
        elif k > 1:
            probe(k - 1)
    while True:
        good = max(fitting, default=0)
        above = min((k for k in probes if k > good and k not in fitting), default=None)
        if above is None:  # nothing above the best fit has failed yet
            if good >= top:
                break
            probe(min(2 * good, top))
        elif above == good + 1:
            break
        else:
            probe((good + above) // 2)
    good = max(fitting, default=0)
    return good * multiple, {k * multiple: plans for k, plans in sorted(probes.items())}


def search_max_batch(
    planner: Planner,
    *,
    lengths: Iterable[int],
    limit_bytes: float,
    on_probe: Callable[[ShapePlan], None] | None = None,
) -> tuple[int, dict[int, list[ShapePlan]]]:
    """`find_max_batch` over the run's own train step: what ``train.plan --max_batch`` does.

    Probes only multiples of `Planner.batch_multiple` (the data axis, the host count and
    ``train.micro_batch_size``), each compiled as the run's program at that batch: micro-batches
    of ``train.micro_batch_size`` rows, ``batch // micro_batch_size`` of them. A batch is probed
    at each length, longest first, until one does not fit.

    Args:
      planner: the run's `Planner`.
      lengths: the padded lengths to fit (`bucket_shapes`).
      limit_bytes: the most a chip may hold (HBM less the headroom).
      on_probe: called with each compiled shape (e.g. to print it).

    Returns:
      As `find_max_batch`.
    """
    lengths = sorted(lengths, reverse=True)

    def measure(batch: int) -> list[ShapePlan]:
        plans = []
        for length in lengths:
            shape = planner.compile_shape("train", batch, length)
            plans.append(shape)
            if on_probe is not None:
                on_probe(shape)
            if not shape.fits or shape.bytes["peak"] > limit_bytes:
                break  # a shorter length cannot rescue this batch
        return plans

    return find_max_batch(
        measure,
        multiple=planner.batch_multiple,
        start=int(planner.config.train.global_batch_size),
        limit_bytes=limit_bytes,
    )


def describe_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / 2**20:.1f} MiB"


def summary_rows(plans: Iterable[ShapePlan]) -> list[list[str]]:
    """The stdout table's rows, one per shape."""
    rows = []
    for p in plans:
        b = p.bytes
        colls = ", ".join(
            f"{k} {v['count']}x {describe_bytes(v['bytes'])}" for k, v in p.collectives.items()
        )
        rows.append(
            [
                p.name + (f", {p.micro_batches} micro-batches" if p.micro_batches > 1 else ""),
                describe_bytes(b["arguments"]),
                describe_bytes(b["temporaries"]),
                describe_bytes(b["peak"]),
                "yes" if p.fits else "NO",
                describe_bytes(None if b["peak"] is None else p.hbm_bytes - b["peak"]),
                "?" if p.flops is None else f"{p.flops:.3g}",
                f"{p.model_flops:.3g}",
                "?" if p.roofline_seconds is None else f"{p.roofline_seconds * 1e3:.1f} ms",
                "?" if p.mfu_bound is None else f"{p.mfu_bound:.2g}",
                f"{p.compile_seconds:.0f} s",
                colls or "none",
            ]
        )
    return rows
