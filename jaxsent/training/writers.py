"""Metric sinks for a run: `metrics.jsonl` (one JSON object a line) and TensorBoard events.

Only process 0 writes; the other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax


def _to_python(value: Any) -> Any:
    try:
        value = value.item()
    except AttributeError:
        pass
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible instead of dropping them
    return value


class MetricsWriter:
    def __init__(self, workdir: str | Path, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            workdir = Path(workdir)
            self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split}
        row.update({k: _to_python(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for key, value in row.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{key}", value, int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
