"""The accelerators a plan targets: their published figures and their compile-only devices.

`CHIPS` holds each chip's HBM, bandwidth and peak bf16 FLOP/s; `topology_devices` gives the
devices of a TPU topology (libtpu) or of GPUs (jax's CUDA plugin), described without the hardware.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import os
import re
from typing import Any

__all__ = [
    "CHIPS",
    "GPU_MEMORY_FRACTION",
    "Chip",
    "chip_for",
    "cuda_plugin_installed",
    "topology_devices",
]

GiB = 2**30


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
