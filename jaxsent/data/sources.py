"""Loading raw sentiment data: known hub benchmarks, a data directory, or data files.

Data directories and files may be local or in a bucket (``gs://bucket/folder``, any fsspec
protocol): bucket files are listed through `etils.epath` and read by `datasets` itself (fsspec).

Every loader returns `datasets` objects with exactly two columns, ``text`` (str) and ``label``
(int 0/1 where the labels are recognisable; see `load_raw`). Row validation (empty text, bad
labels) happens in `jaxsent.data.preprocess.prepare`, which names the split, row and value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
from collections.abc import Mapping

import datasets
from etils import epath
from huggingface_hub.errors import OfflineModeIsEnabled

from jaxsent import storage
from jaxsent.data.labels import normalize_label

DATA_DIR_ENV = "JAXSENT_DATA_DIR"

_FORMAT_BY_SUFFIX = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
_TEXT_COLUMN_CANDIDATES = ("text", "sentence", "review", "content")
_LABEL_COLUMN_CANDIDATES = ("label", "labels", "sentiment")
_RESERVED_SPLITS = {"all": "all_rows"}
TEXT_COLUMN_CANDIDATES = _TEXT_COLUMN_CANDIDATES  # the text column names found without asking


@dataclasses.dataclass(frozen=True)
class KnownDataset:
    """A benchmark with a hub location and a folder name under the local data directory."""

    hub_path: str
    hub_config: str | None
    text_column: str
    label_column: str = "label"
    label_names: tuple[str, ...] | None = None  # class names in class-id order (K-class sets)
    ordinal: bool = False  # ordered classes (ratings)


KNOWN_DATASETS: Mapping[str, KnownDataset] = {
    "imdb": KnownDataset("stanfordnlp/imdb", None, "text"),
    "sst2": KnownDataset("nyu-mll/glue", "sst2", "sentence"),
    "rotten_tomatoes": KnownDataset("cornell-movie-review-data/rotten_tomatoes", None, "text"),
    # SST-5: labels 0..4; the local copy also has `train_phrases` (every labelled phrase of the
    # training trees), which the hub copy lacks.
    "sst5": KnownDataset(
        "SetFit/sst5",
        None,
        "text",
        label_names=("very negative", "negative", "neutral", "positive", "very positive"),
        ordinal=True,
    ),
}


def load_raw(
    name_or_path: str,
    *,
    split: str | None = None,
    data_dir: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    raw_labels: bool = False,
) -> datasets.DatasetDict | datasets.Dataset:
    """Loads a sentiment data set and standardises its columns to ``text`` and ``label``.

    Resolution order for ``name_or_path``:

    1. A known name (``imdb``, ``sst2``, ``rotten_tomatoes``, ``sst5``) with ``data_dir`` given
       or the environment variable ``JAXSENT_DATA_DIR`` set: reads ``<dir>/<name>/*.parquet``,
       one split per file named by the file stem (``train.parquet`` -> ``train``).
    2. A known name otherwise: ``datasets.load_dataset`` from the Hugging Face hub
       (``stanfordnlp/imdb``, ``nyu-mll/glue``/``sst2``,
       ``cornell-movie-review-data/rotten_tomatoes``, ``SetFit/sst5``).
    3. An existing file (``.parquet``, ``.csv``, ``.json``, ``.jsonl``) or a directory of
       such files (one format): one split per file stem, where a hub-style shard suffix is
       dropped (``train-00000-of-00002.parquet`` -> ``train``). Local, or in a bucket
       (``gs://bucket/folder``; also for ``data_dir``): `datasets` reads it through fsspec, which
       its offline mode forbids (``HF_DATASETS_OFFLINE=0`` allows it while ``HF_HUB_OFFLINE=1``
       keeps the hub off).

    Label columns holding known names (``neg``/``pos``, ``negative``/``positive``, any case) or
    ``0``/``1`` in another type (strings, bools, integral floats) are converted to int64. If any
    value is not recognisable, the column is left as it is, so that `prepare` can report the
    offending rows with their values instead of this function guessing. ``raw_labels=True``
    leaves every label column as it is (a K-class run maps labels to its classes itself).

    Args:
      name_or_path: a known benchmark name, or a path or URL to a data file or directory.
      split: one split to return (a `datasets.Dataset`); ``None`` returns every split.
      data_dir: directory (or bucket URL) laid out like ``../shared/data``
        (``<name>/<split>.parquet``); overrides ``$JAXSENT_DATA_DIR``.
      text_column: name of the text column in the source; default: the benchmark's column, or
        the first of ``text``, ``sentence``, ``review``, ``content`` present.
      label_column: name of the label column; default: the benchmark's column, or the first of
        ``label``, ``labels``, ``sentiment`` present.

    Returns:
      A `datasets.DatasetDict` (all splits) or a `datasets.Dataset` (``split`` given), with
      columns exactly ``text`` and ``label``.

    Raises:
      ValueError: unknown name and no such path, unknown split, missing column, mixed file
        formats, or an empty directory.
      ConnectionError: a hub data set could not be fetched (e.g. offline), or bucket files were
        asked for in `datasets`' offline mode; the message says what to do instead.
    """
    known = KNOWN_DATASETS.get(name_or_path)
    if known is not None:
        text_column = text_column or known.text_column
        label_column = label_column or known.label_column
        files = _known_local_files(name_or_path, data_dir)
        if files is not None:
            raw = _load_files("parquet", _files_by_split(files), split)
        else:
            raw = _load_hub(known, name_or_path, split)
    elif os.path.exists(name_or_path) or (
        storage.is_remote(name_or_path) and epath.Path(name_or_path).exists()
    ):
        fmt, files_by_split = _data_files(name_or_path)
        raw = _load_files(fmt, files_by_split, split)
    else:
        raise ValueError(
            f"name_or_path={name_or_path!r} is neither a known data set "
            f"({', '.join(sorted(KNOWN_DATASETS))}) nor an existing file or directory"
        )
    if isinstance(raw, datasets.DatasetDict):
        return datasets.DatasetDict(
            {
                name: _standardise(ds, name, text_column, label_column, raw_labels)
                for name, ds in raw.items()
            }
        )
    return _standardise(raw, split or "", text_column, label_column, raw_labels)


def split_names(name_or_path: str, *, data_dir: str | None = None) -> list[str]:
    """The split names `load_raw` offers for ``name_or_path``, without loading any data.

    Resolution as in `load_raw`; for a hub data set, the hub's split names.

    Raises:
      ValueError: unknown name and no such path, or a known name's local folder has no files.
      ConnectionError: a hub data set's splits could not be listed (e.g. offline).
    """
    known = KNOWN_DATASETS.get(name_or_path)
    if known is not None:
        files = _known_local_files(name_or_path, data_dir)
        if files is not None:
            return sorted(_files_by_split(files))
        try:
            return list(datasets.get_dataset_split_names(known.hub_path, known.hub_config))
        except (ConnectionError, OSError) as err:
            raise ConnectionError(
                f"could not list the splits of {name_or_path!r} ({known.hub_path!r}) on the "
                f"Hugging Face hub: {err}. Without hub access, set ${DATA_DIR_ENV}."
            ) from err
    if os.path.exists(name_or_path) or (
        storage.is_remote(name_or_path) and epath.Path(name_or_path).exists()
    ):
        return sorted(_data_files(name_or_path)[1])
    raise ValueError(
        f"name_or_path={name_or_path!r} is neither a known data set "
        f"({', '.join(sorted(KNOWN_DATASETS))}) nor an existing file or directory"
    )


def _known_local_files(name: str, data_dir: str | None) -> list[str] | None:
    """A known data set's Parquet files under ``data_dir`` / ``$JAXSENT_DATA_DIR``; None if
    neither is set (then it comes from the hub)."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not root:
        return None
    folder = os.path.join(root, name)
    if storage.is_remote(folder):
        files = sorted(os.fspath(f) for f in epath.Path(folder).glob("*.parquet"))
    else:
        files = sorted(glob.glob(os.path.join(folder, "*.parquet")))
    if not files:
        raise ValueError(
            f"no *.parquet files for data set {name!r} in {folder!r} (from data_dir={data_dir!r}"
            f" / ${DATA_DIR_ENV}={os.environ.get(DATA_DIR_ENV)!r})"
        )
    return files


def _load_hub(known: KnownDataset, name: str, split: str | None):
    try:
        return datasets.load_dataset(known.hub_path, known.hub_config, split=split)
    except (ConnectionError, OSError) as err:
        raise ConnectionError(
            f"could not load {name!r} ({known.hub_path!r}"
            f"{', ' + repr(known.hub_config) if known.hub_config else ''}) from the Hugging Face "
            "hub: "
            f"{err}. Without hub access, set ${DATA_DIR_ENV} (or pass data_dir) to a directory "
            f"holding {name}/<split>.parquet, or pass a local file path."
        ) from err


def _list_dir(path: str) -> list[str] | None:
    """The paths of the entries of directory `path` (local or a bucket URL); None if a file."""
    if storage.is_remote(path):
        folder = epath.Path(path)
        return [os.fspath(child) for child in folder.iterdir()] if folder.is_dir() else None
    return [os.path.join(path, f) for f in os.listdir(path)] if os.path.isdir(path) else None


def _data_files(path: str) -> tuple[str, dict[str, list[str]]]:
    entries = _list_dir(path)
    if entries is not None:
        files = sorted(f for f in entries if os.path.splitext(f)[1].lower() in _FORMAT_BY_SUFFIX)
        if not files:
            raise ValueError(
                f"directory {path!r} holds no data files (expected one of "
                f"{', '.join(_FORMAT_BY_SUFFIX)})"
            )
    else:
        files = [path]
    formats = {_FORMAT_BY_SUFFIX.get(os.path.splitext(f)[1].lower()) for f in files}
    if None in formats:
        raise ValueError(
            f"unsupported file type {path!r}: expected one of {', '.join(_FORMAT_BY_SUFFIX)}"
        )
    if len(formats) > 1:
        raise ValueError(f"directory {path!r} mixes file formats {sorted(formats)}; use one")
    return formats.pop(), _files_by_split(files)


def _files_by_split(files: list[str]) -> dict[str, list[str]]:
    by_split: dict[str, list[str]] = {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        by_split.setdefault(stem.split("-")[0], []).append(f)
    return by_split


def _load_files(fmt: str, files_by_split: dict[str, list[str]], split: str | None):
    # `datasets` reserves the split name "all" (the union of splits), yet a file may be called
    # all.parquet (rotten_tomatoes): load under a private key and hand it back as "all".
    key = {name: _RESERVED_SPLITS.get(name, name) for name in files_by_split}
    if split is not None:
        if split not in files_by_split:
            raise ValueError(
                f"split={split!r} not found; available splits: {sorted(files_by_split)}"
            )
        with _offline_hint(files_by_split[split]):
            return datasets.load_dataset(
                fmt, data_files={key[split]: files_by_split[split]}, split=key[split]
            )
    with _offline_hint([f for files in files_by_split.values() for f in files]):
        loaded = datasets.load_dataset(
            fmt, data_files={key[name]: files for name, files in files_by_split.items()}
        )
    return datasets.DatasetDict({name: loaded[key[name]] for name in files_by_split})


@contextlib.contextmanager
def _offline_hint(files: list[str]):
    """Turns `datasets`' offline refusal of bucket files into an error that says what to set."""
    try:
        yield
    except OfflineModeIsEnabled as err:
        remote = [f for f in files if storage.is_remote(f)]
        if not remote:
            raise
        raise ConnectionError(
            f"`datasets` is in offline mode and so refuses to read {remote[0]!r}. Set "
            "HF_DATASETS_OFFLINE=0 to read data from a bucket (HF_HUB_OFFLINE=1 still keeps "
            "the Hugging Face hub off), or copy the files to a local folder."
        ) from err


def _pick_column(ds: datasets.Dataset, wanted: str | None, candidates, kind: str, split: str):
    names = ds.column_names
    if wanted is not None:
        if wanted not in names:
            raise ValueError(
                f"split {split!r}: {kind} column {wanted!r} is missing; columns are {names}"
            )
        return wanted
    for name in candidates:
        if name in names:
            return name
    raise ValueError(
        f"split {split!r}: no {kind} column found (looked for {list(candidates)}); columns are "
        f"{names}; pass {kind}_column="
    )


def _standardise(
    ds: datasets.Dataset, split: str, text_column, label_column, raw_labels: bool = False
) -> datasets.Dataset:
    text_column = _pick_column(ds, text_column, _TEXT_COLUMN_CANDIDATES, "text", split)
    label_column = _pick_column(ds, label_column, _LABEL_COLUMN_CANDIDATES, "label", split)
    ds = ds.select_columns([text_column, label_column])
    if text_column != "text" or label_column != "label":
        # Two-step rename so that swapped names (text<->label) cannot collide.
        ds = ds.rename_columns({text_column: "__text", label_column: "__label"})
        ds = ds.rename_columns({"__text": "text", "__label": "label"})
    return ds if raw_labels else _labels_to_int(ds)


def _labels_to_int(ds: datasets.Dataset) -> datasets.Dataset:
    feature = ds.features["label"]
    if isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype == "int64"
    ):
        if isinstance(feature, datasets.ClassLabel):
            ds = ds.cast_column("label", datasets.Value("int64"))
        return ds
    labels = ds.with_format("arrow")[:]["label"].to_pylist()
    converted = [normalize_label(v) for v in labels]
    if any(v is None for v in converted):
        return ds  # leave the raw values for prepare() to report with row numbers
    features = ds.features.copy()
    features["label"] = datasets.Value("int64")
    return ds.map(
        lambda batch: {"label": [normalize_label(v) for v in batch["label"]]},
        batched=True,
        features=features,
        desc="converting labels",
    )
