"""Graceful stop on SIGTERM/SIGINT: finish the running step, checkpoint, then exit.

Preemptible machines send SIGTERM shortly before they go; a run that saves at that point loses
no work. The handler only records the signal: the training loop checks `requested` between steps.
"""

from __future__ import annotations

import signal
import threading


class TrainingInterrupted(RuntimeError):
    """Raised by the loop after the checkpoint for a received stop signal is on disk."""

    exit_code = 75  # EX_TEMPFAIL: interrupted, resumable; rerun the same command to continue


class StopSignals:
    """Context manager recording SIGTERM/SIGINT instead of dying mid-step."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: int | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame):
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False
