"""Work directories and data in a bucket (``gs://``), against a local GCS emulator.

`tests/gcs_emulator.py` serves an in-memory bucket on 127.0.0.1; gcsfs (`etils.epath`),
google-cloud-storage (tensorboardX) and tensorstore (orbax) reach it through environment
variables, so the code under test is the code a TPU VM runs against a real bucket. Nothing here
leaves the machine.

The CLI runs are those of `tests/test_train_cli.py` (tiny model, 8 steps): a run with a bucket
work directory, SIGKILLed and resumed, must log every loss and end with parameters bit-identical
to an uninterrupted run on local disk, and a run reading its data from the bucket must equal the
same run on the local files.
"""

import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import datasets
import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_runs import (
    DATA_DIR,
    NUM_STEPS,
    ROOT,
    checkpoint_arrays,
    command,
    metrics_rows,
    read_json,
    run,
    start,
    train_rows,
    wait_for_step,
)
from etils import epath
from flax import nnx
from gcs_emulator import emulator_env
from tensorboardX.proto.event_pb2 import Event

from jaxsent import reporting, storage
from jaxsent.data import load_raw
from jaxsent.training.checkpointing import Checkpoints
from jaxsent.training.writers import MetricsWriter

BUCKET = "jaxsent-test"
SST2_FILES = ("train.parquet", "validation.parquet")


class Emulator:
    def __init__(self, url: str):
        self.url = url
        self.env = emulator_env(url)
        # Every run of the suite writes under its own prefix: `datasets` caches remote files by
        # URL (and the emulator gives no ETag to tell versions apart).
        self.root = f"gs://{BUCKET}/{uuid.uuid4().hex[:12]}"

    def path(self, *parts: str) -> epath.Path:
        return epath.Path("/".join((self.root, *parts)))


@pytest.fixture(scope="module")
def gcs():
    """The emulator, and this process pointed at it (the CLI runs get `gcs.env` explicitly)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "gcs_emulator.py"), "--bucket", BUCKET],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the server answers
        if not line.startswith("PORT="):
            raise RuntimeError(f"GCS emulator did not start: {line!r}")
        emulator = Emulator(f"http://127.0.0.1:{int(line.split('=')[1])}")
        with pytest.MonkeyPatch.context() as mp:
            for key, value in emulator.env.items():
                mp.setenv(key, value)
            yield emulator
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local_reference(reference_run):
    """The uninterrupted run on local disk that the bucket runs must reproduce (conftest.py's,
    shared with tests/test_train_cli.py)."""
    return reference_run.workdir


@pytest.fixture(scope="module")
def bucket_sst2(gcs):
    """The local SST-2 Parquet files, copied to the bucket."""
    folder = gcs.path("data", "sst2")
    for name in SST2_FILES:
        (folder / name).write_bytes((Path(DATA_DIR) / "sst2" / name).read_bytes())
    return folder


# --- paths --------------------------------------------------------------------------------------


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    assert os.fspath(storage.as_path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    monkeypatch.chdir(tmp_path)
    assert os.fspath(storage.as_path("runs/a")) == str(tmp_path / "runs" / "a")
    assert storage.is_remote("gs://b/x") and not storage.is_remote("/tmp/x")


def test_make_dirs_refuses_a_missing_bucket_instead_of_creating_it(gcs):
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        storage.make_dirs(epath.Path("gs://no-such-bucket/run"))
    assert not epath.Path("gs://no-such-bucket").exists()
    storage.make_dirs(gcs.path("new-run"))  # the bucket exists: nothing to create


# --- metrics.jsonl and TensorBoard ------------------------------------------------------------


def _rows(text: str) -> list[tuple[int, str]]:
    return [(r["step"], r["split"]) for r in map(json.loads, text.splitlines())]


def test_local_metrics_are_appended_row_by_row_and_kept_on_resume(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=True)
    writer.write(1, "train", {"loss": 0.5})
    # On disk as soon as written (a SIGKILL loses nothing already logged).
    assert _rows((tmp_path / "metrics.jsonl").read_text()) == [(1, "train")]
    writer.write(2, "train", {"loss": np.float32(0.25)})
    writer.close()
    resumed = MetricsWriter(tmp_path, enabled=True)
    resumed.write(2, "train", {"loss": 0.25, "nan": float("nan")})
    resumed.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert _rows(text) == [(1, "train"), (2, "train"), (2, "train")]
    assert text.splitlines()[-1].endswith('"nan": "nan"}')
    assert any((tmp_path / "tensorboard").iterdir())


def _scalar_events(folder: epath.Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the TFRecord event files under `folder`."""
    found = []
    for events in sorted(folder.iterdir()):
        data = events.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                found.append((value.tag, event.step, value.simple_value))
    return found


def test_bucket_metrics_keep_earlier_rows_and_reach_the_bucket_at_each_flush(gcs):
    workdir = gcs.path("writer")
    path = workdir / "metrics.jsonl"
    writer = MetricsWriter(workdir, enabled=True, remote_flush_seconds=3600)
    writer.write(1, "train", {"loss": 0.5})  # the first row goes out at once
    assert _rows(path.read_text()) == [(1, "train")]
    writer.write(2, "train", {"loss": 0.25})  # within the interval: held back
    assert _rows(path.read_text()) == [(1, "train")]
    writer.flush()  # what the loop calls before each checkpoint save
    assert _rows(path.read_text()) == [(1, "train"), (2, "train")]
    writer.close()
    # tensorboardX wrote the events file to the bucket itself.
    events = _scalar_events(workdir / "tensorboard")
    assert events == [("train/loss", 1, 0.5), ("train/loss", 2, 0.25)]
    resumed = MetricsWriter(workdir, enabled=True, remote_flush_seconds=0)
    resumed.write(2, "validation", {"accuracy": 0.75})
    assert _rows(path.read_text()) == [(1, "train"), (2, "train"), (2, "validation")]
    resumed.close()


# --- predictions and the reliability diagram ---------------------------------------------------


def test_predictions_and_reliability_diagram_in_a_bucket(gcs):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=20).astype(np.float32)
    labels = (rng.random(20) < 0.5).astype(np.int64)
    ids = np.arange(20)
    path = reporting.save_predictions(
        gcs.path("report", "predictions.parquet"), example_ids=ids, logits=logits, labels=labels
    )
    assert path == f"{gcs.root}/report/predictions.parquet"
    got = reporting.read_predictions(path)
    np.testing.assert_array_equal(got["logit"], logits)
    np.testing.assert_array_equal(got["label"], labels)
    png = reporting.plot_reliability_diagram(logits, labels, gcs.path("report", "rel.png"))
    assert epath.Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_pretrained_to_a_bucket_loads_back(gcs, model_dir, tmp_path):
    from tiny_models import tiny_classifier

    from jaxsent.models import SentimentClassifier, load_tokenizer, save_pretrained

    model = tiny_classifier(seed=3, dropout_rate=0.0)
    export = gcs.path("export")
    save_pretrained(model, export, tokenizer=load_tokenizer(model_dir))
    local = tmp_path / "export"
    local.mkdir()
    for path in export.iterdir():
        (local / path.name).write_bytes(path.read_bytes())
    loaded = SentimentClassifier.from_pretrained(local, dropout_rate=0.0)
    ids = np.arange(24, dtype=np.int32).reshape(2, 12) + 1000
    mask = np.ones_like(ids)
    np.testing.assert_array_equal(np.asarray(loaded(ids, mask)), np.asarray(model(ids, mask)))
    assert (local / "tokenizer.json").is_file()


# --- checkpoints --------------------------------------------------------------------------------


def _state(value: float) -> nnx.State:
    """A random kernel (incompressible, so stored in data files, not inlined) and a bias that
    tells the checkpoints apart."""
    model = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
    model.bias[...] = model.bias[...] + value
    return nnx.state(model)


def _value(state: nnx.State) -> float:
    return float(nnx.to_pure_dict(state)["bias"][0])


_SAVE_STEPS = """
import sys
sys.path.insert(0, "tests")
from test_gcs import _state
from jaxsent.training.checkpointing import Checkpoints
ckpts = Checkpoints(sys.argv[1], max_to_keep=5)
for step in (2, 4, 6):
    ckpts.save_latest(step, _state(step), {"step": step})
ckpts.close()
"""


def test_bucket_checkpoints_skip_damaged_and_unfinished_saves(gcs, caplog):
    workdir = gcs.path("checkpoints-unit")
    # Saved by another process, as by a run before its restart: this one's tensorstore cache
    # would otherwise serve the damaged data below.
    saved = run([sys.executable, "-c", _SAVE_STEPS, os.fspath(workdir)], extra_env=gcs.env)
    assert saved.returncode == 0, saved.stderr[-3000:]
    # Step 6 as a save cut short by SIGKILL: on a bucket orbax writes in place and marks the end
    # with commit_success.txt, so without it the step is not offered.
    (workdir / "checkpoints" / "6" / "commit_success.txt").unlink()
    # Step 4 damaged after it was finalised: its array data gone.
    damaged = list((workdir / "checkpoints" / "4" / "state").glob("ocdbt.process_0/d/*"))
    assert damaged
    for path in damaged:
        path.unlink()
    ckpts = Checkpoints(workdir, max_to_keep=5)
    assert ckpts.latest_step() == 4
    with caplog.at_level(logging.WARNING, logger="jaxsent"):
        state, meta = ckpts.restore_latest(_state(0))
    assert meta["step"] == 2 and _value(state) == 2
    assert f"{workdir}/checkpoints/4 is unreadable" in caplog.text
    # The resumed run reaches steps 4 and 6 again: the damaged save is replaced, and the
    # unfinished one is overwritten.
    ckpts.save_latest(4, _state(40), {"step": 4})
    ckpts.save_latest(6, _state(60), {"step": 6})
    ckpts.close()
    ckpts = Checkpoints(workdir, max_to_keep=5)
    assert ckpts.latest.all_steps() == [2, 4, 6]
    state, meta = ckpts.restore_latest(_state(0))
    assert meta["step"] == 6 and _value(state) == 60
    ckpts.close()


# --- data ---------------------------------------------------------------------------------------


def test_load_raw_reads_a_bucket_folder_like_a_local_one(gcs, bucket_sst2, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    local = load_raw(os.path.join(DATA_DIR, "sst2"), split="validation")
    remote = load_raw(os.fspath(bucket_sst2), split="validation")
    assert remote.features == local.features
    assert remote.to_dict() == local.to_dict()
    # A known name under a bucket data directory, every split.
    by_name = load_raw("sst2", data_dir=os.fspath(bucket_sst2.parent))
    assert sorted(by_name) == ["train", "validation"]
    assert by_name["validation"].to_dict() == local.to_dict()


def test_bucket_data_in_offline_mode_fails_with_what_to_set(gcs, monkeypatch):
    folder = gcs.path("offline", "sst2")  # never read before (`datasets` would use its cache)
    name = "validation.parquet"
    (folder / name).write_bytes((Path(DATA_DIR) / "sst2" / name).read_bytes())
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="HF_DATASETS_OFFLINE=0"):
        load_raw(os.fspath(folder), split="validation")


def test_missing_bucket_folder_is_reported_like_a_missing_path(gcs):
    with pytest.raises(ValueError, match="nor an existing file or directory"):
        load_raw(os.fspath(gcs.path("no-such-folder")), split="train")


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_bucket_run(gcs, model_dir):
    """A bucket-workdir run SIGKILLed after step 5, then rerun to the end."""
    workdir = gcs.path("killed")
    proc = start(command(model_dir, workdir), extra_env=gcs.env)
    try:
        wait_for_step(workdir, 5, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = run(command(model_dir, workdir), extra_env=gcs.env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return workdir, resumed


@pytest.mark.slow
def test_bucket_workdir_resumes_after_sigkill_bit_identical_to_local(
    killed_bucket_run, local_reference
):
    workdir, resumed = killed_bucket_run
    assert "resumed from step" in resumed.stderr
    for name in (
        "config.json",
        "metrics.jsonl",
        "eval_results.json",
        "predictions.parquet",
        "reliability.png",
    ):
        assert (workdir / name).exists(), name
    assert any((workdir / "tensorboard").iterdir())
    assert train_rows(workdir) == train_rows(local_reference)  # every logged loss, exactly
    ours = checkpoint_arrays(workdir, NUM_STEPS)
    theirs = checkpoint_arrays(local_reference, NUM_STEPS)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    assert read_json(workdir / "eval_results.json") == read_json(
        local_reference / "eval_results.json"
    )
    ours = reporting.read_predictions(workdir / "predictions.parquet")
    theirs = reporting.read_predictions(local_reference / "predictions.parquet")
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


@pytest.mark.slow
def test_bucket_workdir_refuses_a_changed_config(killed_bucket_run, gcs, model_dir):
    workdir, _ = killed_bucket_run
    result = run(
        command(model_dir, workdir, "--config.train.global_batch_size=32"),
        extra_env=gcs.env,
        timeout=600,
    )
    assert result.returncode != 0
    assert "cannot resume" in result.stderr and "train.global_batch_size" in result.stderr


@pytest.mark.slow
def test_bucket_workdir_sigterm_saves_rows_and_checkpoint(gcs, model_dir):
    workdir = gcs.path("term")
    proc = start(command(model_dir, workdir), extra_env=gcs.env)
    wait_for_step(workdir, 1, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, output[-3000:]
    assert "Rerun the same command to resume" in output
    stopped_at = max(train_rows(workdir))  # every row up to the stop reached the bucket
    assert (workdir / "checkpoints" / str(stopped_at) / "commit_success.txt").exists()


@pytest.mark.slow
def test_run_on_bucket_data_equals_the_run_on_local_files(
    gcs, bucket_sst2, model_dir, local_reference, tmp_path
):
    workdir = tmp_path / "bucket-data"
    result = run(
        command(model_dir, workdir, f"--config.data.name={bucket_sst2}"),
        # `datasets` reads bucket files only outside its offline mode; the hub stays off.
        extra_env=gcs.env
        | {
            "HF_DATASETS_OFFLINE": "0",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
        },
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert train_rows(workdir) == train_rows(local_reference)
    ours, theirs = (read_json(w / "eval_results.json") for w in (workdir, local_reference))
    ours.pop("notes"), theirs.pop("notes")  # they name the data source
    assert ours == theirs
    assert [r["split"] for r in metrics_rows(workdir)] == [
        r["split"] for r in metrics_rows(local_reference)
    ]
    table = pq.read_table(io.BytesIO((workdir / "predictions.parquet").read_bytes()))
    assert table.equals(pq.read_table(str(local_reference / "predictions.parquet")))
