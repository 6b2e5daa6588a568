"""The export folder: loadable by transformers (PyTorch, the oracle) and by jaxsent, exactly.

The jaxsent side is the whole prediction path (tokenisation, length buckets, the jitted eval
step over a mesh of 8 host devices). Against PyTorch the bound is the issue's 1e-4; float32
summation order differs between the two frameworks (measured ~1e-6 on these models, as in
test_bert.py).
"""

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from cli_runs import SST5_CLASSES
from etils import epath
from flax import nnx
from tiny_models import tiny_classifier, tiny_config

from jaxsent.data import ClassLabels, clean_text
from jaxsent.export import InferenceSettings, read_settings, write_export
from jaxsent.inference import Predictor, load_trained
from jaxsent.models import SentimentClassifier, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
MAX_LENGTH = 32
TEXTS = [
    "A gem of a film.",
    "Two hours<br />I will <BR>not get back.",
    "plot " * 60,  # longer than MAX_LENGTH tokens: truncated
    "ok",
]


def _settings(temperature=None, classes=None):
    return InferenceSettings(
        max_length=MAX_LENGTH,
        clean_markup=True,
        truncation="head",
        head_fraction=0.25,
        bucket_boundaries=(8, 16, MAX_LENGTH),
        batch_size=16,
        temperature=temperature,
        classes=classes,
    )


def _model(pooling):
    # A wide initialisation and a moved head, so that logits differ clearly between texts.
    model = tiny_classifier(pooling=pooling, initializer_range=0.3, seed=3)
    model.head.bias.set_value(jnp.array([0.25]))
    return model


def _five_class_model(pooling):
    model = SentimentClassifier(
        tiny_config(initializer_range=0.3),
        pooling=pooling,
        dropout_rate=0.1,
        rngs=nnx.Rngs(params=3, dropout=4),
        num_labels=len(SST5_CLASSES),
        label_names=SST5_CLASSES,
    )
    model.head.bias.set_value(jnp.linspace(-0.5, 0.5, len(SST5_CLASSES)))
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm-l6")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("exports")
    out = {
        pooling: write_export(
            _model(pooling), root / pooling, tokenizer=tokenizer, settings=_settings(1.7)
        )
        for pooling in ("cls", "mean")
    }
    classes = ClassLabels(SST5_CLASSES, ordinal=True).to_json()
    out["mean_k5"] = write_export(
        _five_class_model("mean"),
        root / "mean_k5",
        tokenizer=tokenizer,
        settings=_settings(1.7, classes),
    )
    return out


def _jaxsent_logits(directory, texts=TEXTS):
    return Predictor(load_trained(directory)).predict(texts).logits


def test_cls_export_is_a_transformers_sequence_classifier(exports):
    directory = str(exports["cls"])
    model, info = transformers.BertForSequenceClassification.from_pretrained(
        directory, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.num_labels == 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    assert tokenizer.model_max_length == MAX_LENGTH
    batch = tokenizer(
        [clean_text(t) for t in TEXTS], truncation=True, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        theirs = model.eval()(**batch).logits[:, 0].numpy()
    ours = _jaxsent_logits(exports["cls"])
    assert np.ptp(ours) > 0.1  # the texts are told apart: the comparison can fail
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def _readme_snippet(marker: str) -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"expected one README python block with {marker!r}"
    return found[0]


def _run_snippet(code: str, export_dir) -> dict:
    code, count = re.subn(
        r'^export_dir = ".*"$', f"export_dir = {str(export_dir)!r}", code, flags=re.MULTILINE
    )
    assert count == 1
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", ["mean", "mean_k5"])
def test_readme_mean_pooling_lines_reproduce_jaxsent(exports, name):
    """Two classes: sigmoid of the one logit; five: softmax over the head's five outputs."""
    namespace = _run_snippet(_readme_snippet("jaxsent_head.weight"), exports[name])
    texts = ["A gem of a film.", "Two hours<br />I will not get back."]
    assert namespace["texts"] == [clean_text(t) for t in texts]  # the snippet's own texts
    predictions = Predictor(load_trained(exports[name])).predict(texts)
    assert predictions.logits.shape == ((2,) if name == "mean" else (2, len(SST5_CLASSES)))
    assert np.ptp(predictions.logits, axis=0).max() > 0.1  # the texts are told apart
    np.testing.assert_allclose(namespace["logits"].numpy(), predictions.logits, atol=TOL, rtol=0)
    np.testing.assert_allclose(
        namespace["probabilities"].numpy(), predictions.probabilities, atol=TOL, rtol=0
    )


def test_k_classes_cls_export_is_a_transformers_sequence_classifier(multiclass_run):
    """A five-class run under cls pooling on a BERT encoder with a pooler: transformers' Auto
    class loads its export as five labels named by the classes, with jaxsent's logits."""
    directory = str(multiclass_run.workdir / "export")
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        directory, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert isinstance(model, transformers.BertForSequenceClassification)
    assert model.config.num_labels == len(SST5_CLASSES)
    assert model.config.id2label == dict(enumerate(SST5_CLASSES))
    assert model.config.label2id == {name: i for i, name in enumerate(SST5_CLASSES)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(
        [clean_text(t) for t in TEXTS], truncation=True, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        theirs = model.eval()(**batch).logits.numpy()
    ours = _jaxsent_logits(directory)
    assert ours.shape == (len(TEXTS), len(SST5_CLASSES))
    assert np.ptp(ours, axis=0).min() > 0.1  # every class's logit tells the texts apart
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def test_readme_cls_lines_give_jaxsent_logits(exports):
    namespace = _run_snippet(_readme_snippet("BertForSequenceClassification"), exports["cls"])
    ours = _jaxsent_logits(exports["cls"], ["A gem of a film."])
    np.testing.assert_allclose(namespace["logits"].detach().numpy(), ours, atol=TOL, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean", "cls_mean"])
def test_from_pretrained_restores_the_exact_model(tmp_path, tokenizer, pooling):
    model = _model(pooling)
    write_export(model, tmp_path / "export", tokenizer=tokenizer, settings=_settings())
    restored = SentimentClassifier.from_pretrained(tmp_path / "export")
    ids = np.asarray(tokenizer(TEXTS, padding=True, truncation=True, max_length=24)["input_ids"])
    mask = (ids != tokenizer.pad_token_id).astype(np.int32)
    forward = nnx.jit(lambda m, i, a: m(i, a))
    np.testing.assert_array_equal(forward(restored, ids, mask), forward(model, ids, mask))
    assert restored.pooling == pooling and restored.dropout.rate == model.dropout.rate


def test_settings_and_provenance_round_trip(tmp_path, tokenizer):
    directory = write_export(
        _model("mean"),
        tmp_path / "export",
        tokenizer=tokenizer,
        settings=_settings(0.8),
        run_info={"best_step": 12, "config": {"seed": 3}},
    )
    settings, run_info = read_settings(directory)
    assert settings == _settings(0.8)
    assert run_info == {"best_step": 12, "config": {"seed": 3}}
    meta = json.loads((directory / "jaxsent.json").read_text())
    assert meta["pooling"] == "mean" and meta["temperature"] == 0.8


def test_a_failed_export_leaves_the_previous_one_whole(tmp_path, tokenizer, monkeypatch):
    directory = tmp_path / "export"
    write_export(_model("mean"), directory, tokenizer=tokenizer, settings=_settings(1.5))
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    path_type = type(epath.Path(tmp_path))
    copy = path_type.copy
    copied = []

    def copy_then_fail(self, dst, *args, **kwargs):
        if copied:
            raise OSError("disk full")
        copied.append(dst)
        return copy(self, dst, *args, **kwargs)

    monkeypatch.setattr(path_type, "copy", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_export(_model("cls"), directory, tokenizer=tokenizer, settings=_settings(2.0))
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    monkeypatch.undo()
    write_export(_model("cls"), directory, tokenizer=tokenizer, settings=_settings(2.0))
    assert read_settings(directory)[0].temperature == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing stale is left


def test_settings_are_checked():
    with pytest.raises(ValueError, match="must increase strictly and end at max_length=32"):
        InferenceSettings(
            max_length=32,
            clean_markup=True,
            truncation="head",
            head_fraction=0.25,
            bucket_boundaries=(16, 24),
            batch_size=8,
            temperature=None,
        )
    with pytest.raises(ValueError, match="temperature=0.0 must be positive"):
        InferenceSettings(
            max_length=32,
            clean_markup=True,
            truncation="head",
            head_fraction=0.25,
            bucket_boundaries=(32,),
            batch_size=8,
            temperature=0.0,
        )
    with pytest.raises(ValueError, match="describes a model, not an exported run"):
        InferenceSettings.from_json({"max_length": 32}, source="x/jaxsent.json")
