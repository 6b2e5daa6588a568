"""What every entry point does first: quiet third-party logs, jaxsent's progress on stderr, and a
persistent compilation cache."""

import logging
import os
import sys

from absl import logging as absl_logging

# The metrics a command prints (its eval_results.json holds every one).
RESULT_KEYS = ("accuracy", "precision", "recall", "f1", "auroc", "nll", "brier", "ece")


def setup_process() -> None:
    """Logging and the XLA compilation cache for a command-line run (call once, in main)."""
    # Make `from configs import default` work in config files when run from the repository root.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # Orbax and JAX log every save and restore at INFO through absl; keep those to warnings and
    # show jaxsent's own progress messages.
    absl_logging.set_verbosity(absl_logging.WARNING)
    jaxsent_log = logging.getLogger("jaxsent")
    if not jaxsent_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
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
