"""The jitted train/eval steps: they learn, touch every parameter, skip non-finite updates, and
give the same result on one device and data-parallel over eight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_classifier

from configs import default
from jaxsent import losses, sharding
from jaxsent.training.optim import make_optimizer
from jaxsent.training.steps import build_steps, merge_model, trainable_filter

OPTIM = dict(default.get_config().optim) | dict(
    learning_rate=1e-3, schedule="constant", warmup_steps=0, max_consecutive_nonfinite=3
)


def _batch(batch=16, length=12, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(1000, 2000, size=(batch, length)), 0)
    return {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask.astype(np.int32),
        "labels": (rng.random(batch) < 0.5).astype(np.int32),
        "lengths": lengths.astype(np.int32),
        "where": np.arange(batch) < batch - 3,  # three padding rows, as in a last batch
    }


def _setup(
    mesh,
    *,
    loss_fn=None,
    seed=0,
    rules="dp",
    dropout_rate=0.1,
    optim=OPTIM,
    micro_batches=1,
    layout=None,
    **model_overrides,
):
    model = tiny_classifier(seed=seed, dropout_rate=dropout_rate, **model_overrides)
    if layout:  # remat / scan_layers: the same parameters, another program
        model.encoder.encoder.set_layout(**layout)
    tx, _ = make_optimizer(optim, total_steps=100)
    optimizer = nnx.Optimizer(model, tx, wrt=trainable_filter(model))
    with jax.set_mesh(mesh):
        steps, state = build_steps(
            model,
            optimizer,
            loss_fn=loss_fn or losses.get_loss("focal"),
            dropout_key=jax.random.key(7),
            state_shardings_fn=lambda tree: sharding.tree_shardings(tree, mesh, rules),
            micro_batches=micro_batches,
        )
    return steps, state


def _place(batch, mesh):
    return jax.device_put(
        batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    )


def _params(steps, state):
    return nnx.to_pure_dict(nnx.state(merge_model(steps, state), nnx.Param))


@pytest.fixture(scope="module")
def one_device_mesh():
    return sharding.make_mesh(devices=jax.devices()[:1])


def test_step_changes_every_parameter_and_loss_decreases(one_device_mesh):
    mesh = one_device_mesh
    # No dropout at all: with it, a strictly falling loss over 8 steps depends on the keys.
    steps, state = _setup(
        mesh, dropout_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    before = jax.tree.map(np.array, _params(steps, state))
    batch = _place(_batch(), mesh)
    seen = []
    with jax.set_mesh(mesh):
        for _ in range(8):
            state, metrics = steps.train_step(state, batch)
            seen.append(float(metrics["loss"]))
    after = _params(steps, state)
    # Mean pooling never reads the pooler: it is excluded from training (trainable_filter).
    unchanged = [
        jax.tree_util.keystr(path)
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(before),
            jax.tree_util.tree_leaves(after),
            strict=True,
        )
        if np.array_equal(a, np.asarray(b)) != ("pooler" in jax.tree_util.keystr(path))
    ]
    assert not unchanged, f"parameters updated against the trainable filter: {unchanged}"
    assert np.all(np.diff(seen) < 0) and seen[-1] < 0.9 * seen[0], seen
    assert int(metrics["examples"]) == 13
    assert int(metrics["real_tokens"]) == int(np.sum(_batch()["lengths"][:13]))


def test_step_keeps_parameter_shardings_and_counts_steps(one_device_mesh):
    steps, state = _setup(one_device_mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    with jax.set_mesh(one_device_mesh):
        state, _ = steps.train_step(state, _place(_batch(), one_device_mesh))
    assert jax.tree.map(lambda x: x.sharding, state) == shardings
    assert int(nnx.to_pure_dict(state)[1]["step"]) == 1


def _three_steps(mesh, rules):
    steps, state = _setup(mesh, rules=rules)
    losses_seen = []
    with jax.set_mesh(mesh):
        for seed in range(3):
            state, metrics = steps.train_step(state, _place(_batch(seed=seed), mesh))
            losses_seen.append(float(metrics["loss"]))
    return steps, state, losses_seen


@pytest.mark.parametrize("data, model, rules", [(8, 1, "dp"), (8, 1, "fsdp"), (4, 2, "fsdp_tp")])
def test_sharded_step_equals_single_device_step(one_device_mesh, data, model, rules):
    """Eight devices vs one: same dropout masks, same losses and parameters within 1e-5."""
    assert jax.device_count() >= 8, "tests/conftest.py asks XLA for 8 host devices"
    mesh8 = sharding.make_mesh(data=data, model=model, devices=jax.devices()[:8])
    results = []
    for mesh, mesh_rules in ((one_device_mesh, "dp"), (mesh8, rules)):
        steps, state, losses_seen = _three_steps(mesh, mesh_rules)
        results.append((losses_seen, jax.tree.map(np.asarray, _params(steps, state))))
    (loss1, params1), (loss8, params8) = results
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-6)
    # Sharded, the batch's gradient is summed per device and then across devices, in another
    # order than on one device. Adam divides by sqrt(v): for a weight whose gradient nearly
    # cancels (a word-embedding row hit once or twice), that relative rounding difference
    # becomes a difference in the update itself, bounded by the step, lr = 1e-3. Observed: one
    # element of the 976,704 word embeddings, 1.1e-5 apart after 3 steps under fsdp; 2e-5 is
    # 0.7% of the 3e-3 the three steps may move a weight.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-5), params1, params8
    )


def test_fsdp_spreads_parameters_and_optimizer_moments_over_devices():
    mesh = sharding.make_mesh(data=8, devices=jax.devices()[:8])
    steps, state, _ = _three_steps(mesh, "fsdp")
    pure = nnx.to_pure_dict(state)
    params, opt = pure[0], pure[1]
    # Every matrix with a hidden-size (32) dimension is split along it over the 8 devices
    # (32 divides by 8; the vocabulary axis is not sharded by the fsdp rules).
    sharded = [
        (jax.tree_util.keystr(path), x)
        for path, x in jax.tree_util.tree_leaves_with_path(params)
        if x.ndim >= 2 and 32 in x.shape
    ]
    assert len(sharded) >= 10
    for name, x in sharded:
        shard = x.addressable_shards[0].data
        assert shard.size * 8 == x.size, (name, x.shape, shard.shape)
        assert len({s.device for s in x.addressable_shards}) == 8
    moments = [
        x
        for path, x in jax.tree_util.tree_leaves_with_path(opt)
        if "mu" in jax.tree_util.keystr(path) and x.ndim >= 2 and 32 in x.shape
    ]
    assert len(moments) == len([name for name, _ in sharded if "pooler" not in name])
    assert all(x.addressable_shards[0].data.size * 8 == x.size for x in moments)


def test_nonfinite_loss_skips_the_update_and_is_reported(one_device_mesh):
    def poisoned(logits, labels, lengths, *, where):
        # A NaN reaching the logits (as from an overflow in the forward pass): loss and every
        # gradient become NaN.
        logits = jnp.where(jnp.any(lengths == 999), jnp.nan, 1.0) * logits
        return losses.bce_loss(logits, labels, lengths, where=where)

    steps, state = _setup(one_device_mesh, loss_fn=poisoned)
    before = jax.tree.map(np.array, _params(steps, state))
    bad = _batch()
    bad["lengths"][0] = 999
    with jax.set_mesh(one_device_mesh):
        state, metrics = steps.train_step(state, _place(bad, one_device_mesh))
        assert not bool(metrics["finite"])
        jax.tree.map(np.testing.assert_array_equal, before, _params(steps, state))
        opt = nnx.to_pure_dict(state)[1]["opt_state"]
        assert int(opt["notfinite_count"]) == 1 and int(opt["total_notfinite"]) == 1
        state, metrics = steps.train_step(state, _place(_batch(), one_device_mesh))
        assert bool(metrics["finite"])
        assert int(nnx.to_pure_dict(state)[1]["opt_state"]["notfinite_count"]) == 0


def test_the_step_hands_adam_the_clipped_gradient(one_device_mesh):
    """After one step Adam's first moment is ``(1 - b1) * g`` for the gradient ``g`` it got
    (tests/test_optim.py), so its norm is ``(1 - b1) * clip`` when the gradient's norm (the
    step's ``grad_norm``, taken before clipping) is above ``clip``, and would be
    ``(1 - b1) * grad_norm`` without clipping."""
    clip = 1e-3
    steps, state = _setup(one_device_mesh, optim=OPTIM | dict(grad_clip_norm=clip))
    with jax.set_mesh(one_device_mesh):
        state, metrics = steps.train_step(state, _place(_batch(), one_device_mesh))
    assert float(metrics["grad_norm"]) > 100 * clip  # clipping must act
    opt_state = nnx.to_pure_dict(state)[1]["opt_state"]
    mu = [
        np.asarray(x, np.float64)
        for path, x in jax.tree_util.tree_leaves_with_path(opt_state)
        if "'mu'" in jax.tree_util.keystr(path)
    ]
    assert len(mu) == len(jax.tree.leaves(_params(steps, state))) - 2  # all but the pooler's
    mu_norm = np.sqrt(sum(np.sum(np.square(m)) for m in mu))
    np.testing.assert_allclose(mu_norm, (1 - OPTIM["b1"]) * clip, rtol=1e-5)


def test_eval_step_is_deterministic_and_matches_the_model(one_device_mesh):
    steps, state = _setup(one_device_mesh)
    batch = _batch()
    with jax.set_mesh(one_device_mesh):
        a = steps.eval_step(state, _place(batch, one_device_mesh))
        b = steps.eval_step(state, _place(batch, one_device_mesh))
    model = merge_model(steps, state)
    direct = model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, direct, rtol=1e-5, atol=1e-6)
    assert a.shape == (16,) and a.dtype == jnp.float32


def test_nonfinite_guard_stops_after_the_limit_in_a_row(tmp_path):
    from jaxsent.training.loop import NonFiniteGuard

    guard = NonFiniteGuard(3, checkpoint_dir=tmp_path)
    guard.update([True, False, False, True, False, False], last_step=6)  # runs of 2: fine
    assert guard.consecutive == 2
    with pytest.raises(FloatingPointError, match=r"3 consecutive non-finite .* step 7"):
        guard.update([False], last_step=7)
    with pytest.raises(ValueError, match="max_consecutive_nonfinite=0"):
        NonFiniteGuard(0, checkpoint_dir=tmp_path)


NO_DROPOUT = dict(dropout_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize(
    "micro_batches, padding_rows",
    [
        (2, [13, 14, 15]),  # a last batch: the micro-batches hold 7 and 6 real rows
        (4, [3, 7, 11, 15]),  # micro-batch 3 (rows 3, 7, 11, 15) is all padding
    ],
)
def test_micro_batches_take_the_whole_batch_step(one_device_mesh, micro_batches, padding_rows):
    # Without dropout the step is a function of the batch alone: micro-batches must give the
    # whole batch's loss, gradient norm and parameters.
    bce = losses.get_loss("bce")
    results = []
    for count in (1, micro_batches):
        steps, state = _setup(one_device_mesh, loss_fn=bce, micro_batches=count, **NO_DROPOUT)
        seen = []
        with jax.set_mesh(one_device_mesh):
            for seed in range(3):
                batch = _batch(seed=seed)
                batch["where"] = ~np.isin(np.arange(16), padding_rows)
                state, metrics = steps.train_step(state, _place(batch, one_device_mesh))
                seen.append({k: float(v) for k, v in metrics.items()})
        results.append((seen, jax.tree.map(np.asarray, _params(steps, state))))
    (whole, params_whole), (split, params_split) = results
    for a, b in zip(whole, split, strict=True):
        assert a["examples"] == b["examples"] == 16 - len(padding_rows)
        # float32 sums in another order: the loss to 1e-6, the norm to 1e-5 relative
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-5)
    # Adam's sqrt(v) amplifies rounding in nearly cancelling gradients (see the sharded test).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-5),
        params_whole,
        params_split,
    )


def test_a_five_class_step_is_the_same_sharded_in_micro_batches_and_scanned(one_device_mesh):
    """K classes through every layout of the step: one device whole batch (the reference)
    against fsdp_tp over 4 x 2 devices in 2 micro-batches, and against scan_layers + remat."""
    bce = losses.get_loss("bce")  # softmax cross-entropy on [B, 5] logits
    mesh8 = sharding.make_mesh(data=4, model=2, devices=jax.devices()[:8])

    def run(mesh, rules, micro_batches, layout=None):
        steps, state = _setup(
            mesh, loss_fn=bce, rules=rules, micro_batches=micro_batches, num_labels=5, **NO_DROPOUT
        )
        if layout:
            model = merge_model(steps, state, train=True)
            model.encoder.encoder.set_layout(**layout)
            tx, _ = make_optimizer(OPTIM, total_steps=100)
            with jax.set_mesh(mesh):
                steps, state = build_steps(
                    model,
                    nnx.Optimizer(model, tx, wrt=trainable_filter(model)),
                    loss_fn=bce,
                    dropout_key=jax.random.key(7),
                    state_shardings_fn=lambda tree: sharding.tree_shardings(tree, mesh, rules),
                )
        seen = []
        with jax.set_mesh(mesh):
            for seed in range(2):
                batch = _batch(seed=seed)
                batch["labels"] = np.random.default_rng(seed).integers(0, 5, 16).astype(np.int32)
                state, metrics = steps.train_step(state, _place(batch, mesh))
                seen.append(float(metrics["loss"]))
            logits = steps.eval_step(state, _place(_batch(seed=5), mesh))
        model = merge_model(steps, state)
        if layout:
            model.encoder.encoder.set_layout(remat="none", scan_layers=False)
        return seen, np.asarray(logits), jax.tree.map(np.asarray, nnx.state(model, nnx.Param))

    reference = run(one_device_mesh, "dp", 1)
    assert reference[1].shape == (16, 5)
    for other in (
        run(mesh8, "fsdp_tp", 2),
        run(one_device_mesh, "dp", 1, dict(remat="full", scan_layers=True)),
    ):
        # float32 sums in other orders (see the sharded and micro-batch tests above)
        np.testing.assert_allclose(other[0], reference[0], rtol=1e-6)
        np.testing.assert_allclose(other[1], reference[1], rtol=1e-5, atol=1e-5)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-5),
            reference[2],
            other[2],
        )


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_takes_the_same_steps_with_the_same_dropout_masks(one_device_mesh, remat):
    # Rematerialisation recomputes the forward in the backward pass; with dropout on, the
    # recomputed masks must be the forward's, or the gradients (so the next losses) would move.
    bce = losses.get_loss("bce")

    def run(layout):
        steps, state = _setup(one_device_mesh, loss_fn=bce, layout=layout)
        seen = []
        with jax.set_mesh(one_device_mesh):
            for seed in range(3):
                state, metrics = steps.train_step(state, _place(_batch(seed=seed), one_device_mesh))
                seen.append(float(metrics["loss"]))
        model = merge_model(steps, state)
        model.encoder.encoder.set_layout(remat="none", scan_layers=False)
        return seen, jax.tree.map(np.asarray, nnx.state(model, nnx.Param))

    reference, rematted = run(None), run(dict(remat=remat, scan_layers=False))
    # float32 sums in other fusions: ~1e-7 relative; another mask would move a loss by ~1e-2.
    np.testing.assert_allclose(rematted[0], reference[0], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-5),
        reference[1],
        rematted[1],
    )


def test_each_micro_batch_draws_its_own_dropout_masks(one_device_mesh):
    # Rows 2i and 2i + 1 of `doubled` are row i of `half`, so both of its micro-batches are
    # `half`. Micro-batch 0 draws the masks a whole-batch step on `half` draws; micro-batch 1
    # must draw new ones, so the two losses differ. Reused masks would make them equal, as
    # they are without dropout.
    half = _batch(batch=8, seed=1)
    half["where"] = np.ones(8, bool)
    doubled = {k: np.repeat(v, 2, axis=0) for k, v in half.items()}
    bce = losses.get_loss("bce")
    losses_seen = {}
    for dropout in (True, False):
        overrides = {} if dropout else NO_DROPOUT
        for count, batch in ((1, half), (2, doubled)):
            steps, state = _setup(one_device_mesh, loss_fn=bce, micro_batches=count, **overrides)
            with jax.set_mesh(one_device_mesh):
                _, metrics = steps.train_step(state, _place(batch, one_device_mesh))
            losses_seen[dropout, count] = float(metrics["loss"])
    assert losses_seen[False, 2] == pytest.approx(losses_seen[False, 1], rel=1e-6)
    assert losses_seen[True, 2] != pytest.approx(losses_seen[True, 1], rel=1e-4)
