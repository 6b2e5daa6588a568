"""Cleaning, validation, tokenisation and splitting of standardised (``text``, ``label``) data."""

from __future__ import annotations

import dataclasses
import logging
import re

import datasets
import numpy as np
from datasets.fingerprint import Hasher

from jaxsent.data.labels import BINARY, LABEL_NAMES, ClassLabels

logger = logging.getLogger(__name__)

ON_BAD_ROWS = ("error", "filter")
TRUNCATION_MODES = ("head", "head_tail")
# Bumped whenever the output of `prepare` changes for the same input, to invalidate caches.
_PREPARE_VERSION = 2  # 2: the full_length column
_MARKUP = re.compile(r"<br\s*/?\s*>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]{2,}")
_ERRORS_SHOWN = 5

PREPARED_FEATURES = datasets.Features(
    {
        "text": datasets.Value("string"),
        "label": datasets.Value("int64"),
        "input_ids": datasets.List(datasets.Value("int32")),
        "length": datasets.Value("int32"),
        "full_length": datasets.Value("int32"),
        "example_id": datasets.Value("int64"),
    }
)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of a list of texts, as the model sees them."""

    input_ids: list[list[int]]  # with [CLS] ... [SEP], no padding, at most max_length each
    lengths: np.ndarray  # int32 [N]: len(input_ids[i])
    full_lengths: np.ndarray  # int32 [N]: tokens of the whole text, before truncation
    truncated: np.ndarray  # bool [N]: full_lengths > max_length


def check_truncation(truncation: str, head_fraction: float) -> None:
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must lie in [0, 1], got {head_fraction!r}")


def encode_texts(
    tokenizer,
    texts: list[str],
    *,
    max_length: int,
    clean_markup: bool = True,
    truncation: str = "head",
    head_fraction: float = 0.25,
) -> Encoded:
    """Cleans and tokenises texts exactly as `prepare` does for training (and prediction).

    Truncation keeps at most ``max_length`` tokens including ``[CLS]`` and ``[SEP]``:

    * ``"head"``: the first ones (the tokenizer's own truncation);
    * ``"head_tail"``: the first ``round(head_fraction * budget)`` and the last
      ``budget - head`` content tokens, ``budget = max_length - 2``. The verdict of a review is
      often in its last sentences; Sun et al. (2019, "How to Fine-Tune BERT for Text
      Classification?") found head+tail (128 + 382 of 512, a head fraction of 1/4) the best
      truncation on IMDB.

    Args:
      tokenizer: a fast Hugging Face BERT-style tokenizer (one special token at each end).
      texts: the raw texts.
      max_length: token budget per text including the two special tokens.
      clean_markup: replace ``<br />`` markup by spaces first.
      truncation: ``"head"`` or ``"head_tail"``.
      head_fraction: share of the content budget kept from the head under ``"head_tail"``.

    Returns:
      The `Encoded` ids, lengths and truncation flags.
    """
    check_truncation(truncation, head_fraction)
    if clean_markup:
        texts = [clean_text(t) for t in texts]
    # One pass without truncation, then the cut here: the same ids as the tokenizer's own
    # `truncation=True` for "head" (tested), and we learn which texts were cut.
    full = tokenizer(texts, add_special_tokens=True, return_attention_mask=False, verbose=False)
    budget = max_length - 2
    head = budget if truncation == "head" else round(head_fraction * budget)
    tail = budget - head
    ids = []
    full_lengths = np.array([len(x) for x in full["input_ids"]], dtype=np.int32)
    truncated = full_lengths > max_length
    for x in full["input_ids"]:
        if len(x) > max_length:
            content = x[1:-1]
            x = [x[0], *content[:head], *content[len(content) - tail :], x[-1]]
        ids.append(x)
    lengths = np.array([len(x) for x in ids], dtype=np.int32)
    return Encoded(ids, lengths, full_lengths, truncated)


def clean_text(text: str) -> str:
    """Replaces HTML line breaks (``<br />``, ``<br>``, any case) by a space, squeezes spaces."""
    return _SPACES.sub(" ", _MARKUP.sub(" ", text)).strip()


@dataclasses.dataclass(frozen=True)
class BadRow:
    """One malformed row: its index in the split, the offending column and raw value, why."""

    row: int
    column: str
    value: object
    reason: str

    def describe(self) -> str:
        value = repr(self.value)
        if len(value) > 60:
            value = value[:57] + "..."
        return f"row {self.row}: {self.column}={value} ({self.reason})"


@dataclasses.dataclass(frozen=True)
class PrepareReport:
    """What `prepare_with_report` did to a split.

    Attributes:
      split_name: the split's name as given to `prepare`.
      num_input_rows: rows in the input data set.
      bad_rows: every malformed row found (empty when the data was clean).
      num_filtered: rows removed (``len(bad_rows)`` in ``filter`` mode, else 0).
      num_at_max_length: rows with exactly ``max_length`` tokens (an upper bound on the number
        of truncated rows).
    """

    split_name: str
    num_input_rows: int
    bad_rows: tuple[BadRow, ...]
    num_filtered: int
    num_at_max_length: int


def text_problem(text: object, *, clean_markup: bool = True) -> str | None:
    """Why ``text`` cannot be classified, or None when it can.

    Returns:
      ``"missing text"`` (None), ``"not a string"``, ``"empty text"`` (blank, after `clean_text`
      when ``clean_markup``), or None.
    """
    if text is None:
        return "missing text"
    if not isinstance(text, str):
        return "not a string"
    if not (clean_text(text) if clean_markup else text).strip():
        return "empty text"
    return None


def find_bad_rows(
    ds: datasets.Dataset,
    *,
    split_name: str,
    clean_markup: bool = True,
    classes: ClassLabels = BINARY,
) -> list[BadRow]:
    """Lists the malformed rows of a standardised split.

    A row is malformed if its text is missing, not a string, or empty/blank (after markup
    cleaning when ``clean_markup``), or its label names none of ``classes`` (binary: not 0/1
    or a name in `LABEL_NAMES`).

    Args:
      ds: a data set with ``text`` and ``label`` columns.
      split_name: used in error messages.
      clean_markup: whether the text is checked after `clean_text`.
      classes: the run's classes (`jaxsent.data.labels.ClassLabels`).

    Returns:
      The bad rows in row order (a row with both faults appears twice).

    Raises:
      ValueError: ``ds`` lacks a ``text`` or ``label`` column.
    """
    _check_columns(ds, split_name)
    table = ds.select_columns(["text", "label"]).with_format("arrow")[:]
    bad: list[BadRow] = []
    texts = table["text"].to_pylist()
    labels = table["label"].to_pylist()
    if classes == BINARY:
        allowed = f"label must be 0/1 or one of {sorted(LABEL_NAMES)}"
    else:
        allowed = f"label must be one of the classes ({classes.describe()})"
    for row, (text, label) in enumerate(zip(texts, labels, strict=True)):
        problem = text_problem(text, clean_markup=clean_markup)
        if problem is not None:
            bad.append(BadRow(row, "text", text, problem))
        if classes.encode(label) is None:
            bad.append(BadRow(row, "label", label, allowed))
    return bad


@dataclasses.dataclass(frozen=True)
class ScreenedRows:
    """A split's well-formed rows, validated but not yet tokenised (see `screen_rows`).

    Selecting rows here (a validation split, a training subset, an evaluation sample) before
    `tokenize_rows` tokenises only the rows a run uses.

    Attributes:
      ds: the kept rows (``text``, ``label`` and any other source columns).
      example_ids: int64 ``[N]``: each kept row's index in the input split.
      labels: int64 ``[N]``: each kept row's class id (binary: 0/1).
      split_name: the split's name, used in messages.
      num_input_rows: rows in the input split.
      bad_rows: every malformed row found.
      num_filtered: rows removed (``on_bad_rows="filter"``), else 0.
    """

    ds: datasets.Dataset
    example_ids: np.ndarray
    labels: np.ndarray
    split_name: str
    num_input_rows: int
    bad_rows: tuple[BadRow, ...]
    num_filtered: int
    classes: ClassLabels = BINARY

    def __len__(self) -> int:
        return len(self.example_ids)

    def select(self, rows: np.ndarray) -> ScreenedRows:
        """The rows at positions ``rows`` (into the kept rows), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return dataclasses.replace(
            self,
            ds=self.ds.select(rows),
            example_ids=self.example_ids[rows],
            labels=self.labels[rows],
        )


def screen_rows(
    ds: datasets.Dataset,
    *,
    split_name: str,
    clean_markup: bool = True,
    on_bad_rows: str = "error",
    classes: ClassLabels = BINARY,
) -> ScreenedRows:
    """Validates one split's rows (see `find_bad_rows`) and encodes its labels as class ids.

    Raises:
      ValueError: a missing ``text``/``label`` column, a bad ``on_bad_rows``, or malformed rows
        with ``on_bad_rows="error"`` (the message names the split, rows and values).
    """
    if on_bad_rows not in ON_BAD_ROWS:
        raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")
    num_input_rows = len(ds)
    bad = find_bad_rows(ds, split_name=split_name, clean_markup=clean_markup, classes=classes)
    example_ids = np.arange(num_input_rows, dtype=np.int64)
    num_filtered = 0
    if bad:
        bad_idx = sorted({b.row for b in bad})
        shown = "; ".join(b.describe() for b in bad[:_ERRORS_SHOWN])
        more = f"; and {len(bad) - _ERRORS_SHOWN} more" if len(bad) > _ERRORS_SHOWN else ""
        summary = (
            f"split {split_name!r}: {len(bad_idx)} malformed row(s) of {num_input_rows}: "
            f"{shown}{more}"
        )
        if on_bad_rows == "error":
            raise ValueError(f"{summary}. Fix the data or pass on_bad_rows='filter'.")
        logger.warning("%s. Filtered out (on_bad_rows='filter').", summary)
        example_ids = np.setdiff1d(example_ids, np.asarray(bad_idx, dtype=np.int64))
        ds = ds.select(example_ids)
        num_filtered = len(bad_idx)
    raw_labels = ds.select_columns(["label"]).with_format("arrow")[:]["label"].to_pylist()
    labels = np.asarray([classes.encode(v) for v in raw_labels], dtype=np.int64)
    return ScreenedRows(
        ds=ds,
        example_ids=example_ids,
        labels=labels,
        split_name=split_name,
        num_input_rows=num_input_rows,
        bad_rows=tuple(bad),
        num_filtered=num_filtered,
        classes=classes,
    )


def _check_tokenizing(tokenizer, max_length, truncation: str, head_fraction: float) -> None:
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    check_truncation(truncation, head_fraction)
    if getattr(tokenizer, "is_fast", False) is not True:
        raise ValueError(
            f"tokenizer must be a fast (Rust) tokenizer, got {type(tokenizer).__name__}"
        )


def tokenize_rows(
    rows: ScreenedRows,
    tokenizer,
    *,
    max_length: int,
    clean_markup: bool = True,
    truncation: str = "head",
    head_fraction: float = 0.25,
) -> tuple[datasets.Dataset, PrepareReport]:
    """Cleans and tokenises screened rows; returns them with a report. See `prepare`."""
    _check_tokenizing(tokenizer, max_length, truncation, head_fraction)
    ds = rows.ds
    extra = [c for c in ds.column_names if c not in ("text", "label")]
    tokenize = _Tokenize(
        tokenizer,
        max_length,
        clean_markup,
        rows.example_ids,
        truncation,
        head_fraction,
        rows.classes,
    )
    fingerprint = Hasher.hash(
        (
            _PREPARE_VERSION,
            ds._fingerprint,
            tokenizer.backend_tokenizer.to_str(),
            max_length,
            clean_markup,
            Hasher.hash(rows.example_ids.tobytes()),
            # Head-only truncation keeps the fingerprint (and the caches) it always had.
            *(() if truncation == "head" else (truncation, head_fraction)),
            *(() if rows.classes == BINARY else (rows.classes.to_json(),)),
        )
    )
    out = ds.map(
        tokenize,
        batched=True,
        batch_size=1000,
        with_indices=True,
        remove_columns=extra,
        features=PREPARED_FEATURES,
        new_fingerprint=fingerprint,
        desc=f"tokenizing {rows.split_name}",
    )
    lengths = out.with_format("arrow")[:]["length"].to_numpy()
    report = PrepareReport(
        split_name=rows.split_name,
        num_input_rows=rows.num_input_rows,
        bad_rows=rows.bad_rows,
        num_filtered=rows.num_filtered,
        num_at_max_length=int(np.sum(lengths >= max_length)),
    )
    return out, report


def prepare_with_report(
    ds: datasets.Dataset,
    tokenizer,
    *,
    max_length: int,
    split_name: str,
    clean_markup: bool = True,
    on_bad_rows: str = "error",
    truncation: str = "head",
    head_fraction: float = 0.25,
    classes: ClassLabels = BINARY,
) -> tuple[datasets.Dataset, PrepareReport]:
    """Validates, cleans and tokenises one split; returns it with a report. See `prepare`."""
    _check_tokenizing(tokenizer, max_length, truncation, head_fraction)  # before reading rows
    rows = screen_rows(
        ds,
        split_name=split_name,
        clean_markup=clean_markup,
        on_bad_rows=on_bad_rows,
        classes=classes,
    )
    return tokenize_rows(
        rows,
        tokenizer,
        max_length=max_length,
        clean_markup=clean_markup,
        truncation=truncation,
        head_fraction=head_fraction,
    )


def prepare(
    ds: datasets.Dataset,
    tokenizer,
    *,
    max_length: int,
    split_name: str,
    clean_markup: bool = True,
    on_bad_rows: str = "error",
    truncation: str = "head",
    head_fraction: float = 0.25,
    classes: ClassLabels = BINARY,
) -> datasets.Dataset:
    """Validates, cleans and tokenises one split for training or evaluation.

    Tokenisation runs batched through ``datasets.Dataset.map`` with a fingerprint derived from
    the input data, the tokenizer's serialised definition, ``max_length`` and the cleaning
    switch, so a second run on the same cached data loads the result from the cache.

    Args:
      ds: a split with ``text`` and ``label`` columns (e.g. from `load_raw`); other columns are
        dropped.
      tokenizer: a fast Hugging Face tokenizer (``tokenizer.is_fast``).
      max_length: token budget per example including ``[CLS]``/``[SEP]``; longer texts are
        truncated (see `encode_texts`).
      split_name: the split's name, used in messages.
      clean_markup: replace ``<br />`` markup by spaces before tokenising.
      on_bad_rows: ``"error"`` raises on any malformed row (see `find_bad_rows`); ``"filter"``
        drops them and logs a warning with the count and the first few rows. Use
        `prepare_with_report` to get the count programmatically.
      truncation: ``"head"`` (keep the first tokens) or ``"head_tail"`` (see `encode_texts`).
      head_fraction: the head's share of the budget under ``"head_tail"``.
      classes: the run's classes (`jaxsent.data.labels.ClassLabels`; binary by default).

    Returns:
      A `datasets.Dataset` with columns ``text`` (raw, as given), ``label`` (int64, class id),
      ``input_ids`` (list of int32, no padding), ``length`` (int32: real tokens including special
      tokens, i.e. the attention-mask sum, <= max_length), ``full_length`` (int32: tokens of the
      whole text before truncation) and ``example_id`` (int64: the row
      index in the input split, kept through filtering, so it is stable across runs).

    Raises:
      ValueError: a missing ``text``/``label`` column, or malformed rows with
        ``on_bad_rows="error"`` (the message names the split, rows and values); bad arguments.
    """
    return prepare_with_report(
        ds,
        tokenizer,
        max_length=max_length,
        split_name=split_name,
        clean_markup=clean_markup,
        on_bad_rows=on_bad_rows,
        truncation=truncation,
        head_fraction=head_fraction,
        classes=classes,
    )[0]


class _Tokenize:
    """The batched map function of `prepare` (a class so that it pickles and hashes cleanly)."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        clean_markup: bool,
        example_ids: np.ndarray,
        truncation: str = "head",
        head_fraction: float = 0.25,
        classes: ClassLabels = BINARY,
    ):
        self.classes = classes
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.clean_markup = clean_markup
        self.example_ids = example_ids
        self.truncation = truncation
        self.head_fraction = head_fraction

    def __call__(self, batch, indices):
        enc = encode_texts(
            self.tokenizer,
            batch["text"],
            max_length=self.max_length,
            clean_markup=self.clean_markup,
            truncation=self.truncation,
            head_fraction=self.head_fraction,
        )
        return {
            "text": batch["text"],
            "label": [self.classes.encode(v) for v in batch["label"]],
            "input_ids": enc.input_ids,
            "length": enc.lengths.tolist(),
            "full_length": enc.full_lengths.tolist(),
            "example_id": self.example_ids[np.asarray(indices)].tolist(),
        }


def _check_columns(ds: datasets.Dataset, split_name: str) -> None:
    missing = [c for c in ("text", "label") if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"split {split_name!r}: missing column(s) {missing}; columns are {ds.column_names} "
            "(load_raw(..., text_column=, label_column=) renames source columns)"
        )


def _labels(ds: datasets.Dataset) -> np.ndarray:
    if "label" not in ds.column_names:
        raise ValueError(f"ds has no 'label' column; columns are {ds.column_names}")
    labels = ds.with_format("arrow")[:]["label"].to_numpy(zero_copy_only=False)
    if labels.dtype.kind not in "iu":
        raise ValueError(
            f"ds['label'] must be integers (run prepare first), got dtype {labels.dtype}"
        )
    return labels.astype(np.int64)


def _stratified_pick(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``size`` rows, class proportions kept (largest-remainder rounding)."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / len(labels)
    take = np.floor(quota).astype(np.int64)
    # Hand the remaining rows to the classes with the largest fractional parts (ties: lower class).
    order = np.lexsort((classes, -(quota - take)))
    take[order[: size - int(take.sum())]] += 1
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def validation_indices(
    labels: np.ndarray, *, validation_size: int | float, seed: int, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The (train, validation) row indices of `split_train_validation`, from the labels alone.

    Returns:
      Two sorted, disjoint int64 index arrays that together cover ``range(len(labels))``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    size = _resolve_size(validation_size, n, "validation_size")
    if size >= n:
        raise ValueError(
            f"validation_size={validation_size!r} leaves no training rows (len(ds)={n})"
        )
    rng = np.random.default_rng(_check_seed(seed))
    if stratify:
        val = _stratified_pick(labels, size, rng)
    else:
        val = np.sort(rng.permutation(n)[:size])
    return np.setdiff1d(np.arange(n), val), val


def split_train_validation(
    ds: datasets.Dataset,
    *,
    validation_size: int | float,
    seed: int,
    stratify: bool = True,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Carves a validation split out of a training split, reproducibly.

    Args:
      ds: the training split (with an integer ``label`` column when ``stratify``).
      validation_size: number of validation rows (int, 1 <= n < len(ds)) or a fraction in (0, 1)
        (rounded to the nearest row count, at least 1).
      seed: the random seed; the same (ds, validation_size, seed) always gives the same split.
      stratify: keep the label proportions in both parts (largest-remainder rounding).

    Returns:
      ``(train, validation)``, disjoint, together covering ``ds``, each in the original row order.
    """
    labels = _labels(ds) if stratify else np.zeros(len(ds), np.int64)
    train, val = validation_indices(
        labels, validation_size=validation_size, seed=seed, stratify=stratify
    )
    return ds.select(train), ds.select(val)


def stratified_indices(labels: np.ndarray, *, size: int, seed: int) -> np.ndarray:
    """The sorted row indices of `stratified_subset`, from the labels alone."""
    n = len(labels)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 1 <= size <= n:
        raise ValueError(f"size must be an int in [1, {n}], got {size!r}")
    if size == n:
        return np.arange(n)
    rng = np.random.default_rng(_check_seed(seed))
    return _stratified_pick(np.asarray(labels), int(size), rng)


def stratified_subset(ds: datasets.Dataset, *, size: int, seed: int) -> datasets.Dataset:
    """A fixed stratified sample of ``size`` rows (e.g. a quick test-set evaluation).

    Args:
      ds: a split with an integer ``label`` column.
      size: rows to keep, 1 <= size <= len(ds); ``size == len(ds)`` returns ``ds`` unchanged.
      seed: the random seed.

    Returns:
      The sample, in the original row order, label proportions kept (largest remainder).
    """
    n = len(ds)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 1 <= size <= n:
        raise ValueError(f"size must be an int in [1, {n}], got {size!r}")
    if size == n:
        return ds
    return ds.select(stratified_indices(_labels(ds), size=size, seed=seed))


def _resolve_size(size, n: int, name: str) -> int:
    if isinstance(size, bool):
        raise ValueError(f"{name} must be an int or a float, got {size!r}")
    if isinstance(size, (int, np.integer)):
        if size < 1:
            raise ValueError(f"{name} must be >= 1, got {size!r}")
        return int(size)
    if isinstance(size, float) and 0.0 < size < 1.0:
        return max(1, int(round(size * n)))
    raise ValueError(f"{name} must be an int >= 1 or a float in (0, 1), got {size!r}")


def _check_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)
