"""Fine-tune and evaluate a sentiment model.

    python -m train --config configs/smoke.py --workdir runs/smoke
    python -m train --config configs/imdb_minilm.py --workdir runs/imdb \\
        --config.loss.name=weighted --config.optim.learning_rate=3e-5

Any config field can be overridden with `--config.<path>=<value>`. Every field is checked before
any work starts: a bad value is reported in one line (`--debug` for a traceback) and nothing is
written to `--workdir`. Re-running with the same `--workdir` resumes from its newest checkpoint.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from train.cli import result_lines, run_cli, setup_process

# Make `from configs import default` work in config files when run from the repository root.
sys.path.insert(0, os.getcwd())

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-host runs (else auto-detect)."
)
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() with the platform's auto-detection "
    "(TPU pods, SLURM, Open MPI) when no address is given.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    setup_process()
    import jax

    if FLAGS.distributed or FLAGS.coordinator_address or FLAGS.num_processes:
        # Collectives between CPU devices of different processes (tests, CPU clusters) go over
        # TCP with gloo: jax 0.10.2's default, set explicitly because releases without a default
        # fail them. Only the CPU backend reads this option.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    from jaxsent.training.loop import train_and_evaluate
    from jaxsent.training.preemption import TrainingInterrupted

    try:
        # Checks every config field first (ConfigError: one line, through run_cli).
        results = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except TrainingInterrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        sys.exit(TrainingInterrupted.exit_code)
    if jax.process_index() == 0:
        print()
        print(
            f"== {results['split']} metrics ({results['n_examples']:,} examples, "
            f"best checkpoint: step {results['best_step']}) =="
        )
        for line in result_lines(results):
            print(line)
        if "temperature" in results:
            print(
                f"temperature {results['temperature']:.3f} (fitted on validation): "
                f"nll {results['nll_ts']:.4f}, ece {results['ece_ts']:.4f} after scaling"
            )
        for note in results["notes"]:
            print(f"NOTE: {note}")
        workdir = FLAGS.workdir
        print(f"full results: {os.path.join(workdir, 'eval_results.json')}")
        print(f"predictions:  {os.path.join(workdir, 'predictions.parquet')}")
        print(f"best model:   {os.path.join(workdir, 'best')} (orbax checkpoint)")
        print(f"export:       {os.path.join(workdir, 'export')} (Hugging Face folder)")
        print("classify new text with:")
        print(f'  python -m train.predict --model {workdir} --text "A wonderful film."')


if __name__ == "__main__":
    run_cli(main)
