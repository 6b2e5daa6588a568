"""`python -m train.predict` and `jaxsent.inference` on a tiny trained run.

The reference for every prediction is computed apart from the prediction path: the exported
model called on one text at a time (no padding, no buckets, no mesh), the token counts from the
tokenizer itself. Logits agree within 1e-5, the bound of test_classifier's padding-invariance
test (padding changes float32 summation order, ~1e-7 measured); printed probabilities have four
decimals.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from cli_runs import DATA_DIR, ROOT, SST5_CLASSES, module, run
from flax import nnx

from jaxsent.data import BINARY, ClassLabels, clean_text
from jaxsent.inference import (
    Predictor,
    load_trained,
    predict_file,
    prediction_columns,
    probabilities,
)
from jaxsent.inference._loading import _checkpoint_classes
from jaxsent.models import SentimentClassifier, load_tokenizer

MAX_LENGTH = 32
LOGIT_TOL = 1e-5
TEXTS = [
    "A gem of a film.",
    "Dull<br />and far too long.",
    "The plot wanders " * 12,  # more than MAX_LENGTH tokens
]


@pytest.fixture(scope="module")
def reference(run_dir):
    """Logit, tokens read and truncation of each text, one text at a time."""
    export = run_dir / "export"
    model = SentimentClassifier.from_pretrained(export)
    tokenizer = load_tokenizer(export)
    forward = nnx.jit(lambda m, ids: m(ids, jnp.ones_like(ids)))

    def score(text: str) -> tuple[float, int, bool]:
        full = tokenizer(clean_text(text))["input_ids"]
        ids = np.asarray([full[: MAX_LENGTH - 1] + full[-1:] if len(full) > MAX_LENGTH else full])
        return float(forward(model, ids)[0]), ids.shape[1], len(full) > MAX_LENGTH

    return score


def _temperature(run_dir) -> float:
    return json.loads((run_dir / "export" / "jaxsent.json").read_text())["temperature"]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def test_a_finished_run_exports_what_prediction_needs(run_dir):
    results = json.loads((run_dir / "eval_results.json").read_text())
    meta = json.loads((run_dir / "export" / "jaxsent.json").read_text())
    assert meta["temperature"] == results["temperature"]
    assert meta["run"]["best_step"] == results["best_step"]
    assert meta["max_length"] == MAX_LENGTH and meta["bucket_boundaries"][-1] == MAX_LENGTH
    assert meta["batch_size"] == 32 and meta["truncation"] == "head"


@pytest.mark.parametrize("raw", [False, True])
def test_texts_print_label_probability_tokens_and_truncation(run_dir, reference, raw):
    args = [arg for text in TEXTS for arg in ("--text", text)]
    result = run(module("train.predict", "--model", run_dir, *args, *(["--raw"] if raw else [])))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["label", "P(positive)", "tokens", "truncated"]
    assert len(lines) == 1 + len(TEXTS)
    temperature = _temperature(run_dir)
    assert f"T={temperature:.4f}" in result.stderr
    assert ("probabilities use the run's fitted temperature" in result.stderr) != raw
    for line, text in zip(lines[1:], TEXTS, strict=True):
        label, probability, tokens, truncated = line.split()[:4]
        logit, expected_tokens, expected_truncated = reference(text)
        assert label == ("positive" if logit > 0 else "negative")
        expected = _sigmoid(logit if raw else logit / temperature)
        assert abs(float(probability) - expected) <= 5e-5 + 1e-5
        assert int(tokens) == expected_tokens
        assert truncated == ("yes" if expected_truncated else "no")
    assert [line.split()[3] for line in lines[1:]] == ["no", "no", "yes"]


def _input_table(n: int = 45) -> pa.Table:
    sst2 = pq.read_table(os.path.join(DATA_DIR, "sst2", "validation.parquet")).slice(0, n)
    texts = sst2.column("sentence").to_pylist()
    texts[3] = 'line one,\nline two <br /> with "quotes" and unicode é'
    texts[7] = "long " * 50
    return pa.table(
        {"id": pa.array(range(100, 100 + n), pa.int64()), "review": texts, "stars": [4.5] * n}
    )


def _write_input(table: pa.Table, path) -> None:
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=10)
    elif path.suffix == ".csv":
        pa_csv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))


def _read_output(path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix == ".csv":
        return pa_csv.read_csv(path)
    return pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines()])


@pytest.mark.parametrize(
    "source, target", [(".csv", ".parquet"), (".jsonl", ".csv"), (".parquet", ".jsonl")]
)
def test_a_file_comes_back_with_its_columns_and_the_predictions(
    run_dir, reference, tmp_path, source, target
):
    table = _input_table()
    _write_input(table, tmp_path / f"in{source}")
    result = run(
        module(
            "train.predict",
            "--model",
            run_dir / "export",
            "--input",
            tmp_path / f"in{source}",
            "--output",
            tmp_path / f"out{target}",
            "--chunk_rows=16",  # several chunks, the last one partial
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = _read_output(tmp_path / f"out{target}")
    assert out.column_names == [
        "id",
        "review",
        "stars",
        "logit",
        "probability",
        "label",
        "tokens",
        "truncated",
    ]
    assert out.column("id").to_pylist() == table.column("id").to_pylist()
    assert out.column("review").to_pylist() == table.column("review").to_pylist()
    assert out.column("stars").to_pylist() == table.column("stars").to_pylist()
    expected = [reference(text) for text in table.column("review").to_pylist()]
    logits = np.asarray(out.column("logit").to_pylist(), np.float32)
    np.testing.assert_allclose(logits, [e[0] for e in expected], atol=LOGIT_TOL, rtol=0)
    np.testing.assert_allclose(
        out.column("probability").to_pylist(),
        probabilities(logits, _temperature(run_dir)),
        rtol=1e-6,
    )
    assert out.column("label").to_pylist() == [int(x > 0) for x in logits]
    assert out.column("tokens").to_pylist() == [e[1] for e in expected]
    assert out.column("truncated").to_pylist() == [e[2] for e in expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"in{source}", f"out{target}"])


@pytest.fixture(scope="module")
def predictor(run_dir):
    return Predictor(load_trained(run_dir))


def test_a_bad_row_stops_the_run_and_leaves_no_output(predictor, tmp_path):
    table = _input_table()
    texts = table.column("review").to_pylist()
    texts[30] = "  <br />  "  # empty once cleaned
    table = table.set_column(1, "review", pa.array(texts))
    _write_input(table, tmp_path / "in.csv")
    out = tmp_path / "out.parquet"
    out.write_bytes(b"an earlier output")
    with pytest.raises(ValueError, match=r"input 'review' row 30: empty text"):
        predict_file(predictor, tmp_path / "in.csv", out, chunk_rows=16, progress=False)
    assert out.read_bytes() == b"an earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.parquet"]


def test_input_problems_are_named(predictor, tmp_path):
    good, numbers = tmp_path / "in.parquet", tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"body": ["fine"], "label": [1]}), good)
    pq.write_table(pa.table({"text": [5, 6]}), numbers)
    out = tmp_path / "out.csv"
    with pytest.raises(
        ValueError, match=r"no text column named text, sentence.*\['body', 'label'\]"
    ):
        predict_file(predictor, good, out)
    with pytest.raises(ValueError, match=r"text column 'review' is not a column of input"):
        predict_file(predictor, good, out, text_column="review")
    with pytest.raises(ValueError, match=r"already has column\(s\) \['label'\]"):
        predict_file(predictor, good, out, text_column="body")
    assert predict_file(predictor, good, out, text_column="body", prefix="pred_") == 1
    assert pa_csv.read_csv(out).column_names[-1] == "pred_truncated"
    with pytest.raises(ValueError, match="column 'text' holds int64 values, not text"):
        predict_file(predictor, numbers, out)
    with pytest.raises(ValueError, match="must not be the input"):
        predict_file(predictor, good, good)
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        predict_file(predictor, good, tmp_path / "out.txt")
    with pytest.raises(ValueError, match=r"3 text\(s\) cannot be classified: text 0: empty text"):
        predictor.predict(["", None, 7, "fine"])
    assert predictor.predict([]).logits.shape == (0,)


def test_the_command_line_reports_errors_in_one_line(run_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    result = run(module("train.predict", "--model", tmp_path, "--text", "fine"))
    assert result.returncode == 2
    assert "is neither a training work directory" in result.stderr
    assert "Traceback" not in result.stderr
    result = run(module("train.predict", "--model", run_dir, "--text", "fine", "--text", ""))
    assert result.returncode == 2 and "--text 2: empty text" in result.stderr
    result = run(module("train.predict", "--model", run_dir, "--input", "x.csv", "--output", "y"))
    assert result.returncode == 2 and "unsupported file type" in result.stderr


def test_a_run_without_export_predicts_from_its_best_checkpoint(run_dir, tmp_path, caplog):
    copy = tmp_path / "old_run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    trained = load_trained(copy)
    assert trained.source == "checkpoint" and "bucket boundaries are unknown" in caplog.text
    exported = load_trained(run_dir)
    assert exported.source == "export"
    assert trained.best_step == exported.best_step
    assert trained.settings.temperature == exported.settings.temperature
    ours = Predictor(trained).predict(TEXTS).logits
    theirs = Predictor(exported).predict(TEXTS).logits
    # Same parameters; the padded shapes may differ (evenly spaced buckets): float32 rounding.
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    params = jax.tree.map(np.asarray, nnx.state(trained.model, nnx.Param))
    exported_params = jax.tree.map(np.asarray, nnx.state(exported.model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, params, exported_params)


def test_head_tail_truncation_reaches_the_model(run_dir, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(run_dir / "export", export)
    meta = json.loads((export / "jaxsent.json").read_text())
    meta.update(truncation="head_tail", head_fraction=0.25)
    (export / "jaxsent.json").write_text(json.dumps(meta))
    text = " ".join(f"word{i}" for i in range(40))
    out = Predictor(load_trained(export)).predict([text])
    tokenizer = load_tokenizer(export)
    full = tokenizer(text)["input_ids"]
    head = round(0.25 * (MAX_LENGTH - 2))
    kept = full[: 1 + head] + full[len(full) - 1 - (MAX_LENGTH - 2 - head) :]
    model = SentimentClassifier.from_pretrained(export)
    ids = np.asarray([kept])
    expected = float(nnx.jit(lambda m, i: m(i, jnp.ones_like(i)))(model, ids)[0])
    assert out.truncated[0] and out.num_tokens[0] == MAX_LENGTH == len(kept)
    np.testing.assert_allclose(out.logits[0], expected, atol=LOGIT_TOL, rtol=0)


STREAM_SCRIPT = """
import resource, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from jaxsent.inference import Predictions, predict_file

rows, folder = int(sys.argv[1]), sys.argv[2]
source = f"{folder}/in.parquet"
schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
with pq.ParquetWriter(source, schema) as writer:
    for start in range(0, rows, 50_000):
        ids = np.arange(start, min(rows, start + 50_000))
        writer.write_table(pa.table({"id": ids, "text": [f"review {i} was fine" for i in ids]}))


class Stub:  # the model's share of memory is one chunk's; this isolates the I/O path
    def predict(self, texts, *, what, first_row):
        n = len(texts)
        zeros = np.zeros(n, np.float32)
        return Predictions(zeros, zeros + 0.5, np.zeros(n, np.int64), np.ones(n, np.int32),
                           np.zeros(n, bool))


before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
written = predict_file(Stub(), source, f"{folder}/out.parquet", chunk_rows=8192, progress=False)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(written, pq.ParquetFile(f"{folder}/out.parquet").metadata.num_rows, grown)
"""


def test_a_million_rows_stream_in_bounded_memory(tmp_path):
    """Peak memory of the file path barely grows from 100,000 to 1,000,000 rows.

    Holding the rows would cost about 150 bytes each (text, Python strings, the added
    columns): 135 MB more for the extra 900,000 rows; streaming in chunks of 8,192 rows
    measured 26 MB at 100,000 rows and 33 MB at 1,000,000 (ru_maxrss growth).
    """
    grown = {}
    for rows in (100_000, 1_000_000):
        folder = tmp_path / str(rows)
        folder.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", STREAM_SCRIPT, str(rows), str(folder)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        written, read_back, grown[rows] = map(int, result.stdout.split())
        assert written == read_back == rows
    assert grown[1_000_000] - grown[100_000] < 50 * 1024, grown  # KiB


# K classes: the five-class SST-5 run (tests/conftest.py `multiclass_run`), cls pooling.
SST5_TEXTS = [
    "A gem of a film.",
    "Dull<br />and far too long.",
    "The plot wanders " * 12,  # more than MAX_LENGTH tokens
    "It is a film.",
]
LINE = re.compile(
    r"^(?P<label>.+?)\s+(?P<p>\d\.\d{4})  (?P<second>.+?)\s+(?P<p2>\d\.\d{4})\s+"
    r"(?P<tokens>\d+)  (?P<truncated>yes|no)\s+(?P<text>.*)$"
)


@pytest.fixture(scope="module")
def multiclass_reference(multiclass_run):
    """The [K] logits, tokens read and truncation of one text, scored alone (as `reference`)."""
    export = multiclass_run.workdir / "export"
    model = SentimentClassifier.from_pretrained(export)
    tokenizer = load_tokenizer(export)
    forward = nnx.jit(lambda m, ids: m(ids, jnp.ones_like(ids)))

    def score(text: str) -> tuple[np.ndarray, int, bool]:
        full = tokenizer(clean_text(text))["input_ids"]
        ids = np.asarray([full[: MAX_LENGTH - 1] + full[-1:] if len(full) > MAX_LENGTH else full])
        return np.asarray(forward(model, ids)[0], np.float64), ids.shape[1], len(full) > MAX_LENGTH

    return score


def _softmax(logits, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def test_k_classes_texts_print_the_class_its_probability_and_the_runner_up(
    multiclass_run, multiclass_reference
):
    args = [arg for text in SST5_TEXTS for arg in ("--text", text)]
    result = run(module("train.predict", "--model", multiclass_run.workdir, *args))
    assert result.returncode == 0, result.stderr[-3000:]
    temperature = json.loads((multiclass_run.workdir / "export" / "jaxsent.json").read_text())[
        "temperature"
    ]
    assert f"T={temperature:.4f}, softmax(logits / T)" in result.stderr
    header, *lines = result.stdout.strip().splitlines()
    assert header.split() == ["label", "P(label)", "runner-up", "P(runner-up)", "tokens"] + [
        "truncated",
        "text",
    ]
    assert len(lines) == len(SST5_TEXTS)
    predicted = set()
    for line, text in zip(lines, SST5_TEXTS, strict=True):
        found = LINE.match(line)
        assert found, line
        logits, tokens, truncated = multiclass_reference(text)
        first, second = np.argsort(-logits)[:2]
        p = _softmax(logits, temperature)
        assert found["label"] == SST5_CLASSES[first]
        assert found["second"] == SST5_CLASSES[second]
        assert abs(float(found["p"]) - p[first]) <= 5e-5 + 1e-5
        assert abs(float(found["p2"]) - p[second]) <= 5e-5 + 1e-5
        assert int(found["tokens"]) == tokens
        assert found["truncated"] == ("yes" if truncated else "no")
        predicted.add(found["label"])
    assert len(predicted) > 1  # the texts are told apart: the class check can fail


def test_k_classes_a_file_gets_the_class_columns(multiclass_run, multiclass_reference, tmp_path):
    """--raw: softmax(logits) and the logit columns; class names with spaces kept verbatim
    in the header (a CSV round trip); --prefix because the input has a 'label' column."""
    sst5 = pq.read_table(os.path.join(DATA_DIR, "sst5", "validation.parquet")).slice(0, 40)
    table = sst5.select(["text", "label"])
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=10)
    result = run(
        module(
            "train.predict",
            "--model",
            multiclass_run.workdir / "export",
            "--input",
            tmp_path / "in.parquet",
            "--output",
            tmp_path / "out.csv",
            "--raw",
            "--prefix=pred_",
            "--chunk_rows=16",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--raw: probabilities are softmax(logits)" in result.stderr
    out = pa_csv.read_csv(tmp_path / "out.csv")
    added = prediction_columns(ClassLabels(SST5_CLASSES), logits=True)
    assert added[:3] == ["label", "label_name", "probability"]
    assert "probability_very negative" in added and "logit_very positive" in added
    assert out.column_names == ["text", "label", *(f"pred_{name}" for name in added)]
    assert out.column("label").to_pylist() == table.column("label").to_pylist()
    expected = [multiclass_reference(text) for text in table.column("text").to_pylist()]
    logits = np.stack([e[0] for e in expected])
    theirs = np.stack(
        [out.column(f"pred_logit_{name}").to_numpy() for name in SST5_CLASSES], axis=1
    )
    np.testing.assert_allclose(theirs, logits, atol=LOGIT_TOL, rtol=0)
    probs = np.stack(
        [out.column(f"pred_probability_{name}").to_numpy() for name in SST5_CLASSES], axis=1
    )
    # The softmax of the file's own logits (theirs differ from the reference by up to
    # LOGIT_TOL, which moves a probability by up to LOGIT_TOL / 4); float32 rounding ~1e-7.
    np.testing.assert_allclose(probs, _softmax(theirs), atol=1e-6, rtol=0)
    labels = out.column("pred_label").to_numpy()
    np.testing.assert_array_equal(labels, theirs.argmax(axis=1))
    assert len(set(labels)) > 1
    assert out.column("pred_label_name").to_pylist() == [SST5_CLASSES[k] for k in labels]
    np.testing.assert_allclose(
        out.column("pred_probability").to_numpy(), probs[np.arange(len(labels)), labels], rtol=0
    )
    assert out.column("pred_tokens").to_pylist() == [e[1] for e in expected]
    assert out.column("pred_truncated").to_pylist() == [e[2] for e in expected]


def test_k_classes_library_probabilities_and_a_run_without_export(multiclass_run, tmp_path):
    """The checkpoint path knows the run's classes (here from its config: sst5) and gives the
    export's logits (evenly spaced buckets: float32 rounding); probabilities are the softmax of
    logits / T, checked against float64 numpy."""
    exported = load_trained(multiclass_run.workdir)
    copy = tmp_path / "old_run"
    shutil.copytree(multiclass_run.workdir, copy, ignore=shutil.ignore_patterns("export"))
    trained = load_trained(copy)
    assert trained.source == "checkpoint" and exported.source == "export"
    assert trained.classes == exported.classes == ClassLabels(SST5_CLASSES, ordinal=True)
    assert trained.settings.classes == exported.settings.classes
    predictor = Predictor(exported)
    ours = Predictor(trained).predict(SST5_TEXTS)
    theirs = predictor.predict(SST5_TEXTS)
    assert ours.logits.shape == (len(SST5_TEXTS), 5)
    np.testing.assert_allclose(ours.logits, theirs.logits, atol=1e-6, rtol=0)
    temperature = exported.settings.temperature
    np.testing.assert_allclose(
        theirs.probabilities, _softmax(theirs.logits, temperature), atol=1e-6, rtol=0
    )
    np.testing.assert_array_equal(theirs.labels, theirs.logits.argmax(axis=1))
    empty = predictor.predict([])
    assert empty.logits.shape == empty.probabilities.shape == (0, 5)


def test_k_classes_a_checkpoint_whose_classes_are_unknown_is_named(multiclass_run, tmp_path):
    """Without export, report or classes in its config, a five-class checkpoint does not fit
    the two-class model its config describes: one line, not orbax's traceback."""
    copy = tmp_path / "old_run"
    shutil.copytree(
        multiclass_run.workdir, copy, ignore=shutil.ignore_patterns("export", "eval_results.json")
    )
    config = json.loads((copy / "config.json").read_text())
    config["data"]["name"] = "reviews.csv"  # no known data set names the classes
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config describes \(2 classes: .*without export/"):
        load_trained(copy)


def test_k_classes_of_a_run_without_export_come_from_its_config_or_report():
    config = ml_collections.ConfigDict(
        {"data": {"name": "stars.csv", "label_names": "", "ordinal": True}, "model": {}}
    )
    assert _checkpoint_classes(config, {}) == BINARY
    # Integer labels 1..5 were named by their values (`infer_class_labels`): read as those.
    stars = _checkpoint_classes(config, {"class_names": list("12345"), "ordinal": True})
    assert stars == ClassLabels(tuple("12345"), (1, 2, 3, 4, 5), ordinal=True)
    assert stars.encode(1) == 0 and stars.encode("5") == 4
    ids = _checkpoint_classes(config, {"class_names": ["0", "1", "2"], "ordinal": False})
    assert ids == ClassLabels(("0", "1", "2"))
    config.data.label_names = "bad, fine, good"  # named by the config: names, or class ids
    assert _checkpoint_classes(config, {"class_names": ["x", "y", "z"]}) == ClassLabels(
        ("bad", "fine", "good"), ordinal=True
    )
    config.data.update(name="sst5", label_names="", ordinal=False)
    assert _checkpoint_classes(config, {}) == ClassLabels(SST5_CLASSES, ordinal=True)
    config.data.name, config.model.num_labels = "reviews.csv", 3
    assert _checkpoint_classes(config, {}) == ClassLabels(("0", "1", "2"))
