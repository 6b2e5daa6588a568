"""Metric sinks for a run: `metrics.jsonl` (one JSON object a line) and TensorBoard events.

Only process 0 writes; the other processes get a writer that does nothing.

The work directory may be local or in a bucket (`jaxsent.storage`). Locally, `metrics.jsonl` is
appended line by line (each row on disk once written) and tensorboardX writes its event files in
place. Object stores have no append (gcsfs silently turns ``"a"`` into an overwrite), so for a
bucket the writer keeps the text of `metrics.jsonl`, rows of an earlier run included, and rewrites
the whole object; tensorboardX writes to a local staging folder whose event files are copied to
``tensorboard/`` whole. Both reach the bucket at most every `remote_flush_seconds` while rows
come in (a GCS object takes about one update a second), at every `flush()` (the loop calls it
before each checkpoint save, so every row up to a resumable step is stored before that step's
checkpoint) and at `close()`.

(tensorboardX can write ``gs://`` itself, through google-cloud-storage, but its writer uploads
the file again from ``__del__`` at interpreter exit, after `close()`, and needs a Google Cloud
project to be found; the staging copy goes through the same gcsfs as every other output.)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import jax
from etils import epath

from jaxsent import storage


def _to_python(value: Any) -> Any:
    try:
        value = value.item()
    except AttributeError:
        pass
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible instead of dropping them
    return value


class _LocalLines:
    """A local file appended to, flushed at every line."""

    def __init__(self, path: epath.Path):
        self._file = open(os.fspath(path), "a", encoding="utf-8")

    def write(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()

    def flush(self) -> None:
        pass  # every line is already written

    def close(self) -> None:
        self._file.close()


class _ObjectLines:
    """A text object in a bucket, 'appended' to by rewriting it whole at each flush."""

    def __init__(self, path: epath.Path):
        self._path = path
        self._chunks = [path.read_text(encoding="utf-8")] if path.exists() else []
        self._dirty = False

    def write(self, line: str) -> None:
        self._chunks.append(line)
        self._dirty = True

    def flush(self) -> None:
        if not self._dirty:
            return
        text = "".join(self._chunks)
        self._chunks = [text]
        self._path.write_text(text, encoding="utf-8")
        self._dirty = False

    def close(self) -> None:
        self.flush()


class _StagedFolder:
    """A local folder mirrored into a bucket folder: changed files are copied whole."""

    def __init__(self, remote: epath.Path):
        self.local = tempfile.mkdtemp(prefix="jaxsent-tensorboard-")
        self._remote = remote
        self._sizes: dict[str, int] = {}

    def sync(self) -> None:
        for name in sorted(os.listdir(self.local)):
            path = os.path.join(self.local, name)
            size = os.path.getsize(path)
            if self._sizes.get(name) != size:
                with open(path, "rb") as f:
                    (self._remote / name).write_bytes(f.read())
                self._sizes[name] = size

    def close(self) -> None:
        self.sync()
        shutil.rmtree(self.local, ignore_errors=True)


class MetricsWriter:
    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        enabled: bool | None = None,
        remote_flush_seconds: float = 5.0,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        self._staged = None
        self._remote_flush_seconds = remote_flush_seconds
        self._last_flush = -math.inf
        if self.enabled:
            workdir = epath.Path(workdir)
            tensorboard_dir = os.fspath(workdir / "tensorboard")
            if storage.is_remote(workdir):
                self._jsonl = _ObjectLines(workdir / "metrics.jsonl")
                self._staged = _StagedFolder(workdir / "tensorboard")
                tensorboard_dir = self._staged.local
            else:
                self._jsonl = _LocalLines(workdir / "metrics.jsonl")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(tensorboard_dir)

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split}
        row.update({k: _to_python(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{key}", value, int(step))
        if self._staged is not None:
            if time.monotonic() - self._last_flush >= self._remote_flush_seconds:
                self.flush()

    def flush(self) -> None:
        """Store every row written so far (local `metrics.jsonl` rows already are)."""
        if not self.enabled:
            return
        self._jsonl.flush()
        self._tb.flush()
        if self._staged is not None:
            self._staged.sync()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            if self._staged is not None:
                self._staged.close()
