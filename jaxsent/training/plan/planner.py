"""A run's steps built abstractly for a topology and compiled shape by shape (`Planner`)."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from jaxsent import data as data_lib
from jaxsent import sharding
from jaxsent.training.build import training_steps
from jaxsent.training.plan.chips import chip_for, topology_devices
from jaxsent.training.plan.costing import model_flops, step_cost
from jaxsent.training.plan.hlo import collectives
from jaxsent.training.steps import abstract_arguments, abstract_batch

__all__ = ["BYTE_FIELDS", "Planner", "ShapePlan", "bucket_shapes"]

BYTE_FIELDS = ("arguments", "outputs", "temporaries", "code", "peak")


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
