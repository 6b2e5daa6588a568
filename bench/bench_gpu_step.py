"""Accelerator figures: jaxsent's bf16 train step vs transformers' PyTorch step on one GPU, its
MFU, cuDNN attention (speed and agreement) and how well the planner's memory figure holds.

Both frameworks run one full optimisation step per call on the same token ids, in train mode:
forward with bfloat16 compute over float32 parameters, plain BCE (the library default), backward,
global-norm clipping at 1.0 and AdamW over the same decay groups (`bench_train_step.OPTIM`).

* JAX: ``jaxsent.training.steps.build_steps`` around a randomly initialised
  ``SentimentClassifier`` (``pooling="cls"``: HF's tanh-pooler head), ``dtype=bfloat16``.
  With attention-probability dropout on (HF's default 0.1) attention is the explicit einsum
  form (``jax.nn.dot_product_attention`` has no dropout); with it off, ``attention_impl`` picks
  XLA's fused attention or cuDNN's flash attention.
* PyTorch: ``BertForSequenceClassification`` / ``ModernBertForSequenceClassification``
  (``num_labels=1``, ``sdpa`` attention) under ``torch.autocast(bfloat16)``, fused AdamW,
  eager (as HF Trainer runs it by default) and, where asked, ``torch.compile``.

Timing: each contender compiles / warms up first; then rounds of ``--steps`` steps alternate
between the contenders of a row, the device synchronised at the end of each round; the median
round gives s/step. MFU = the step's analytic model FLOPs (`jaxsent.training.plan.model_flops`,
padding included, no recomputation) / s/step / peak: the data sheet's 989 TFLOP/s dense bf16 and
the 8192^3 bf16 matmul rate measured in the same run.

    python bench/bench_gpu_step.py --out results.jsonl            # every section
    python bench/bench_gpu_step.py --smoke                          # tiny model, seconds

Sections run in order and stop starting new ones after ``--budget`` seconds; each writes its
rows to ``--out`` (JSON lines) as it finishes, so a run cut short keeps what it measured. Besides
the speed rows: ``profile-bert-base`` (device time by kernel name from a `jax.profiler` trace),
``attention-grad`` (`jax.nn.dot_product_attention` alone, bf16 XLA and cuDNN against float32
XLA) and ``cudnn-agreement-*`` (the whole encoder's hidden states and parameter gradients, each
bf16 attention path against float32 XLA attention).

On a GPU machine with its own jax/torch stack and no network, the library's other imports come
as wheels (``datasets``, ``dill``, ``multiprocess``, ``ml_collections``) on ``PYTHONPATH``,
with the repository root; docs/benchmarks.md has the runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.55")  # the rest for PyTorch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import OPTIM, random_batch  # noqa: E402

from jaxsent import losses  # noqa: E402
from jaxsent.models import loading  # noqa: E402
from jaxsent.models.architectures import architecture_config  # noqa: E402
from jaxsent.models.classifier import SentimentClassifier  # noqa: E402
from jaxsent.training.optim import make_optimizer  # noqa: E402
from jaxsent.training.plan import CHIPS, model_flops  # noqa: E402
from jaxsent.training.steps import build_steps, trainable_filter  # noqa: E402

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


# --- contenders: each returns (step(), sync(), info) -----------------------------------------


def jax_contender(
    raw: dict,
    batch: dict,
    *,
    attention_impl: str | None,
    ahead: bool = True,
    dtype=jnp.bfloat16,
    pooling: str = "cls",
):
    config = loading.config_from_hf(raw)
    rngs = nnx.Rngs(params=0, dropout=1)
    encoder = loading.make_encoder(config, dtype=dtype, rngs=rngs, attention_impl=attention_impl)
    model = SentimentClassifier(config, pooling=pooling, dtype=dtype, rngs=rngs, encoder=encoder)
    tx, _ = make_optimizer(OPTIM, total_steps=10_000)
    optimizer = nnx.Optimizer(model, tx, wrt=trainable_filter(model))
    steps, state = build_steps(
        model, optimizer, loss_fn=losses.get_loss("bce"), dropout_key=jax.random.key(0)
    )
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    start = time.perf_counter()
    compiled = steps.train_step_fn.lower(state, steps.rng_state, device_batch).compile()
    info = {"compile_s": round(time.perf_counter() - start, 1)}
    if ahead:  # `train_step` runs this executable (compile_ahead's path); else jax.jit's own
        done = concurrent.futures.Future()
        done.set_result(compiled)
        steps.ahead[("train", *device_batch["input_ids"].shape)] = done
    memory = compiled.memory_analysis()
    if memory is not None:
        info["memory_analysis_bytes"] = {
            "arguments": memory.argument_size_in_bytes,
            "outputs": memory.output_size_in_bytes,
            "aliased": memory.alias_size_in_bytes,
            "temporaries": memory.temp_size_in_bytes,
            "code": memory.generated_code_size_in_bytes,
        }
    holder = {"state": state, "metrics": None}

    def step():
        holder["state"], holder["metrics"] = steps.train_step(holder["state"], device_batch)

    def sync():
        jax.block_until_ready(holder["metrics"])
        return float(holder["metrics"]["loss"])

    return step, sync, info


def torch_contender(raw: dict, batch: dict, *, compile_model: bool):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: --smoke on a laptop
    fields = {k: v for k, v in raw.items() if k != "model_type"}
    hf_config = transformers.AutoConfig.for_model(raw["model_type"], num_labels=1, **fields)
    model = transformers.AutoModelForSequenceClassification.from_config(
        hf_config, attn_implementation="sdpa"
    ).to(device)
    model.train()
    params = list(model.parameters())
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
    forward = torch.compile(model) if compile_model else model
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

    info = {"torch": torch.__version__, "transformers": transformers.__version__}
    return step, sync, info


# --- measurement ----------------------------------------------------------------------------


def time_row(contenders: dict, *, warmup: int, steps: int, rounds: int) -> dict:
    """Median s/step per contender over alternating rounds of `steps` steps."""
    for step, sync, info in contenders.values():
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        info["last_loss"] = sync()
        info["warmup_s"] = round(time.perf_counter() - start, 1)
    rounds_s = {name: [] for name in contenders}
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
    return {name: (statistics.median(t), t) for name, t in rounds_s.items()}


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
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def speed_section(report, label, raw, shape, contenders_spec, *, args, matmul):
    batch_size, length = shape
    vocab = raw["vocab_size"]
    batch = random_batch(vocab, batch_size, length, seed=0)
    config = loading.config_from_hf(raw)
    flops = model_flops(config, step="train", global_batch=batch_size, length=length)
    contenders = {}
    for name, build in contenders_spec:
        contenders[name] = build(raw, batch)
    timings = time_row(contenders, warmup=args.warmup, steps=args.steps, rounds=args.rounds)
    peak = jax.local_devices()[0].memory_stats() or {}
    for name, (median, all_rounds) in timings.items():
        info = contenders[name][2]
        report.add(
            {
                "section": label,
                "contender": name,
                "batch": batch_size,
                "length": length,
                "real_token_fraction": round(float(batch["attention_mask"].mean()), 3),
                "s_per_step": round(median, 5),
                "rounds_s_per_step": [round(t, 5) for t in all_rounds],
                "tokens_per_s": round(batch_size * length / median),
                "model_tflops_per_step": round(flops / 1e12, 3),
                "mfu_datasheet": round(flops / median / PEAK_FLOPS, 4),
                "mfu_measured_matmul": round(flops / median / (matmul * 1e12), 4),
                **info,
            }
        )
    report.add(
        {
            "section": label,
            "jax_peak_bytes_in_use_so_far": peak.get("peak_bytes_in_use"),
            "jax_bytes_limit": peak.get("bytes_limit"),
        }
    )
    names = list(timings)
    if len(names) > 1:
        base = timings[names[0]][0]
        report.add(
            {
                "section": label,
                "ratios_vs_" + names[0]: {n: round(timings[n][0] / base, 3) for n in names[1:]},
            }
        )


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


def profile_section(report, label, raw, shape, *, steps: int = 5, top: int = 25, **model_kw):
    """Where the JAX step's device time goes: a `jax.profiler` trace of a few steps, its
    device events summed by name (the trace itself stays on the machine that ran it)."""
    import glob
    import gzip
    import tempfile

    batch_size, length = shape
    batch = random_batch(raw["vocab_size"], batch_size, length, seed=0)
    step, sync, _ = jax_contender(raw, batch, attention_impl=None, **model_kw)
    for _ in range(3):
        step()
    sync()
    log_dir = tempfile.mkdtemp(prefix="jaxsent-profile-")
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        for _ in range(steps):
            step()
        sync()
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
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    total_us = sum(totals.values())
    report.add(
        {
            "section": label,
            "steps": steps,
            "device_processes": sorted(processes[pid] for pid in device_pids),
            "event_ms_per_step_total": round(total_us / steps / 1e3, 3),
            "top_events_ms_per_step": [
                [n[:120], round(t / steps / 1e3, 3)] for n, t in ranked[:top]
            ],
        }
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="append JSON lines here")
    parser.add_argument("--smoke", action="store_true", help="tiny model, every code path")
    parser.add_argument("--steps", type=int, default=30, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget", type=float, default=420, help="seconds; no section after")
    parser.add_argument("--skip", nargs="*", default=[], help="section names to leave out")
    args = parser.parse_args(argv)
    report = Report(args.out)
    started = time.perf_counter()
    on_gpu = jax.default_backend() == "gpu"
    report.add(
        {
            "section": "environment",
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "python": platform.python_version(),
        }
    )
    matmul = matmul_tflops() if on_gpu and not args.smoke else PEAK_FLOPS / 1e12
    report.add({"section": "matmul", "bf16_8192_tflops": round(matmul, 1)})

    def jx(impl=None, ahead=True):
        return lambda raw, batch: jax_contender(raw, batch, attention_impl=impl, ahead=ahead)

    def pt(compile_model=False):
        return lambda raw, batch: torch_contender(raw, batch, compile_model=compile_model)

    no_drop = {"attention_probs_dropout_prob": 0.0}
    if args.smoke:
        sections = [
            ("smoke", raw_config("tiny"), (4, 64), [("jax", jx()), ("torch", pt())]),
            (
                "smoke-no-attn-dropout",
                raw_config("tiny", **no_drop),
                (4, 64),
                [("jax-xla", jx("xla"))] + ([("jax-cudnn", jx("cudnn"))] if on_gpu else []),
            ),
            (
                "smoke-modernbert",
                raw_config("tiny-modernbert"),
                (4, 64),
                [("jax-xla", jx("xla")), ("torch", pt())],
            ),
            ("smoke-agreement-bert", raw_config("tiny", **no_drop), (4, 256), None),
            ("smoke-attention-grad", None, (2, 128), "attention"),
            ("smoke-profile", raw_config("tiny"), (4, 64), "profile"),
            ("smoke-agreement-modernbert", raw_config("tiny-modernbert"), (4, 256), None),
        ]
    else:
        # In order of importance: a run cut short by --budget keeps the first.
        sections = [
            ("profile-bert-base", raw_config("bert-base"), (32, 512), "profile"),
            ("attention-grad", None, (8, 512), "attention"),
            ("cudnn-agreement-bert", raw_config("bert-base", **no_drop), (8, 512), None),
            ("minilm-main-job-shape", raw_config("minilm"), (32, 256),
             [("jax", jx()), ("jax-jit", jx(ahead=False)), ("torch-eager", pt())]),
            ("bert-base-hf-dropout", raw_config("bert-base"), (32, 512),
             [("jax", jx()), ("torch-eager", pt())]),
            ("cudnn-agreement-modernbert", raw_config("modernbert-base"), (4, 1024), None),
            ("modernbert-base", raw_config("modernbert-base"), (16, 1024),
             [("jax-xla", jx("xla")), ("jax-cudnn", jx("cudnn")), ("torch-eager", pt())]),
            ("bert-base-no-attn-dropout", raw_config("bert-base", **no_drop), (32, 512),
             [("jax-xla", jx("xla")), ("jax-cudnn", jx("cudnn")), ("torch-eager", pt())]),
            ("bert-base-torch-compile", raw_config("bert-base", **no_drop), (32, 512),
             [("torch-compile", pt(compile_model=True))]),
        ]  # fmt: skip
    for label, raw, shape, spec in sections:
        if label in args.skip:
            continue
        elapsed = time.perf_counter() - started
        if elapsed > args.budget:
            report.add({"section": label, "skipped": f"budget spent ({elapsed:.0f} s)"})
            continue
        try:
            if spec == "profile":
                profile_section(report, label, raw, shape)
            elif spec == "attention":
                impls = ("xla", "cudnn-kv", "cudnn-qkv") if on_gpu else ("xla",)
                attention_grad_check(report, label, shape, impls)
            elif spec is None:
                impls = ("xla", "einsum", "cudnn") if on_gpu else ("xla", "einsum")
                cudnn_agreement(report, label, raw, shape, impls)
            else:
                speed_section(report, label, raw, shape, spec, args=args, matmul=matmul)
        except Exception as err:  # one section's failure must not lose the others' figures
            traceback.print_exc()
            report.add({"section": label, "error": f"{type(err).__name__}: {err}"[:2000]})
        report.add({"section": label, "elapsed_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
