"""The shared conv/norm helpers: torch-exact padding, torch epsilons/momentum, and which norms keep state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from medjax.errors import MedjaxError
from medjax.models import layers


def _torch_conv_weight(kernel: np.ndarray) -> torch.Tensor:
    """Flax (k.., in, out) -> torch (out, in, k..)."""
    nd = kernel.ndim - 2
    return torch.from_numpy(np.array(np.transpose(kernel, (nd + 1, nd, *range(nd)))))


@pytest.mark.parametrize(
    "shape,kernel,stride",
    [((2, 9, 10, 3), 7, 2), ((2, 8, 8, 3), 3, 2), ((2, 8, 8, 3), 1, 2), ((1, 5, 6, 7, 2), 3, 2)],
)
def test_conv_matches_torch_padding(shape, kernel, stride):
    """Odd and even sizes with stride 2: XLA's SAME would pad asymmetrically; we must pad like torch."""
    nd = len(shape) - 2
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    mod = layers.conv(4, kernel, nd, stride, use_bias=True, name="c")
    # numpy-filled, not `init`: jitting flax's random initialisers compiles slowly on XLA:CPU
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(mod.init, jax.random.key(0), jnp.asarray(x))["params"]
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), shapes)
    ours = np.asarray(jax.jit(mod.apply)({"params": params}, jnp.asarray(x)))
    tconv = (torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d)(shape[-1], 4, kernel, stride, padding=kernel // 2)
    with torch.no_grad():
        tconv.weight.copy_(_torch_conv_weight(np.asarray(params["kernel"])))
        tconv.bias.copy_(torch.from_numpy(np.array(params["bias"])))
        ref = tconv(torch.from_numpy(np.moveaxis(x, -1, 1))).numpy()
    np.testing.assert_allclose(ours, np.moveaxis(ref, 1, -1), atol=1e-5)


def test_conv_kernel_rank_follows_ndim():
    for nd in (2, 3):
        c = layers.conv(5, 3, nd, name="c", use_bias=False)
        v = jax.eval_shape(c.init, jax.random.key(0), jnp.zeros((1,) + (6,) * nd + (2,)))
        assert v["params"]["kernel"].shape == (3,) * nd + (2, 5)
        assert "bias" not in v["params"]


@pytest.mark.parametrize("kind,has_stats", [("batch", True), ("instance", False), ("group", False)])
@pytest.mark.parametrize("shape", [(2, 4, 4, 16), (2, 4, 4, 4, 16)])
def test_norm_kinds(kind, has_stats, shape):
    mod = layers.norm(kind, train=True, name="n")
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape, np.float32) * 3 + 2)
    v = jax.jit(mod.init)(jax.random.key(0), x)
    assert ("batch_stats" in v) == has_stats
    assert jax.tree.map(jnp.shape, dict(v["params"])) == {"scale": (16,), "bias": (16,)}
    y, _ = jax.jit(lambda v, x: mod.apply(v, x, mutable=["batch_stats"]))(v, x)
    assert y.shape == shape
    # every kind normalises somewhere: the overall mean is ~0 and std ~1 at init
    assert abs(float(y.mean())) < 1e-4 and abs(float(y.std()) - 1) < 1e-2


def test_batchnorm_torch_conventions():
    bn = layers.norm("batch", train=True, name="bn", axis_name=None)
    assert (bn.momentum, bn.epsilon, bn.use_running_average, bn.axis_name) == (0.9, 1e-5, False, None)
    assert layers.norm("batch", train=False, name="bn").use_running_average is True
    assert layers.norm("batch", train=True, name="bn", axis_name="data").axis_name == "data"
    assert layers.norm("instance", train=True, name="n").epsilon == 1e-5
    assert layers.norm("group", train=True, name="n", num_groups=4).num_groups == 4


def test_batchnorm_running_stats_update_like_torch():
    """One training step moves the running mean by 0.1 of the batch mean, like torch's momentum=0.1."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 3, 3, 4), np.float32) + 5)
    bn = layers.norm("batch", train=True, name="bn")
    v = jax.jit(bn.init)(jax.random.key(0), x)
    _, upd = jax.jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]))(v, x)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_instance_norm_matches_torch_affine():
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 3)).astype(np.float32) * 2 + 1
    mod = layers.norm("instance", train=True, name="n")
    v = jax.jit(mod.init)(jax.random.key(0), jnp.asarray(x))
    ours = np.asarray(jax.jit(mod.apply)(v, jnp.asarray(x)))
    tnorm = torch.nn.InstanceNorm2d(3, affine=True)  # MONAI BasicUNet's setting; eps 1e-5
    ref = tnorm(torch.from_numpy(np.moveaxis(x, -1, 1))).detach().numpy()
    np.testing.assert_allclose(ours, np.moveaxis(ref, 1, -1), atol=1e-5)


def test_unknown_norm_names_value_and_choices():
    with pytest.raises(MedjaxError, match=r"'layer'.*batch, instance, group"):
        layers.norm("layer", train=True, name="n")


def test_pad_to_repeats_edge_at_end():
    x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    y = layers.pad_to(x, (3, 2))
    np.testing.assert_array_equal(y[0, :, :, 0], [[0, 1], [2, 3], [2, 3]])
    assert layers.pad_to(x, (2, 2)) is x


def test_spatial_ndim_rejects_bad_rank():
    assert layers.spatial_ndim(jnp.zeros((1, 2, 2, 1))) == 2
    with pytest.raises(MedjaxError, match=r"\(2, 3\)"):
        layers.spatial_ndim(jnp.zeros((2, 3)))


def test_batchnorm_axis_name_gives_global_batch_statistics():
    """Split a batch of 8 over 2 'devices' (vmap with an axis name, as pmap would): same output and stats."""
    x = jnp.asarray(np.random.default_rng(2).standard_normal((8, 3, 3, 4), np.float32) * 2 + 1)
    plain = layers.norm("batch", train=True, name="bn")
    synced = layers.norm("batch", train=True, name="bn", axis_name="data")
    v = jax.jit(plain.init)(jax.random.key(0), x)

    @jax.jit
    def run(v, x):
        ref, ref_upd = plain.apply(v, x, mutable=["batch_stats"])
        per_dev = jax.vmap(lambda xs: synced.apply(v, xs, mutable=["batch_stats"]), axis_name="data")
        out, upd = per_dev(x.reshape(2, 4, 3, 3, 4))
        return ref, ref_upd, out.reshape(x.shape), upd

    ref, ref_upd, out, upd = run(v, x)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"][0], ref_upd["batch_stats"]["mean"], atol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["var"][1], ref_upd["batch_stats"]["var"], atol=1e-6)
