"""Eval forward throughput by batch size: jaxsent's jitted MiniLM forward vs PyTorch's.

Why `configs/imdb_minilm.py` scores in batches of 8: on XLA:CPU the forward pass of a batch of
8 x 256 tokens runs faster per token than one of 32 or 64 (the [B, heads, L, L] attention scores
of a small batch stay in cache). Each case scores the same ``--tokens`` real tokens, in batches
of B sequences; the cases alternate, and each figure is the median of ``--repeats`` rounds.

    .venv/bin/python bench/bench_eval_batch.py --batches 4 8 16 32 64 --length 256

Needs torch (the test extra) for the PyTorch row (transformers' BertModel, sdpa attention,
`torch.no_grad`), skipped with ``--skip-torch``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsent.models import bert_params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per timed run")
    parser.add_argument("--torch-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args(argv)

    directory = bert_params.resolve(args.model)
    encoder = bert_params.load_encoder(directory, dtype=jnp.float32)
    rng = np.random.default_rng(0)
    length = args.length

    @nnx.jit
    def forward(model, ids, mask):
        return model(ids, mask, deterministic=True).last_hidden_state.mean(axis=1)

    cases = {}
    for batch in args.batches:
        ids = jnp.asarray(rng.integers(1000, 20000, (batch, length)), jnp.int32)
        mask = jnp.ones_like(ids)
        calls = max(1, args.tokens // (batch * length))
        forward(encoder, ids, mask).block_until_ready()  # compile outside the timing

        def run_jax(ids=ids, mask=mask, calls=calls):
            for _ in range(calls):
                forward(encoder, ids, mask).block_until_ready()

        cases[f"jaxsent B={batch}"] = (run_jax, calls * batch * length)
    if not args.skip_torch:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count())
        model = transformers.BertModel.from_pretrained(directory, attn_implementation="sdpa")
        model.eval()
        batch = args.torch_batch
        ids = torch.tensor(rng.integers(1000, 20000, (batch, length)))
        mask = torch.ones_like(ids)
        calls = max(1, args.tokens // (batch * length))

        def run_torch():
            with torch.no_grad():
                for _ in range(calls):
                    model(ids, attention_mask=mask)

        run_torch()
        cases[f"PyTorch B={batch}"] = (run_torch, calls * batch * length)

    load = os.getloadavg()[0]
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (fn, _) in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(
        f"| forward, {args.model}, length {length}, float32 | tokens/s (median of {args.repeats}) |"
    )
    print("|---|---:|")
    for name, (_, tokens) in cases.items():
        print(f"| {name} | {tokens / statistics.median(times[name]):,.0f} |")
    print(f"\njax {jax.__version__}, 1-min load {load:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
