"""jaxsent.losses on a batch sharded over 8 virtual CPU devices equals the unsharded loss.

tests/conftest.py sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax
is imported. ``jax.make_mesh`` makes Explicit axes, so the sharded call runs inside
``with jax.set_mesh(mesh):``; an Auto-axes mesh is checked without it.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from jax.experimental import checkify
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsent import losses

B = 64
LOSSES = {
    "bce": losses.bce_loss,
    "weighted": losses.sentiment_weighted_loss,
    "focal": functools.partial(losses.sentiment_focal_loss, gamma_focal=2.0),
}


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    logits = rng.uniform(-20.0, 20.0, B).astype(np.float32)
    labels = rng.integers(0, 2, B).astype(np.int32)
    lengths = rng.integers(0, 513, B).astype(np.int32)
    where = rng.random(B) < 0.75
    logits[~where] = np.nan  # padding rows must not leak across shards either
    return logits, labels, lengths, where


def value_and_grad(fn):
    return jax.jit(jax.value_and_grad(lambda x, y, n, m: fn(x, y, n, where=m)))


def assert_matches(sharded, unsharded):
    value, grad = sharded
    ref_value, ref_grad = unsharded
    # Per-shard partial sums are combined in a different order: a few float32 ulp.
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6 * np.max(np.abs(ref_grad)))


def test_eight_devices():
    assert jax.device_count() >= 8, "tests/conftest.py must set XLA_FLAGS before jax loads"


@pytest.mark.parametrize("name", list(LOSSES))
def test_sharded_equals_unsharded_explicit_mesh(batch, name):
    f = value_and_grad(LOSSES[name])
    unsharded = f(*batch)
    mesh = jax.make_mesh((8,), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        sharded_batch = [jax.device_put(a, sharding) for a in batch]
        value, grad = f(*sharded_batch)
        assert grad.sharding.spec == P("data")
    assert_matches((value, grad), unsharded)


@pytest.mark.parametrize("name", ["weighted", "focal"])
def test_sharded_equals_unsharded_auto_mesh(batch, name):
    f = value_and_grad(LOSSES[name])
    unsharded = f(*batch)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    sharded_batch = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in batch]
    assert_matches(f(*sharded_batch), unsharded)


def test_checkify_on_a_sharded_batch(batch):
    logits, labels, lengths, where = batch
    bad_labels = labels.copy()
    bad_labels[np.flatnonzero(where)[3]] = 2
    mesh = jax.make_mesh((8,), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    checked = checkify.checkify(
        jax.jit(lambda x, y, n, m: losses.sentiment_focal_loss(x, y, n, where=m)),
        errors=checkify.user_checks,
    )
    with jax.set_mesh(mesh):
        err, _ = checked(
            *[jax.device_put(a, sharding) for a in (logits, bad_labels, lengths, where)]
        )
    with pytest.raises(checkify.JaxRuntimeError, match="labels must be 0 or 1; got 2"):
        err.throw()
