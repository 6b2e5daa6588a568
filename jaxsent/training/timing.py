"""Where a run's wall time goes: seconds per phase, with XLA compilation set apart.

Compilation happens inside other phases (the first step of each new shape, the first validation),
so its seconds are taken from JAX's own compile events and subtracted from the phase they fell in.
Compiles on another thread (`StepFunctions.compile_ahead`) overlap the phases instead: they are
summed apart, as ``compile_ahead``, and only the time a step waited for one counts as ``compile``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import jax

# The stages of turning a jitted call into an executable (a persistent-cache hit counts too).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
COMPILE = "compile"
COMPILE_AHEAD = "compile_ahead"
# Recorded by `StepFunctions` while a step waits for its shape's background compile.
COMPILE_WAIT_EVENT = "/jaxsent/compile_ahead/wait_duration"


class PhaseTimer:
    """Accumulates wall seconds per named phase; compilation is its own phase, ``compile``.

    Use as a context manager (it listens to JAX's compile events while open)::

        with PhaseTimer() as timer:
            with timer.phase("train"):
                ...
        print(timer.summary())
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._compiled = 0.0
        self.compiled_ahead = 0.0  # compile seconds on other threads, overlapping the phases
        self._thread = threading.get_ident()
        self._started = time.perf_counter()
        # Per open phase: [wall seconds, compile seconds] of the phases opened inside it.
        self._nested: list[list[float]] = []

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        del kwargs
        if event == COMPILE_WAIT_EVENT:
            self._compiled += duration
        elif event in COMPILE_EVENTS:
            if threading.get_ident() == self._thread:
                self._compiled += duration
            else:
                self.compiled_ahead += duration

    def __enter__(self) -> PhaseTimer:
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_event)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Adds the block's wall seconds to phase `name`.

        Less the compilation inside it (added to ``compile``) and less any phase opened inside it
        (validation within training counts as ``validate`` only).
        """
        self.seconds.setdefault(name, 0.0)
        start, compiled = time.perf_counter(), self._compiled
        self._nested.append([0.0, 0.0])
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            compile_seconds = self._compiled - compiled
            inner_elapsed, inner_compile = self._nested.pop()
            self._add(name, elapsed - inner_elapsed - (compile_seconds - inner_compile))
            if compile_seconds > inner_compile:
                self._add(COMPILE, compile_seconds - inner_compile)
            if self._nested:
                self._nested[-1][0] += elapsed
                self._nested[-1][1] += compile_seconds

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def total(self) -> float:
        """Wall seconds since the timer was made."""
        return time.perf_counter() - self._started

    def as_dict(self) -> dict[str, float]:
        """Seconds per phase in the order first opened, then ``other`` (outside every phase)
        and ``total``; ``compile_ahead`` last when there was any (not part of ``total``: it
        overlapped the phases)."""
        total = self.total()
        phases = dict(self.seconds, other=total - sum(self.seconds.values()), total=total)
        if self.compiled_ahead:
            phases[COMPILE_AHEAD] = self.compiled_ahead
        return phases

    def summary(self) -> str:
        """The phases as one line: ``time (s): load 3.1, tokenise 4.2, ...; total 950.3``."""
        phases = self.as_dict()
        ahead = phases.pop(COMPILE_AHEAD, None)
        total = phases.pop("total")
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items())
        line = f"time (s): {parts}; total {total:.1f}"
        if ahead is not None:
            line += f" (and {ahead:.1f} s of compiling on a background thread, beside the steps)"
        return line
