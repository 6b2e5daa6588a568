"""Rule-based sharding on 8 virtual CPU devices: same numbers as one device, every strategy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxsent import sharding
from jaxsent.models import BertConfig, SentimentClassifier

# 4 heads and mlp 96 split over model=2; vocab 1000 and hidden 48 split over data=4 or 8.
CONFIG = BertConfig(
    vocab_size=1000,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=32,
)
MESHES = {"dp": (8, 1), "fsdp": (8, 1), "tp": (4, 2), "fsdp_tp": (4, 2)}


@pytest.fixture(autouse=True)
def _full_precision():
    with jax.default_matmul_precision("float32"):
        yield


def _model():
    return SentimentClassifier(CONFIG, pooling="cls_mean", rngs=nnx.Rngs(params=0, dropout=1))


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CONFIG.vocab_size, (8, 16)).astype(np.int32)
    mask = (np.arange(16)[None] < np.array([16, 3, 9, 16, 1, 5, 12, 7])[:, None]).astype(np.int32)
    return jnp.asarray(ids), jnp.asarray(mask), jnp.array([1.0, 0, 1, 0, 1, 1, 0, 0])


@nnx.jit
def _forward(model, ids, mask):
    return model(ids, mask)


@nnx.jit
def _train_step(model, optimizer, ids, mask, labels):
    def loss_fn(model):
        return optax.sigmoid_binary_cross_entropy(model(ids, mask), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@pytest.fixture(scope="module")
def single_device():
    """Reference forward and post-step parameters without any mesh."""
    ids, mask, labels = _batch()
    model = _model()
    logits = np.asarray(_forward(model, ids, mask))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    model.train()
    loss = float(_train_step(model, optimizer, ids, mask, labels))
    return logits, loss, jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


def test_make_mesh_axes_and_errors():
    mesh = sharding.make_mesh(model=2)
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": 4, "model": 2}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert dict(sharding.make_mesh(devices=jax.devices()[:2]).shape) == {"data": 2, "model": 1}
    with pytest.raises(ValueError, match="model=3 does not divide"):
        sharding.make_mesh(model=3)
    with pytest.raises(ValueError, match="data=3 x model=2"):
        sharding.make_mesh(data=3, model=2)


def test_logical_to_spec_rules():
    mesh = sharding.make_mesh(data=4, model=2)
    spec = sharding.logical_to_spec
    assert spec(("embed", "heads", "kv"), (48, 4, 12), mesh, "fsdp_tp") == P("data", "model", None)
    assert spec(("vocab", "embed"), (30522, 384), mesh, "tp") == P("model", None)
    # not divisible -> replicated; a mesh axis used twice -> second use replicated
    assert spec(("vocab", "embed"), (1001, 48), mesh, "tp") == P(None, None)
    assert spec(("heads", "mlp"), (4, 96), mesh, "tp") == P("model", None)
    assert spec(("embed",), (48,), mesh, "dp") == P(None)
    with pytest.raises(ValueError, match="logical axis 'bogus' has no rule"):
        spec(("bogus",), (4,), mesh, "dp")
    with pytest.raises(ValueError, match="missing from the mesh"):
        spec(("embed",), (48,), mesh, {"embed": "fsdp"})
    with pytest.raises(ValueError, match="rules='zero3'"):
        spec(("embed",), (48,), mesh, "zero3")


def test_every_parameter_is_annotated():
    for path, var in nnx.to_flat_state(nnx.state(_model(), nnx.Param)):
        logical = var.get_metadata().get("out_sharding")
        assert logical is not None and len(logical) == var.get_value().ndim, path


@pytest.mark.parametrize("strategy", sorted(MESHES))
def test_sharded_forward_equals_single_device(strategy, single_device):
    ref_logits, _, _ = single_device
    data, model_size = MESHES[strategy]
    mesh = sharding.make_mesh(data=data, model=model_size)
    model = _model()
    sharding.shard_model(model, mesh, strategy)
    kernel = model.encoder.encoder.layers[0].intermediate.kernel.get_value()
    expected = {
        "dp": P(None, None),
        "fsdp": P("data", None),
        "tp": P(None, "model"),
        "fsdp_tp": P("data", "model"),
    }
    assert kernel.sharding.spec == expected[strategy]
    ids, mask, _ = (jax.device_put(x, sharding.batch_sharding(mesh)) for x in _batch())
    with jax.set_mesh(mesh):
        inside = _forward(model, ids, mask)
    outside = _forward(model, ids, mask)
    # Sharded matmuls split the float32 sums differently: a few ulps of O(1) logits.
    np.testing.assert_allclose(inside, ref_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(outside, ref_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", ["dp", "fsdp_tp"])
def test_sharded_train_step_equals_single_device(strategy, single_device):
    _, ref_loss, ref_params = single_device
    data, model_size = MESHES[strategy]
    mesh = sharding.make_mesh(data=data, model=model_size)
    model = _model()
    sharding.shard_model(model, mesh, strategy)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    sharding.shard_model(optimizer, mesh, strategy)
    mu = optimizer.opt_state[0].mu["encoder"]["encoder"]["layers"][0]["intermediate"]["kernel"]
    kernel = model.encoder.encoder.layers[0].intermediate.kernel
    assert mu.get_value().sharding.spec == kernel.get_value().sharding.spec
    ids, mask, labels = (jax.device_put(x, sharding.batch_sharding(mesh)) for x in _batch())
    model.train()
    with jax.set_mesh(mesh):
        loss = float(_train_step(model, optimizer, ids, mask, labels))
    assert abs(loss - ref_loss) < 1e-5
    for (path, ref), (_, new) in zip(
        nnx.to_flat_state(ref_params), nnx.to_flat_state(nnx.state(model, nnx.Param)), strict=True
    ):
        # Adam's first step moves each weight by ~lr * sign(grad); 1e-5 is 1% of that step.
        np.testing.assert_allclose(
            np.asarray(new.get_value()), ref.get_value(), atol=1e-5, err_msg=str(path)
        )


def test_tree_shardings_of_abstract_state():
    mesh = sharding.make_mesh(data=8)
    abstract = nnx.eval_shape(_model)
    shardings = sharding.tree_shardings(nnx.state(abstract), mesh, "fsdp")
    word = shardings["encoder"]["embeddings"]["word_embeddings"]["embedding"].get_value()
    assert word.spec == P(None, "data") and word.mesh is mesh
