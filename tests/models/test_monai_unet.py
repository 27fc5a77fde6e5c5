"""MonaiUNet against `monai.networks.nets.UNet`: parameter counts, names, and logits on the same weights (MONAI's
init, a medjax init exported to torch, and after 3 torch Adam steps), 2D and 3D, with and without residual
units, instance and batch norm; the import report and the export round trip; MONAI's input-size rules.

Structure checks use `jax.eval_shape` (free); only tiny models (channels (4, 8, 16), strides (2, 2)) are compiled.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.models import MonaiUNet, build_model
from medjax.transfer import export_weights, get_layout, import_weights

torch = pytest.importorskip("torch")
nets = pytest.importorskip("monai.networks.nets")

TINY = dict(channels=(4, 8, 16), strides=(2, 2))
ATOL = 1e-4


def _shapes(model, shape):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _monai(nd, in_ch, out_ch, seed=0, **kw):
    torch.manual_seed(seed)
    net = nets.UNet(spatial_dims=nd, in_channels=in_ch, out_channels=out_ch, **kw)
    with torch.no_grad():  # distinct PReLU slopes and BN statistics, so a mix-up between layers cannot hide
        for name, p in net.named_parameters():
            if name.endswith("adn.A.weight"):
                p.uniform_(0.05, 0.6)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return net


def _state(net) -> dict:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _torch_out(net, x, train=False):
    net.train(train)
    with torch.no_grad():
        return np.moveaxis(net(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy(), 1, -1)


def _import(model, sd, shape):
    variables, report = import_weights(sd, get_layout("monai_unet", "monai"), _shapes(model, shape))
    assert not report.unused and not report.missing and not report.skipped and not report.folded
    assert all(k.endswith("num_batches_tracked") for k in report.dropped)
    return variables


# ------------------------------------------------------------------------------------------------ structure
# monai UNet(spatial_dims, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))
MONAI_PARAMS = {(2, 0): 660_282, (2, 2): 1_625_161, (3, 0): 1_979_610, (3, 2): 4_806_481}


@pytest.mark.parametrize("nd, res", sorted(MONAI_PARAMS))
def test_param_count_equals_monai(nd, res):
    model = build_model("monai_unet", num_classes=2, num_res_units=res)
    assert isinstance(model, MonaiUNet)
    v = _shapes(model, (1,) + (32,) * nd + (1,))
    assert set(v) == {"params"}  # MONAI's instance norm: affine=False, no running statistics
    assert _count(v["params"]) == MONAI_PARAMS[nd, res]
    net = nets.UNet(spatial_dims=nd, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                    strides=(2, 2, 2, 2), num_res_units=res)
    assert sum(p.numel() for p in net.parameters()) == MONAI_PARAMS[nd, res]


def test_spleen_bundle_config_counts_and_batch_stats():
    """The MONAI model zoo's spleen_ct_segmentation network: 3D, 1 -> 2, two residual units, batch norm."""
    kw = dict(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="batch")
    v = _shapes(build_model("monai_unet", num_classes=2, **kw), (1, 32, 32, 32, 1))
    net = nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, **kw)
    assert _count(v["params"]) == sum(p.numel() for p in net.parameters()) == 4_808_917  # + BN scale/bias
    n_bn = sum(1 for k in net.state_dict() if k.endswith("running_mean"))
    assert len(jax.tree.leaves(v["batch_stats"])) == 2 * n_bn


def test_names_mirror_monai_nesting():
    p = _shapes(MonaiUNet(num_classes=3, num_res_units=2, **TINY), (1, 32, 32, 1))["params"]
    assert set(p) == {"down0", "down1", "bottom", "up1", "up0"}
    assert set(p["down0"]) == {"unit0", "unit1", "residual"} and set(p["down0"]["unit0"]) == {"conv", "act"}
    assert p["down0"]["residual"]["kernel"].shape == (3, 3, 1, 4)  # strided shortcut: the unit's kernel
    assert p["bottom"]["residual"]["kernel"].shape == (1, 1, 8, 16)  # channels only: 1x1
    assert p["up1"]["conv"]["kernel"].shape == (3, 3, 24, 4)  # transposed, cat(skip 8, bottom 16)
    assert set(p["up1"]) == {"conv", "act", "res"} and "residual" not in p["up1"]["res"]
    assert set(p["up0"]["res"]["unit0"]) == {"conv"}  # MONAI's last_conv_only at the top
    assert p["up0"]["act"]["negative_slope"].shape == ()  # one shared PReLU slope
    p = _shapes(MonaiUNet(num_classes=3, **TINY), (1, 32, 32, 1))["params"]
    assert set(p["down0"]) == {"conv", "act"} and set(p["up0"]) == {"conv"}  # top up layer: conv only


def test_bad_configs():
    with pytest.raises(MedjaxError, match=r"monai_unet dropout must be a number in \[0, 1\)"):
        MonaiUNet(num_classes=2, dropout=1.0)
    with pytest.raises(MedjaxError, match="must be odd"):
        MonaiUNet(num_classes=2, up_kernel_size=2)
    with pytest.raises(MedjaxError, match="'group'"):
        build_model("monai_unet", num_classes=2, norm="group")
    with pytest.raises(MedjaxError, match="2 strides"):
        MonaiUNet(num_classes=2, channels=(4, 8, 16), strides=(2,))


# ------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("nd, res", [(2, 0), (2, 2), (3, 0), (3, 2)])
def test_outputs_match_monai_imported_and_after_adam(nd, res):
    """MONAI's init -> same logits; export round-trips bitwise; 3 torch Adam steps later, import again -> same."""
    shape = (1,) + (32 if nd == 2 else 16,) * nd + (1,)
    net = _monai(nd, 1, 3, num_res_units=res, **TINY)
    model = MonaiUNet(num_classes=3, num_res_units=res, **TINY)
    apply = jax.jit(functools.partial(model.apply, train=False))
    rng = np.random.default_rng(nd + res)
    x = rng.standard_normal(shape).astype(np.float32)

    sd = _state(net)
    variables = _import(model, sd, shape)
    np.testing.assert_allclose(apply(variables, x), _torch_out(net, x), atol=ATOL)
    back = export_weights(variables, get_layout("monai_unet", "monai"), sd)
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)

    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    yt = torch.from_numpy(rng.standard_normal((1, 3) + shape[1:-1]).astype(np.float32))
    net.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(xt), yt).backward()
        opt.step()
    sd2 = _state(net)
    assert not np.array_equal(sd2["model.0.conv.weight" if res == 0 else "model.0.conv.unit0.conv.weight"],
                              sd["model.0.conv.weight" if res == 0 else "model.0.conv.unit0.conv.weight"])
    np.testing.assert_allclose(apply(_import(model, sd2, shape), x), _torch_out(net, x), atol=ATOL)


def test_medjax_init_exported_to_monai_gives_same_outputs():
    """The other direction: random medjax weights (and PReLU slopes) -> torch via export -> same logits."""
    shape = (2, 32, 32, 2)
    model = MonaiUNet(num_classes=2, num_res_units=2, **TINY)
    variables = model.init(jax.random.key(0), jnp.zeros(shape), train=False)
    keys = iter(jax.random.split(jax.random.key(1), 64))
    variables = jax.tree_util.tree_map_with_path(
        lambda path, a: jax.random.uniform(next(keys), a.shape, minval=0.05, maxval=0.6)
        if path[-1].key == "negative_slope" else a, variables)
    net = nets.UNet(spatial_dims=2, in_channels=2, out_channels=2, num_res_units=2, **TINY)
    sd = export_weights(variables, get_layout("monai_unet", "monai"), _state(net))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(model.apply(variables, x, train=False), _torch_out(net, x), atol=ATOL)


def test_batch_norm_eval_and_train_match_monai():
    """norm="batch" (the spleen bundle's choice): running statistics in eval, batch statistics in train."""
    shape = (2, 16, 16, 16, 1)
    kw = dict(num_res_units=2, norm="batch", **TINY)
    net = _monai(3, 1, 2, **kw)
    model = MonaiUNet(num_classes=2, **kw)
    sd = _state(net)
    variables = _import(model, sd, shape)
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)

    @jax.jit
    def run(v, x):
        out, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
        return model.apply(v, x, train=False), out, upd

    ev, tr, upd = run(variables, x)
    np.testing.assert_allclose(ev, _torch_out(net, x), atol=ATOL)
    np.testing.assert_allclose(tr, _torch_out(net, x, train=True), atol=ATOL)
    assert jax.tree.structure(upd["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    back = export_weights(variables, get_layout("monai_unet", "monai"), sd)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)


def test_odd_sizes_follow_monai():
    """Top-level odd sizes work and, as in MONAI, come back rounded up to the stride (31 -> 32); a size a lower
    level cannot halve evenly (30 -> 15) fails in both. Also non-default kernels and ADN ordering."""
    kw = dict(num_res_units=1, kernel_size=5, up_kernel_size=3, adn_ordering="ADN", **TINY)
    net = _monai(2, 1, 2, **kw)
    model = MonaiUNet(num_classes=2, **kw)
    shape = (1, 31, 28, 1)
    variables = _import(model, _state(net), shape)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    ref = _torch_out(net, x)
    assert ref.shape == (1, 32, 28, 2)
    np.testing.assert_allclose(model.apply(variables, x, train=False), ref, atol=ATOL)

    bad = np.zeros((1, 30, 28, 1), np.float32)
    with pytest.raises(RuntimeError):
        _torch_out(net, bad)
    with pytest.raises(MedjaxError, match=r"up1 gives spatial size \(16, 14\).*down0\) is \(15, 14\)"):
        jax.eval_shape(functools.partial(model.apply, train=False), variables, bad)
