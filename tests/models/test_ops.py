"""medjax.models.ops: the fast formulations compute what the lax / flax primitives compute, values and gradients."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from medjax.models import ops

DN3 = ("NDHWC", "DHWIO", "NDHWC")


def _rand(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _close(a, b, rtol=2e-6):
    """Float32 agreement up to summation order: relative to the largest magnitude."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=rtol * max(1.0, float(np.abs(b).max())), rtol=0)


def _check_against_lax(xshape, kshape, strides, padding, dilation):
    """ops.conv_general_dilated equals lax's on values and gradients; returns the CPU lowering's text."""
    x, w = _rand(xshape, 0), _rand(kshape, 1)

    def ref(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=DN3)

    def fast(x, w):
        return ops.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=DN3)

    _close(jax.jit(fast)(x, w), ref(x, w))
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    for g_fast, g_ref in zip(jax.jit(jax.grad(loss(fast), (0, 1)))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
        _close(g_fast, g_ref, rtol=2e-5)  # 7^3-tap stem kernels: 1.4e-5 seen on a Sapphire Rapids CPU
    return jax.jit(fast).trace(x, w).lower(lowering_platforms=("cpu",)).as_text()


@pytest.mark.parametrize("xshape,kshape,strides,padding,dilation", [
    ((2, 9, 10, 11, 3), (3, 3, 3, 3, 4), (1, 1, 1), [(1, 1)] * 3, (1, 1, 1)),      # U-Net conv, odd sizes
    ((2, 9, 10, 11, 3), (3, 3, 3, 3, 4), (2, 2, 2), [(1, 1)] * 3, (1, 1, 1)),      # ResNet down-sampling
    ((1, 8, 8, 8, 2), (1, 1, 1, 2, 5), (2, 2, 2), [(0, 0)] * 3, (1, 1, 1)),        # 1x1x1 shortcut, stride 2
    ((1, 9, 9, 8, 2), (7, 7, 7, 2, 5), (2, 2, 2), [(3, 3)] * 3, (1, 1, 1)),        # ResNet stem
    ((1, 8, 9, 8, 2), (3, 3, 3, 2, 5), (1, 2, 1), "SAME", (2, 1, 1)),              # string padding, depth dilation
    ((1, 8, 9, 8, 2), (3, 3, 3, 2, 5), (1, 1, 1), [(2, 0), (0, 1), (1, 1)], (1, 1, 1)),  # asymmetric
    ((1, 8, 9, 8, 2), (3, 2, 3, 2, 5), (1, 1, 1), [(-1, 2), (0, 1), (1, 1)], (1, 1, 1)),  # negative pad crops
    ((2, 9, 10, 11, 1), (3, 3, 3, 1, 4), (1, 1, 1), [(1, 1)] * 3, (1, 1, 1)),      # single-channel first layer
    ((1, 9, 10, 8, 1), (3, 2, 3, 1, 4), (2, 2, 1), [(1, 0), (-1, 1), (1, 1)], (2, 2, 1)),  # 1 channel, all options
])
@pytest.mark.parametrize("fold_channels", [0, 32], ids=["per_tap", "folded"])
def test_conv3d_matches_lax_values_and_gradients(xshape, kshape, strides, padding, dilation, fold_channels,
                                                 monkeypatch):
    """Both CPU forms: 2D convolutions per depth tap (FOLD_CHANNELS=0) and taps folded into the channels."""
    monkeypatch.setattr(ops, "FOLD_CHANNELS", fold_channels)
    _check_against_lax(xshape, kshape, strides, padding, dilation)


def _lowered(f, *args, platform):
    text = jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    return re.findall(r"dim_numbers = \[([^\]]*)\]", text)


@pytest.mark.parametrize("channels,cpu_convs", [
    (ops.FOLD_CHANNELS + 1, ["b, 0, 1, f"] * 3),  # many channels: one 2D convolution per depth tap
    (ops.FOLD_CHANNELS, ["b, 0, 1, f"]),          # few: depth taps folded into the channels, one 2D convolution
    (1, ["b, 0, 1, f"]),                          # one: depth and height taps folded, one (1 x 3) convolution
])
def test_conv3d_is_2d_convolutions_on_cpu_and_3d_elsewhere(channels, cpu_convs):
    """The CPU lowering holds only 2D convolutions, as many as the form needs; CUDA keeps XLA's 3D convolution."""
    x, w = jnp.ones((1, 6, 6, 6, channels)), jnp.ones((3, 3, 3, channels, 4))

    def f(x, w):
        return ops.conv_general_dilated(x, w, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=DN3)

    assert _lowered(f, x, w, platform="cpu") == cpu_convs
    assert _lowered(f, x, w, platform="cuda") == ["b, 0, 1, 2, f"]


def test_single_channel_3d_convolution_folds_depth_and_height_taps():
    """The 1-channel form is one convolution over rows (batch x depth x height = 36 rows of 1 x 6), with the
    3 x 3 depth and height taps as 9 input channels and a 1 x 3 kernel."""
    x, w = jnp.ones((1, 6, 6, 6, 1)), jnp.ones((3, 3, 3, 1, 4))
    text = jax.jit(lambda x, w: ops.conv_general_dilated(x, w, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=DN3)
                   ).trace(x, w).lower(lowering_platforms=("cpu",)).as_text()
    assert re.findall(r"stablehlo.convolution.*\((tensor<[^>]*>), (tensor<[^>]*>)\)", text) == [
        ("tensor<36x1x6x9xf32>", "tensor<1x3x9x4xf32>")]


@pytest.mark.parametrize("xshape,kshape,strides,padding,dilation", [
    ((2, 3, 2, 2, 8), (3, 3, 3, 8, 6), (1, 1, 1), [(1, 1)] * 3, (1, 1, 1)),        # 3D 2x2 planes
    ((1, 5, 6, 5, 3), (3, 3, 3, 3, 4), (1, 2, 2), [(2, 0), (1, 1), (0, 2)], (1, 2, 1)),  # asymmetric, dilated
    ((1, 5, 6, 6, 3), (3, 2, 3, 3, 4), (1, 2, 2), [(1, 1), (-1, 1), (1, 1)], (1, 1, 1)),  # negative pad crops
    ((1, 4, 4, 4, 3), (1, 1, 1, 3, 5), (2, 2, 2), [(0, 0)] * 3, (1, 1, 1)),        # 1x1x1 shortcut
])
def test_small_plane_3d_convolutions_as_matmul_match_lax(xshape, kshape, strides, padding, dilation):
    text = _check_against_lax(xshape, kshape, strides, padding, dilation)
    assert "stablehlo.convolution" not in text and "stablehlo.dot_general" in text


@pytest.mark.parametrize("kw", [
    dict(xshape=(2, 8, 9, 3), kshape=(3, 3, 3, 4), dn=("NHWC", "HWIO", "NHWC")),              # 2D
    dict(xshape=(2, 4, 4, 8), kshape=(3, 3, 8, 4), dn=("NHWC", "HWIO", "NHWC")),              # 2D, small plane
    dict(xshape=(1, 6, 6, 6, 4), kshape=(3, 3, 3, 2, 4), dn=DN3, feature_group_count=2),       # grouped
    dict(xshape=(1, 6, 6, 6, 2), kshape=(3, 3, 3, 2, 4), dn=DN3, lhs_dilation=(2, 2, 2)),      # input dilation
    dict(xshape=(1, 2, 6, 6, 6), kshape=(4, 2, 3, 3, 3), dn=("NCDHW", "OIDHW", "NCDHW")),     # channels first
])
def test_other_convolutions_pass_through_to_lax_unchanged(kw):
    kw = dict(kw)
    x, w, dn = _rand(kw.pop("xshape"), 0), _rand(kw.pop("kshape"), 1), kw.pop("dn")
    nd = x.ndim - 2
    args = (x, w, (1,) * nd, [(1, 1)] * nd)
    np.testing.assert_array_equal(ops.conv_general_dilated(*args, dimension_numbers=dn, **kw),
                                  lax.conv_general_dilated(*args, dimension_numbers=dn, **kw))


def test_conv_module_keeps_nn_conv_parameters_and_names():
    x = _rand((1, 5, 5, 5, 2), 0)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(3, (3, 3, 3), padding=[(1, 1)] * 3)(x)
            return ops.Conv(3, (3, 3, 3), padding=[(1, 1)] * 3)(x)  # auto-named in nn.Conv's sequence

    v = Net().init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, v["params"]) == {
        "Conv_0": {"kernel": (3, 3, 3, 2, 3), "bias": (3,)}, "Conv_1": {"kernel": (3, 3, 3, 3, 3), "bias": (3,)}}
    conv = nn.Conv(3, (3, 3, 3), padding=[(1, 1)] * 3)
    p = {"params": v["params"]["Conv_0"]}
    _close(ops.Conv(3, (3, 3, 3), padding=[(1, 1)] * 3).apply(p, x), conv.apply(p, x))


@pytest.mark.parametrize("xshape,kernel", [((2, 5, 6, 3), (2, 2)), ((2, 4, 5, 3), (2, 3)),
                                           ((1, 3, 4, 5, 2), (2, 2, 2)), ((1, 3, 3, 3, 2), (3, 3, 3))])
def test_upconv_equals_conv_transpose_with_kernel_equal_to_stride(xshape, kernel):
    x = _rand(xshape, 0)
    ref = nn.ConvTranspose(4, kernel, strides=kernel, padding="VALID")
    v = ref.init(jax.random.key(0), x)
    v = jax.tree.map(lambda a: _rand(a.shape, 2), v)  # a non-zero bias too
    up = ops.UpConv(4, kernel)
    assert jax.tree.map(jnp.shape, up.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, v)
    _close(up.apply(v, x), ref.apply(v, x))
    loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))  # noqa: E731
    g_up, g_ref = jax.grad(loss(up), (0, 1))(v, x), jax.grad(loss(ref), (0, 1))(v, x)
    for a, b in zip(jax.tree.leaves(g_up), jax.tree.leaves(g_ref)):
        _close(a, b, rtol=5e-6)


def test_upconv_honours_dtype_and_no_bias():
    x = _rand((1, 3, 3, 2), 0)
    up = ops.UpConv(4, (2, 2), use_bias=False, dtype=jnp.bfloat16)
    v = up.init(jax.random.key(0), x)
    assert set(v["params"]) == {"kernel"} and v["params"]["kernel"].dtype == jnp.float32
    assert up.apply(v, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 5, 6, 7, 2)])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_blocks_equals_flax_pooling_flooring_odd_sizes(shape, kind):
    x = _rand(shape, 0)
    nd = x.ndim - 2
    ref = (nn.max_pool if kind == "max" else nn.avg_pool)
    want = ref(x, (2,) * nd, strides=(2,) * nd, padding="VALID")
    got = ops.pool_blocks(x, (2,) * nd, kind)
    assert got.shape == want.shape == (shape[0], *(s // 2 for s in shape[1:-1]), shape[-1])
    _close(got, want)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(ref(x, (2,) * nd, strides=(2,) * nd, padding="VALID"))))(x)
    _close(jax.grad(lambda x: jnp.sum(jnp.sin(ops.pool_blocks(x, (2,) * nd, kind))))(x), g_ref)


def test_max_pool_blocks_splits_the_gradient_between_ties():
    """The documented difference from select_and_scatter (which gives a tie's gradient to one input)."""
    x = jnp.array([[[[1.0], [1.0]], [[0.0], [-1.0]]]])  # one 2x2 window with a tie for the max
    g = jax.grad(lambda x: jnp.sum(ops.pool_blocks(x, (2, 2))))(x)
    np.testing.assert_array_equal(g[0, ..., 0], [[0.5, 0.5], [0.0, 0.0]])


def test_pool_blocks_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'max' or 'avg'"):
        ops.pool_blocks(jnp.ones((1, 4, 4, 1)), (2, 2), "min")


@pytest.mark.parametrize("xshape, kshape, strides, padding, dilation", [
    ((3, 9, 8, 2), (3, 3, 2, 4), (1, 1), "SAME", (1, 1)),
    ((3, 9, 8, 2), (3, 2, 2, 4), (2, 1), [(1, 0), (0, 2)], (2, 1)),
    ((2, 5, 6, 4, 2), (3, 3, 3, 2, 3), (1, 2, 1), "SAME", (1, 1, 1)),
])
def test_per_example_kernel_gradients_by_taps_match_lax(xshape, kshape, strides, padding, dilation):
    """Inside per_example_kernel_grads(), vmap(grad) over examples gives each example's kernel (and input)
    gradient as lax's convolution does, one example at a time (2D and 3D, strides, uneven padding, dilation)."""
    gen = np.random.default_rng(0)
    x, w = (jnp.asarray(gen.normal(size=s), jnp.float32) for s in (xshape, kshape))
    dn = DN3 if len(xshape) == 5 else ("NHWC", "HWIO", "NHWC")

    def loss(conv, w, x):
        y = conv(x[None], w, strides, padding, rhs_dilation=dilation, dimension_numbers=dn)
        return jnp.sum(jnp.sin(y))

    reference = [jax.grad(functools.partial(loss, lax.conv_general_dilated), (0, 1))(w, x[i]) for i in range(len(x))]
    with ops.per_example_kernel_grads():
        per_example = jax.jit(jax.vmap(jax.grad(functools.partial(loss, ops.conv_general_dilated), (0, 1)),
                                       (None, 0)))(w, x)
    for i, (dw, dx) in enumerate(reference):
        np.testing.assert_allclose(per_example[0][i], dw, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(per_example[1][i], dx, rtol=1e-4, atol=1e-5)
