"""Paths that may be local or on object storage (``gs://``, ``s3://``, any `etils.epath` backend).

A run's work directory and its data folder can live in a bucket: on TPU VMs every host of a pod
slice then writes to and resumes from the same place without a shared filesystem. Everything that
touches them goes through `etils.epath` (fsspec's gcsfs for ``gs://``), and orbax, which takes
`epath.Path` directly, writes its checkpoints there itself.

Object stores have no directories and no append; the writers that need either (``metrics.jsonl``,
Parquet, PNG) branch on `is_remote`.
"""

from __future__ import annotations

import os

from etils import epath

__all__ = ["as_path", "is_remote", "make_dirs"]


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (``scheme://...``) rather than a local path."""
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`: local paths made absolute, URLs kept as they are.

    ``pathlib``'s ``absolute()`` would turn ``gs://bucket/run`` into ``<cwd>/gs:/bucket/run``.
    """
    path = epath.Path(path)
    return path if is_remote(path) else path.absolute()


def make_dirs(path: epath.Path) -> None:
    """Create the folder `path` (and parents); on object storage, check that the bucket exists.

    Object stores have no folders, and fsspec's ``makedirs`` would *create* a missing bucket
    (gcsfs does): a mistyped bucket name must fail instead.
    """
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)
        return
    scheme, rest = os.fspath(path).split("://", 1)
    bucket = epath.Path(f"{scheme}://{rest.split('/', 1)[0]}")
    if not bucket.exists():
        raise FileNotFoundError(f"bucket {bucket} of {path} does not exist or is not accessible")
