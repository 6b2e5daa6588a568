"""jaxsent.losses against independent references: PyTorch, the seed's own code, mpmath.

Three oracles, each written here from the seed (../shared/seed/000_*.txt) and its
original code, never from the library:

* ``torch_seed_loss`` states the seed's semantics in PyTorch with cancellation-free
  formulas (``logsigmoid``, ``sigmoid(-s)`` for ``1 - p_t``, ``tanh`` for the
  confidence). Being well conditioned, it can be compared at float32 rounding level.
* ``SeedWeightedLoss`` / ``SeedFocalLoss`` transcribe the seed's original PyTorch code
  line by line (``1 - probs``, ``(probs - 0.5).abs()``, ``BCEWithLogitsLoss``). Those
  formulas cancel, so they are compared in float64 on logits where the cancellation is
  bounded, and shown to miss the float32 accuracy target the library meets.
* mpmath at 40 digits gives the exact function and its gradient, to validate the
  float64 PyTorch statement and the library's float32 accuracy for |logit| up to 40.

Tolerances. Loss values: relative error. Gradients: max-norm relative error,
``max|g - g_ref| <= rtol * max|g_ref|``. Elementwise relative error is not used for
gradients because a component that is a sum of opposite-signed terms (the BCE slope
against the normalisation's slope) can be arbitrarily small relative to its
summands, so its relative error measures cancellation, not correctness.
"""

from __future__ import annotations

import doctest
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jaxsent import losses
from jaxsent.losses import _registry, _sentiment, _terms, _validation

GAMMAS = (-2.0, -0.5, 0.0, 0.1, 1.0, 2.0)
EPSILONS = (0.0, 0.05, 0.2)
MIN_LENGTH_WEIGHTS = (0.1, 0.0)
# (kind, gamma, epsilon, min_length_weight): every focal combination, and the weighted
# loss (no gamma or epsilon) with both clamps.
CONFIGS = [("weighted", 0.0, 0.0, m) for m in MIN_LENGTH_WEIGHTS] + [
    ("focal", g, e, m) for g, e, m in itertools.product(GAMMAS, EPSILONS, MIN_LENGTH_WEIGHTS)
]
# Few distinct sizes: every new shape costs a round of compilation.
BATCH_SIZES = (1, 7, 64, 512)


# ----------------------------------------------------------------------------------
# Oracle 1: the seed's semantics, stated in PyTorch without cancellation.
# ----------------------------------------------------------------------------------
class StableSigmoid(torch.autograd.Function):
    """torch.sigmoid with the slope sigmoid(z) * sigmoid(-z) instead of y * (1 - y),
    which cancels where sigmoid(z) is near 1 (a confidently wrong p_t)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.sigmoid(z)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * StableSigmoid.apply(z) * StableSigmoid.apply(-z)


class StableConfidence(torch.autograd.Function):
    """|sigmoid(x) - 0.5| * 2 = |tanh(x/2)|, with the slope 2 sign(x) sigmoid(x) sigmoid(-x)
    instead of autograd's (1 - tanh^2) / 2, which is 0 in float32 for |x| > 17."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x / 2).abs()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * torch.sign(x) * StableSigmoid.apply(x) * StableSigmoid.apply(-x)


def torch_seed_loss(
    x, y, lengths, *, kind, gamma=0.0, epsilon=0.0, min_length_weight=0.1, detach_weights=False
):
    """The seed loss on the real rows ``x`` [B] (a torch tensor), labels, lengths."""
    if x.numel() == 0:
        return x.sum() * 0.0
    y = y.to(x.dtype)
    if kind == "weighted":
        gamma, epsilon = 0.0, 0.0
    target = y * (1 - epsilon) + (1 - y) * epsilon  # smoothed label y'
    complement = y * epsilon + (1 - y) * (1 - epsilon)  # 1 - y'
    per_example = -(target * F.logsigmoid(x) + complement * F.logsigmoid(-x))
    if gamma != 0:
        signed = torch.where(y.bool(), x, -x)  # p_t = sigmoid(signed)
        base = StableSigmoid.apply(-signed if gamma > 0 else signed)
        modulator = (base + 1e-8) ** abs(gamma)
        if detach_weights:
            modulator = modulator.detach()
        per_example = modulator * per_example
    confidence = StableConfidence.apply(x)
    lengths = lengths.to(x.dtype)
    max_length = lengths.max()
    if max_length == 0:
        length_w = torch.ones_like(lengths)
    else:
        length_w = (lengths.sqrt() / max_length.sqrt()).clamp(min_length_weight, 1.0)
    weights = confidence * length_w
    if weights.sum() > 1e-8:
        weights = weights / (weights.mean() + 1e-8)
    else:
        weights = torch.ones_like(weights)
    if detach_weights:
        weights = weights.detach()
    return (per_example * weights).mean()


# ----------------------------------------------------------------------------------
# Oracle 2: the seed's original code, transcribed (weighted: document clamp 0.1;
# focal: clamp [min_length_weight, 1] and the original's 1e-8 in the denominator).
# ----------------------------------------------------------------------------------
class SeedWeightedLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(reduction="none")
        self.min_len_weight_sqrt = 0.1

    def forward(self, logits, targets, lengths):
        base_loss = self.bce(logits.view(-1), targets.float().to(logits.dtype))
        prob = torch.sigmoid(logits.view(-1))
        confidence_weight = (prob - 0.5).abs() * 2
        if lengths.numel() == 0:
            return torch.tensor(0.0, requires_grad=logits.requires_grad)
        length_weight = torch.sqrt(lengths.to(logits.dtype)) / math.sqrt(lengths.max().item())
        length_weight = length_weight.clamp(self.min_len_weight_sqrt, 1.0)
        weights = confidence_weight * length_weight
        weights = weights / (weights.mean() + 1e-8)
        return (base_loss * weights).mean()


class SeedFocalLoss(nn.Module):
    def __init__(self, gamma_focal=0.1, label_smoothing_epsilon=0.05, min_length_weight=0.0):
        super().__init__()
        self.gamma_focal = gamma_focal
        self.label_smoothing_epsilon = label_smoothing_epsilon
        self.min_length_weight = min_length_weight  # the original code: 0.0
        self.bce_loss_no_reduction = nn.BCEWithLogitsLoss(reduction="none")

    def forward(self, logits, targets, lengths):
        logits_flat = logits.view(-1)
        original_targets_flat = targets.view(-1).to(logits.dtype)
        e = self.label_smoothing_epsilon
        if e > 0:
            targets_for_bce = original_targets_flat * (1.0 - e) + (1.0 - original_targets_flat) * e
        else:
            targets_for_bce = original_targets_flat
        base_bce_loss_terms = self.bce_loss_no_reduction(logits_flat, targets_for_bce)
        probs = torch.sigmoid(logits_flat)
        pt = torch.where(original_targets_flat.bool(), probs, 1.0 - probs)
        focal_modulator = torch.ones_like(pt)
        if self.gamma_focal > 0:
            focal_modulator = (1.0 - pt + 1e-8).pow(self.gamma_focal)
        elif self.gamma_focal < 0:
            focal_modulator = (pt + 1e-8).pow(abs(self.gamma_focal))
        modulated_loss_terms = focal_modulator * base_bce_loss_terms
        confidence_w = (probs - 0.5).abs() * 2.0
        lengths_flat = lengths.view(-1).to(logits.dtype)
        max_len_in_batch = lengths_flat.max().item()
        if max_len_in_batch == 0:
            length_w = torch.ones_like(lengths_flat)
        else:
            length_w = torch.sqrt(lengths_flat) / (math.sqrt(max_len_in_batch) + 1e-8)
            length_w = torch.clamp(length_w, self.min_length_weight, 1.0)
        external_weights = confidence_w * length_w
        if external_weights.sum() > 1e-8:
            normalized_external_weights = external_weights / (external_weights.mean() + 1e-8)
        else:
            normalized_external_weights = torch.ones_like(external_weights)
        return (modulated_loss_terms * normalized_external_weights).mean()


# ----------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------
def random_batch(seed, batch, *, logit_scale=20.0, dtype=np.float32, max_length=512):
    rng = np.random.default_rng(seed)
    logits = rng.uniform(-logit_scale, logit_scale, batch).astype(dtype)
    labels = rng.integers(0, 2, batch).astype(np.int32)
    lengths = rng.integers(0, max_length + 1, batch).astype(np.int32)
    return logits, labels, lengths


def jax_loss_fn(kind, gamma, epsilon, min_length_weight, **kwargs):
    if kind == "weighted":
        return lambda x, y, n, **kw: losses.sentiment_weighted_loss(
            x, y, n, min_length_weight=min_length_weight, **kwargs, **kw
        )
    return lambda x, y, n, **kw: losses.sentiment_focal_loss(
        x,
        y,
        n,
        gamma_focal=gamma,
        label_smoothing_epsilon=epsilon,
        min_length_weight=min_length_weight,
        **kwargs,
        **kw,
    )


def jax_value_and_grad(
    kind, gamma, epsilon, min_length_weight, logits, labels, lengths, *, jit=False, **kwargs
):
    """Eager by default: over many configurations, op-by-op dispatch reuses compiled
    primitives where ``jax.jit`` compiles each one (0.4 s each on the CI machine).
    ``test_losses_properties.py`` checks that jit and eager agree."""
    fn = jax.value_and_grad(jax_loss_fn(kind, gamma, epsilon, min_length_weight, **kwargs))
    value, grad = (jax.jit(fn) if jit else fn)(logits, labels, lengths)
    return np.asarray(value), np.asarray(grad)


def torch_value_and_grad(fn, logits, labels, lengths, dtype):
    x = torch.tensor(np.asarray(logits), dtype=dtype, requires_grad=True)
    value = fn(x, torch.tensor(np.asarray(labels)), torch.tensor(np.asarray(lengths)))
    (grad,) = torch.autograd.grad(value, x) if x.numel() else (torch.zeros_like(x),)
    return value.detach().numpy(), grad.numpy()


def torch_reference(
    kind, gamma, epsilon, min_length_weight, logits, labels, lengths, dtype, **kwargs
):
    def fn(x, y, n):
        return torch_seed_loss(
            x,
            y,
            n,
            kind=kind,
            gamma=gamma,
            epsilon=epsilon,
            min_length_weight=min_length_weight,
            **kwargs,
        )

    return torch_value_and_grad(fn, logits, labels, lengths, dtype)


def assert_close(value, grad, ref_value, ref_grad, rtol, what=""):
    value_err = abs(float(value) - float(ref_value)) / max(abs(float(ref_value)), 1e-300)
    scale = np.max(np.abs(ref_grad)) if np.size(ref_grad) else 0.0
    grad_err = (
        np.max(np.abs(np.asarray(grad, np.float64) - ref_grad)) / scale
        if scale > 0
        else np.max(np.abs(grad), initial=0.0)
    )
    assert value_err <= rtol, f"{what}: loss rel. error {value_err:.3g} > {rtol}"
    assert grad_err <= rtol, f"{what}: grad max-norm rel. error {grad_err:.3g} > {rtol}"


# ----------------------------------------------------------------------------------
# Parity with the PyTorch statement
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_parity_with_torch_float32(config):
    kind, gamma, epsilon, min_length_weight = config
    batch = BATCH_SIZES[CONFIGS.index(config) % len(BATCH_SIZES)]
    logits, labels, lengths = random_batch(CONFIGS.index(config), batch)
    value, grad = jax_value_and_grad(*config, logits, labels, lengths)
    ref_value, ref_grad = torch_reference(*config, logits, labels, lengths, torch.float32)
    chex.assert_shape(value, ())
    chex.assert_type(value, np.float32)
    assert_close(value, grad, ref_value, ref_grad, 1e-6, f"{config} B={batch}")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_parity_with_torch_float64(config):
    kind, gamma, epsilon, min_length_weight = config
    batch = BATCH_SIZES[(CONFIGS.index(config) + 3) % len(BATCH_SIZES)]
    logits, labels, lengths = random_batch(100 + CONFIGS.index(config), batch, dtype=np.float64)
    with jax.enable_x64(True):
        value, grad = jax_value_and_grad(*config, jnp.asarray(logits), labels, lengths)
    chex.assert_type(value, np.float64)
    ref_value, ref_grad = torch_reference(*config, logits, labels, lengths, torch.float64)
    assert_close(value, grad, ref_value, ref_grad, 1e-12, f"{config} B={batch}")


@pytest.mark.parametrize("kind", ["weighted", "focal"])
def test_parity_with_stop_gradient_weights(kind):
    logits, labels, lengths = random_batch(7, 64, dtype=np.float64)
    config = (kind, 2.0, 0.05, 0.1)
    with jax.enable_x64(True):
        value, grad = jax_value_and_grad(
            *config, jnp.asarray(logits), labels, lengths, stop_gradient_weights=True
        )
        free_value, free_grad = jax_value_and_grad(*config, jnp.asarray(logits), labels, lengths)
    ref_value, ref_grad = torch_reference(
        *config, logits, labels, lengths, torch.float64, detach_weights=True
    )
    assert_close(value, grad, ref_value, ref_grad, 1e-12, "detached")
    assert value == free_value  # the knob changes gradients only
    assert np.max(np.abs(grad - free_grad)) > 1e-3


# ----------------------------------------------------------------------------------
# The seed's original code
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma,epsilon", list(itertools.product(GAMMAS, EPSILONS)))
def test_original_focal_code_is_min_length_weight_zero(gamma, epsilon):
    """``min_length_weight=0.0`` reproduces the seed's original focal code.

    float64, logits in [-8, 8]: there the original's ``1 - sigmoid(x)`` loses at most
    log2(1 / sigmoid(-8)) ~ 11.5 bits (relative error <= 2**-53 * 2981 ~ 3.3e-13) and
    ``sigmoid(x) - 0.5`` at most log2(0.5 / |sigmoid(x) - 0.5|) bits for the smallest
    |x| in the batch (~0.01 here: ~8 bits, 3e-14), so 1e-10 bounds the comparison with
    two orders of margin. The original's extra 1e-8 in the length denominator is
    cancelled by the normalisation (see ``length_weights``).
    """
    logits, labels, lengths = random_batch(3, 512, logit_scale=8.0, dtype=np.float64)
    seed = SeedFocalLoss(gamma, epsilon, min_length_weight=0.0)
    ref_value, ref_grad = torch_value_and_grad(seed, logits, labels, lengths, torch.float64)
    with jax.enable_x64(True):
        value, grad = jax_value_and_grad(
            "focal", gamma, epsilon, 0.0, jnp.asarray(logits), labels, lengths
        )
    assert_close(value, grad, ref_value, ref_grad, 1e-10, "original focal code")


def test_original_weighted_code():
    """Same bound as above, for the seed's SentimentWeightedLoss (clamp 0.1)."""
    logits, labels, lengths = random_batch(4, 512, logit_scale=8.0, dtype=np.float64)
    ref_value, ref_grad = torch_value_and_grad(
        SeedWeightedLoss(), logits, labels, lengths, torch.float64
    )
    with jax.enable_x64(True):
        value, grad = jax_value_and_grad(
            "weighted", 0.0, 0.0, 0.1, jnp.asarray(logits), labels, lengths
        )
    assert_close(value, grad, ref_value, ref_grad, 1e-10, "original weighted code")


def test_document_clamp_differs_from_original_focal_clamp():
    """The default (0.1) follows the document; it differs from the original code when
    some review is shorter than 1% of the batch's longest."""
    logits, labels, _ = random_batch(5, 7)
    lengths = np.array([1, 400, 300, 200, 2, 350, 256], np.int32)
    document = losses.sentiment_focal_loss(logits, labels, lengths)
    original = losses.sentiment_focal_loss(logits, labels, lengths, min_length_weight=0.0)
    assert abs(float(document) - float(original)) > 1e-4


# ----------------------------------------------------------------------------------
# Exactness: mpmath, and float32 accuracy for |logit| up to 40
# ----------------------------------------------------------------------------------
def mp_seed_loss(x, y, lengths, *, gamma, epsilon, min_length_weight):
    """The seed focal loss (weighted: gamma = epsilon = 0) in mpmath arithmetic."""
    one = mpmath.mpf(1)

    def sigmoid(v):
        return one / (one + mpmath.exp(-v))

    per_example, weights = [], []
    max_length = max(lengths)
    for xi, yi, li in zip(x, y, lengths, strict=True):
        target = epsilon if yi == 0 else one - epsilon
        bce = -(target * mpmath.log(sigmoid(xi)) + (one - target) * mpmath.log(sigmoid(-xi)))
        p_t = sigmoid(xi) if yi else sigmoid(-xi)
        if gamma > 0:
            bce *= (sigmoid(-xi if yi else xi) + mpmath.mpf("1e-8")) ** gamma
        elif gamma < 0:
            bce *= (p_t + mpmath.mpf("1e-8")) ** (-gamma)
        length_w = min(max(mpmath.sqrt(li) / mpmath.sqrt(max_length), min_length_weight), one)
        per_example.append(bce)
        weights.append(abs(2 * sigmoid(xi) - 1) * length_w)
    mean_w = mpmath.fsum(weights) / len(weights)
    return mpmath.fsum(
        p * w / (mean_w + mpmath.mpf("1e-8")) for p, w in zip(per_example, weights, strict=True)
    ) / len(weights)


MP_LOGITS = np.array([40.0, -40.0, 15.0, -7.5, 0.3, -0.02, -33.0], np.float32)
MP_LABELS = np.array([1, 0, 0, 1, 1, 0, 1], np.int32)
MP_LENGTHS = np.array([512, 3, 77, 256, 128, 40, 9], np.int32)


@pytest.mark.parametrize(
    "gamma,epsilon", [(-2.0, 0.0), (-0.5, 0.05), (0.0, 0.0), (0.1, 0.05), (2.0, 0.2)]
)
def test_against_mpmath(gamma, epsilon):
    """The float64 PyTorch statement is exact to 1e-12 and the library's float32 to 2e-5,
    on logits up to +-40 (confidently right and wrong)."""
    with mpmath.workdps(40):
        args = [mpmath.mpf(float(v)) for v in MP_LOGITS]

        def fn(*xs):
            return mp_seed_loss(
                xs,
                MP_LABELS.tolist(),
                MP_LENGTHS.tolist(),
                gamma=mpmath.mpf(gamma),
                epsilon=mpmath.mpf(epsilon),
                min_length_weight=mpmath.mpf("0.1"),
            )

        exact_value = float(fn(*args))
        exact_grad = np.array(
            [
                float(mpmath.diff(lambda v, i=i: fn(*(args[:i] + [v] + args[i + 1 :])), args[i]))
                for i in range(len(args))
            ]
        )
    config = ("focal", gamma, epsilon, 0.1)
    ref_value, ref_grad = torch_reference(
        *config, MP_LOGITS.astype(np.float64), MP_LABELS, MP_LENGTHS, torch.float64
    )
    assert_close(ref_value, ref_grad, exact_value, exact_grad, 1e-12, "torch float64")
    value, grad = jax_value_and_grad(*config, MP_LOGITS, MP_LABELS, MP_LENGTHS)
    assert_close(value, grad, exact_value, exact_grad, 2e-5, "jax float32")


def regime_batch(regime, seed, batch=512):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, batch).astype(np.int32)
    lengths = rng.integers(1, 513, batch).astype(np.int32)
    magnitude = rng.uniform(10.0, 40.0, batch)
    sign = np.where(labels == 1, 1.0, -1.0)
    logits = {
        "uniform": rng.uniform(-40.0, 40.0, batch),
        "confidently_right": sign * magnitude,
        "confidently_wrong": -sign * magnitude,
    }[regime]
    return logits.astype(np.float32), labels, lengths


@pytest.mark.parametrize("regime", ["uniform", "confidently_right", "confidently_wrong"])
def test_float32_within_2e5_of_exact(regime):
    """Float32 loss and gradient within 2e-5 (norm-wise relative) of the exact function
    (the float64 PyTorch statement, itself checked against mpmath above), for every
    configuration, with |logits| up to 40."""
    logits, labels, lengths = regime_batch(regime, 11)
    for config in CONFIGS:
        ref_value, ref_grad = torch_reference(
            *config, logits.astype(np.float64), labels, lengths, torch.float64
        )
        value, grad = jax_value_and_grad(*config, logits, labels, lengths)
        value_err = abs(float(value) - ref_value) / abs(ref_value)
        grad_err = np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad)
        assert value_err <= 2e-5 and grad_err <= 2e-5, (config, value_err, grad_err)


def test_seed_float32_formulation_misses_the_accuracy_target():
    """Why the library does not use the seed's formulas: in float32, 1 - sigmoid(x)
    underflows to 0 for confident predictions and the focal modulator collapses."""
    logits, labels, lengths = regime_batch("confidently_right", 12)
    seed = SeedFocalLoss(0.1, 0.0, min_length_weight=0.1)
    seed_value, _ = torch_value_and_grad(seed, logits, labels, lengths, torch.float32)
    exact, _ = torch_reference(
        "focal", 0.1, 0.0, 0.1, logits.astype(np.float64), labels, lengths, torch.float64
    )
    value, _ = jax_value_and_grad("focal", 0.1, 0.0, 0.1, logits, labels, lengths)
    assert abs(seed_value - exact) / exact > 10 * 2e-5  # measured 2.6e-3
    assert abs(value - exact) / exact < 2e-5


# ----------------------------------------------------------------------------------
# The losses are the documented composition of the public building blocks
# ----------------------------------------------------------------------------------
def composed_focal_loss(x, y, n, *, gamma, epsilon, min_length_weight):
    modulated = losses.focal_modulator(x, y, gamma=gamma) * losses.sigmoid_binary_cross_entropy(
        x, y, label_smoothing_epsilon=epsilon
    )
    weights = losses.normalize_weights(
        losses.confidence_weights(x) * losses.length_weights(n, min_length_weight=min_length_weight)
    )
    return jnp.mean(modulated * weights)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_loss_is_the_composition_of_building_blocks(gamma):
    logits, labels, lengths = random_batch(21, 64, dtype=np.float64)
    with jax.enable_x64(True):
        x = jnp.asarray(logits)

        def fused(x):
            return losses.sentiment_focal_loss(
                x, labels, lengths, gamma_focal=gamma, label_smoothing_epsilon=0.2
            )

        def composed(x):
            return composed_focal_loss(
                x, labels, lengths, gamma=gamma, epsilon=0.2, min_length_weight=0.1
            )

        np.testing.assert_allclose(fused(x), composed(x), rtol=1e-13)
        np.testing.assert_allclose(
            jax.grad(fused)(x), jax.grad(composed)(x), rtol=1e-11, atol=1e-13
        )
        # Second derivatives through the fused custom_jvp (Hessian-vector product).
        v = jnp.asarray(np.random.default_rng(0).normal(size=x.shape))

        def hvp(f):
            return jax.jvp(jax.grad(f), (x,), (v,))[1]

        np.testing.assert_allclose(hvp(fused), hvp(composed), rtol=1e-9, atol=1e-11)


def test_traced_gamma_matches_static_gamma():
    logits, labels, lengths = random_batch(22, 64)

    def loss(x, g):
        return losses.sentiment_focal_loss(x, labels, lengths, gamma_focal=g)

    swept = jax.jit(jax.value_and_grad(loss))
    for gamma in GAMMAS:
        value, grad = swept(logits, jnp.float32(gamma))
        ref_value, ref_grad = jax.value_and_grad(loss)(logits, gamma)
        np.testing.assert_allclose(value, ref_value, rtol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-7)
        # A traced gamma always computes exp(gamma * log(b)): relative error up to
        # |gamma * log(b)| ulp <= 2 * 18.4 * 2**-24 = 2.2e-6 for b >= 1e-8.
        np.testing.assert_allclose(
            losses.focal_modulator(logits, labels, gamma=jnp.float32(gamma)),
            losses.focal_modulator(logits, labels, gamma=gamma),
            rtol=2.2e-6,
        )


def test_building_blocks_at_their_documented_values():
    x = np.array([-40.0, -3.0, 0.0, 1e-4, 3.0, 40.0], np.float64)
    y = np.array([1, 0, 1, 0, 1, 0])
    sigmoid = 1 / (1 + np.exp(-x))
    with jax.enable_x64(True):
        np.testing.assert_allclose(
            losses.confidence_weights(x), np.abs(2 * sigmoid - 1), rtol=1e-12
        )
        np.testing.assert_allclose(
            losses.sigmoid_binary_cross_entropy(x, y, label_smoothing_epsilon=0.1),
            optax.sigmoid_binary_cross_entropy(x, losses.smooth_binary_labels(y, epsilon=0.1)),
            rtol=1e-12,
        )
        p_t = 1 / (1 + np.exp(-np.where(y == 1, x, -x)))
        np.testing.assert_allclose(
            losses.focal_modulator(x, y, gamma=2.0),
            (1 / (1 + np.exp(np.where(y == 1, x, -x))) + 1e-8) ** 2,
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            losses.focal_modulator(x, y, gamma=-0.5), (p_t + 1e-8) ** 0.5, rtol=1e-12
        )
        np.testing.assert_array_equal(losses.focal_modulator(x, y, gamma=0.0), np.ones(6))
        np.testing.assert_allclose(
            losses.length_weights(np.array([0, 1, 25, 100])), [0.1, 0.1, 0.5, 1.0], rtol=1e-15
        )
    np.testing.assert_allclose(
        losses.smooth_binary_labels(np.array([0, 1]), epsilon=0.05), [0.05, 0.95], rtol=1e-7
    )


# ----------------------------------------------------------------------------------
# Defined edge cases
# ----------------------------------------------------------------------------------
ALL_LOSSES = {
    "bce": losses.bce_loss,
    "weighted": losses.sentiment_weighted_loss,
    "focal": losses.sentiment_focal_loss,
}


@pytest.mark.parametrize("name", list(ALL_LOSSES))
@pytest.mark.parametrize("shape", [(0,), (0, 1)])
def test_empty_batch_is_zero_with_zero_gradient(name, shape):
    fn = ALL_LOSSES[name]
    value, grad = jax.value_and_grad(fn)(
        jnp.zeros(shape), jnp.zeros(0, jnp.int32), jnp.zeros(0, jnp.int32)
    )
    assert float(value) == 0.0
    chex.assert_shape(grad, shape)


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_all_rows_masked_is_zero_with_zero_gradient(name):
    fn = ALL_LOSSES[name]
    logits = jnp.array([jnp.nan, 3.0, -jnp.inf, 1e30])
    labels = jnp.array([7, -1, 1, 0])  # padding may hold anything
    lengths = jnp.array([-5.0, jnp.nan, 3.0, 0.0])
    value, grad = jax.jit(
        jax.value_and_grad(lambda x: fn(x, labels, lengths, where=jnp.zeros(4, bool)))
    )(logits)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, np.zeros(4))


@pytest.mark.parametrize("kind", ["weighted", "focal"])
def test_all_lengths_zero_gives_unit_length_weights(kind):
    logits, labels, _ = random_batch(31, 64)
    fn = jax_loss_fn(kind, 2.0, 0.05, 0.1)
    zero = jax.value_and_grad(fn)(logits, labels, np.zeros(64, np.int32))
    constant = jax.value_and_grad(fn)(logits, labels, np.full(64, 9, np.int32))
    np.testing.assert_allclose(zero[0], constant[0], rtol=1e-7)
    np.testing.assert_allclose(zero[1], constant[1], rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(losses.length_weights(np.zeros(7)), np.ones(7))


@pytest.mark.parametrize("kind", ["weighted", "focal"])
def test_zero_weights_become_uniform(kind):
    """Every logit exactly 0: every confidence weight is 0, so the weights sum to 0 and
    the seed focal code's guard makes them uniform; the loss is the mean (modulated)
    BCE. The seed's weighted code returned 0 here (NaN with all lengths 0)."""
    labels = np.array([1, 0, 1, 1, 0, 0, 1], np.int32)
    for lengths in (np.array([5, 50, 500, 1, 0, 7, 9]), np.zeros(7, np.int32)):
        fn = jax_loss_fn(kind, 2.0, 0.05, 0.1)
        value, grad = jax.value_and_grad(fn)(jnp.zeros(7), labels, lengths)
        config = (kind, 2.0, 0.05, 0.1)
        ref_value, ref_grad = torch_reference(*config, np.zeros(7), labels, lengths, torch.float64)
        assert_close(value, grad, ref_value, ref_grad, 1e-6, "uniform")
        if kind == "weighted":
            np.testing.assert_allclose(value, math.log(2.0), rtol=1e-7)
    seed_value = SeedWeightedLoss()(
        torch.zeros(7), torch.tensor(labels), torch.tensor([5, 50, 500, 1, 0, 7, 9])
    )
    assert float(seed_value) == 0.0


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_extreme_logits_give_finite_loss_and_gradient(name):
    fn = ALL_LOSSES[name]
    logits = jnp.array([1e4, -1e4, 1e4, -1e4, 0.0, 3.0, -1e4])
    labels = jnp.array([1, 0, 0, 1, 1, 0, 0])
    lengths = jnp.array([10, 20, 30, 40, 50, 60, 70])
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        value, grad = jax.value_and_grad(fn)(logits.astype(dtype), labels, lengths)
        assert np.isfinite(value) and np.all(np.isfinite(np.asarray(grad, np.float32)))
    if name != "bce":
        config = (name, 0.1, 0.05, 0.1)
        value, grad = jax_value_and_grad(*config, logits, labels, lengths)
        ref_value, ref_grad = torch_reference(
            *config, np.asarray(logits, np.float64), labels, lengths, torch.float64
        )
        assert_close(value, grad, ref_value, ref_grad, 1e-6, "+-1e4")


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_nan_in_masked_rows_does_not_poison(name):
    fn = ALL_LOSSES[name]
    logits, labels, lengths = random_batch(41, 64)
    where = np.arange(64) % 9 == 1  # 7 real rows
    poisoned = np.where(where, logits, np.nan).astype(np.float32)
    value, grad = jax.value_and_grad(lambda x: fn(x, labels, lengths, where=where))(poisoned)
    ref_value, ref_grad = jax.value_and_grad(lambda x: fn(x, labels[where], lengths[where]))(
        logits[where]
    )
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad[where], ref_grad, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(grad[~where], 0.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_low_precision_logits_are_computed_in_float32(name, dtype):
    fn = ALL_LOSSES[name]
    logits, labels, lengths = random_batch(51, 64, logit_scale=6.0)
    low = jnp.asarray(logits, dtype)
    value, grad = jax.value_and_grad(fn)(low, labels, lengths)
    ref_value, ref_grad = jax.value_and_grad(fn)(low.astype(jnp.float32), labels, lengths)
    chex.assert_type(value, jnp.float32)
    chex.assert_type(grad, dtype)
    assert float(value) == float(ref_value)
    np.testing.assert_array_equal(grad, ref_grad.astype(dtype))


def test_logits_of_shape_b1():
    logits, labels, lengths = random_batch(61, 7)
    for name, fn in ALL_LOSSES.items():
        value, grad = jax.value_and_grad(fn)(logits[:, None], labels, lengths)
        ref_value, ref_grad = jax.value_and_grad(fn)(logits, labels, lengths)
        chex.assert_shape(grad, (7, 1))
        assert float(value) == float(ref_value), name
        np.testing.assert_array_equal(grad[:, 0], ref_grad)


def test_label_dtypes_are_equivalent():
    logits, labels, lengths = random_batch(62, 7)
    values = [
        losses.sentiment_focal_loss(logits, labels.astype(t), lengths.astype(u))
        for t in (np.int32, np.bool_, np.float32)
        for u in (np.int32, np.float32)
    ]
    assert len({float(v) for v in values}) == 1


# ----------------------------------------------------------------------------------
# The baseline and the registry
# ----------------------------------------------------------------------------------
def test_bce_loss_is_the_optax_mean():
    logits, labels, lengths = random_batch(71, 64)
    value, grad = jax.value_and_grad(losses.bce_loss)(logits, labels, lengths)

    def ref(x):
        return optax.sigmoid_binary_cross_entropy(x, labels.astype(np.float32)).mean()

    ref_value, ref_grad = jax.value_and_grad(ref)(logits)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)
    assert float(losses.bce_loss(logits, labels)) == float(value)  # lengths are ignored


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_registry_binds_hyperparameters(name):
    logits, labels, lengths = random_batch(72, 64)
    where = np.arange(64) < 50
    hyper = {
        "bce": {},
        "weighted": {"min_length_weight": 0.0},
        "focal": {
            "gamma_focal": -0.5,
            "label_smoothing_epsilon": 0.2,
            "stop_gradient_weights": True,
        },
        "sentiment": {"confidence_weighting": True, "gamma_focal": 2.0},
    }[name]
    loss_fn = losses.get_loss(name, **hyper)
    expected = {**ALL_LOSSES, "sentiment": losses.sentiment_loss}[name](
        logits, labels, lengths, where=where, **hyper
    )
    assert float(jax.jit(loss_fn)(logits, labels, lengths, where=where)) == pytest.approx(
        float(expected), rel=1e-6
    )
    assert loss_fn.hyperparameters == hyper


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="'bce', 'weighted', 'focal'"):
        losses.get_loss("hinge")
    with pytest.raises(ValueError, match="gamma.*valid: min_length_weight, stop_gradient"):
        losses.get_loss("weighted", gamma=2.0)
    with pytest.raises(ValueError, match="valid: none"):
        losses.get_loss("bce", label_smoothing_epsilon=0.1)
    with pytest.raises(ValueError, match="label_smoothing_epsilon must be in \\[0, 1\\); got 1.0"):
        losses.get_loss("focal", label_smoothing_epsilon=1.0)


# ----------------------------------------------------------------------------------
# Docstring examples
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module", [losses, _terms, _sentiment, _registry, _validation], ids=lambda m: m.__name__
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if module is not losses:
        assert result.attempted > 0
