"""medjax.models.gan: shapes in 2D and 3D, pinned parameter counts, conditioning, spectral norm, pixel shuffle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from medjax.errors import MedjaxError
from medjax.image_metrics import bicubic_upsample
from medjax.models import gan


def _count(variables):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def _init(module, *args):
    return module.init(jax.random.key(0), *args, train=False)


def _shapes(module, *args):
    """The variables' shapes without computing them (counting parameters needs no values)."""
    return jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, train=False), *args)


@pytest.mark.parametrize("size,nd", [(16, 2), (8, 3)])
def test_dcgan_generator_and_discriminator_shapes(size, nd):
    g = gan.DCGANGenerator(image_size=(size,) * nd, channels=2, features=4)
    z = jnp.ones((3, 10))
    v = _init(g, z)
    images = g.apply(v, z, train=False)
    assert images.shape == (3,) + (size,) * nd + (2,)
    assert float(jnp.abs(images).max()) <= 1.0  # tanh
    d = gan.DCGANDiscriminator(features=4)
    assert d.apply(_init(d, images), images, train=False).shape == (3,)


def test_dcgan_parameter_counts_are_pinned():
    """2D, 16 px, latent 10, features 4: project 10 -> 4*4*16 (+BN), two up-levels (UpConv + 3x3 conv + BN), out."""
    g = gan.DCGANGenerator(image_size=(16, 16), channels=1, features=4)
    project = 10 * 256 + 256 + 2 * 16
    up0 = (2 * 2 * 16 * 8 + 8) + 3 * 3 * 8 * 8 + 2 * 8
    up1 = (2 * 2 * 8 * 4 + 4) + 3 * 3 * 4 * 4 + 2 * 4
    assert _count(_shapes(g, jnp.ones((1, 10)))) == project + up0 + up1 + (3 * 3 * 4 * 1 + 1)
    d = gan.DCGANDiscriminator(features=4)
    downs = (4 * 4 * 1 * 4 + 4) + (4 * 4 * 4 * 8 + 8)
    assert _count(_shapes(d, jnp.ones((1, 16, 16, 1)))) == downs + (4 * 4 * 8 + 1)


def test_conditional_networks_use_the_label_and_require_it():
    g = gan.DCGANGenerator(image_size=(8, 8), features=4, num_classes=3)
    z, labels = jnp.ones((2, 6)), jnp.array([0, 2])
    v = _init(g, z, labels)
    a, b = g.apply(v, z, labels, train=False), g.apply(v, z, jnp.array([1, 1]), train=False)
    assert not np.allclose(a, b)  # same z, other labels -> other images
    with pytest.raises(MedjaxError, match="needs labels"):
        g.apply(v, z, train=False)
    d = gan.DCGANDiscriminator(features=4, num_classes=3)
    vd = _init(d, a, labels)
    assert "label_projection" in vd["params"]
    assert not np.allclose(d.apply(vd, a, labels, train=False), d.apply(vd, a, jnp.array([1, 1]), train=False))


def test_spectral_norm_keeps_power_iteration_state_and_bounds_the_layer():
    """With spectral_norm every layer's kernel is divided by its largest singular value (estimated in batch_stats)."""
    d = gan.DCGANDiscriminator(features=4, spectral_norm=True)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    v = _init(d, x)
    # One power-iteration state per wrapped layer, named by the layer (Flax keeps it in batch_stats).
    assert set(v["batch_stats"]["SpectralNorm_0"]) == {"down0/kernel/sigma", "down0/kernel/u"}
    assert set(v["batch_stats"]["SpectralNorm_1"]) == {"logit/kernel/sigma", "logit/kernel/u"}
    stats = v["batch_stats"]
    for _ in range(30):  # power iteration converges
        _, updates = d.apply({"params": v["params"], "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        stats = updates["batch_stats"]
    kernel = np.asarray(v["params"]["down0"]["kernel"]).reshape(-1, 4)
    sigma = float(stats["SpectralNorm_0"]["down0/kernel/sigma"])
    assert sigma == pytest.approx(np.linalg.svd(kernel, compute_uv=False)[0], rel=1e-3)
    logit = np.asarray(v["params"]["logit"]["kernel"])  # a (64, 1) kernel: sigma is its norm
    assert float(stats["SpectralNorm_1"]["logit/kernel/sigma"]) == pytest.approx(np.linalg.norm(logit), rel=1e-3)


def test_patchgan_gives_a_map_of_logits_over_the_pair():
    d = gan.PatchGANDiscriminator(features=4, num_layers=2)
    cond, image = jnp.ones((2, 32, 32, 1)), jnp.ones((2, 32, 32, 3))
    out = d.apply(_init(d, cond, image), cond, image, train=False)
    # 32 -> 16 -> 8 (two stride-2), then two 4x4 stride-1 convolutions with padding 1: 8 -> 7 -> 6
    assert out.shape == (2, 6, 6, 1)


def test_pix2pix_generator_maps_images_to_target_channels():
    g = gan.Pix2PixGenerator(channels=3, features=(4, 8))
    x = jnp.ones((2, 16, 16, 1))
    y = g.apply(_init(g, x), x, train=False)
    assert y.shape == (2, 16, 16, 3) and float(jnp.abs(y).max()) <= 1.0


def test_depth_to_space_matches_torch_pixel_shuffle():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5 * 4)).astype(np.float32)  # NHWC, C = 5 * 2^2
    ours = np.asarray(gan.depth_to_space(jnp.asarray(x), 2))
    # torch's pixel_shuffle reads channel c * r^2 + (i * r + j); ours reads (i * r + j) * C + c: permute to compare.
    xt = torch.from_numpy(x.reshape(2, 3, 4, 4, 5).transpose(0, 4, 3, 1, 2).reshape(2, 20, 3, 4).copy())
    ref = torch.nn.functional.pixel_shuffle(xt, 2).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ours, ref)


def test_depth_to_space_3d_places_each_offset():
    x = jnp.arange(8.0).reshape(1, 1, 1, 1, 8)  # one voxel, 2^3 offsets, one channel
    y = np.asarray(gan.depth_to_space(x, 2))[0, ..., 0]
    assert y.shape == (2, 2, 2)
    assert y[1, 0, 1] == 1 * 4 + 0 * 2 + 1


@pytest.mark.parametrize("scale,nd", [(2, 2), (4, 2), (2, 3)])
def test_sr_generator_starts_at_cubic_interpolation(scale, nd):
    """The last convolution starts at zero, so an untrained generator returns the bicubic upsampling exactly."""
    g = gan.SRGenerator(scale=scale, features=4, num_blocks=1)
    x = jax.random.normal(jax.random.key(2), (2,) + (6,) * nd + (1,))
    y = g.apply(_init(g, x), x, train=False)
    assert y.shape == (2,) + (6 * scale,) * nd + (1,)
    np.testing.assert_allclose(y, bicubic_upsample(x, scale), atol=1e-6)


def test_bad_sizes_and_scales_are_named():
    with pytest.raises(MedjaxError, match="must be 4 x a power of two"):
        _init(gan.DCGANGenerator(image_size=(20, 20)), jnp.ones((1, 4)))
    with pytest.raises(MedjaxError, match="scale must be 2, 4, 8"):
        _init(gan.SRGenerator(scale=1), jnp.ones((1, 4, 4, 1)))
    with pytest.raises(MedjaxError, match="num_layers=2: image \\(8, 8\\) is too small"):
        _init(gan.PatchGANDiscriminator(num_layers=2), jnp.ones((1, 8, 8, 1)), jnp.ones((1, 8, 8, 1)))
    with pytest.raises(MedjaxError, match="unknown output_activation"):
        gan.Pix2PixGenerator(output_activation="sigmoid")
