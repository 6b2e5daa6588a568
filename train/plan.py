"""Plan a run on a TPU slice or GPUs before renting them: compile its train and eval steps for them.

    python -m train.plan --config configs/bert_base_imdb.py --topology v5e:2x4
    python -m train.plan --config configs/bert_base_imdb.py --topology v5e:2x4 \\
        --config.model.name=bert-large --config.model.scan_layers=True --max_batch \\
        --output plan.json
    python -m train.plan --config configs/bert_base_imdb.py --topology h100:8

Needs libtpu (the TPU compiler; `pip install libtpu==0.0.42.1`) for a TPU, or jax's CUDA plugin
(`pip install 'jaxsent[gpu-plan]'`) for an H100 / H200; no accelerator, no weights and no data:
the architecture comes from a named architecture (`bert-base`, `bert-large`) or the checkpoint's
config.json. It compiles the very steps `python -m train` runs with the same config (model, loss,
optimiser, mesh strategy, dtype) for the largest train and eval shape (global batch x
data.max_length), or every bucket length with --all_shapes, and prints per chip: memory,
whether it fits in HBM, the compiler's FLOPs and bytes, the model FLOPs, a roofline lower bound on
the step time with the MFU bound it implies, the collectives and the compile time (docs/tpu.md).

--max_batch searches, by compiles, for a global batch whose train shapes fit with --headroom of
HBM free. It probes only multiples of the data axis, the host count and train.micro_batch_size
(each probe is the run's own program at that batch: micro-batches of train.micro_batch_size
rows), and reports a batch that fits and whose next multiple was probed and does not. That is
not necessarily the largest that fits: memory is not monotone in the batch (docs/tpu.md).

Exit status: 0 when every shape fits; 1 when one does not (the last line names it and the
overshoot); 2 for a bad argument (one line).
"""

import json
import os
import sys

# Plan on the CPU: on a TPU VM this leaves the chips to the run. libtpu still takes its
# multi-process lock to describe a topology, so two plans at once (or a plan beside a test process)
# would collide on /tmp/libtpu_lockfile; compiling needs no exclusive TPU, so allow several.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from train.cli import run_cli, setup_process  # noqa: E402

EXIT_DOES_NOT_FIT = 1

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.")
flags.DEFINE_string(
    "topology", None, "TPU topology (v5e:2x4, v5p:2x2x1, v6e:2x4, ...) or GPUs (h100:8, h200:2x8)."
)
flags.DEFINE_string("output", None, "Write the plan as JSON here.")
flags.DEFINE_bool("all_shapes", False, "Compile every bucket length, not only data.max_length.")
flags.DEFINE_bool(
    "max_batch",
    False,
    "Search, by compiles, for a global batch whose train shapes fit with --headroom of HBM free "
    "and plan at it: a multiple of the data axis, the host count and train.micro_batch_size "
    "(each probe compiled with micro-batches of that size) that fits while its next multiple "
    "was probed and does not. Memory is not monotone in the batch, so a larger one may fit.",
)
flags.DEFINE_float(
    "headroom",
    0.10,
    "With --max_batch: the fraction of each chip's HBM to leave free (0.10 = 10%).",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.mark_flags_as_required(["config", "topology"])


def _overshoot_line(shape, chip, topology: str) -> str:
    from jaxsent.training.plan import describe_bytes

    where = f"on {topology} ({describe_bytes(chip.usable_bytes)} usable per {chip.name} chip)"
    if shape.error is not None:  # the compiler refused it; its message says by how much
        return f"does not fit: {shape.name} {where}: {shape.error}"
    return (
        f"does not fit: {shape.name} {where}: needs {describe_bytes(shape.bytes['peak'])} per "
        f"chip, {describe_bytes(shape.overshoot)} over"
    )


def main(argv):
    del argv
    setup_process()
    import jax

    # Compile times are a result here: no persistent cache hit may shorten them.
    jax.config.update("jax_enable_compilation_cache", False)
    from jaxsent.training import plan as plan_lib
    from jaxsent.training.config_check import check_config

    config = FLAGS.config
    chip = plan_lib.chip_for(FLAGS.topology)
    devices = plan_lib.topology_devices(FLAGS.topology)
    check_config(config, devices=devices, needs_weights=False)
    planner = plan_lib.Planner(config, FLAGS.topology)
    hosts, multiple = planner.hosts, planner.batch_multiple
    for name, needed in (
        ("train.global_batch_size", multiple),
        ("train.eval_batch_size", planner.eval_batch_multiple),
    ):
        value = config.train[name.split(".")[1]]
        if value % needed:
            raise ValueError(
                f"config.{name}={value}: must be a multiple of {needed} (the data axis "
                f"{planner.mesh.shape['data']} and the {hosts} host(s) of {FLAGS.topology})"
            )
    print(
        f"{FLAGS.topology}: {planner.chips} {chip.name} chips, {hosts} host(s), mesh "
        f"{dict(planner.mesh.shape)}, strategy {config.mesh.strategy}; {config.model.name}: "
        f"{planner.params:,} parameters, compute {config.model.dtype}, remat "
        f"{config.model.get('remat', 'none')}, scan_layers {config.model.get('scan_layers', False)}"
    )

    max_batch = None
    if FLAGS.max_batch:
        limit = (1 - FLAGS.headroom) * chip.usable_bytes

        def report(shape) -> None:
            micro = f", {shape.micro_batches} micro-batches" if shape.micro_batches > 1 else ""
            print(
                f"  try {shape.name}{micro}: peak {plan_lib.describe_bytes(shape.bytes['peak'])} "
                f"({shape.compile_seconds:.0f} s)",
                flush=True,
            )

        max_batch, probes = plan_lib.search_max_batch(
            planner,
            lengths=plan_lib.bucket_shapes(config, all_shapes=FLAGS.all_shapes),
            limit_bytes=limit,
            on_probe=report,
        )
        if max_batch:
            above = (
                f"{max_batch + multiple} (the next multiple of {multiple}) does not"
                if max_batch + multiple in probes
                else "no larger batch was probed"
            )
            print(
                f"max batch: {max_batch} ({max_batch // planner.mesh.shape['data']} per data "
                f"shard) leaves >= {FLAGS.headroom:.0%} of HBM free; {above} (memory is not "
                "monotone in the batch: an unprobed larger batch may fit)"
            )
    shapes = planner.plan(all_shapes=FLAGS.all_shapes, train_batch=max_batch or None)
    print(plan_lib.summary_table(shapes))
    result = {
        "topology": FLAGS.topology,
        "chip": chip.name,
        "chips": planner.chips,
        "hosts": hosts,
        "hbm_bytes": chip.usable_bytes,
        "params": planner.params,
        "fits": all(s.fits for s in shapes) and max_batch != 0,
        "shapes": [s.to_json() for s in shapes],
    }
    if FLAGS.max_batch:
        result["max_batch"] = max_batch
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if max_batch == 0:
        print(
            f"does not fit: no global batch fits with {FLAGS.headroom:.0%} of HBM "
            f"free on {FLAGS.topology}, not even {multiple}"
        )
        sys.exit(EXIT_DOES_NOT_FIT)
    for shape in shapes:
        if not shape.fits:
            print(_overshoot_line(shape, chip, FLAGS.topology))
            sys.exit(EXIT_DOES_NOT_FIT)
    print(f"fits: every shape on {FLAGS.topology}")


if __name__ == "__main__":
    run_cli(main)
