"""`python -m train.plan`: the run's steps compiled for TPU topologies by libtpu, on this CPU.

Tiny models (two layers, width 32) keep each compile to seconds. The model folders hold only a
config.json: a plan needs no weights. Only the tests that compile for a TPU (or run the CLI on a
TPU topology) need libtpu (`needs_libtpu`); HLO parsing, costing on the CPU, model FLOPs, the
chip table and the batch search run without it. Planners that several tests compile are shared
by module fixtures.
"""

import dataclasses
import functools
import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import jax
import pytest
from cli_runs import command, metrics_rows, module, run, train_rows
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_config

from configs import smoke
from jaxsent.models import ModernBertConfig
from jaxsent.models.modernbert import ModernBertModel
from jaxsent.training import plan as plan_lib
from jaxsent.training.steps import abstract_batch

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu (the TPU compiler) not installed"
)

# Published per-chip figures (Google Cloud's v5e page, NVIDIA's data sheets), written here apart
# from plan_lib.CHIPS: dense bf16 peak FLOP/s and HBM bandwidth in bytes/s.
PUBLISHED = {"v5e": (197e12, 819e9), "h100": (989e12, 3.35e12), "h200": (989e12, 4.8e12)}

BATCH = 16  # a multiple of every data axis below (16 chips of v5e:4x4 under dp)
LENGTH = 32


def _model_folder(directory: Path, **overrides) -> Path:
    """A folder with only the tiny model's config.json (``overrides`` change its fields)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config(**overrides).to_hf_dict()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return _model_folder(tmp_path_factory.mktemp("tiny_arch"))


def _config(model_name, *, strategy="dp", model_axis=1, scan_layers=False, remat="none"):
    config = smoke.get_config()
    config.model.name = str(model_name)
    config.model.scan_layers = scan_layers
    config.model.remat = remat
    config.mesh.strategy = strategy
    config.mesh.model = model_axis
    config.data.max_length = LENGTH
    config.train.global_batch_size = BATCH
    config.train.eval_batch_size = BATCH
    return config


def _state_bytes(planner: plan_lib.Planner) -> int:
    leaves = jax.tree.leaves((planner.state_args, planner.rng_args))
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)


def _batch_bytes(planner: plan_lib.Planner) -> int:
    batch = abstract_batch(BATCH, LENGTH, planner.mesh)
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in batch.values())


def _check_roofline(shape: plan_lib.ShapePlan, chip: str, chips: int) -> None:
    """The roofline and MFU bound recomputed from the shape's own FLOPs and bytes and the chip's
    published figures: the slower of compute (the compiler's FLOPs, or the chip's share of the
    model FLOPs if more) and memory traffic; MFU = model FLOPs / (chips x peak x that time)."""
    peak, bandwidth = PUBLISHED[chip]
    seconds = max(
        max(shape.flops, shape.model_flops / chips) / peak, shape.bytes_accessed / bandwidth
    )
    assert shape.roofline_seconds == pytest.approx(seconds, rel=1e-12)
    assert shape.mfu_bound == pytest.approx(shape.model_flops / (chips * peak * seconds), rel=1e-12)


# v5e:2x2 is one host of 4 chips; v5e:4x4 is 16 chips on 4 hosts. The multi-host plans use
# scan_layers (one layer body) to keep the compile short; v5e:2x2 compiles the unrolled layers.
@pytest.mark.parametrize(
    "topology, hosts, scan_layers", [("v5e:2x2", 1, False), ("v5e:4x4", 4, True)]
)
@pytest.mark.parametrize(
    "strategy, model_axis, collective",
    [("dp", 1, "all-reduce"), ("fsdp", 1, "all-gather"), ("tp", 2, "all-reduce")],
)
@needs_libtpu
def test_train_and_eval_steps_compile_for_tpu_topologies(
    tiny_folder, topology, hosts, scan_layers, strategy, model_axis, collective
):
    config = _config(tiny_folder, strategy=strategy, model_axis=model_axis, scan_layers=scan_layers)
    planner = plan_lib.Planner(config, topology)
    assert planner.hosts == hosts
    assert planner.mesh.devices.flat[0].device_kind == "TPU v5 lite"
    train, evaluation = planner.plan(all_shapes=False)
    assert (train.step, train.global_batch, train.length) == ("train", BATCH, LENGTH)
    assert (evaluation.step, evaluation.global_batch) == ("eval", BATCH)
    for shape in (train, evaluation):
        assert shape.fits and shape.error is None
        assert 0 < shape.bytes["peak"] < plan_lib.CHIPS["v5e"].hbm_bytes
        assert shape.flops > 0 and shape.bytes_accessed > 0
        _check_roofline(shape, "v5e", planner.chips)
    # The compiler's FLOPs cover the model's: the matmuls and attention of every layer (the
    # train step's and, under scan_layers, every iteration of the layer loop) and more (the
    # softmax, LayerNorm, the optimiser); a layer counted once would leave it at about half.
    assert train.flops * planner.chips >= train.model_flops
    assert evaluation.flops * planner.chips >= evaluation.model_flops
    # Gradients are reduced over the data axis (dp), weights gathered where used (fsdp), partial
    # sums reduced over the model axis (tp; that tp splits the weights: the test below).
    assert train.collectives[collective]["count"] >= 1
    assert train.collectives[collective]["bytes"] > 0


@needs_libtpu
@pytest.mark.parametrize("strategy, model_axis", [("fsdp", 1), ("tp", 2)])
def test_a_modernbert_plans_from_its_config_json(tmp_path, strategy, model_axis):
    # Local and global layers, a window shorter than the sequence, no pooler: the same planner.
    raw = ModernBertConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        local_attention=8,
    ).to_hf_dict()
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = _config(tmp_path, strategy=strategy, model_axis=model_axis, remat="full")
    planner = plan_lib.Planner(config, "v5e:2x2")
    train, evaluation = planner.plan(all_shapes=False)
    assert train.fits and evaluation.fits
    encoder = ModernBertModel(ModernBertConfig.from_hf(raw), rngs=nnx.Rngs(0))
    encoder_params = sum(x.size for x in jax.tree.leaves(nnx.state(encoder, nnx.Param)))
    assert planner.params == encoder_params + 32 + 1  # + the head's kernel and bias
    # GeGLU: Wqkv 3H^2, Wo H^2, Wi H x 2I, Wo I x H per layer; local layers (2 of 3) attend to
    # 2 * 4 + 1 keys of the 32.
    assert plan_lib.matmul_params(planner.model_config) == 3 * (4 * 32 * 32 + 3 * 32 * 48)


# Width 256: the TPU's tiled layouts pad each small replicated array (LayerNorm scales, biases)
# to at least a (8, 128) tile, about 0.15 MB in all here; at width 32 that padding alone is 10% of
# a chip's share. The state test and the FSDP collective test share these planners.


@pytest.fixture(scope="module")
def w256_planner(tmp_path_factory):
    folder = _model_folder(
        tmp_path_factory.mktemp("w256"),
        hidden_size=256,
        intermediate_size=1024,
        num_attention_heads=4,
    )
    planners = {}

    def get(strategy, *, scan_layers=False, remat="none"):
        key = (strategy, scan_layers, remat)
        if key not in planners:
            config = _config(
                folder,
                strategy=strategy,
                model_axis=2 if strategy == "tp" else 1,
                scan_layers=scan_layers,
                remat=remat,
            )
            planners[key] = plan_lib.Planner(config, "v5e:2x4")
        return planners[key]

    return get


@needs_libtpu
def test_fsdp_and_tp_split_the_state_dp_replicates_it(w256_planner):
    dp, fsdp, tp = (w256_planner(s) for s in ("dp", "fsdp", "tp"))
    total = _state_bytes(dp)
    assert total == _state_bytes(fsdp) == _state_bytes(tp)
    args = {
        name: p.compile_shape("train", BATCH, LENGTH).bytes["arguments"]
        for name, p in (("dp", dp), ("fsdp", fsdp), ("tp", tp))
    }
    # Replicated (dp) parameters and moments take the whole state on every chip.
    assert args["dp"] >= total
    # FSDP splits every matrix over the 8 chips: an eighth each, plus padding and the batch.
    assert args["fsdp"] <= 1.1 * total / fsdp.chips + _batch_bytes(fsdp) / fsdp.chips
    # tp (model axis 2) splits the vocabulary, the attention heads and the MLP's hidden layer
    # over 2 chips; what stays whole (LayerNorms, biases along `embed`, position embeddings, the
    # pooler) is 0.6% of the state: half of dp's state per chip and a little more, not dp's whole.
    tp_batch = _batch_bytes(tp) / tp.mesh.shape["data"]
    assert total / 2 <= args["tp"] <= 0.51 * total + tp_batch


@needs_libtpu
@pytest.mark.parametrize("scan_layers, remat", [(False, "none"), (True, "full")])
def test_fsdp_gathers_the_weights_not_the_activations(w256_planner, scan_layers, remat):
    # FSDP splits each weight along `embed` over `data`, the axis the batch is split over. With
    # nothing pinning the activations to the batch layout, XLA split them along `embed` too and
    # all-gathered them at every layer: 204 MiB gathered and 193 MiB all-reduced per step here,
    # 5-6x the parameters' 36 MiB, where gathering each weight costs at most its size per use.
    # At 64 x 128 the activations outweigh the 36 MiB of parameters.
    planner = w256_planner("fsdp", scan_layers=scan_layers, remat=remat)
    train = planner.compile_shape("train", 64, 128)
    param_bytes = 4 * planner.params  # float32
    assert 0 < train.collectives["all-gather"]["bytes"] <= 2 * param_bytes
    assert train.collectives["all-reduce"]["bytes"] <= 2 * param_bytes


def test_collectives_count_each_iteration_of_a_scan():
    hlo = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %c = s32[] constant(12)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ag = f32[32]{0:T(128)} all-gather(%x), dimensions={0}
  %ar-start = f32[8]{0} all-reduce-start(%x), to_apply=%add
  %ar-done = f32[8]{0} all-reduce-done(%ar-start)
  ROOT %t = (s32[], f32[8]) tuple(%i, %x)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]) while(%t0), condition=%cond, body=%body
  %r = bf16[4,8]{1,0} all-reduce(%b), to_apply=%add
  ROOT %o = f32[8]{0} get-tuple-element(%w), index=1
}
"""
    assert plan_lib.collectives(hlo) == {
        "all-gather": {"count": 12, "bytes": 12 * 32 * 4},
        "all-reduce": {"count": 12 + 1, "bytes": 12 * 8 * 4 + 4 * 8 * 2},
    }


def _counted_loop(compare: str, step: int, start: str) -> str:
    """A module whose while loop holds one all-gather; its counter (tuple element 1, u32 as in
    the TPU's windowed einsums) starts at ``start``, adds ``step`` and runs while ``compare``
    (over ``%i`` and the bound ``%n``) holds."""
    return f"""HloModule m

%cond (p: (f32[8], u32[])) -> pred[] {{
  %n = u32[]{{:T(128)}} constant(5)
  %p = (f32[8]{{0}}, u32[]{{:T(128)}}) parameter(0)
  %i = u32[]{{:T(128)}} get-tuple-element(%p), index=1
  ROOT %c = pred[]{{:T(512)}} {compare}
}}

%body (p: (f32[8], u32[])) -> (f32[8], u32[]) {{
  %s = u32[]{{:T(128)}} constant({step})
  %p = (f32[8]{{0}}, u32[]{{:T(128)}}) parameter(0)
  %x = f32[8]{{0}} get-tuple-element(%p), index=0
  %i = u32[]{{:T(128)}} get-tuple-element(%p), index=1
  %ag = f32[8]{{0}} all-gather(%x), dimensions={{0}}
  %next = u32[]{{:T(128)S(6)}} add(%i, %s)
  ROOT %t = (f32[8]{{0}}, /*index=1*/u32[]{{:T(128)}}) tuple(%ag, %next)
}}

ENTRY %main (a: f32[8], b: u32[]) -> f32[8] {{
  %a = f32[8]{{0}} parameter(0)
  %b = u32[]{{:T(128)}} parameter(1)
  %zero = u32[]{{:T(128)}} constant(0)
  %one = u32[]{{:T(128)}} constant(1)
  %start = u32[]{{:T(128)}} copy({start})
  %t0 = (f32[8]{{0}}, /*index=1*/u32[]{{:T(128)}}) tuple(%a, %start)
  %w = (f32[8]{{0}}, u32[]{{:T(128)}}) while(%t0), condition=%cond, body=%body
  ROOT %o = f32[8]{{0}} get-tuple-element(%w), index=0
}}
"""


# The TPU compiler's loops carry no known_trip_count: the count comes from the counter's start,
# step and bound. FSDP's windowed einsums on v5e-8 count 0, 2 below 4 (2 iterations, not 4).
@pytest.mark.parametrize(
    "compare, step, start, trips",
    [
        ("compare(%i, %n), direction=LT", 2, "%zero", 3),  # 0, 2, 4
        ("compare(%i, %n), direction=LT", 1, "%one", 4),  # 1, 2, 3, 4
        ("compare(%n, %i), direction=GT", 1, "%zero", 5),  # 5 > i
        ("compare(%i, %n), direction=LE", 2, "%one", 3),  # 1, 3, 5
        ("compare(%i, %n), direction=LT", 1, "%b", 5),  # a start not known: 0
        ("compare(%i, %n), direction=NE", 1, "%zero", 1),  # another form: counted once
    ],
)
def test_collectives_count_a_loop_by_its_counter(compare, step, start, trips):
    hlo = _counted_loop(compare, step, start)
    assert plan_lib.collectives(hlo) == {"all-gather": {"count": trips, "bytes": trips * 8 * 4}}


@functools.cache
def _matmul_scan(inner: int | None, layers: int = 10):
    """A CPU-compiled scan of ``layers`` [128, 256] @ [256, 256] float32 matmuls, each followed by
    tanh (each one a scan of `inner` such matmuls when `inner` is given), and its matmuls' FLOPs.
    """
    import jax.numpy as jnp

    def layer(x, w):
        if inner is None:
            return jnp.tanh(x @ w), None
        return jax.lax.scan(lambda y, _: (jnp.tanh(y @ w), None), x, length=inner)[0], None

    def f(ws, x):
        return jax.lax.scan(layer, x, ws)[0].sum()

    ws = jax.ShapeDtypeStruct((layers, 256, 256), jax.numpy.float32)
    x = jax.ShapeDtypeStruct((128, 256), jax.numpy.float32)
    compiled = jax.jit(f).lower(ws, x).compile()
    return compiled, layers * (inner or 1) * 2 * 128 * 256 * 256


@pytest.mark.parametrize("inner", [None, 3])
def test_step_cost_counts_every_iteration_of_a_loop(inner):
    compiled, matmul_flops = _matmul_scan(inner)
    text = compiled.as_text()
    once = compiled.cost_analysis()["flops"]
    # XLA costs a loop body once: one matmul of the ten (of the thirty when nested) ...
    assert once < 1.1 * matmul_flops / (10 * (inner or 1))
    # ... step_cost counts them all, plus the final sum's 128 x 256 adds (exact: the
    # generic analysis counts 2 m n k per matmul, nothing for tanh, a transcendental).
    assert plan_lib.step_cost(compiled.cost_analysis(), text)["flops"] == matmul_flops + 128 * 256
    assert plan_lib.step_cost(None, text)["flops"] == matmul_flops + 128 * 256


# Bytes accessed per layer, counted by hand (float32; XLA's analysis counts each op's operands
# read and its result written): slicing the layer's weight out of the stack reads and writes
# 256 x 256 x 4 = 256 KiB; the matmul reads x (128 KiB) and the weight (256 KiB) and writes
# 128 KiB; tanh reads and writes 128 KiB. With `inner`, the slice once and the matmul and tanh
# 3 times. The loop counter's scalar ops add a few bytes (below `scalars`).
KIB = 1024
LAYER_BYTES = {None: 2 * 256 * KIB + 512 * KIB + 256 * KIB, 3: 2 * 256 * KIB + 3 * 768 * KIB}


@pytest.mark.parametrize("inner, scalars", [(None, 64), (3, 256)])
def test_step_cost_counts_the_bytes_of_every_iteration(inner, scalars):
    # 20 layers against 10: everything outside the loop is the same, so the difference is 10
    # layers' bytes, which XLA's own analysis (the body once) does not see at all.
    (ten, _), (twenty, _) = _matmul_scan(inner, 10), _matmul_scan(inner, 20)
    assert ten.cost_analysis()["bytes accessed"] == twenty.cost_analysis()["bytes accessed"]
    cost = {
        n: plan_lib.step_cost(c.cost_analysis(), c.as_text())["bytes accessed"]
        for n, c in ((10, ten), (20, twenty))
    }
    per_layer = (cost[20] - cost[10]) / 10
    assert LAYER_BYTES[inner] <= per_layer <= LAYER_BYTES[inner] + scalars


def _tpu_matmul(rows: int):
    """[rows, 1024] @ [1024, 4096] in bfloat16 compiled for v5e:2x4 with both operands split
    over the 8 chips along their rows (FSDP's layout for a weight), and its exact FLOPs per chip."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxsent import sharding

    mesh = sharding.make_mesh(data=8, model=1, devices=plan_lib.topology_devices("v5e:2x4"))
    split = NamedSharding(mesh, P("data", None))
    x = jax.ShapeDtypeStruct((rows, 1024), jax.numpy.bfloat16, sharding=split)
    w = jax.ShapeDtypeStruct((1024, 4096), jax.numpy.bfloat16, sharding=split)
    compiled = jax.jit(lambda x, w: x @ w, out_shardings=split).lower(x, w).compile()
    return compiled, 2 * rows * 1024 * 4096 / 8


@needs_libtpu
def test_a_lone_matmul_costs_its_flops_exactly_on_a_tpu():
    # 4,096 rows: the TPU compiler gathers the weight whole (no loop) and counts 2 m n k.
    compiled, exact = _tpu_matmul(4096)
    assert " while(" not in compiled.as_text()
    assert plan_lib.step_cost(compiled.cost_analysis(), compiled.as_text())["flops"] == exact


@needs_libtpu
def test_a_windowed_einsum_is_costed_every_iteration():
    # At 131,072 rows the TPU compiler gathers the weight in a loop of partial matmuls (a
    # windowed einsum: 2 iterations of 2 partial matmuls, a u32 counter stepping by 2 below 4),
    # and XLA's cost analysis counts one iteration: half the FLOPs. step_cost counts both; what
    # it adds beyond the matmuls is the partial sums' additions, under 1%.
    compiled, exact = _tpu_matmul(131072)
    text = compiled.as_text()
    assert " while(" in text
    assert compiled.cost_analysis()["flops"] < 0.51 * exact
    assert plan_lib.step_cost(compiled.cost_analysis(), text)["flops"] == pytest.approx(
        exact, rel=0.01
    )


# Scanned and unrolled programs are optimised differently (the tiny model's elementwise work is
# a large share of its FLOPs), but their matmuls are the same. One layer of the six is 17% of
# the encoder's FLOPs, so 1% (train) and 5% (eval) still catch a layer counted too few times.
# Their bytes differ more (fusions; 2.4% under dp), so 5% catches only the loop counted once
# (7.5% short of the unrolled step's bytes in train, 18% in eval, under dp); the exact count of
# a loop's bytes is the CPU test above. Not under fsdp: there the TPU's bytes were 7.7x the
# generic analysis's over the whole eval step (its tiles pad these width-32 arrays), the loop's
# further iterations are scaled by that ratio, and the scanned eval step came out 36% above the
# unrolled one's bytes (docs/tpu.md: under scan_layers the bytes are an estimate).
@needs_libtpu
@pytest.mark.parametrize("strategy", ["dp", "fsdp"])
def test_scan_layers_plans_cost_every_layer_like_the_unrolled_step(tmp_path, strategy):
    folder = _model_folder(tmp_path, num_hidden_layers=6)
    costs = {}
    for scan_layers in (False, True):
        config = _config(folder, strategy=strategy, scan_layers=scan_layers, remat="full")
        planner = plan_lib.Planner(config, "v5e:2x2")
        costs[scan_layers] = [planner.compile_shape(s, BATCH, LENGTH) for s in ("train", "eval")]
    (train, eval_), (scan_train, scan_eval) = costs[False], costs[True]
    assert scan_train.flops == pytest.approx(train.flops, rel=0.01)
    assert scan_eval.flops == pytest.approx(eval_.flops, rel=0.05)
    if strategy == "dp":
        assert scan_train.bytes_accessed == pytest.approx(train.bytes_accessed, rel=0.05)
        assert scan_eval.bytes_accessed == pytest.approx(eval_.bytes_accessed, rel=0.05)


def test_model_flops_are_six_n_t_plus_attention():
    config = tiny_config()
    n = 2 * (4 * 32 * 32 + 2 * 32 * 64)  # q, k, v, out and the feed-forward pair, 2 layers
    attention = 4 * 2 * 3 * LENGTH * LENGTH * 32  # 4 layers B L^2 H, B = 3
    assert plan_lib.model_flops(config, step="eval", global_batch=3, length=LENGTH) == (
        2 * n * 3 * LENGTH + attention
    )
    assert plan_lib.model_flops(config, step="train", global_batch=3, length=LENGTH) == 3 * (
        2 * n * 3 * LENGTH + attention
    )


def test_model_flops_of_a_modernbert_count_a_local_layer_by_its_window():
    # Layers global, local, local (every third global); local_attention 8: a window of 4 keys on
    # each side, so a local layer's query attends to at most 2 x 4 + 1 = 9 keys.
    config = ModernBertConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        local_attention=8,
    )
    assert plan_lib.costing._attended_keys(config, 32) == 32 + 9 + 9
    assert plan_lib.costing._attended_keys(config, 6) == 3 * 6  # shorter than the window: every key
    # GeGLU: Wqkv 3 H^2 and Wo H^2; Wi H x 2I and Wo I x H: 3 H I.
    n = 3 * (4 * 32 * 32 + 3 * 32 * 48)
    tokens = 5 * 32  # B = 5
    forward = 2 * n * tokens + 4 * 5 * 32 * (32 + 9 + 9) * 32  # 4 B L (keys over layers) H
    assert plan_lib.model_flops(config, step="eval", global_batch=5, length=32) == forward
    assert plan_lib.model_flops(config, step="train", global_batch=5, length=32) == 3 * forward


def _plan(*args, tmp_path):
    output = tmp_path / "plan.json"
    result = run(module("train.plan", "--config", "configs/smoke.py", *args, "--output", output))
    return result, output


@needs_libtpu
def test_a_config_that_cannot_fit_exits_1_naming_the_shape(tmp_path):
    # 50M x 32 embeddings: parameters and AdamW moments alone exceed a v5e chip's 16 GiB.
    huge = _model_folder(tmp_path / "huge", vocab_size=50_000_000)
    result, output = _plan(
        "--topology=v5e:2x2",
        f"--config.model.name={huge}",
        f"--config.data.max_length={LENGTH}",
        f"--config.train.global_batch_size={BATCH}",
        f"--config.train.eval_batch_size={BATCH}",
        "--all_shapes",
        "--config.data.num_buckets=2",
        tmp_path=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"does not fit: train {BATCH} x {LENGTH} on v5e:2x2"), last
    assert re.search(r"RESOURCE_EXHAUSTED|over", last), last
    plan = json.loads(output.read_text())
    assert plan["fits"] is False and plan["shapes"][0]["fits"] is False
    assert plan["params"] > 1.6e9
    # --all_shapes without data: the evenly spaced ladder, ceil(32 k / 2) for k = 1, 2, longest
    # first, train then eval.
    assert [(s["step"], s["length"]) for s in plan["shapes"]] == [
        ("train", 32),
        ("train", 16),
        ("eval", 32),
        ("eval", 16),
    ]


MICRO = 8  # train.micro_batch_size in the --max_batch tests: a multiple of v5e:2x2's data axis


@pytest.fixture(scope="module")
def micro_search(tiny_folder):
    """--max_batch's search (`search_max_batch`) for the tiny model with micro-batches of 8 on
    v5e:2x2, every train program it traces recorded: (global batch, micro-batch count, rows per
    micro-batch). Each probe is compiled, but the search reads a peak of one byte per row and a
    limit of 20 bytes: the tiny model's real peaks vary by about a MiB from one process to the
    next and are flat in the batch under micro-batches (348 MiB at 2^20 rows), so a real limit
    would make the search long and its path uncertain."""
    from jaxsent.training import steps

    config = _config(tiny_folder)
    config.train.micro_batch_size = MICRO
    planner = plan_lib.Planner(config, "v5e:2x2")
    traced = []
    accumulate = steps._accumulated_loss_and_grads
    compile_shape = planner.compile_shape

    def spy(model, wrt, loss_fn, batch, count):
        rows = batch["input_ids"].shape[0]
        traced.append((rows, count, rows // count))
        return accumulate(model, wrt, loss_fn, batch, count)

    def one_byte_per_row(step, batch, length):
        shape = compile_shape(step, batch, length)
        return dataclasses.replace(shape, bytes={**shape.bytes, "peak": batch})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "_accumulated_loss_and_grads", spy)
        patch.setattr(planner, "compile_shape", one_byte_per_row)
        batch, probes = plan_lib.search_max_batch(planner, lengths=[LENGTH], limit_bytes=20)
    return planner, batch, probes, traced


@needs_libtpu
def test_max_batch_probes_only_whole_micro_batches(micro_search):
    planner, batch, probes, traced = micro_search
    assert planner.batch_multiple == MICRO
    # The config's 16, its double, then the secant's guess of 16 and its neighbour, 24.
    assert sorted(probes) == [16, 24, 32]
    # Each probe compiled the run's program at its batch: micro-batches of 8 rows.
    assert sorted(traced) == [(16, 2, MICRO), (24, 3, MICRO), (32, 4, MICRO)]
    assert all(s.micro_batches == b // MICRO for b, plans in probes.items() for s in plans)
    # What the search guarantees: the batch fits, and the next multiple was probed and does not.
    assert batch == 16 and probes[24][0].bytes["peak"] > 20
    planned = planner.plan(all_shapes=False, train_batch=batch)[0]
    assert (planned.global_batch, planned.micro_batches) == (batch, batch // MICRO)


@needs_libtpu
def test_max_batch_cli_plans_with_micro_batches_and_writes_the_documented_json(
    tiny_folder, tmp_path
):
    # With micro-batches the tiny model's memory hardly grows with the batch (348 MiB per chip at
    # 2^20 rows), so at the default 10% of HBM free the search stops at its cap, 2^20 rows; a
    # config batch of 2^20 makes that its first and only probe.
    cap = 2**20
    result, output = _plan(
        "--topology=v5e:2x2",
        f"--config.model.name={tiny_folder}",
        f"--config.data.max_length={LENGTH}",
        f"--config.train.global_batch_size={cap}",
        f"--config.train.eval_batch_size={BATCH}",
        f"--config.train.micro_batch_size={MICRO}",
        "--max_batch",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(output.read_text())
    assert plan["max_batch"] == cap
    tries = re.findall(r"try train (\d+) x \d+, (\d+) micro-batches", result.stdout)
    assert tries == [(str(cap), str(cap // MICRO))], result.stdout
    assert f"max batch: {cap} " in result.stdout and "no larger batch was probed" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "fits: every shape on v5e:2x2"
    # The train step at the batch found, with its micro-batches; the eval step at the config's.
    assert [(s["step"], s["global_batch"], s["micro_batches"]) for s in plan["shapes"]] == [
        ("train", cap, cap // MICRO),
        ("eval", BATCH, 1),
    ]
    # The documented fields (docs/tpu.md).
    assert set(plan) == {
        "topology",
        "chip",
        "chips",
        "hosts",
        "hbm_bytes",
        "params",
        "fits",
        "shapes",
        "max_batch",
    }
    assert (plan["topology"], plan["chip"], plan["chips"], plan["hosts"]) == (
        "v5e:2x2",
        "v5e",
        4,
        1,
    )
    assert plan["hbm_bytes"] == 16 * 2**30 and plan["fits"] is True
    assert set(plan["shapes"][0]) == {
        "step",
        "global_batch",
        "length",
        "bytes",
        "fits",
        "flops",
        "bytes_accessed",
        "model_flops",
        "roofline_seconds",
        "mfu_bound",
        "collectives",
        "compile_seconds",
        "micro_batches",
    }
    assert set(plan["shapes"][0]["bytes"]) == {
        "arguments",
        "outputs",
        "temporaries",
        "code",
        "peak",
    }


def _fake_plan(batch: int, peak: float) -> plan_lib.ShapePlan:
    return plan_lib.ShapePlan(
        "train",
        batch,
        8,
        dict(arguments=1000, outputs=0, temporaries=peak - 1000, code=0, peak=peak),
        True,
        10**9,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        {},
        0.0,
    )


def test_find_max_batch_bisects_to_the_boundary():
    def measure(batch):
        return [_fake_plan(batch, 1000 + 7 * batch**1.2)]  # monotone, not linear

    for start in (8, 800, 100_000):
        batch, probes = plan_lib.find_max_batch(measure, multiple=8, start=start, limit_bytes=5e4)
        assert batch % 8 == 0
        assert 1000 + 7 * batch**1.2 <= 5e4 < 1000 + 7 * (batch + 8) ** 1.2
        assert len(probes) <= 20


@settings(max_examples=200, deadline=None)
@given(
    over=st.sets(st.integers(1, 300)),
    start=st.integers(1, 3000),
    slope=st.floats(1.0, 100.0),
)
def test_find_max_batch_returns_a_fit_whose_next_multiple_was_probed_and_does_not(
    over, start, slope
):
    # Memory not monotone in the batch: the batches in `over` (in units of 8) do not fit
    # wherever they are; nor does any above 300.
    def peak(batch):
        k = batch // 8
        return 1000 + slope * k + (10**9 if k in over or k > 300 else 0)

    limit = 1000 + slope * 300
    batch, probes = plan_lib.find_max_batch(
        lambda b: [_fake_plan(b, peak(b))], multiple=8, start=start, limit_bytes=limit
    )
    assert batch == 0 or peak(batch) <= limit
    assert batch + 8 in probes and peak(batch + 8) > limit


@needs_libtpu
def test_bad_arguments_exit_2_in_one_line(tiny_folder, tmp_path):
    for args in (
        ["--topology=v9:2x2"],
        ["--topology=v5e:3x7"],
        ["--topology=v5e:2x2", "--config.train.global_batch_size=6"],
        # A batch that does not split into micro-batches: the training config check's one line.
        ["--topology=v5e:2x2", "--config.train.micro_batch_size=12"],
    ):
        result, _ = _plan(*args, f"--config.model.name={tiny_folder}", tmp_path=tmp_path)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr[-2000:]
        assert args[-1].split("=")[0].lstrip("-") in errors[0] or "topology" in errors[0]


# --- the levers change no logged loss, and resume works with them ------------------------------


@pytest.mark.slow
def test_scan_layers_and_remat_log_the_same_losses_and_resume(model_dir, reference_run, tmp_path):
    # remat alone, unrolled, is compared step by step in process (tests/test_training_step.py).
    reference = reference_run.workdir  # the same command without the levers (conftest.py)
    scanned = tmp_path / "scan_dots"
    scan_levers = ("--config.model.scan_layers=True", "--config.model.remat=dots")
    result = run(command(model_dir, scanned, *scan_levers))
    assert result.returncode == 0, result.stderr[-4000:]
    expected = train_rows(reference)
    assert sorted(expected) == list(range(1, 9))
    got = train_rows(scanned)
    # Same dropout masks and data; only the order of float32 sums may differ (scan and remat
    # change XLA's fusions): 8 steps agree to 1e-5 relative, far below what one skipped or
    # different update moves the loss (~1e-2 here).
    assert got.keys() == expected.keys()
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step

    # Resume under scan_layers: drop every checkpoint after step 4, rerun the same command.
    steps_before = {r["step"] for r in metrics_rows(scanned) if r["split"] == "train"}
    for folder in ("checkpoints", "best"):
        for entry in (scanned / folder).iterdir():
            if entry.name.isdigit() and int(entry.name) > 4:
                shutil.rmtree(entry)
    shutil.rmtree(scanned / "export", ignore_errors=True)
    result = run(command(model_dir, scanned, *scan_levers))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from step 4" in result.stderr
    resumed = train_rows(scanned)  # the rerun's rows for steps 5..8 are the last logged
    assert steps_before == set(resumed)
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    # The export stays in the per-layer Hugging Face layout.
    from jaxsent.models import SentimentClassifier

    exported = SentimentClassifier.from_pretrained(scanned / "export")
    assert exported.encoder.encoder.scan_layers is False
    assert len(exported.encoder.encoder.layers) == 2


@needs_libtpu
def test_v4_is_planned_with_one_device_per_chip(tiny_folder):
    # libtpu's default v4 description has a device per TensorCore; its megacore configuration has
    # one per chip, as a v4 VM runs them (v4-8 is 4 chips).
    planner = plan_lib.Planner(_config(tiny_folder, strategy="fsdp"), "v4:2x2x1")
    devices = list(planner.mesh.devices.flat)
    assert len(devices) == 4 and planner.hosts == 1
    assert {d.device_kind for d in devices} == {"TPU v4"}
    assert {d.core_on_chip for d in devices} == {0}
    train, evaluation = planner.plan(all_shapes=False)
    assert train.fits and evaluation.fits
    assert train.collectives["all-gather"]["count"] >= 1


@needs_libtpu
def test_a_topology_with_one_device_per_tensorcore_is_refused_in_one_line(monkeypatch):
    # Without the megacore configuration libtpu gives v4 a device per TensorCore; jax's TPU mesh
    # utilities need one per chip, so the plan refuses such a description.
    monkeypatch.setitem(
        plan_lib.CHIPS, "v4", dataclasses.replace(plan_lib.CHIPS["v4"], megacore=False)
    )
    with pytest.raises(ValueError, match=r"v4:2x2x1.*one device per TensorCore \(8 devices\)"):
        plan_lib.topology_devices("v4:2x2x1")


# --- GPU targets: jax's CUDA plugin (the gpu-plan extra) compiles for an H100 without a GPU ---

needs_cuda_plugin = pytest.mark.skipif(
    not plan_lib.cuda_plugin_installed(),
    reason="jax's CUDA plugin is not installed (pip install 'jaxsent[gpu-plan]')",
)


def test_gpu_topologies_are_gpus_per_host_or_hosts_by_gpus():
    assert plan_lib.chip_for("h100:8").platform == "cuda"
    assert plan_lib.chip_for("h200:2x8").target == "h200"
    with pytest.raises(ValueError, match=r"'h100:2x2x2'.*<hosts>x<gpus per host>"):
        plan_lib.topology_devices("h100:2x2x2")


def test_a_gpu_holds_what_jax_preallocates(monkeypatch):
    h100 = plan_lib.CHIPS["h100"]
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    assert h100.usable_bytes == int(0.75 * 81559 * 2**20)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    assert h100.usable_bytes == int(0.9 * 81559 * 2**20)
    assert plan_lib.CHIPS["v5e"].usable_bytes == 16 * 2**30  # a TPU program may use all of it


@needs_cuda_plugin
@pytest.mark.parametrize(
    "topology, hosts, strategy, model_axis, collective",
    [
        ("h100:8", 1, "dp", 1, "all-reduce"),
        ("h100:8", 1, "fsdp", 1, "all-gather"),
        ("h200:2x4", 2, "tp", 2, "all-reduce"),
    ],
)
def test_train_and_eval_steps_compile_for_gpus(
    tiny_folder, topology, hosts, strategy, model_axis, collective
):
    config = _config(tiny_folder, strategy=strategy, model_axis=model_axis)
    planner = plan_lib.Planner(config, topology)
    assert (planner.chips, planner.hosts) == (8, hosts)
    assert planner.devices[0].platform == "gpu"
    train, evaluation = planner.plan(all_shapes=False)
    for shape in (train, evaluation):
        assert shape.fits and shape.error is None
        assert 0 < shape.bytes["peak"] < planner.chip.usable_bytes
        # No cost analysis on a compile-only GPU executable: XLA's generic one over its module.
        assert shape.flops > 0 and shape.bytes_accessed > 0
        _check_roofline(shape, planner.chip.name, planner.chips)
    assert train.collectives[collective]["count"] >= 1
