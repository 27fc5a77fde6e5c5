"""medjax.gan.losses against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.gan import losses

REAL = jnp.array([2.0, -1.0])
FAKE = jnp.array([0.5, -3.0])


def softplus(x):
    return np.log1p(np.exp(x))


@pytest.mark.parametrize("kind,d_expected,g_expected", [
    ("non_saturating",
     np.mean(softplus(-np.array([2.0, -1.0]))) + np.mean(softplus(np.array([0.5, -3.0]))),
     np.mean(softplus(-np.array([0.5, -3.0])))),
    ("hinge", (0.0 + 2.0) / 2 + (1.5 + 0.0) / 2, -(0.5 - 3.0) / 2),
    ("least_squares", 0.5 * ((1.0 + 4.0) / 2 + (0.25 + 9.0) / 2), 0.5 * (0.25 + 16.0) / 2),
])
def test_losses_match_hand_computed_values(kind, d_expected, g_expected):
    np.testing.assert_allclose(losses.discriminator_loss(REAL, FAKE, kind), d_expected, rtol=1e-6)
    np.testing.assert_allclose(losses.generator_loss(FAKE, kind), g_expected, rtol=1e-6)


def test_non_saturating_discriminator_loss_is_binary_cross_entropy():
    """softplus(-r) = -log sigmoid(r) and softplus(f) = -log(1 - sigmoid(f)): BCE with targets 1 / 0."""
    sig = lambda x: 1 / (1 + np.exp(-np.asarray(x)))  # noqa: E731
    bce = -np.mean(np.log(sig(REAL))) - np.mean(np.log(1 - sig(FAKE)))
    np.testing.assert_allclose(losses.discriminator_loss(REAL, FAKE, "non_saturating"), bce, rtol=1e-6)


def test_r1_penalty_of_a_linear_discriminator_is_gamma_half_weight_norm():
    """D(x) = <w, x>: the gradient is w for every example, so the penalty is gamma / 2 * ||w||^2."""
    w = jnp.array([[1.0, -2.0], [0.5, 3.0]])
    x = jnp.ones((4, 2, 2))
    penalty = losses.r1_penalty(lambda x: jnp.sum(x * w, axis=(1, 2)), x, gamma=10.0)
    np.testing.assert_allclose(penalty, 5.0 * (1 + 4 + 0.25 + 9), rtol=1e-6)


def test_unknown_loss_is_named():
    with pytest.raises(MedjaxError, match="unknown GAN loss 'wasserstein'"):
        losses.generator_loss(FAKE, "wasserstein")


def test_feature_matching_is_zero_for_real_and_grows_with_the_difference():
    import jax

    from medjax.gan.task import conv_features, feature_matching
    from medjax.models.gan import PatchGANDiscriminator

    d = PatchGANDiscriminator(features=4, num_layers=2)
    cond = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    real = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    v = d.init(jax.random.key(2), cond, real, train=False)
    assert len(conv_features(d, v["params"], {}, cond, real)) == 4  # conv0..conv2 and the logits convolution
    assert float(feature_matching(d, v["params"], {}, (cond, real), (cond, real))) == 0.0
    near = float(feature_matching(d, v["params"], {}, (cond, real), (cond, real + 0.1)))
    far = float(feature_matching(d, v["params"], {}, (cond, real), (cond, real + 1.0)))
    assert 0 < near < far
