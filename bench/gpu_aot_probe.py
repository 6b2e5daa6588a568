"""Deviceless (compile-only) AOT compilation of a jitted JAX program for an
NVIDIA H100 / H200 target on a machine without a GPU.

Setup (separate venv; nothing in the project venv is touched):
  python3 -m venv /tmp/gpuvenv
  nice -n 19 /tmp/gpuvenv/bin/pip install jax==0.10.2 jaxlib==0.10.2 \
      jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2
  # optional, see PTXAS notes below: nvidia-cuda-nvcc-cu12
Run:
  JAX_PLATFORMS=cpu nice -n 19 /tmp/gpuvenv/bin/python bench/gpu_aot_probe.py \
      [h100_sxm|h200] [ndev ...]

The target description is a stream_executor.GpuTargetConfigProto text proto
(XLA ships them as xla/backends/gpu/target_config/specs/*.txtpb); fields that
the 0.10.2 plugin's proto does not know (collective_memory_granularity) are
dropped.  JAX_PLATFORMS=cpu keeps jax from trying to open a CUDA client (and
skips the plugin's CUDA-library version check); the cuda plugin is still
loaded and its topology factory registered.
"""

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
from jax._src.lib import _jax  # private: only for the cost-analysis fallback
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_DIR = os.environ.get("GPU_SPEC_DIR", os.path.join(REPO, "jaxsent", "training", "gpu_targets"))
target = sys.argv[1] if len(sys.argv) > 1 else "h100_sxm"
ndevs = [int(a) for a in sys.argv[2:]] or [1, 8]
cfg = open(os.path.join(SPEC_DIR, target + ".txtpb")).read()

print("jax", jax.__version__, "| target", target, "| local backend", jax.default_backend())


def f(x, w1, w2):
    h = jnp.dot(x, w1, preferred_element_type=jnp.float32)
    p = jax.nn.softmax(h, axis=-1).astype(jnp.bfloat16)
    return jnp.dot(p, w2, preferred_element_type=jnp.float32).astype(jnp.bfloat16)


B, D, H = 4096, 1024, 4096


def cost_fallback(compiled):
    """Compiled.cost_analysis() is None on this path (the GPU compile-only
    executable answers UNIMPLEMENTED: GetCostAnalysis is not supported), so run
    XLA's generic HloCostAnalysis over the *GPU-optimized* HLO module, using
    the local CPU client only as the analysis host (private API)."""
    mod = compiled.runtime_executable().hlo_modules()[0]
    return _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, mod)


def report(compiled):
    ma = compiled.memory_analysis()
    print("memory_analysis():", ma)
    ca = compiled.cost_analysis()
    print("cost_analysis():", ca)
    try:
        fb = cost_fallback(compiled)
        print(
            "cost fallback (HloCostAnalysis on optimized GPU HLO):",
            {k: v for k, v in fb.items() if k in ("flops", "transcendentals", "bytes accessed")},
        )
    except Exception as e:
        print("cost fallback failed:", type(e).__name__, e)
    txt = compiled.as_text()
    ops = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
    collectives = {o: txt.count(o + "(") + txt.count(o + "-start(") for o in ops if o in txt}
    fusions = txt.count(" fusion(")
    print(f"compiled HLO: {len(txt)} chars; fusions={fusions}; collectives={collectives}")
    kinds = sorted(
        {ln.split('"kind":"')[1].split('"')[0] for ln in txt.splitlines() if '"kind":"' in ln}
    )
    print("fusion backend kinds:", kinds)
    ser = compiled.runtime_executable().serialize()
    cubins, i = 0, ser.find(b"\x7fELF")
    while i >= 0:  # count embedded ELF headers whose e_machine is EM_CUDA (190)
        cubins += int.from_bytes(ser[i + 18 : i + 20], "little") == 190
        i = ser.find(b"\x7fELF", i + 1)
    print(
        f"serialized executable: {len(ser)} bytes; CUDA ELF (cubin) headers found by byte "
        f"search: {cubins} (0 is inconclusive: XLA_FLAGS=--xla_dump_to=DIR shows the .ptx)"
    )


for n in ndevs:
    print(f"\n=== {n} device(s): topology '1x1x{n}' ===")
    t0 = time.time()
    topo = topologies.get_topology_desc(
        platform="cuda", topology_name=f"1x1x{n}", target_config=cfg, topology=f"1x1x{n}"
    )
    print("devices:", [(d.id, d.platform, d.device_kind) for d in topo.devices])
    mesh = topologies.make_mesh(topo, (n,), ("data",))
    row = NamedSharding(mesh, P("data", None))
    rep = NamedSharding(mesh, P(None, None))
    args = (
        jax.ShapeDtypeStruct((B, D), jnp.bfloat16, sharding=row),
        jax.ShapeDtypeStruct((D, H), jnp.bfloat16, sharding=rep),
        jax.ShapeDtypeStruct((H, D), jnp.bfloat16, sharding=rep),
    )
    lowered = jax.jit(f, out_shardings=row).lower(*args)
    t1 = time.time()
    try:
        compiled = lowered.compile()
    except Exception as e:  # report the exact failure
        print(f"COMPILE FAILED after {time.time() - t1:.1f}s: {type(e).__name__}: {e}")
        continue
    print(f"compiled in {time.time() - t1:.1f}s (topology+lower {t1 - t0:.1f}s)")
    report(compiled)
    if n > 1:
        print(f"--- tensor-parallel variant over {n} devices (w1 cols / w2 rows sharded)")
        targs = (
            jax.ShapeDtypeStruct((B, D), jnp.bfloat16, sharding=rep),
            jax.ShapeDtypeStruct(
                (D, H), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "data"))
            ),
            jax.ShapeDtypeStruct(
                (H, D), jnp.bfloat16, sharding=NamedSharding(mesh, P("data", None))
            ),
        )

        def tp_f(x, w1, w2):
            h = jnp.dot(x, w1, preferred_element_type=jnp.float32)
            g = jax.nn.gelu(h).astype(jnp.bfloat16)
            return jnp.dot(g, w2, preferred_element_type=jnp.float32).astype(jnp.bfloat16)

        try:
            report(jax.jit(tp_f, out_shardings=rep).lower(*targs).compile())
        except Exception as e:
            print(f"TP COMPILE FAILED: {type(e).__name__}: {e}")
