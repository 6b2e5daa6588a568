"""Tests of jaxsent.data.sources.load_raw: local data directory, local files, hub path."""

import json
import os
import pathlib

import datasets
import numpy as np
import pandas as pd
import pytest

from jaxsent.data import DATA_DIR_ENV, load_raw

SHARED_DATA = pathlib.Path(
    os.environ.get(DATA_DIR_ENV) or pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
)
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "imdb" / "train.parquet").exists(), reason=f"no shared data at {SHARED_DATA}"
)


def _label_counts(ds):
    return np.bincount(np.asarray(ds["label"]), minlength=2).tolist()


# Row and class counts from the data folder's README ($JAXSENT_DATA_DIR, ../shared/data by default).
@needs_shared_data
@pytest.mark.parametrize(
    "name, expected",
    [
        ("imdb", {"train": [12_500, 12_500], "test": [12_500, 12_500]}),
        ("sst2", {"train": [29_780, 37_569], "validation": [428, 444]}),
        ("rotten_tomatoes", {"all": [5_331, 5_331]}),
    ],
)
def test_data_dir_env_gives_readme_row_counts(monkeypatch, name, expected):
    monkeypatch.setenv(DATA_DIR_ENV, str(SHARED_DATA))
    loaded = load_raw(name)
    assert isinstance(loaded, datasets.DatasetDict)
    assert sorted(loaded) == sorted(expected)
    for split, counts in expected.items():
        assert loaded[split].column_names == ["text", "label"]
        assert loaded[split].features["label"] == datasets.Value("int64")
        assert _label_counts(loaded[split]) == counts


@needs_shared_data
def test_data_dir_argument_overrides_env_and_selects_split(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))  # empty: would fail if used
    val = load_raw("sst2", split="validation", data_dir=str(SHARED_DATA))
    assert isinstance(val, datasets.Dataset)
    assert len(val) == 872
    assert val[0]["text"].startswith("it 's a charming and often affecting journey")


def test_data_dir_without_the_data_set_fails(tmp_path):
    with pytest.raises(ValueError, match=r"no \*\.parquet files for data set 'imdb'"):
        load_raw("imdb", data_dir=str(tmp_path))


@needs_shared_data
def test_unknown_split_names_available_ones():
    with pytest.raises(
        ValueError, match=r"split='dev' not found; available splits: \['test', 'train'\]"
    ):
        load_raw("imdb", split="dev", data_dir=str(SHARED_DATA))


def test_unknown_name_and_path_fails():
    with pytest.raises(ValueError, match="'no_such_set' is neither a known data set"):
        load_raw("no_such_set")


def test_hub_path_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"'stanfordnlp/imdb'.*set \$JAXSENT_DATA_DIR"):
        load_raw("imdb")


@pytest.mark.parametrize(
    "name, hub_args, source_text",
    [
        ("imdb", ("stanfordnlp/imdb", None), "text"),
        ("sst2", ("nyu-mll/glue", "sst2"), "sentence"),
        ("rotten_tomatoes", ("cornell-movie-review-data/rotten_tomatoes", None), "text"),
    ],
)
def test_hub_path_calls_load_dataset_and_standardises(monkeypatch, name, hub_args, source_text):
    calls = []
    hub_like = datasets.Dataset.from_dict(
        {"idx": [0, 1], source_text: ["bad", "good"], "label": [0, 1]},
        features=datasets.Features(
            {
                "idx": datasets.Value("int32"),
                source_text: datasets.Value("string"),
                "label": datasets.ClassLabel(names=["neg", "pos"]),
            }
        ),
    )

    def fake_load_dataset(path, config=None, *, split=None):
        calls.append((path, config, split))
        return hub_like

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = load_raw(name, split="train")
    assert calls == [(*hub_args, "train")]
    assert out.column_names == ["text", "label"]
    assert out.features["label"] == datasets.Value("int64")
    assert out["text"] == ["bad", "good"] and out["label"] == [0, 1]


def _write(path: pathlib.Path, frame: pd.DataFrame):
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        path.write_text(json.dumps(frame.to_dict(orient="records")))


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".json"])
def test_local_file_with_custom_columns_and_label_names(tmp_path, suffix):
    frame = pd.DataFrame(
        {"review": ["great film", "dull", "fine"], "sentiment": ["pos", "Negative", " POSITIVE "]}
    )
    path = tmp_path / f"mine{suffix}"
    _write(path, frame)
    out = load_raw(str(path), text_column="review", label_column="sentiment")
    assert sorted(out) == ["mine"]
    assert out["mine"].column_names == ["text", "label"]
    assert out["mine"]["text"] == ["great film", "dull", "fine"]
    assert out["mine"]["label"] == [1, 0, 1]
    assert out["mine"].features["label"] == datasets.Value("int64")


def test_local_directory_one_split_per_stem_with_hub_shards(tmp_path):
    _write(
        tmp_path / "train-00000-of-00002.parquet",
        pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}),
    )
    _write(tmp_path / "train-00001-of-00002.parquet", pd.DataFrame({"text": ["c"], "label": [1]}))
    _write(tmp_path / "test.parquet", pd.DataFrame({"text": ["d"], "label": [0]}))
    out = load_raw(str(tmp_path))
    assert {k: len(v) for k, v in out.items()} == {"train": 3, "test": 1}
    assert load_raw(str(tmp_path), split="test")["text"] == ["d"]


def test_local_directory_mixing_formats_fails(tmp_path):
    _write(tmp_path / "train.csv", pd.DataFrame({"text": ["a"], "label": [0]}))
    _write(tmp_path / "test.jsonl", pd.DataFrame({"text": ["b"], "label": [1]}))
    with pytest.raises(ValueError, match=r"mixes file formats \['csv', 'json'\]"):
        load_raw(str(tmp_path))


def test_unsupported_file_type_fails(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_raw(str(path))


def test_missing_column_names_split_and_columns(tmp_path):
    _write(tmp_path / "train.csv", pd.DataFrame({"body": ["a"], "label": [0]}))
    with pytest.raises(
        ValueError, match=r"split 'train': no text column found .* columns are \['body', 'label'\]"
    ):
        load_raw(str(tmp_path / "train.csv"))
    with pytest.raises(ValueError, match=r"split 'train': label column 'stars' is missing"):
        load_raw(str(tmp_path / "train.csv"), text_column="body", label_column="stars")


def test_unrecognised_labels_are_left_for_prepare_to_report(tmp_path):
    _write(tmp_path / "train.jsonl", pd.DataFrame({"text": ["a", "b"], "label": ["pos", "meh"]}))
    out = load_raw(str(tmp_path / "train.jsonl"), split="train")
    assert out["label"] == ["pos", "meh"]  # not guessed, not dropped
