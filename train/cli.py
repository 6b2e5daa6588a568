"""What every entry point shares: `run_cli` (flag parsing and the one-line error path) and
`setup_process` (quiet third-party logs, jaxsent's progress on stderr, a persistent compilation
cache).

Every command ends with ``run_cli(main)`` instead of ``absl.app.run(main)``::

    from train.cli import run_cli, setup_process

    def main(argv):
        setup_process()
        ...

    if __name__ == "__main__":
        run_cli(main)

A user's error (a bad flag or config value, an unknown loss, data set or model name, a missing
file or package, no hub access) is then printed as ``error: <one line>`` on stderr and the
command exits with status 2 (`EXIT_USER_ERROR`), with no traceback; ``--debug`` shows the
traceback instead.
"""

import functools
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

# The metrics a command prints (its eval_results.json holds every one): two classes, then K.
RESULT_KEYS = ("accuracy", "precision", "recall", "f1", "auroc", "nll", "brier", "ece")
MULTICLASS_RESULT_KEYS = (
    "accuracy",
    "macro_f1",
    "macro_recall",
    "nll",
    "brier",
    "ece",
    "classwise_ece",
    "mae",
    "accuracy_within_one",
)


def result_lines(results: dict[str, Any]) -> list[str]:
    """The metric lines a command prints for a report (its classes' metrics, aligned)."""
    keys = MULTICLASS_RESULT_KEYS if "class_names" in results else RESULT_KEYS
    width = max(10, *map(len, keys))  # two classes: 10, as it always was
    return [f"{key:>{width}}: {results[key]:.4f}" for key in keys if key in results]


EXIT_USER_ERROR = 2

# XLA flags jaxsent's commands add for a run, each only where the user's own XLA_FLAGS does not
# set it. Empty: no device run has yet shown a flag that makes the GPU train step faster
# (issue 27; bench/bench_gpu_step.py measures candidates, e.g. --xla_gpu_enable_triton_gemm=false,
# and docs/benchmarks.md "On a GPU" has the figures). A flag joins only with a measurement.
GPU_XLA_FLAGS: tuple[str, ...] = ()

# Errors a user causes and can fix; `jaxsent.training.config_check.ConfigError` is a ValueError.
USER_ERRORS = (ValueError, FileNotFoundError, ModuleNotFoundError, ConnectionError, app.UsageError)

FLAGS = flags.FLAGS
flags.DEFINE_bool("debug", False, "On an error, show its traceback instead of one line.")


def run_cli(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with the shared error path of every jaxsent command.

    Flag errors (an unknown or malformed flag, a missing required one, an override of a config
    field that does not exist, a config file that cannot be loaded) and `USER_ERRORS` raised by
    `main` are printed as one line, ``error: <message>``, on stderr, and the process exits with
    status 2. With ``--debug`` they are raised with their traceback. Other exceptions (bugs)
    always keep their traceback.
    """
    app.run(_reporting_errors(main), flags_parser=_parse_flags)


def _fail(message: str) -> None:
    sys.stdout.flush()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    print(f"error: {' '.join(lines)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def _describe(err: BaseException) -> str:
    # A KeyError's str() is the repr of its message.
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return text or type(err).__name__


def _unknown_override(err: Exception, argv: list[str]) -> str:
    """`config_flags`' KeyError / AttributeError for ``--config.a.b=1`` when ``a.b`` is no field."""
    inner: Any = err
    while isinstance(inner, (KeyError, AttributeError)) and inner.args:
        inner = inner.args[0]  # AttributeError(KeyError("'name'\nDid you mean ...?"))
    first, *hint = str(inner).splitlines()
    key = first.strip("'\"")
    arg = next((a for a in argv[1:] if a.startswith("--") and key in a.split("=")[0]), key)
    return f"{arg}: {key!r} is not a field of the config" + (f"; {' '.join(hint)}" if hint else "")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with its errors (and config files that fail to load) in one line."""
    debug = any(a in ("--debug", "-debug", "--debug=true", "--debug=True") for a in argv)
    try:
        remaining = FLAGS(argv)
    except (AttributeError, KeyError) as err:  # from config_flags: an override of no field
        if debug:
            raise
        _fail(_unknown_override(err, argv))
    except Exception as err:  # absl's flags.Error and whatever a config file raises while loaded
        if debug:
            raise
        _fail(_describe(err))
    for name in list(FLAGS):
        # config_flags hands back a stand-in that raises OSError on use when the file failed.
        try:
            getattr(FLAGS[name].value, "keys", None)
        except OSError as err:
            if debug:
                raise
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            _fail(f"--{name}: {lines[-1] if lines else err}")
    return remaining


def _reporting_errors(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    @functools.wraps(main)
    def wrapped(argv: list[str]) -> Any:
        try:
            return main(argv)
        except USER_ERRORS as err:
            if FLAGS.debug:
                raise
            _fail(_describe(err))

    return wrapped


def quiet_absent_tpu() -> str | None:
    """Keeps libtpu quiet on a machine without a TPU; returns the JAX platforms to use, or None.

    With the `test` extra (or ``jax[tpu]``) installed, JAX starts the TPU runtime at its first
    use on any machine, and libtpu prints start-up errors a user reads as a crash ("Failed to
    find host bounds for accelerator type", "INVALID_ARGUMENT: ... unexpected worker
    hostname", a "Source Location Trace") before JAX falls back to the CPU; describing a TPU
    topology for a plan prints them too. Where JAX's own probe (the PCI scan
    `jax._src.cloud_tpu_init` uses) finds no TPU chip:

    * the TPU is left out of the platforms JAX tries: ``"cuda,cpu"`` with a CUDA plugin
      installed (JAX skips CUDA itself when no NVIDIA GPU is visible), else ``"cpu"``; a plan
      still compiles for TPUs through libtpu (`jax.experimental.topologies`);
    * libtpu is told this host's bounds and name (``TPU_HOST_BOUNDS=1,1,1``,
      ``TPU_WORKER_HOSTNAMES=localhost``), which it otherwise fails to read from a TPU VM's
      metadata; topology descriptions and the programs compiled for them do not change.

    Nothing is changed on a TPU VM, without libtpu, or with ``JAX_FORCE_TPU_INIT`` set; a
    user's ``JAX_PLATFORMS`` (not empty) and ``TPU_*`` variables are kept.
    """
    if "JAX_FORCE_TPU_INIT" in os.environ or importlib.util.find_spec("libtpu") is None:
        return None
    from jax._src import hardware_utils

    if hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0:
        return None
    os.environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    if os.environ.get("JAX_PLATFORMS"):
        return None
    return "cuda,cpu" if _cuda_plugin_installed() else "cpu"


def _cuda_plugin_installed() -> bool:
    try:
        return any(
            importlib.util.find_spec(f"jax_plugins.xla_cuda{version}") is not None
            for version in (12, 13)
        )
    except ModuleNotFoundError:  # no jax_plugins namespace: no plugin at all
        return False


def xla_flags_with(current: str, defaults: tuple[str, ...]) -> str:
    """An ``XLA_FLAGS`` value: ``current`` and each of ``defaults`` whose flag it does not set.

    A flag is known by its name (``--name`` or ``--name=value``); the user's value always wins.
    """

    def name(token: str) -> str:
        return token.lstrip("-").split("=", 1)[0]

    present = {name(token) for token in current.split()}
    added = [flag for flag in defaults if name(flag) not in present]
    return " ".join([current.strip(), *added]).strip()


def setup_process() -> None:
    """Logging and the XLA compilation cache for a command-line run (call once, in main)."""
    # Before any backend starts: XLA reads XLA_FLAGS once, when the first one does.
    if GPU_XLA_FLAGS:
        os.environ["XLA_FLAGS"] = xla_flags_with(os.environ.get("XLA_FLAGS", ""), GPU_XLA_FLAGS)
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

    if platforms := quiet_absent_tpu():
        jax.config.update("jax_platforms", platforms)

    # Compiled steps persist across runs (one compile per bucket shape is otherwise paid again
    # by every run and every resume).
    jax.config.update(
        "jax_compilation_cache_dir",
        os.environ.get("JAXSENT_COMPILATION_CACHE", os.path.expanduser("~/.cache/jaxsent/xla")),
    )
