"""Every encoder family through the classifier: save_pretrained, from_pretrained, AutoModel.

The encoders' own parity with transformers is in test_bert.py, test_roberta.py and
test_modernbert.py; this file checks what the classifier and the export add for RoBERTa and
ModernBERT (BERT's are in test_classifier.py and test_export.py).
"""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxsent.models import (
    SUPPORTED_MODEL_TYPES,
    BertConfig,
    ModernBertConfig,
    SentimentClassifier,
    from_pretrained,
    save_pretrained,
)
from jaxsent.models import classifier as classifier_lib

TOL = 1e-4
CONFIGS = {
    "roberta": BertConfig(
        model_type="roberta",
        vocab_size=97,
        hidden_size=30,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=41,
        max_position_embeddings=24,
        type_vocab_size=1,
        pad_token_id=1,
        layer_norm_eps=1e-5,
        use_pooler=False,
    ),
    "modernbert": ModernBertConfig(
        vocab_size=97,
        hidden_size=30,
        intermediate_size=41,
        num_hidden_layers=3,
        num_attention_heads=3,
        local_attention=4,
        pad_token_id=1,
    ),
}


@pytest.fixture(autouse=True)
def _full_precision():
    with jax.default_matmul_precision("float32"):
        yield


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 97, (2, 11)).astype(np.int32)
    mask = (np.arange(11)[None] < np.array([[11], [6]])).astype(np.int32)
    return np.where(mask == 1, ids, 1).astype(np.int32), mask


def _classifier(model_type):
    model = SentimentClassifier(
        CONFIGS[model_type], pooling="mean", dropout_rate=0.0, rngs=nnx.Rngs(params=3, dropout=4)
    )
    # A head that is not its initial value, so a fresh head cannot pass for the saved one.
    model.head.bias.set_value(jnp.asarray([0.37]))
    return model


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_save_load_and_automodel(model_type, tmp_path):
    model = _classifier(model_type)
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == model_type
    assert config["architectures"] == [
        {"roberta": "RobertaModel"}.get(model_type, "ModernBertModel")
    ]
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert {"jaxsent_head.weight", "jaxsent_head.bias"} <= keys
    assert not any(k.startswith(("classifier.", "roberta.", "model.")) for k in keys)

    ids, mask = _batch()
    back = SentimentClassifier.from_pretrained(tmp_path)
    assert back.pooling == "mean" and type(back.encoder) is type(model.encoder)
    np.testing.assert_array_equal(back(ids, mask), model(ids, mask))

    kwargs = {"attn_implementation": "eager"} if model_type == "modernbert" else {}
    hf = transformers.AutoModel.from_pretrained(tmp_path, **kwargs).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    ours = model.encoder(jnp.asarray(ids), attention_mask=jnp.asarray(mask), deterministic=True)
    diff = np.abs(np.asarray(ours.last_hidden_state) - ref.last_hidden_state.numpy())
    assert diff[mask.astype(bool)].max() <= TOL


def test_a_transformers_modernbert_classifier_head_is_not_taken(tmp_path, caplog):
    """ModernBertForSequenceClassification's classifier reads its own dense + norm head, so its
    one-logit classifier.* is not our head: a fresh head, with a warning."""
    encoder = _classifier("modernbert").encoder
    save_pretrained(encoder, tmp_path)
    tensors = {"model." + k: v for k, v in load_file(tmp_path / "model.safetensors").items()}
    tensors["classifier.weight"] = np.full((1, 30), 5.0, np.float32)
    tensors["classifier.bias"] = np.full((1,), 5.0, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger=classifier_lib.__name__):
        model = SentimentClassifier.from_pretrained(tmp_path, pooling="mean")
    assert "fresh one-logit head" in caplog.text
    assert float(np.abs(model.head.bias.get_value()).max()) == 0.0


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    save_pretrained(_classifier("roberta").encoder, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "deberta-v2"}))
    for load in (from_pretrained, SentimentClassifier.from_pretrained):
        with pytest.raises(ValueError, match="model_type='deberta-v2'") as err:
            load(tmp_path)
        assert all(name in str(err.value) for name in SUPPORTED_MODEL_TYPES)
    assert SUPPORTED_MODEL_TYPES == ("bert", "modernbert", "roberta", "xlm-roberta")


def test_pickled_weights_are_refused_for_every_family(tmp_path):
    save_pretrained(_classifier("modernbert").encoder, tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "name", ["modernbert-base", "modernbert-large", "roberta-base", "roberta-large"]
)
def test_named_architectures_have_transformers_parameter_counts(name):
    """Each named architecture builds, with as many parameters as transformers' model of the
    same config.json (built on the meta device: shapes only)."""
    from jaxsent.models import architectures, loading

    raw = architectures.architecture_config(name)
    config = loading.config_from_hf(raw)
    abstract = nnx.eval_shape(lambda: loading.make_encoder(config, rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    with torch.device("meta"):
        hf = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(**raw))
    assert ours == sum(p.numel() for p in hf.parameters())
