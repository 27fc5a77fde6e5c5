"""medjax.models.norm: the fused Batch/Group/Instance norm give Flax's numbers (values, gradients, running
statistics) and torch's, and no reduction is left for XLA:CPU's slow reduce-window path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from medjax.models import norm, ops


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3 + 1)


def _loss_and_grads(module, x, variables):
    """A loss that weighs every output differently, its gradients (params, x) and the updated statistics."""
    def f(params, x):
        v = dict(variables, params=params) if params is not None else variables
        if "batch_stats" in variables:
            y, upd = module.apply(v, x, mutable=["batch_stats"])
        else:
            y, upd = module.apply(v, x), {}
        w = jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) / y.size
        return jnp.sum(jnp.sin(y) * w), (y, upd)

    (loss, (y, upd)), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        variables.get("params"), x)
    return loss, y, grads, upd


def _perturbed(variables):
    """Non-trivial scale and bias (not 1 and 0), so their gradients and the dx formula are exercised."""
    if "params" not in variables:
        return variables
    key = iter(jax.random.split(jax.random.key(1), 8))
    params = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(next(key), p.shape), variables["params"])
    return dict(variables, params=params)


CASES = [
    (nn.BatchNorm, norm.BatchNorm, dict(use_running_average=False, momentum=0.9, epsilon=1e-5), (8, 5, 6, 4)),
    (nn.BatchNorm, norm.BatchNorm, dict(use_running_average=False, momentum=0.9, epsilon=1e-5), (3, 4, 5, 3, 4)),
    (nn.BatchNorm, norm.BatchNorm, dict(use_running_average=False, use_scale=False, epsilon=1e-3), (8, 5, 6, 4)),
    (nn.GroupNorm, norm.GroupNorm, dict(num_groups=2, epsilon=1e-5), (3, 5, 6, 8)),
    (nn.GroupNorm, norm.GroupNorm, dict(num_groups=None, group_size=4, epsilon=1e-5), (2, 3, 4, 5, 8)),
    (nn.InstanceNorm, norm.InstanceNorm, dict(epsilon=1e-5), (3, 5, 6, 4)),
    (nn.InstanceNorm, norm.InstanceNorm, dict(epsilon=1e-5, use_scale=False, use_bias=False), (2, 4, 3, 5, 4)),
]


@pytest.mark.parametrize("flax_cls,ours_cls,kw,shape", CASES)
def test_fused_norm_equals_flax(flax_cls, ours_cls, kw, shape):
    x = _x(shape)
    variables = _perturbed(jax.jit(flax_cls(**kw).init)(jax.random.key(0), x))
    ours_vars = jax.eval_shape(ours_cls(**kw).init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours_vars) == jax.tree.map(jnp.shape, variables)  # same variables, same names
    ref, ours = _loss_and_grads(flax_cls(**kw), x, variables), _loss_and_grads(ours_cls(**kw), x, variables)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    np.testing.assert_allclose(ours[1], ref[1], atol=2e-5)
    for a, b in zip(jax.tree.leaves((ours[2], ours[3])), jax.tree.leaves((ref[2], ref[3]))):
        np.testing.assert_allclose(a, b, atol=5e-5 * max(1.0, float(jnp.abs(b).max())))


def test_batch_norm_eval_mode_uses_running_statistics():
    x = _x((4, 3, 3, 2))
    variables = {"params": {"scale": jnp.array([2.0, 0.5]), "bias": jnp.array([1.0, -1.0])},
                 "batch_stats": {"mean": jnp.array([0.5, -2.0]), "var": jnp.array([4.0, 0.25])}}
    y = norm.BatchNorm(use_running_average=True, epsilon=0.0).apply(variables, x)
    expected = (x - variables["batch_stats"]["mean"]) / jnp.sqrt(variables["batch_stats"]["var"]) * \
        variables["params"]["scale"] + variables["params"]["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_batch_norm_matches_torch_train_step():
    """Output, input gradient and the running statistics after one torch BatchNorm2d training forward."""
    x = np.random.default_rng(3).standard_normal((6, 4, 5, 3)).astype(np.float32) * 2 + 0.5
    g = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    tbn = torch.nn.BatchNorm2d(3)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_()
    yt = tbn(xt)
    yt.backward(torch.from_numpy(np.moveaxis(g, -1, 1).copy()))

    bn = norm.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    v = bn.init(jax.random.key(0), jnp.asarray(x))
    (y, upd), vjp = jax.vjp(lambda x: bn.apply(v, x, mutable=["batch_stats"]), jnp.asarray(x))
    dx = vjp((jnp.asarray(g), jax.tree.map(jnp.zeros_like, upd)))[0]
    np.testing.assert_allclose(np.moveaxis(np.asarray(y), -1, 1), yt.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.moveaxis(np.asarray(dx), -1, 1), xt.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], tbn.running_mean.numpy(), atol=1e-6)
    n = x.size // 3  # torch's running_var is unbiased, flax's (and medjax's) the biased batch variance
    np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * np.var(x, axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(tbn.running_var.numpy(), 0.9 + 0.1 * np.var(x, axis=(0, 1, 2)) * n / (n - 1),
                               atol=1e-6)


def test_batch_norm_axis_name_sums_statistics_and_keeps_parameter_gradients_local():
    """Under a named axis (as pmap), statistics and dx use the global batch, while scale/bias gradients are each
    device's own, so the train step's pmean gives the full-batch gradient (not the sum over devices)."""
    x = _x((8, 3, 3, 4), seed=5)
    plain = norm.BatchNorm(use_running_average=False)
    synced = norm.BatchNorm(use_running_average=False, axis_name="data")
    v = _perturbed(jax.jit(plain.init)(jax.random.key(0), x))
    w = jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape) / x.size

    def global_loss(params, x):
        y, _ = plain.apply(dict(v, params=params), x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * w)

    ref_gp, ref_gx = jax.grad(global_loss, (0, 1))(v["params"], x)

    def per_device(params, xs, ws):
        def f(params, xs):
            y, _ = synced.apply(dict(v, params=params), xs, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y) * ws)
        gp, gx = jax.grad(f, (0, 1))(params, xs)
        return jax.lax.psum(gp, "data"), gx

    gp, gx = jax.vmap(per_device, in_axes=(None, 0, 0), axis_name="data")(
        v["params"], x.reshape(2, 4, 3, 3, 4), w.reshape(2, 4, 3, 3, 4))
    np.testing.assert_allclose(gx.reshape(x.shape), ref_gx, atol=1e-5)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(ref_gp)):
        np.testing.assert_allclose(a[0], b, atol=1e-4)


def _reduce_window_count(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().as_text().count("reduce-window(")


def test_no_reduce_window_left_in_training_step_of_a_norm_layer():
    """The point of the module: Flax's BatchNorm step compiles to reduce-windows on CPU, the fused one to none
    (XLA:CPU tiles reductions over axes longer than 32)."""
    x = _x((2, 64, 64, 4))
    for flax_cls, ours_cls, kw in ((nn.BatchNorm, norm.BatchNorm, dict(use_running_average=False)),
                                   (nn.InstanceNorm, norm.InstanceNorm, {})):
        variables = flax_cls(**kw).init(jax.random.key(0), x)

        def step(module, variables=variables):
            def f(params, x):
                vv = dict(variables, params=params)
                out = module.apply(vv, x, mutable=["batch_stats"])[0] if "batch_stats" in vv else module.apply(vv, x)
                return jnp.sum(out ** 3)
            return jax.grad(f, (0, 1))

        assert _reduce_window_count(step(flax_cls(**kw)), variables["params"], x) > 0
        assert _reduce_window_count(step(ours_cls(**kw)), variables["params"], x) == 0


def test_example_and_channel_sums_in_float32():
    x = jnp.asarray(np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)).astype(jnp.bfloat16)
    ref = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(ops.example_sums(x), ref.sum(axis=(1, 2)))  # exact: integers below 2^24
    np.testing.assert_array_equal(ops.channel_sums(x), ref.sum(axis=(0, 1, 2)))
    assert ops.example_sums(x).dtype == jnp.float32


def test_conv_module_equals_flax_conv_parameters_values_and_gradients():
    """ops.Conv: flax.linen.Conv's parameter names, shapes and initial values, outputs and gradients."""
    x = _x((2, 7, 6, 3))
    for kw in (dict(features=4, kernel_size=(3, 3), padding=[(1, 1), (1, 1)]),
               dict(features=5, kernel_size=(3, 3), strides=2, padding=1, use_bias=False),
               dict(features=2, kernel_size=(1, 1), padding="VALID"),
               dict(features=4, kernel_size=(3, 3), padding="SAME", kernel_dilation=2)):
        ref_mod, ours_mod = nn.Conv(**kw), ops.Conv(**kw)
        v_ref, v_ours = ref_mod.init(jax.random.key(3), x), ours_mod.init(jax.random.key(3), x)
        for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_ref)):
            np.testing.assert_array_equal(a, b)
        v = _perturbed(v_ref)
        f = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply({"params": p}, x)))  # noqa: E731
        np.testing.assert_allclose(ours_mod.apply(v, x), ref_mod.apply(v, x), atol=1e-5)
        for a, b in zip(jax.tree.leaves(jax.grad(f(ours_mod), (0, 1))(v["params"], x)),
                        jax.tree.leaves(jax.grad(f(ref_mod), (0, 1))(v["params"], x))):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_conv_bias_gradient_has_no_reduce_window():
    x = _x((2, 64, 64, 4))
    conv = ops.Conv(8, (3, 3), padding=1)
    v = conv.init(jax.random.key(0), x)
    grad = jax.grad(lambda p, x: jnp.sum(conv.apply({"params": p}, x) ** 2))
    assert _reduce_window_count(grad, v["params"], x) == 0
    ref = jax.grad(lambda p, x: jnp.sum(nn.Conv(8, (3, 3), padding=1).apply({"params": p}, x) ** 2))
    assert _reduce_window_count(ref, v["params"], x) > 0
