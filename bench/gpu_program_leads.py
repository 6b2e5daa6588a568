"""Issue 27's leads in the GPU program, without a GPU: what the run's train step holds, compiled
for an H100 / H200 with jax's CUDA plugin (the ``gpu-plan`` extra) on this machine.

For each variant of the step (`gpu_leads.DEFAULT`, the library's, and the leads of
`gpu_leads.LEADS`, e.g. ``before-issue-27``, the program of the first H200 runs) it builds the
step as ``python -m train`` does for the config (abstractly: no weights, no data), traces,
lowers and compiles it for ``--topology`` and counts, per lead:

1. scatters: in the jaxpr (operand shape and dtype: which embedding table) and in the optimised
   HLO (result type and the number of rows scattered);
2. conditionals: data-dependent ``cond`` in the jaxpr as lowered for a GPU, ``conditional`` in
   the optimised HLO;
3. matmuls with a [B, h, L, L] operand (the attention probabilities and the scores' gradient):
   the operand dtypes, in the jaxpr and at the optimised HLO's ``dot`` (after converts);
4. how the matmuls run: Triton GEMM fusions, cuBLAS / cuDNN custom calls;
5. random bits: ``threefry2x32`` / ``random_bits`` / ``rng_bit_generator`` and the uint32 xor
   (the threefry rounds) of mask-sized arrays.

    GPU_PLAN_PYTHON=/path/to/venv-with-gpu-plan/bin/python
    $GPU_PLAN_PYTHON bench/gpu_program_leads.py --config configs/bert_base_imdb.py \\
        --config.model.name=bert-base --config.model.dtype=bfloat16 \\
        --config.train.global_batch_size=32 --topology h200:1 \\
        --leads jaxsent before-issue-27 --output docs/gpu/program-bert-base-32x512.json

The step is compiled at ``train.global_batch_size`` x ``data.max_length``. Add
``XLA_FLAGS=--xla_dump_to=DIR`` to keep the HLO and PTX (hundreds of MB). Compiles take minutes
each on two cores.
"""

import collections
import json
import math
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only GPU devices; nothing runs here

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train.cli import run_cli, setup_process  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.")
flags.DEFINE_string("topology", "h200:1", "A topology of train.plan (h200:1, h100:1, v5e:2x4).")
flags.DEFINE_list("leads", ["jaxsent", "before-issue-27"], "Variants: jaxsent or gpu_leads.LEADS")
flags.DEFINE_string("output", None, "Write the counts as JSON here.")
flags.mark_flags_as_required(["config"])


# --- the jaxpr -------------------------------------------------------------------------------


def _subjaxprs(eqn, platform):
    """Jaxprs an equation runs on ``platform`` (one branch of a `platform_dependent` choice)."""
    choice = eqn.params.get("branches_platforms") if eqn.primitive.name == "cond" else None
    if choice is not None:
        index = next(
            (i for i, names in enumerate(choice) if names and platform in names),
            choice.index(None),
        )
        yield eqn.params["branches"][index].jaxpr
        return
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns"):
                yield inner


def _eqns(jaxpr, platform="cuda"):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in _subjaxprs(eqn, platform):
            yield from _eqns(sub, platform)


def _aval(var) -> str:
    aval = var.aval
    return f"{aval.dtype}{list(aval.shape)}"


def jaxpr_counts(jaxpr, scores_shape: tuple[int, ...]) -> dict:
    """What the leads are about, in the step's jaxpr as lowered for a GPU."""
    scatters, gathers, score_operands, randoms = [], 0, [], collections.Counter()
    conds = 0
    for eqn in _eqns(jaxpr):
        name = eqn.primitive.name
        if name.startswith("scatter"):
            scatters.append(f"{name} into {_aval(eqn.invars[0])}")
        elif name == "gather":
            gathers += 1
        elif name == "cond" and eqn.params.get("branches_platforms") is None:
            conds += 1
        elif name == "dot_general":
            for var in eqn.invars:
                if tuple(var.aval.shape) == scores_shape:
                    score_operands.append(str(var.aval.dtype))
        elif name in ("threefry2x32", "random_bits", "random_wrap", "rng_bit_generator"):
            randoms[name] += 1
    return {
        "scatters": sorted(scatters),
        "gathers": gathers,
        "data_dependent_conds": conds,
        "score_matmul_operand_dtypes": dict(collections.Counter(score_operands)),
        "random_primitives": dict(randoms),
    }


# --- the optimised HLO -----------------------------------------------------------------------

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%(?P<name>\S+) = (?P<type>.*?) (?P<op>[a-z][a-z0-9\-]*)\((?P<args>.*?)\)"
    r"(?P<rest>.*)$"
)


def _shape(type_text: str) -> tuple[str, tuple[int, ...]]:
    match = re.match(r"([a-z0-9]+)\[([0-9,]*)\]", type_text)
    if not match:
        return type_text, ()
    dims = tuple(int(d) for d in match.group(2).split(",") if d)
    return match.group(1), dims


def hlo_counts(hlo_text: str, *, batch: int, heads: int, length: int) -> dict:
    """What the leads are about, in an optimised GPU HLO module."""
    types, instructions = {}, []
    current = None
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY "):
            current = "ENTRY"
        elif re.match(r"^%?[\w.\-]+ .*\{$", line) and not line.startswith(" "):
            current = line.split()[0]
        match = _INSTRUCTION.match(line)
        if match:
            types[match["name"]] = match["type"]
            instructions.append((current, match))
    scores = {(batch * heads, length, length), (batch, heads, length, length)}
    scatters, dots, kinds, targets = [], collections.Counter(), collections.Counter(), {}
    conditionals = whiles = 0
    xor_mask_sized = 0
    mask_elements = batch * length
    entry_fusions = 0
    for computation, match in instructions:
        op, rest = match["op"], match["rest"]
        operands = [a.strip().lstrip("%") for a in match["args"].split(",") if a.strip()]
        if op == "scatter":
            dtype, dims = _shape(match["type"])
            rows = _shape(types.get(operands[1], ""))[1]
            scatters.append(f"{dtype}{list(dims)} <- {rows[0] if rows else '?'} rows")
        elif op == "conditional":
            conditionals += 1
        elif op == "while":
            whiles += 1
        elif op == "dot":
            for operand in operands[:2]:
                dtype, dims = _shape(types.get(operand, ""))
                if dims in scores:
                    dots[f"{dtype} [B*h, L, L] operand"] += 1
        elif op == "xor":
            dtype, dims = _shape(match["type"])
            if dtype == "u32" and math.prod(dims) >= mask_elements:
                xor_mask_sized += 1
        elif op == "fusion":
            if computation == "ENTRY":
                entry_fusions += 1
            kind = re.search(r"kind=(k\w+)", rest)
            backend = re.search(r'"kind":"([^"]+)"', rest)
            kinds[backend.group(1) if backend else kind.group(1) if kind else "?"] += 1
        elif op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rest)
            name = target.group(1) if target else "?"
            targets[name] = targets.get(name, 0) + 1
        elif op == "rng-bit-generator":
            kinds["rng-bit-generator"] += 1
    return {
        "scatters": sorted(scatters),
        "conditionals": conditionals,
        "whiles": whiles,
        "score_matmul_operands": dict(dots),
        "fusions_by_kind": dict(sorted(kinds.items())),
        "custom_calls": targets,
        "entry_fusions": entry_fusions,
        "u32_xor_of_mask_size_or_more": xor_mask_sized,
    }


def main(argv):
    del argv
    setup_process()
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from gpu_leads import lead_named, train_steps

    from jaxsent import sharding
    from jaxsent.training.config_check import check_config
    from jaxsent.training.plan import collectives, topology_devices
    from jaxsent.training.steps import abstract_arguments, abstract_batch

    config = FLAGS.config
    devices = topology_devices(FLAGS.topology)
    check_config(config, devices=devices, needs_weights=False)
    mesh = sharding.make_mesh(data=config.mesh.data, model=config.mesh.model, devices=devices)
    batch_size, length = int(config.train.global_batch_size), int(config.data.max_length)
    result = {
        "topology": FLAGS.topology,
        "jax": jax.__version__,
        "model": config.model.name,
        "dtype": config.model.dtype,
        "batch": batch_size,
        "length": length,
        "micro_batch_size": int(config.train.get("micro_batch_size", 0) or 0),
        "leads": {},
    }

    def shardings(tree):
        return sharding.tree_shardings(tree, mesh, config.mesh.strategy)

    for name in FLAGS.leads:
        lead = lead_named(name)
        steps, state = train_steps(config, mesh, lead, abstract=True)
        args = (
            abstract_arguments(state, shardings(state)),
            abstract_arguments(steps.rng_state, shardings(steps.rng_state)),
            abstract_batch(batch_size, length, mesh),
        )
        start = time.perf_counter()
        with jax.set_mesh(mesh):
            traced = steps.train_step_fn.trace(*args)
            lowered = traced.lower()
            compiled = lowered.compile(dict(lead.compiler_options) or None)
        seconds = time.perf_counter() - start
        heads = _heads(config)
        micro = result["micro_batch_size"] or batch_size
        stablehlo, hlo = lowered.as_text(), compiled.as_text()
        memory = compiled.memory_analysis()
        result["leads"][name] = {
            "about": lead.about,
            "compile_seconds": round(seconds, 1),
            "temporaries_bytes": int(memory.temp_size_in_bytes),
            "arguments_bytes": int(memory.argument_size_in_bytes),
            "jaxpr": jaxpr_counts(traced.jaxpr.jaxpr, (micro, heads, length, length)),
            "stablehlo_scatters": sorted(
                re.findall(
                    r"stablehlo\.scatter.*?\)\s*->\s*tensor<([0-9x]+x[a-z0-9]+)>", stablehlo, re.S
                )
            ),
            "optimised_hlo": hlo_counts(hlo, batch=micro, heads=heads, length=length),
            "collectives": collectives(hlo),
        }
        print(json.dumps({name: result["leads"][name]}, indent=1), flush=True)
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


def _heads(config) -> int:
    from jaxsent.training.build import encoder_config

    return int(encoder_config(config.model.name).num_attention_heads)


if __name__ == "__main__":
    run_cli(main)
