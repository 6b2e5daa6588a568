"""Train-step time with and without micro-batches (`train.micro_batch_size`), side by side.

The main job's model and optimiser (configs/imdb_minilm.py: MiniLM, plain BCE, AdamW), one batch of
32 IMDB training reviews padded to ``--length`` tokens; for each micro-batch size (0 = the whole
batch at once) the same jitted train step that `python -m train` runs, built by
`jaxsent.training.loop.build_run`. The variants alternate round by round, so load from other
processes hits them alike; medians of ``--rounds`` rounds after one untimed (compiling) call.

    JAXSENT_DATA_DIR=../shared/data .venv/bin/python bench/bench_micro_batches.py \\
        --length 256 --micro 0 8 16
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from configs import imdb_minilm  # noqa: E402
from jaxsent import data as data_lib  # noqa: E402
from jaxsent.training import loop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=256, help="padded sequence length")
    parser.add_argument("--micro", type=int, nargs="+", default=[0, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runs = {}
    for micro in args.micro:
        config = imdb_minilm.get_config()
        config.train.micro_batch_size = micro
        mesh = loop.make_run_mesh(config)
        run = loop.build_run(config, epath.Path(tempfile.mkdtemp()), mesh)
        rows = np.flatnonzero(run.splits["train"].arrays.lengths <= args.length)[:32]
        spec = data_lib.BatchSpec(indices=rows, seq_len=args.length)
        batch = run.place(run.splits["train"].arrays, spec)
        with jax.set_mesh(mesh):
            start = time.perf_counter()
            run.state, metrics = run.steps.train_step(run.state, batch)
            jax.block_until_ready(metrics)
        print(f"micro {micro}: first call (compile + step) {time.perf_counter() - start:.1f} s")
        runs[micro] = (run, mesh, batch)
    seconds = {micro: [] for micro in runs}
    for round_ in range(args.rounds):
        for micro, (run, mesh, batch) in runs.items():
            with jax.set_mesh(mesh):
                start = time.perf_counter()
                run.state, metrics = run.steps.train_step(run.state, batch)
                jax.block_until_ready(metrics)
            seconds[micro].append(time.perf_counter() - start)
        print(round_, {m: round(s[-1], 3) for m, s in seconds.items()}, flush=True)
    medians = {m: float(np.median(s)) for m, s in seconds.items()}
    base = medians.get(0)
    for micro, median in medians.items():
        vs = f" ({median / base - 1:+.1%} vs the whole batch)" if base and micro else ""
        print(f"length {args.length}, micro_batch_size {micro}: {median:.3f} s/step{vs}")


if __name__ == "__main__":
    main()
