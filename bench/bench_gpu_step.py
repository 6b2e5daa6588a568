"""Issue 27 on a GPU: where jaxsent's bf16 train step spends its device time, what each lead
costs, and how it compares with PyTorch's step on the same card, in one run.

The first H200 runs found the step at half PyTorch eager's speed (docs/benchmarks.md "On a
GPU"); the program compiled without a GPU showed leads, three of which the library has fixed,
each kept behind a switch (bench/gpu_leads.py). One run, in this order, within ``--budget``:

1. ``profile-bert-base``: `jax.profiler` traces 5 steps of jaxsent's default BERT-base
   32 x 512 step; the device time by kernel (top 20: ms per step, share of the device time and
   of the step's wall time) and by kernel family.
2. Timing sections, each in alternating rounds in this process on this card:
   ``bert-base`` (32 x 512) and ``minilm`` (32 x 256): ``jaxsent`` (the library's default
   step), ``torch-eager``, ``before-issue-27`` (the program of the first runs) and
   ``torch-compile``; ``bert-base-leads`` and ``minilm-leads``: ``jaxsent`` and each lead of
   `gpu_leads.LEADS` alone (three fixes switched back, Triton GEMM off, ``unsafe_rbg``
   dropout keys); ``modernbert-base`` (32 x 512) if time remains.

jaxsent's contenders are the run's own step (`gpu_leads.train_steps`: what ``python -m train``
compiles for the config: its model, loss, optimiser, sharding rules) from
configs/bert_base_imdb.py (``model.name=bert-base`` or ``modernbert-base``) and
configs/imdb_minilm.py (MiniLM-L6's architecture), with bfloat16 compute, whole batches of 32
(``train.micro_batch_size=0``, as PyTorch's) and random weights (no checkpoint travels to the
device; speed does not depend on them). PyTorch: transformers' ``*ForSequenceClassification``
(``num_labels=1``, ``sdpa``) under ``torch.autocast(bfloat16)``, BCE, backward, clipping at 1.0,
fused AdamW; eager, and ``torch.compile``. Both take the same token ids (random, IMDB-like
lengths: `bench_train_step.random_batch`).

Timing: every contender compiles and warms up first; then ``--rounds`` rounds of ``--steps``
steps alternate between a section's contenders, the device synchronised after each round.
Rows (JSON lines, ``--out``, written as each section ends): ``section``, ``contender``,
``batch``, ``length``, ``s_per_step`` (the median round), ``min_s_per_step``, every round, the
compile time, MFU (analytic model FLOPs, `jaxsent.training.plan.model_flops`, over the data
sheet's 989 TFLOP/s dense bf16 and over an 8192^3 bf16 matmul measured in the same run).

Budget: no contender is built once ``--budget`` seconds have passed, or when its estimated
build would pass it (then the section times what it has); later sections are skipped, each with
a row saying so. ``--sections`` runs some only (a second call on the same warm machine reuses
the compiled programs from ``--cache-dir``).

    python bench/bench_gpu_step.py --out docs/gpu/h100-issue27.jsonl   # on the GPU machine
    python bench/bench_gpu_step.py --smoke                             # tiny models, any CPU

On a GPU machine with its own jax and torch and no network, jaxsent's other imports come as
wheels (``ml_collections``, ``datasets``, ``dill``, ``multiprocess``): docs/benchmarks.md "On a
GPU" has the commands. ``--extra`` adds the earlier
runs' checks of cuDNN attention (``attention-grad``, ``cudnn-agreement-bert``,
``cudnn-agreement-modernbert``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import gzip
import importlib.metadata
import json
import os
import platform
import re
import runpy
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.55")  # the rest for PyTorch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [BENCH, ROOT]  # gpu_leads, bench_train_step; configs (`from configs import ...`)
from bench_train_step import OPTIM, random_batch  # noqa: E402
from gpu_leads import DEFAULT, LEADS, Lead, train_steps  # noqa: E402

from jaxsent import sharding  # noqa: E402
from jaxsent.models import loading  # noqa: E402
from jaxsent.models.architectures import architecture_config  # noqa: E402
from jaxsent.training.plan import CHIPS, model_flops  # noqa: E402
from jaxsent.training.steps import abstract_batch  # noqa: E402

PEAK_FLOPS = CHIPS["h200"].peak_flops  # dense bf16, the data sheet's (same for the H100 SXM)
GiB = 2**30

# all-MiniLM-L6-v2's config.json (the main job's encoder; its weights do not travel here): BERT-base
# but 384 wide, 6 layers deep and an FFN of 1,536.
MINILM = dict(
    architecture_config("bert-base"), hidden_size=384, num_hidden_layers=6, intermediate_size=1536
)
TINY = dict(
    MINILM, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
)
TINY_MODERNBERT = dict(
    architecture_config("modernbert-base"),
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=96,
    local_attention=16,
)


def raw_config(name: str, **overrides) -> dict:
    raw = {"minilm": MINILM, "tiny": TINY, "tiny-modernbert": TINY_MODERNBERT}.get(
        name
    ) or architecture_config(name)
    return dict(raw, **overrides)


# --- the models: the run's config for each ---------------------------------------------------


class Model:
    """One model of the run: its run config (as ``python -m train`` reads it) and HF config.

    Args:
      name: the section's model name.
      config_file: the run config it starts from (``configs/...``).
      raw: the architecture's ``config.json`` dict (PyTorch builds from it; jaxsent reads it
        from a folder, as it reads a checkpoint's, unless ``architecture`` names it).
      shape: (batch, length).
      architecture: a named architecture of `jaxsent.models.architectures` for
        ``model.name``, else a folder holding ``raw`` as config.json.
    """

    def __init__(self, name, config_file, raw, shape, architecture=None):
        self.name, self.config_file, self.raw, self.shape = name, config_file, raw, shape
        self.architecture = architecture

    def config(self):
        """The run config: bfloat16 compute, whole batches of ``shape``."""
        config = runpy.run_path(os.path.join(ROOT, self.config_file))["get_config"]()
        model_name = self.architecture
        if model_name is None:
            model_name = tempfile.mkdtemp(prefix=f"jaxsent-{self.name}-")
            with open(os.path.join(model_name, "config.json"), "w", encoding="utf-8") as f:
                json.dump(self.raw, f)
        config.model.name = model_name
        config.model.dtype = "bfloat16"
        config.train.global_batch_size, config.data.max_length = self.shape
        config.train.micro_batch_size = 0
        return config


MODELS = {
    "bert-base": Model(
        "bert-base", "configs/bert_base_imdb.py", raw_config("bert-base"), (32, 512), "bert-base"
    ),
    "minilm": Model("minilm", "configs/imdb_minilm.py", raw_config("minilm"), (32, 256)),
    "modernbert-base": Model(
        "modernbert-base",
        "configs/bert_base_imdb.py",
        raw_config("modernbert-base"),
        (32, 512),
        "modernbert-base",
    ),
    "tiny": Model("tiny", "configs/imdb_minilm.py", raw_config("tiny"), (4, 64)),
    "tiny-modernbert": Model(
        "tiny-modernbert", "configs/imdb_minilm.py", raw_config("tiny-modernbert"), (4, 64)
    ),
}


# --- contenders: each returns (step(), sync(), info) -----------------------------------------

Contender = tuple[Callable[[], None], Callable[[], float], dict]


def device_batch(model: Model, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """The random batch with the dtypes and placement the run's steps take."""
    batch_size, length = model.shape
    batch = random_batch(model.raw["vocab_size"], batch_size, length, seed=0)
    spec = abstract_batch(batch_size, length, mesh)
    return {
        key: jax.device_put(np.asarray(batch[key], struct.dtype), struct.sharding)
        for key, struct in spec.items()
    }


def jaxsent_contender(model: Model, lead: Lead) -> Contender:
    """The run's train step for ``model`` with ``lead`` applied, compiled ahead (as
    `StepFunctions.compile_ahead` does), random weights."""
    config = model.config()
    mesh = sharding.make_mesh(
        data=config.mesh.data, model=config.mesh.model, devices=jax.local_devices()[:1]
    )
    steps, state = train_steps(config, mesh, lead, abstract=False)
    batch = device_batch(model, mesh)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = steps.train_step_fn.lower(state, steps.rng_state, batch)
        compiled = lowered.compile(dict(lead.compiler_options) or None)
    info: dict[str, Any] = {"compile_s": round(time.perf_counter() - start, 1), "lead": lead.about}
    done: concurrent.futures.Future = concurrent.futures.Future()
    done.set_result(compiled)
    steps.ahead[("train", *batch["input_ids"].shape)] = done
    memory = compiled.memory_analysis()
    if memory is not None:
        info["temporaries_bytes"] = int(memory.temp_size_in_bytes)
    holder = {"state": state, "metrics": None}

    def step():
        holder["state"], holder["metrics"] = steps.train_step(holder["state"], batch)

    def sync():
        jax.block_until_ready(holder["metrics"])
        return float(holder["metrics"]["loss"])

    return step, sync, info


# --- measurement ----------------------------------------------------------------------------


def time_row(contenders: dict[str, Contender], *, warmup: int, steps: int, rounds: int) -> dict:
    """Median s/step per contender over alternating rounds of `steps` steps."""
    for step, sync, info in contenders.values():
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        info["last_loss"] = sync()
        info["warmup_s"] = round(time.perf_counter() - start, 1)
    rounds_s: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (step, sync, info) in contenders.items():
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            dispatched = time.perf_counter()
            info["last_loss"] = sync()
            rounds_s[name].append((time.perf_counter() - start) / steps)
            # Host seconds per step before the device caught up: ~s/step means host-bound.
            info.setdefault("host_dispatch_s_per_step", []).append(
                round((dispatched - start) / steps, 5)
            )
    return rounds_s


def matmul_tflops() -> float:
    """Measured bf16 matmul rate, 8192^3, the MFU's second ceiling."""
    n = 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()
    start, reps = time.perf_counter(), 50
    for _ in range(reps):
        out = mm(a, b)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


class Report:
    def __init__(self, path: str | None):
        self.path = path

    def add(self, row: dict) -> None:
        print(json.dumps(row), flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


class Budget:
    """Seconds since the start; whether a build estimated at ``seconds`` still fits."""

    def __init__(self, limit: float):
        self.limit, self.start = limit, time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, seconds: float) -> bool:
        return self.elapsed + seconds <= self.limit


# Seconds a build takes (a first guess, then the last measured one per model and kind).
FIRST_GUESS_S = {"jaxsent": 40.0, "torch-eager": 10.0, "torch-compile": 60.0}


class Run:
    """The contenders built so far, shared by the sections (jaxsent's default step is compiled
    once per model and timed in each of its sections)."""

    def __init__(self, args, report: Report, budget: Budget, matmul: float):
        self.args, self.report, self.budget, self.matmul = args, report, budget, matmul
        self.built: dict[tuple[str, str], Contender] = {}
        self.cost: dict[tuple[str, str], float] = {}
        self.out_of_time = False
        self.skip_reason = ""

    def contender(self, model: Model, name: str) -> Contender | None:
        key = (model.name, name)
        if key in self.built:
            return self.built[key]
        kind = name if name.startswith("torch") else "jaxsent"
        estimate = self.cost.get((model.name, kind), FIRST_GUESS_S[kind])
        if self.out_of_time or not self.budget.allows(estimate):
            if not self.out_of_time:
                self.skip_reason = (
                    f"budget: {self.budget.elapsed:.0f} s spent; building {name} for "
                    f"{model.name} (about {estimate:.0f} s) would pass {self.budget.limit:.0f} s"
                )
            self.out_of_time = True
            return None
        start = time.perf_counter()
        if name == "torch-eager":
            built = torch_contender(model.raw, model, compile_model=False)
        elif name == "torch-compile":
            built = torch_contender(model.raw, model, compile_model=True)
        else:
            built = jaxsent_contender(model, DEFAULT if name == DEFAULT.name else LEADS[name])
        self.cost[(model.name, kind)] = time.perf_counter() - start
        if kind == "torch-compile":
            self.cost[(model.name, kind)] += 30.0  # its compile happens in the first steps
        self.built[key] = built
        return built

    def drop(self, model: Model, keep: tuple[str, ...] = (DEFAULT.name,)) -> None:
        """Frees a model's contenders but ``keep`` (device memory for the next sections)."""
        for key in [k for k in self.built if k[0] == model.name and k[1] not in keep]:
            del self.built[key]
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 (no torch, or no CUDA)
            pass

    def speed_section(self, label: str, model: Model, names: list[str]) -> None:
        contenders = {}
        for name in names:
            try:
                built = self.contender(model, name)
            except Exception as err:  # one contender's failure must not lose the others'
                traceback.print_exc()
                error = f"{type(err).__name__}: {err}"[:2000]
                self.report.add({"section": label, "contender": name, "error": error})
                continue
            if built is None:
                self.report.add({"section": label, "contender": name, "skipped": self.skip_reason})
                continue
            contenders[name] = built
        if not contenders:
            return
        args = self.args
        rounds_s = time_row(contenders, warmup=args.warmup, steps=args.steps, rounds=args.rounds)
        batch_size, length = model.shape
        config = loading.config_from_hf(model.raw)
        flops = model_flops(config, step="train", global_batch=batch_size, length=length)
        medians = {name: statistics.median(t) for name, t in rounds_s.items()}
        for name, rounds in rounds_s.items():
            info = {k: v for k, v in contenders[name][2].items() if k != "host_dispatch_s_per_step"}
            info["host_dispatch_s_per_step"] = contenders[name][2].pop(
                "host_dispatch_s_per_step", []
            )
            self.report.add(
                {
                    "section": label,
                    "contender": name,
                    "batch": batch_size,
                    "length": length,
                    "s_per_step": round(medians[name], 5),
                    "min_s_per_step": round(min(rounds), 5),
                    "rounds_s_per_step": [round(t, 5) for t in rounds],
                    "steps_per_round": args.steps,
                    # s/step over jaxsent's in the same rounds: below 1 is faster than jaxsent.
                    "vs_jaxsent": round(medians[name] / medians[DEFAULT.name], 3)
                    if DEFAULT.name in medians
                    else None,
                    "model_tflops_per_step": round(flops / 1e12, 3),
                    "mfu_datasheet": round(flops / medians[name] / PEAK_FLOPS, 4),
                    "mfu_measured_matmul": round(flops / medians[name] / (self.matmul * 1e12), 4),
                    **info,
                }
            )
        stats = jax.local_devices()[0].memory_stats() or {}
        self.report.add(
            {
                "section": label,
                "jax_peak_bytes_in_use_so_far": stats.get("peak_bytes_in_use"),
                "elapsed_s": round(self.budget.elapsed, 1),
            }
        )


def _family(name: str) -> str:
    """A kernel's family: its name less numeric suffixes (``loop_add_fusion_12`` ->
    ``loop_add_fusion``)."""
    previous = None
    while previous != name:
        previous, name = name, re.sub(r"([._]\d+)+$", "", name)
    return name


def profile_section(run: Run, label: str, model: Model, *, steps: int = 5, top: int = 20):
    """Where jaxsent's default step spends its device time: a `jax.profiler` trace of a few
    steps, the device's events summed by name (the trace stays on the machine that ran it)."""
    built = run.contender(model, DEFAULT.name)
    if built is None:
        run.report.add({"section": label, "skipped": run.skip_reason})
        return
    step, sync, _ = built
    for _ in range(3):
        step()
    sync()
    log_dir = tempfile.mkdtemp(prefix="jaxsent-profile-")
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall_ms = (time.perf_counter() - start) / steps * 1e3
    (path,) = glob.glob(f"{log_dir}/**/perfetto_trace.json.gz", recursive=True)
    with gzip.open(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    processes = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    device_pids = {pid for pid, name in processes.items() if "GPU" in name or "TPU" in name}
    totals: dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X" and (not device_pids or e["pid"] in device_pids):
            totals[e["name"]] = totals.get(e["name"], 0.0) + e.get("dur", 0.0)
    families: dict[str, float] = {}
    for name, us in totals.items():
        families[_family(name)] = families.get(_family(name), 0.0) + us
    device_ms = sum(totals.values()) / steps / 1e3

    def table(sums: dict[str, float]) -> list[list]:
        ranked = sorted(sums.items(), key=lambda kv: -kv[1])[:top]
        return [
            [name[:120], round(us / steps / 1e3, 3), round(us / steps / 1e3 / device_ms, 4),
             round(us / steps / 1e3 / wall_ms, 4)]
            for name, us in ranked
        ]  # fmt: skip

    run.report.add(
        {
            "section": label,
            "contender": DEFAULT.name,
            "batch": model.shape[0],
            "length": model.shape[1],
            "steps": steps,
            "device_processes": sorted(processes[pid] for pid in device_pids),
            "step_wall_ms_traced": round(wall_ms, 3),
            "device_event_ms_per_step": round(device_ms, 3),
            "kernels": len(totals),
            "columns": ["name", "ms_per_step", "share_of_device_time", "share_of_step"],
            "top_kernels": table(totals),
            "top_families": table(families),
        }
    )


def torch_contender(raw: dict, model: Model, *, compile_model: bool) -> Contender:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: --smoke on a laptop
    fields = {k: v for k, v in raw.items() if k != "model_type"}
    hf_config = transformers.AutoConfig.for_model(raw["model_type"], num_labels=1, **fields)
    hf_model = transformers.AutoModelForSequenceClassification.from_config(
        hf_config, attn_implementation="sdpa"
    ).to(device)
    hf_model.train()
    params = list(hf_model.parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": OPTIM["weight_decay"]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=OPTIM["learning_rate"],
        betas=(OPTIM["b1"], OPTIM["b2"]),
        eps=OPTIM["eps"],
        fused=device == "cuda",
    )
    forward = torch.compile(hf_model) if compile_model else hf_model
    batch = random_batch(raw["vocab_size"], *model.shape, seed=0)
    ids = torch.tensor(batch["input_ids"], dtype=torch.long, device=device)
    mask = torch.tensor(batch["attention_mask"], dtype=torch.long, device=device)
    labels = torch.tensor(batch["labels"], dtype=torch.float32, device=device)
    holder = {"loss": None}

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = forward(input_ids=ids, attention_mask=mask).logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, OPTIM["grad_clip_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        holder["loss"] = loss.detach()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
        return float(holder["loss"])

    return step, sync, {"torch": torch.__version__, "transformers": transformers.__version__}


# --- the first runs' checks of cuDNN attention (--extra) ---------------------------------------


def cudnn_agreement(report, label, raw, shape, impls=("xla", "einsum", "cudnn")):
    """Attention implementations in the whole encoder against float32 XLA attention.

    Same parameters, a right-padded batch. Compares the last hidden states on real tokens and
    the gradients, with respect to every parameter, of a fixed random projection of them (not
    of their squares: a LayerNorm output's mean square is nearly constant, so its gradients
    are rounding noise). Each bf16 implementation is compared with the float32 reference; XLA's
    own bf16 gives the rounding floor.
    """
    batch_size, length = shape
    batch = random_batch(raw["vocab_size"], batch_size, length, seed=1)
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
    real = mask[..., None] != 0
    config = loading.config_from_hf(raw)
    direction = jax.random.normal(jax.random.key(3), (batch_size, length, config.hidden_size))
    hidden, grads = {}, {}
    for name, impl, dtype in [("xla-float32", "xla", jnp.float32)] + [
        (impl, impl, jnp.bfloat16) for impl in impls
    ]:
        encoder = loading.make_encoder(config, dtype=dtype, rngs=nnx.Rngs(0), attention_impl=impl)
        graphdef, params = nnx.split(encoder)

        def states(params, graphdef=graphdef):
            out = nnx.merge(graphdef, params)(ids, mask).last_hidden_state
            return jnp.where(real, out.astype(jnp.float32), 0.0)

        def scalar(params, states=states):
            return jnp.sum(states(params) * direction) / jnp.sum(mask)

        hidden[name] = np.asarray(jax.jit(states)(params))[np.asarray(mask) != 0]
        grads[name] = [
            np.asarray(g, np.float32) for g in jax.tree.leaves(jax.jit(jax.grad(scalar))(params))
        ]

    def rel(a, b):
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

    ref = "xla-float32"
    flat_ref = np.concatenate([g.ravel() for g in grads[ref]])
    for name in impls:
        per_leaf = [rel(a, b) for a, b in zip(grads[name], grads[ref], strict=True)]
        report.add(
            {
                "section": label,
                "compared": f"{name} (bf16) vs {ref}",
                "batch": batch_size,
                "length": length,
                "real_token_fraction": round(float(batch["attention_mask"].mean()), 3),
                "hidden_rel_l2": rel(hidden[name], hidden[ref]),
                "hidden_max_abs_diff": float(np.abs(hidden[name] - hidden[ref]).max()),
                "grad_rel_l2_all": rel(np.concatenate([g.ravel() for g in grads[name]]), flat_ref),
                "grad_rel_l2_median_over_leaves": float(np.median(per_leaf)),
            }
        )


def attention_grad_check(report, label, shape, impls):
    """jax.nn.dot_product_attention alone: bf16 implementations against float32 XLA.

    Right-padded batch; the scalar is the mean square of the outputs on real query rows.
    """
    batch_size, length = shape
    heads, head_dim = 12, 64
    keys = jax.random.split(jax.random.key(2), 4)
    q, k, v = (jax.random.normal(kk, (batch_size, length, heads, head_dim)) for kk in keys[:3])
    lengths = jax.random.randint(keys[3], (batch_size,), length // 8, length + 1, jnp.int32)
    real = jnp.arange(length)[None, :] < lengths[:, None]

    def attend(impl, q, k, v):
        if impl == "xla":
            return jax.nn.dot_product_attention(q, k, v, mask=real[:, None, None, :])
        if impl == "cudnn-kv":
            return jax.nn.dot_product_attention(
                q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
            )
        return jax.nn.dot_product_attention(
            q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
            implementation="cudnn",
        )  # fmt: skip

    def scalar(impl, dtype, q, k, v):
        out = attend(impl, q.astype(dtype), k.astype(dtype), v.astype(dtype))
        return jnp.sum(jnp.where(real[..., None, None], out.astype(jnp.float32), 0.0) ** 2)

    def run(impl, dtype):
        f = jax.jit(jax.value_and_grad(lambda *a: scalar(impl, dtype, *a), argnums=(0, 1, 2)))
        value, grads = f(q, k, v)
        out = jax.jit(lambda *a: attend(impl, *(x.astype(dtype) for x in a)))(q, k, v)
        return np.asarray(out, np.float32), [np.asarray(g, np.float32) for g in grads]

    ref_out, ref_grads = run("xla", jnp.float32)
    rows = np.asarray(real)
    for impl in impls:
        out, grads = run(impl, jnp.bfloat16)
        rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
        report.add(
            {
                "section": label,
                "impl_bf16_vs_xla_f32": impl,
                "out_rel_l2_real_rows": rel(out[rows], ref_out[rows]),
                "grad_rel_l2_q_k_v": [rel(g, r) for g, r in zip(grads, ref_grads, strict=True)],
            }
        )


# --- the run ---------------------------------------------------------------------------------

CORE = [DEFAULT.name, "torch-eager", "before-issue-27", "torch-compile"]
ALONE = [DEFAULT.name, *(name for name in LEADS if name != "before-issue-27")]
# (section, model, contenders or "profile"), in order of importance: a run cut short by the
# budget keeps the first.
SECTIONS = [
    ("profile-bert-base", "bert-base", "profile"),
    ("bert-base", "bert-base", CORE),
    ("minilm", "minilm", CORE),
    ("bert-base-leads", "bert-base", ALONE),
    ("minilm-leads", "minilm", ALONE),
    ("modernbert-base", "modernbert-base", [DEFAULT.name, "torch-eager", "before-issue-27"]),
]
SMOKE_SECTIONS = [
    ("profile-tiny", "tiny", "profile"),
    ("tiny", "tiny", CORE[:3]),
    ("tiny-leads", "tiny", ALONE),
    ("tiny-modernbert", "tiny-modernbert", [DEFAULT.name, "torch-eager", "before-issue-27"]),
]
EXTRAS = {  # the first runs' cuDNN checks: (section, raw config, shape, kind)
    "attention-grad": ("attention-grad", None, (8, 512), "attention"),
    "cudnn-agreement-bert": (
        "cudnn-agreement-bert",
        raw_config("bert-base", attention_probs_dropout_prob=0.0),
        (8, 512),
        "agreement",
    ),
    "cudnn-agreement-modernbert": (
        "cudnn-agreement-modernbert",
        raw_config("modernbert-base"),
        (4, 1024),
        "agreement",
    ),
}


def _versions() -> dict[str, str]:
    found = {}
    for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
                 "torch", "transformers"):  # fmt: skip
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="append JSON lines here")
    parser.add_argument("--smoke", action="store_true", help="tiny models, every code path")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (>= 5 for a median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--budget", type=float, default=270, help="seconds; no contender is built after"
    )
    parser.add_argument("--sections", nargs="*", help="run these sections only")
    parser.add_argument("--extra", nargs="*", default=[], choices=sorted(EXTRAS))
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(tempfile.gettempdir(), "jaxsent-gpu-bench-cache"),
        help="jax's persistent compilation cache on a GPU ('' for none): a second call on the "
        "same machine reuses the programs",
    )
    args = parser.parse_args(argv)
    report = Report(args.out)
    budget = Budget(args.budget)
    on_gpu = jax.default_backend() == "gpu"
    if on_gpu and args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    report.add(
        {
            "section": "environment",
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "python": platform.python_version(),
            "versions": _versions(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
            "args": vars(args),
        }
    )
    matmul = matmul_tflops() if on_gpu and not args.smoke else PEAK_FLOPS / 1e12
    report.add({"section": "matmul", "bf16_8192_tflops": round(matmul, 1)})
    run = Run(args, report, budget, matmul)
    sections = SMOKE_SECTIONS if args.smoke else SECTIONS
    for label, model_name, spec in sections:
        if args.sections is not None and label not in args.sections:
            continue
        model = MODELS[model_name]
        try:
            if spec == "profile":
                profile_section(run, label, model)
            else:
                run.speed_section(label, model, spec)
        except Exception as err:  # one section's failure must not lose the others' figures
            traceback.print_exc()
            report.add({"section": label, "error": f"{type(err).__name__}: {err}"[:2000]})
        run.drop(model)
    for name in args.extra:
        label, raw, shape, kind = EXTRAS[name]
        if args.smoke:
            raw = raw and raw_config("tiny-modernbert" if "modernbert" in name else "tiny")
            shape = (2, 128)
        try:
            if kind == "attention":
                impls = ("xla", "cudnn-kv", "cudnn-qkv") if on_gpu else ("xla",)
                attention_grad_check(report, label, shape, impls)
            else:
                impls = ("xla", "einsum", "cudnn") if on_gpu else ("xla", "einsum")
                cudnn_agreement(report, label, raw, shape, impls)
        except Exception as err:
            traceback.print_exc()
            report.add({"section": label, "error": f"{type(err).__name__}: {err}"[:2000]})
    report.add({"section": "end", "elapsed_s": round(budget.elapsed, 1)})


if __name__ == "__main__":
    main()
