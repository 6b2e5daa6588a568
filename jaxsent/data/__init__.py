"""Input pipeline: load raw sentiment data, validate and tokenise it, plan length-bucketed batches.

Typical use::

    raw = load_raw("imdb")                                   # $JAXSENT_DATA_DIR or the hub
    train = prepare(raw["train"], tokenizer, max_length=512, split_name="train")
    train, val = split_train_validation(train, validation_size=0.1, seed=0)
    arrays = to_numpy_columns(train)
    bounds = make_bucket_boundaries(512, lengths=arrays.lengths)
    plan = batch_plan(arrays.lengths, global_batch_size=32, boundaries=bounds,
                      shuffle=True, seed=0, epoch=epoch)
    for spec in plan:
        batch = make_batch(arrays, spec, process_index=jax.process_index(),
                           process_count=jax.process_count(), pad_id=tokenizer.pad_token_id)
"""

from jaxsent.data.batching import (
    BatchSpec,
    PlanStats,
    TokenArrays,
    batch_plan,
    iterate_batches,
    make_batch,
    make_bucket_boundaries,
    plan_stats,
    to_numpy_columns,
    token_arrays,
)
from jaxsent.data.labels import (
    BINARY,
    LABEL_NAMES,
    ClassLabels,
    infer_class_labels,
    normalize_label,
)
from jaxsent.data.preprocess import (
    TRUNCATION_MODES,
    BadRow,
    Encoded,
    PrepareReport,
    ScreenedRows,
    clean_text,
    encode_texts,
    find_bad_rows,
    prepare,
    prepare_with_report,
    screen_rows,
    split_train_validation,
    stratified_indices,
    stratified_subset,
    text_problem,
    tokenize_rows,
    validation_indices,
)
from jaxsent.data.sources import DATA_DIR_ENV, KNOWN_DATASETS, KnownDataset, load_raw, split_names

__all__ = [
    "BINARY",
    "BadRow",
    "ClassLabels",
    "BatchSpec",
    "DATA_DIR_ENV",
    "TRUNCATION_MODES",
    "Encoded",
    "encode_texts",
    "KNOWN_DATASETS",
    "KnownDataset",
    "LABEL_NAMES",
    "PlanStats",
    "PrepareReport",
    "ScreenedRows",
    "TokenArrays",
    "batch_plan",
    "clean_text",
    "find_bad_rows",
    "infer_class_labels",
    "iterate_batches",
    "load_raw",
    "make_batch",
    "make_bucket_boundaries",
    "normalize_label",
    "plan_stats",
    "prepare",
    "prepare_with_report",
    "screen_rows",
    "split_names",
    "split_train_validation",
    "stratified_indices",
    "stratified_subset",
    "text_problem",
    "to_numpy_columns",
    "token_arrays",
    "tokenize_rows",
    "validation_indices",
]
