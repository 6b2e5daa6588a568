"""ModernBERT train step: jaxsent's NNX encoder vs transformers' PyTorch ModernBertModel.

Both frameworks do one full optimisation step on the same batch with the same weights: the
encoder, masked-mean pooling, a Linear(H, 1) head, binary cross-entropy, global-norm clipping
at 1.0 and AdamW (lr 5e-5, weight decay 0.01). ModernBERT's dropouts are 0 by default, so both
steps are deterministic.

* JAX: ``jaxsent.models.from_pretrained`` on the PyTorch model's weights (saved to a temporary
  folder), one ``nnx.jit`` step with ``optax`` (float32 parameters, ``--dtype`` compute).
* PyTorch: ``transformers.ModernBertModel`` with its default attention (``sdpa`` on CPU; flash
  attention needs a GPU), ``torch.optim.AdamW`` and ``clip_grad_norm_``.

The model is ModernBERT-base-shaped (hidden 768, 12 heads, intermediate 1152, vocabulary
50368, local window 128, every third layer global) with ``--layers`` layers (22 in the real
one), randomly initialised (no weights can be downloaded here). The batch: random token ids
with IMDB-like lengths (log-normal, median ~230 tokens, capped at ``--length``), padded to
``--length``; both frameworks get identical ids and masks.

``--micro N ...`` also times the library's own train step (``build_steps``, what
``python -m train`` runs) with the batch split into N micro-batches (``train.micro_batch_size``
= batch / N); ``--attention-impl`` picks jaxsent's attention (``default``: the library's);
``--no-barrier`` adds each library step without `modernbert.materialized_cotangent`, the A/B
of that barrier.

Timing: ``--warmup`` untimed steps each (the first JAX step compiles), then ``--repeats``
rounds in which the frameworks alternate, so load from other processes hits both alike.
Reports medians and the PyTorch/JAX ratio (> 1: jaxsent is faster).

    .venv/bin/python bench/bench_modernbert.py --layers 6 --batch 32 --length 512 --repeats 3 \
        --warmup 1 --micro 8 16
    .venv/bin/python bench/bench_modernbert.py --tiny --micro 2 --no-barrier  # does it run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from jaxsent import losses  # noqa: E402
from jaxsent.models import SentimentClassifier, from_pretrained, modernbert  # noqa: E402
from jaxsent.training.steps import build_steps, trainable_filter  # noqa: E402

LR, WEIGHT_DECAY, CLIP = 5e-5, 0.01, 1.0
BASE = dict(
    vocab_size=50368,
    hidden_size=768,
    intermediate_size=1152,
    num_attention_heads=12,
    local_attention=128,
    max_position_embeddings=8192,
)
TINY = dict(
    vocab_size=500,
    hidden_size=48,
    intermediate_size=72,
    num_attention_heads=3,
    local_attention=16,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
)


def make_batch(batch: int, length: int, vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(230), 0.7, batch).astype(int), 8, length)
    ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, 0).astype(np.int32)
    labels = rng.integers(0, 2, batch).astype(np.float32)
    return ids, mask, labels


class Classifier(nnx.Module):
    def __init__(self, encoder, hidden: int):
        self.encoder = encoder
        self.head = nnx.Linear(hidden, 1, rngs=nnx.Rngs(0))

    def __call__(self, ids, mask):
        h = self.encoder(ids, attention_mask=mask, deterministic=True).last_hidden_state
        real = (mask != 0)[..., None]
        pooled = jnp.sum(jnp.where(real, h.astype(jnp.float32), 0.0), 1) / jnp.sum(real, 1)
        return self.head(pooled)[:, 0]


def jax_step_fn(model, batch):
    tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adamw(LR, weight_decay=WEIGHT_DECAY))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    ids, mask, labels = (jnp.asarray(a) for a in batch)

    @nnx.jit
    def step(model, optimizer, ids, mask, labels):
        def loss_fn(model):
            logits = model(ids, mask)
            return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def run():
        return float(step(model, optimizer, ids, mask, labels))

    return run


def library_step_fn(encoder, batch, micro_batches: int):
    """The library's train step (`build_steps`) on the same model: mean pooling, no dropout, BCE,
    the same clipping and AdamW, the batch run as ``micro_batches`` micro-batches."""
    model = SentimentClassifier(
        encoder.config,
        pooling="mean",
        dropout_rate=0.0,
        dtype=encoder.dtype,
        rngs=nnx.Rngs(0),
        encoder=encoder,
    )
    tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adamw(LR, weight_decay=WEIGHT_DECAY))
    optimizer = nnx.Optimizer(model, tx, wrt=trainable_filter(model))
    steps, state = build_steps(
        model,
        optimizer,
        loss_fn=losses.get_loss("bce"),
        dropout_key=jax.random.key(0),
        micro_batches=micro_batches,
    )
    ids, mask, labels = batch
    device_batch = {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.asarray(mask),
        "labels": jnp.asarray(labels, jnp.int32),
        "lengths": jnp.asarray(mask.sum(1), jnp.int32),
        "where": jnp.ones(len(ids), bool),
    }
    holder = {"state": state}

    def run():
        holder["state"], metrics = steps.train_step(holder["state"], device_batch)
        return float(metrics["loss"])

    return run


def without_residual_barrier(run):
    """``run`` traced with `modernbert.materialized_cotangent` as the plain identity (the A/B of
    the barrier that stops XLA:CPU from recomputing the residual gradient in every block)."""

    def patched():
        barrier = modernbert.materialized_cotangent
        modernbert.materialized_cotangent = lambda x: x
        try:
            return run()
        finally:
            modernbert.materialized_cotangent = barrier

    return patched


def torch_step_fn(hf, batch):
    import torch

    head = torch.nn.Linear(hf.config.hidden_size, 1)
    params = list(hf.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    ids, mask, labels = (torch.tensor(a) for a in batch)
    ids = ids.long()
    hf.train()

    def run():
        opt.zero_grad(set_to_none=True)
        h = hf(ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].float()
        logits = head((h * m).sum(1) / m.sum(1))[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        return loss.item()

    return run


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--attention-impl",
        choices=["default", "xla", "einsum"],
        nargs="+",
        default=["default"],
        help="jaxsent's attention_impl (default: the library's, None); with several, each "
        "--micro count is timed with each",
    )
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a check that it runs")
    parser.add_argument(
        "--micro",
        type=int,
        nargs="*",
        default=[],
        help="also time the library's train step (build_steps) with these micro-batch counts",
    )
    parser.add_argument(
        "--no-barrier",
        action="store_true",
        help="also time each library step without the residual-gradient barrier",
    )
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 so that JAX compilation is not timed")
    if args.tiny:
        args.layers, args.batch, args.length, args.repeats, args.warmup = 2, 4, 64, 2, 1

    import torch
    import transformers

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(args.seed)
    shape = TINY if args.tiny else BASE
    impls = [None if impl == "default" else impl for impl in args.attention_impl]
    config = transformers.ModernBertConfig(**shape, num_hidden_layers=args.layers, pad_token_id=0)
    hf = transformers.ModernBertModel(config)
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        encoder = from_pretrained(directory, dtype=jnp.dtype(args.dtype), attention_impl=impls[0])
    batch = make_batch(args.batch, args.length, shape["vocab_size"], args.seed)
    real_tokens = int(batch[1].sum())

    runs = {"jaxsent": jax_step_fn(Classifier(encoder, shape["hidden_size"]), batch)}
    for name, impl in zip(args.attention_impl, impls, strict=True):
        for count in args.micro:
            for barrier in (True, False) if args.no_barrier else (True,):
                with tempfile.TemporaryDirectory() as directory:  # its own copy of the weights
                    hf.save_pretrained(directory)
                    own = from_pretrained(
                        directory, dtype=jnp.dtype(args.dtype), attention_impl=impl
                    )
                label = f"library-micro{count}" + ("" if len(impls) == 1 else f"-{name}")
                run = library_step_fn(own, batch, count)
                if barrier:
                    runs[label] = run
                else:
                    runs[f"{label}-nobarrier"] = without_residual_barrier(run)
    runs["pytorch"] = torch_step_fn(hf, batch)
    for run in runs.values():
        for _ in range(args.warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(timed(run))

    print(
        f"ModernBERT train step, {args.layers} layers, batch {args.batch} x {args.length} "
        f"({real_tokens} real tokens), jax {args.dtype} attention={','.join(args.attention_impl)}, "
        f"torch {torch.__version__} attn={hf.config._attn_implementation}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"  {name:8s} median {medians[name]:.3f} s/step  rounds {[round(x, 3) for x in t]}")
    for name in medians:
        if name != "pytorch":
            ratio = medians["pytorch"] / medians[name]
            print(f"  ratio pytorch/{name}: {ratio:.2f} (> 1: jaxsent faster)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
