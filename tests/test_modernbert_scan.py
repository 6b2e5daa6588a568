"""ModernBERT under ``scan_layers``: the unrolled model's function, parameters and export.

The scanned encoder keeps the first block apart (it has no attention norm) and scans the others
with each block's type as a flag; the oracle is the unrolled encoder, itself checked against
transformers in test_modernbert.py, and transformers reads the scanned model's export. The tiny
model mixes local and global blocks after the first (G | L L G L), has every bias on (so biases
stack too), a padded batch and a local window (3 tokens each side) shorter than the sequence.
At 17 tokens a local block attends block by block and a global one through the masked scores, so
the scan picks each block's path with a ``lax.cond``; at 8 tokens (under three windows) and with
attention dropout both types take the masked path and the flag picks the mask.

Tolerances: both layouts compute the same float32 operations in the same order, but XLA compiles
a loop body apart from the blocks around it and fuses (so rounds) elementwise chains
differently, so results may differ by float32 rounding, not bit for bit: measured up to 4.5e-7
of the largest hidden state (about 4 ulps; float32's epsilon is 1.2e-7). 2e-6 of the largest
hidden state (about 17 ulps), and 1e-5 of each gradient tensor's largest entry (rounding grows
through the backward pass: measured up to 2.1e-6), bound that rounding; a wrong mask, rotary
base, block type or dropout mask moves them by 1e-2 or more.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file
from test_modernbert import TINY, _batch

from jaxsent.models import SentimentClassifier, modernbert, modernbert_params, save_pretrained
from jaxsent.models.bert import STACKED_LAYERS
from jaxsent.training.optim import weight_decay_mask

STATE_TOL = 2e-6  # of the largest hidden state
GRAD_TOL = 1e-5  # of each gradient tensor's largest entry
RATES = dict(attention_dropout=0.2, embedding_dropout=0.1, mlp_dropout=0.15)


def _config(**overrides) -> modernbert.ModernBertConfig:
    fields = {k: v for k, v in TINY.items() if k != "rope_parameters"}
    fields.update(
        num_hidden_layers=5,  # default pattern: G L L G L, so the scanned four are L L G L
        global_rope_theta=1000.0,
        local_rope_theta=37.0,
        attention_bias=True,
        mlp_bias=True,
        norm_bias=True,
    )
    return modernbert.ModernBertConfig(**(fields | overrides))


@functools.cache
def _random_state(config: modernbert.ModernBertConfig):
    """A random model's split: O(0.2) weights and norm scales near 1 (as test_modernbert.py),
    not the tiny init, so that every block changes the states; one compiled call per config."""

    @nnx.jit
    def make():
        model = modernbert.ModernBertModel(config, rngs=nnx.Rngs(0))
        state = nnx.state(model, nnx.Param)
        keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
        nnx.update(
            model, jax.tree.map(lambda p: p + 0.2 * jax.random.normal(next(keys), p.shape), state)
        )
        return model

    return nnx.split(make())


def _model(config=None, **layout) -> modernbert.ModernBertModel:
    model = nnx.merge(*_random_state(config or _config()))
    model.encoder.set_layout(**{"remat": "none", "scan_layers": False, **layout})
    return model


@pytest.fixture(autouse=True)
def _full_precision():
    with jax.default_matmul_precision("float32"):
        yield


@pytest.fixture(scope="module")
def unrolled_and_scanned():
    unrolled = _model()
    scanned = _model()
    scanned.encoder.set_layout(remat="none", scan_layers=True)
    return unrolled, scanned


# One jitted function each, so that calls with the same model structure and shapes reuse a compile.
_FORWARD = nnx.jit(lambda m, a, b: m(a, b, deterministic=True).last_hidden_state)


def _states(model, ids, mask):
    return np.asarray(_FORWARD(model, jnp.asarray(ids), jnp.asarray(mask)))


@pytest.mark.parametrize("length", [17, 8])
def test_scanned_hidden_states_equal_unrolled(unrolled_and_scanned, length):
    unrolled, scanned = unrolled_and_scanned
    ids, mask = _batch(seed=1)
    ids, mask = ids[:, :length], mask[:, :length]
    expected, got = _states(unrolled, ids, mask), _states(scanned, ids, mask)
    real = mask.astype(bool)
    assert np.abs(got - expected)[real].max() <= STATE_TOL * np.abs(expected)[real].max()


def _loss(model, ids, mask, rngs, deterministic):
    out = model(ids, mask, deterministic=deterministic, rngs=rngs).last_hidden_state
    m = mask.astype(jnp.float32)[..., None]
    logits = (out * m).sum(1) / m.sum(1) @ (jnp.arange(TINY["hidden_size"]) % 5 - 2.0) / 9
    labels = jnp.array([1.0, 0.0, 1.0])
    return jnp.mean(jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))))


_STEP = nnx.jit(nnx.value_and_grad(_loss), static_argnums=4)


def _train_step(model, deterministic):
    ids, mask = (jnp.asarray(a) for a in _batch(seed=3))
    loss, grads = _STEP(model, ids, mask, nnx.Rngs(dropout=0), deterministic)
    # Gradients in the Hugging Face names, per layer, whichever the layout (export unrolls).
    return float(loss), modernbert_params.export_tensors(nnx.merge(nnx.graphdef(model), grads))


@functools.cache
def _unrolled_train_step(dropout: bool):
    """The reference: the unrolled model without remat (test_modernbert.py checks that remat
    changes no gradient there)."""
    return _train_step(_model(_config(**(RATES if dropout else {}))), deterministic=not dropout)


@pytest.mark.parametrize(
    "remat, dropout",
    [("none", False), ("full", False), ("full", True)],
    ids=["none-cond", "full-cond", "full-dropout_masked"],
)
def test_scanned_train_step_equals_unrolled(remat, dropout):
    """Loss and every parameter's gradient of the scanned model (with ``remat``) equal the
    unrolled model's (without), with the same dropout masks when dropout is on.

    Without dropout the scan picks each block's attention path with a ``lax.cond`` (remat none:
    the backward pass reads the cond's saved values; full: it recomputes the block, the cond
    with it, as the seed recipe configs/modernbert_base_imdb.py trains); with dropout the
    dropout stream runs through the scan and the recomputed blocks."""
    want_loss, want = _unrolled_train_step(dropout)
    scanned = _model(_config(**(RATES if dropout else {})), remat=remat, scan_layers=True)
    got_loss, got = _train_step(scanned, deterministic=not dropout)
    assert got_loss == pytest.approx(want_loss, rel=GRAD_TOL)
    # Embeddings (3), the first block (10: no attention norm), four more (12 each), final norm (2).
    assert set(got) == set(want) and len(want) == 3 + 10 + 4 * 12 + 2
    for name, ref in want.items():
        scale = np.abs(ref).max()
        assert scale > 0, name  # every parameter takes part
        err = np.abs(got[name] - ref).max() / scale
        assert err <= GRAD_TOL, f"{name}: relative gradient error {err:.3g}"
    if dropout:  # the masks really are drawn: another stream gives another loss
        other = nnx.jit(_loss, static_argnums=4)(
            scanned, *(jnp.asarray(a) for a in _batch(seed=3)), nnx.Rngs(dropout=1), False
        )
        assert abs(float(other) - got_loss) > 1e-4


def _flat(model) -> dict:
    return {
        "/".join(map(str, path)): np.asarray(var.get_value())
        for path, var in nnx.to_flat_state(nnx.state(model))
    }


def test_set_layout_round_trips_bit_for_bit():
    model = _model()
    before = _flat(model)
    assert before and all("layers/" in k for k in before if k.startswith("encoder/"))
    for remat, scan in (("full", True), ("dots", True), ("none", False), ("none", True)):
        model.encoder.set_layout(remat=remat, scan_layers=scan)
        assert (model.encoder.remat, model.encoder.scan_layers) == (remat, scan)
    stacked = model.encoder.stacked_layers.attn.Wqkv.kernel
    assert stacked.get_value().shape == (4, 54, 3, 3, 18)
    assert stacked.get_metadata()["out_sharding"] == (None, "embed", None, "heads", "kv")
    assert model.encoder.first_layer.attn_norm is None
    layers = model.encoder.layer_list()
    assert [layer.attn_norm is None for layer in layers] == [True] + [False] * 4
    model.encoder.set_layout(remat="none", scan_layers=False)
    after = _flat(model)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and after[key].tobytes() == value.tobytes(), key


def test_a_one_block_model_scans_nothing():
    config = _config(num_hidden_layers=1)
    model = _model(config)
    ids, mask = _batch()
    expected = _states(model, ids, mask)
    model.encoder.set_layout(remat="full", scan_layers=True)
    assert model.encoder.stacked_layers is None and len(model.encoder.layer_list()) == 1
    np.testing.assert_array_equal(_states(model, ids, mask), expected)


def test_scan_compiles_one_body_whatever_the_depth():
    """The lowered program of a scanned encoder holds one loop and the same number of matmuls at
    4 and at 10 blocks (the first block and the scanned body); the unrolled one's grow."""
    ids = jax.ShapeDtypeStruct((2, 17), jnp.int32)

    def lowered(layers, scan):
        config = _config(num_hidden_layers=layers)
        abstract = nnx.eval_shape(
            lambda: modernbert.ModernBertModel(config, scan_layers=scan, rngs=nnx.Rngs(0))
        )
        graphdef, state = nnx.split(abstract)
        forward = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids).last_hidden_state)
        text = forward.lower(state, ids).as_text()
        return text.count("stablehlo.dot_general"), text.count("stablehlo.while")

    assert lowered(4, True) == lowered(10, True)
    assert lowered(4, True)[1] == 1 and lowered(10, False)[1] == 0
    assert lowered(10, False)[0] > lowered(4, False)[0] > lowered(4, True)[0]


def test_the_backward_pass_keeps_the_residual_barrier_in_the_scan():
    """On CPU the backward pass has the barrier's conditional for the first block and one in the
    scanned body (run once per block); the forward pass has none. At 8 tokens both block types
    take the masked path, so no other conditional is there."""
    model = _model(scan_layers=True)
    ids, mask = (jnp.asarray(a[:, :8]) for a in _batch())
    graphdef, state = nnx.split(model)

    def loss(state):
        return jnp.sum(nnx.merge(graphdef, state)(ids, mask).last_hidden_state)

    def conditionals(fn):
        return jax.jit(fn).lower(state).compile().as_text().count(" conditional(")

    assert conditionals(jax.grad(loss)) == 2
    assert conditionals(loss) == 0


def test_export_of_a_scanned_model_is_the_unrolled_export_and_transformers_reads_it(
    unrolled_and_scanned, tmp_path
):
    unrolled, scanned = unrolled_and_scanned
    save_pretrained(unrolled, tmp_path / "unrolled")
    save_pretrained(scanned, tmp_path / "scanned")
    assert scanned.encoder.scan_layers  # export unrolls a copy, not the model
    want = load_file(tmp_path / "unrolled" / "model.safetensors")
    got = load_file(tmp_path / "scanned" / "model.safetensors")
    assert got.keys() == want.keys() and "layers.4.attn_norm.weight" in got
    for name, value in want.items():
        assert got[name].tobytes() == value.tobytes(), name
    assert (tmp_path / "scanned" / "config.json").read_text() == (
        tmp_path / "unrolled" / "config.json"
    ).read_text()

    hf, info = transformers.AutoModel.from_pretrained(
        tmp_path / "scanned", attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = _batch(seed=6)
    with torch.no_grad():
        ref = hf.eval()(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    diff = np.abs(_states(scanned, ids, mask) - ref.last_hidden_state.numpy())
    assert diff[mask.astype(bool)].max() <= 1e-4  # float32 vs torch, as test_modernbert.py

    # A classifier's export too (the training run's `export/`).
    classifiers = []
    for scan in (False, True):
        classifier = SentimentClassifier(_config(), pooling="mean", rngs=nnx.Rngs(0))
        classifier.encoder.encoder.set_layout(remat="full", scan_layers=scan)
        save_pretrained(classifier, tmp_path / f"classifier_{scan}")
        classifiers.append(load_file(tmp_path / f"classifier_{scan}" / "model.safetensors"))
    assert classifiers[0].keys() == classifiers[1].keys()
    for name, value in classifiers[0].items():
        assert classifiers[1][name].tobytes() == value.tobytes(), name


def test_weight_decay_mask_decays_the_same_parameters_in_both_layouts():
    def decayed(model) -> dict[str, bool]:
        """Parameter name -> decayed, per block (a stacked entry stands for every block)."""
        mask = weight_decay_mask(nnx.state(model, nnx.Param))
        out = {}
        for path, flag in jax.tree_util.tree_leaves_with_path(mask):
            keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
            name = "/".join(keys)
            if STACKED_LAYERS in keys:
                for i in range(1, model.config.num_hidden_layers):
                    out[name.replace(STACKED_LAYERS, f"layers/{i}")] = bool(flag)
            else:
                out[name.replace("first_layer", "layers/0")] = bool(flag)
        return out

    model = _model()
    want = decayed(model)
    model.encoder.set_layout(remat="none", scan_layers=True)
    got = decayed(model)
    assert got == want
    assert want["encoder/layers/3/attn/Wqkv/kernel"] and want["embeddings/tok_embeddings/embedding"]
    assert not want["encoder/layers/3/attn/Wo/bias"] and not want["encoder/layers/3/mlp_norm/scale"]


def test_bad_layout_is_named():
    model = _model()
    with pytest.raises(ValueError, match="scan_layers must be a bool"):
        model.encoder.set_layout(remat="none", scan_layers="yes")
    with pytest.raises(ValueError, match="remat='some'"):
        model.encoder.set_layout(remat="some", scan_layers=True)
