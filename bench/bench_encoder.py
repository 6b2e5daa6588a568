"""Encoder speed: jaxsent's Flax NNX BERT vs transformers' PyTorch BertModel, same machine.

Times the forward pass and forward+backward (gradients of mean(h**2) w.r.t. every
parameter) of the encoder on full-length batches (no padding), dropout off on both sides so
both do the same arithmetic. Reports medians over ``--repeats`` timed runs after
``--warmup`` untimed ones (the first JAX call also compiles), and the torch/jax time ratio
(> 1 means JAX is faster). JAX and torch runs alternate, so that load from other processes
on a shared machine affects both alike.

    .venv/bin/python bench/bench_encoder.py --model minilm-l6 --batch 32 --lengths 128 256 \
        --repeats 3 --warmup 1

Needs torch (the test extra). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsent.models import bert, bert_params


def _interleaved_medians(fns: dict, *, warmup: int, repeats: int) -> dict:
    """Median seconds per function, timed in alternation so that load from other processes
    on a shared machine hits every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _jax_fns(encoder: bert.BertModel, ids: np.ndarray):
    ids = jnp.asarray(ids)
    mask = jnp.ones_like(ids)

    @nnx.jit
    def forward(model, ids, mask):
        return model(ids, mask, deterministic=True).last_hidden_state

    @nnx.jit
    def forward_backward(model, ids, mask):
        def loss(model):
            h = model(ids, mask, deterministic=True).last_hidden_state
            return jnp.mean(jnp.square(h.astype(jnp.float32)))

        return nnx.grad(loss)(model)

    return (
        lambda: jax.block_until_ready(forward(encoder, ids, mask)),
        lambda: jax.block_until_ready(forward_backward(encoder, ids, mask)),
    )


def _torch_fns(model, ids: np.ndarray):
    import torch

    ids = torch.tensor(ids, dtype=torch.long)
    mask = torch.ones_like(ids)

    def forward():
        with torch.no_grad():
            model(ids, attention_mask=mask)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        h = model(ids, attention_mask=mask).last_hidden_state
        h.pow(2).mean().backward()

    return forward, forward_backward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-l6", help="folder, short name or hub id")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs first (>=1: JAX compiles)"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="JAX compute dtype (torch stays float32)",
    )
    parser.add_argument(
        "--attention-impl",
        choices=["xla", "einsum", "cudnn"],
        default="xla",
        help="jaxsent BertModel attention_impl",
    )
    parser.add_argument(
        "--torch-attention",
        choices=["sdpa", "eager"],
        default="sdpa",
        help="transformers attn_implementation",
    )
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 so that JAX compilation is not timed")

    directory = bert_params.resolve(args.model)
    encoder = bert_params.load_encoder(
        directory, dtype=jnp.dtype(args.dtype), attention_impl=args.attention_impl
    )
    torch_model = None
    if not args.skip_torch:
        import torch
        import transformers

        torch.set_num_threads(args.torch_threads)
        torch_model = transformers.BertModel.from_pretrained(
            directory, attn_implementation=args.torch_attention
        )
        torch_model.eval()  # dropout off; gradients still flow
        torch_version = torch.__version__

    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    rows = []
    for length in args.lengths:
        ids = rng.integers(1000, encoder.config.vocab_size, (args.batch, length)).astype(np.int32)
        jax_fwd, jax_fb = _jax_fns(encoder, ids)
        cases = {("forward", "jax"): jax_fwd, ("fwd+bwd", "jax"): jax_fb}
        if torch_model is not None:
            t_fwd, t_fb = _torch_fns(torch_model, ids)
            cases.update({("forward", "torch"): t_fwd, ("fwd+bwd", "torch"): t_fb})
        timing = {}
        for mode in ("forward", "fwd+bwd"):
            pair = {key: fn for key, fn in cases.items() if key[0] == mode}
            timing.update(_interleaved_medians(pair, warmup=args.warmup, repeats=args.repeats))
        for mode in ("forward", "fwd+bwd"):
            j = timing[(mode, "jax")]
            t = timing.get((mode, "torch"))
            tokens = args.batch * length
            rows.append(
                f"| {length} | {mode} | {j:.3f} | {tokens / j:,.0f} | "
                + (f"{t:.3f} | {tokens / t:,.0f} | {t / j:.2f} |" if t else "- | - | - |")
            )
            print(rows[-1], flush=True)

    print()
    print(
        f"{args.model}, batch {args.batch}, {args.dtype} (JAX compute), JAX attention "
        f"{args.attention_impl}, median of {args.repeats} "
        f"after {args.warmup} warm-up; jax {jax.__version__} ({jax.default_backend()}, "
        f"{jax.device_count()} device(s))"
        + (
            f", torch {torch_version} ({args.torch_threads} threads, {args.torch_attention} "
            "attention)"
            if torch_model
            else ""
        )
        + f"; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print()
    print("| length | pass | JAX s | JAX tokens/s | torch s | torch tokens/s | torch/JAX |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
