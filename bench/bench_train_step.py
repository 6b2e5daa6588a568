"""Training-step throughput: jaxsent's jitted train step vs transformers' PyTorch step.

Both frameworks do one full optimisation step on the same batch, in train mode (dropout on):
forward, the seed's focal loss, backward, global-norm clipping at 1.0 and AdamW (lr 5e-5,
weight decay 0.01 on matrices only, betas 0.9/0.999, eps 1e-8) with a non-finite guard.

* JAX: ``jaxsent.training.steps.build_steps`` (one ``jax.jit`` with donated state) around
  ``SentimentClassifier.from_pretrained(model, pooling=...)``, the optimiser from
  ``jaxsent.training.optim.make_optimizer`` with the default config's hyperparameters and the
  loss ``jaxsent.losses.get_loss("focal")`` (gamma 0.1, label smoothing 0.05, length weights
  clamped at 0.1).
* PyTorch: ``transformers.BertForSequenceClassification`` (``num_labels=1``, the same
  checkpoint, default ``sdpa`` attention) with ``torch.optim.AdamW`` over the same decay groups,
  ``clip_grad_norm_`` and the step skipped when the norm is not finite; the loss is
  ``torch_seed_loss`` from ``tests/test_losses.py``, the tests' independent PyTorch statement
  of the seed loss. HF's head pools with the tanh pooler over [CLS]; ``--pooling cls`` gives
  ours the same head (the pooling choice changes < 0.1% of the step's FLOPs).

The batch: ``--batch`` IMDB train reviews drawn with ``--seed``, cleaned and tokenised by
``jaxsent.data.prepare`` at ``--length`` and padded to it (``--data imdb``, needs
``$JAXSENT_DATA_DIR``), or random token ids with IMDB-like lengths (``--data random``). Real
tokens/s counts non-padding tokens only; both frameworks get identical ids and masks.

Timing: ``--warmup`` untimed steps each (the first JAX step compiles), then ``--repeats``
rounds in which the frameworks alternate, so that load from other processes on a shared
machine hits both alike. Reports medians, and CPU seconds per step (process user+sys) as a
load-insensitive second view.

    JAXSENT_DATA_DIR=../shared/data .venv/bin/python bench/bench_train_step.py \\
        --batch 32 --length 256 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxsent import losses  # noqa: E402
from jaxsent.models import bert_params  # noqa: E402
from jaxsent.models.classifier import SentimentClassifier, load_tokenizer  # noqa: E402
from jaxsent.training.optim import make_optimizer  # noqa: E402
from jaxsent.training.steps import build_steps, trainable_filter  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIM = dict(
    learning_rate=5e-5,
    schedule="constant",
    warmup_steps=0,
    warmup_fraction=0.0,
    weight_decay=0.01,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    grad_clip_norm=1.0,
    max_consecutive_nonfinite=10,
)
FOCAL = dict(gamma_focal=0.1, label_smoothing_epsilon=0.05, min_length_weight=0.1)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def imdb_batch(model_dir: str, batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """``batch`` random IMDB train reviews through the library's pipeline, padded to ``length``."""
    from jaxsent.data import BatchSpec, load_raw, make_batch, prepare, to_numpy_columns

    raw = load_raw("imdb", split="train")
    rows = np.sort(np.random.default_rng(seed).choice(len(raw), batch, replace=False))
    tokenizer = load_tokenizer(model_dir)
    prepared = prepare(raw.select(rows), tokenizer, max_length=length, split_name="train")
    arrays = to_numpy_columns(prepared)
    spec = BatchSpec(indices=np.arange(batch, dtype=np.int64), seq_len=length)
    out = make_batch(arrays, spec, pad_id=tokenizer.pad_token_id or 0)
    out.pop("example_id")
    return out


def random_batch(vocab_size: int, batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Random ids; lengths from a log-normal fitted to IMDB (median 222, mean 265 tokens)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(222), 0.55, batch).astype(np.int32), 8, length)
    mask = np.arange(length)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(1000, vocab_size, (batch, length)), 0)
    ids[:, 0] = 101  # [CLS]
    return {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask.astype(np.int32),
        "labels": rng.integers(0, 2, batch).astype(np.int32),
        "lengths": lengths,
        "where": np.ones(batch, bool),
    }


def build_jax_steps(model_dir: str, pooling: str):
    """(StepFunctions, initial state) for the benchmark's model, loss and optimiser."""
    model = SentimentClassifier.from_pretrained(
        model_dir, pooling=pooling, rngs=nnx.Rngs(params=0, dropout=1)
    )
    tx, _ = make_optimizer(OPTIM, total_steps=1000)
    optimizer = nnx.Optimizer(model, tx, wrt=trainable_filter(model))
    return build_steps(
        model, optimizer, loss_fn=losses.get_loss("focal", **FOCAL), dropout_key=jax.random.key(0)
    )


def jax_step(model_dir: str, batch: dict[str, np.ndarray], pooling: str):
    steps, state = build_jax_steps(model_dir, pooling)
    device_batch = {key: jnp.asarray(value) for key, value in batch.items()}
    holder = {"state": state, "loss": None}

    def step():
        holder["state"], metrics = steps.train_step(holder["state"], device_batch)
        holder["loss"] = float(jax.block_until_ready(metrics)["loss"])

    return step, holder


def torch_step(model_dir: str, batch: dict[str, np.ndarray], threads: int):
    import torch
    import transformers

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from test_losses import torch_seed_loss  # the tests' PyTorch statement of the seed loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()  # "newly initialized classifier" is expected
    model = transformers.BertForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": OPTIM["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=OPTIM["learning_rate"],
        betas=(OPTIM["b1"], OPTIM["b2"]),
        eps=OPTIM["eps"],
    )
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    mask = torch.tensor(batch["attention_mask"], dtype=torch.long)
    where = torch.tensor(batch["where"])
    labels = torch.tensor(batch["labels"])[where]
    lengths = torch.tensor(batch["lengths"])[where]
    holder = {"loss": None}

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        loss = torch_seed_loss(
            logits[where],
            labels,
            lengths,
            kind="focal",
            gamma=FOCAL["gamma_focal"],
            epsilon=FOCAL["label_smoothing_epsilon"],
            min_length_weight=FOCAL["min_length_weight"],
        )
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["grad_clip_norm"])
        if torch.isfinite(norm):
            optimizer.step()
        holder["loss"] = float(loss)

    return step, holder, torch.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-l6", help="folder, short name or hub id")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=256, help="padded sequence length")
    parser.add_argument("--data", choices=["imdb", "random"], default="imdb")
    parser.add_argument("--seed", type=int, default=0, help="which reviews / random ids")
    parser.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        default="mean",
        help="our head's pooling (HF's is cls)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps per framework first (>= 1: JAX compiles)",
    )
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 so that JAX compilation is not timed")

    model_dir = bert_params.resolve(args.model)
    if args.data == "imdb":
        batch = imdb_batch(model_dir, args.batch, args.length, args.seed)
    else:
        vocab = bert_params.load_encoder(model_dir).config.vocab_size
        batch = random_batch(vocab, args.batch, args.length, args.seed)
    real_tokens = int(batch["lengths"].sum())
    processed = args.batch * args.length

    contenders = {}
    jax_fn, jax_holder = jax_step(model_dir, batch, args.pooling)
    contenders["jax"] = (jax_fn, jax_holder)
    if not args.skip_torch:
        torch_fn, torch_holder, torch_version = torch_step(model_dir, batch, args.torch_threads)
        contenders["torch"] = (torch_fn, torch_holder)

    start = time.perf_counter()
    for fn, _ in contenders.values():
        for _ in range(args.warmup):
            fn()
    warmup_s = time.perf_counter() - start
    load_before = os.getloadavg()
    wall = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, (fn, _) in contenders.items():
            c0, t0 = cpu_seconds(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_seconds() - c0)
    load_after = os.getloadavg()

    print(
        f"{args.model}, batch {args.batch} x length {args.length} ({args.data} ids, "
        f"{real_tokens:,} real of {processed:,} tokens = {real_tokens / processed:.1%}), "
        f"train mode, focal loss, AdamW; jax {jax.__version__} ({jax.default_backend()}), "
        + (
            f"torch {torch_version} ({args.torch_threads} threads); "
            if "torch" in contenders
            else ""
        )
        + f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_before)} before, "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} after the timed rounds; "
        f"median of {args.repeats} alternating rounds after {args.warmup} warm-up step(s) "
        f"({warmup_s:.0f} s incl. JAX compile)"
    )
    print()
    print(
        "| framework | s/step (median) | min | real tokens/s | processed tokens/s "
        "| CPU s/step | loss (last) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for name, (_, holder) in contenders.items():
        med = medians[name] = statistics.median(wall[name])
        print(
            f"| {name} | {med:.3f} | {min(wall[name]):.3f} | {real_tokens / med:,.0f} | "
            f"{processed / med:,.0f} | {statistics.median(cpu[name]):.2f} | {holder['loss']:.4f} |"
        )
    if "torch" in medians:
        ratio = medians["torch"] / medians["jax"]
        cpu_ratio = statistics.median(cpu["torch"]) / statistics.median(cpu["jax"])
        print()
        print(
            f"torch/jax step-time ratio: {ratio:.2f} (wall), {cpu_ratio:.2f} (CPU seconds); "
            "> 1 means JAX is faster"
        )
    print()
    print(
        "per-round wall seconds: "
        + "; ".join(
            f"{name} " + ", ".join(f"{t:.2f}" for t in times) for name, times in wall.items()
        )
    )


if __name__ == "__main__":
    main()
