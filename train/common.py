"""What every command-line entry point sets up: log output and the compilation cache."""

import logging
import os

from absl import logging as absl_logging

# The metrics a command prints (every metric is in its eval_results.json).
RESULT_KEYS = ("accuracy", "precision", "recall", "f1", "auroc", "nll", "brier", "ece")


def setup() -> None:
    """jaxsent's progress messages on stderr, orbax/JAX chatter muted, compiled steps cached."""
    # Orbax and JAX log every save and restore at INFO through absl; keep those to warnings and
    # show jaxsent's own progress messages.
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    jaxsent_log = logging.getLogger("jaxsent")
    jaxsent_log.addHandler(handler)
    jaxsent_log.setLevel(logging.INFO)
    jaxsent_log.propagate = False
    import jax

    # Compiled steps persist across runs (one compile per bucket shape is otherwise paid again
    # by every run and every resume).
    jax.config.update(
        "jax_compilation_cache_dir",
        os.environ.get("JAXSENT_COMPILATION_CACHE", os.path.expanduser("~/.cache/jaxsent/xla")),
    )
