"""UNet and MONAI's BasicUNet: shapes 2D/3D, deep supervision, norms, names, MONAI-exact counts and outputs.

Structure checks use `jax.eval_shape` (free); real variables are filled from numpy because jitting flax's random
initialisers compiles very slowly on XLA:CPU. Only tiny models are compiled.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.models import BasicUNet, UNet, basic_unet, build_model


def _shapes(model, shape):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape))


def _out_shapes(model, shape, train):
    v = _shapes(model, shape)
    fn = functools.partial(model.apply, train=train, mutable=["batch_stats"] if train else False)
    out = jax.eval_shape(fn, v, jnp.zeros(shape))
    return out[0] if train else out


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _numpy_variables(model, shape, seed=0):
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "var":
            return jnp.ones(s.shape, s.dtype)
        if name == "mean":
            return jnp.zeros(s.shape, s.dtype)
        if name in ("scale", "bias"):
            return jnp.asarray((name == "scale") + 0.1 * rng.standard_normal(s.shape), s.dtype)
        return jnp.asarray(rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1])), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, _shapes(model, shape))


# ---------------------------------------------------------------------------------------------------- UNet
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (2, 30, 27, 3), (1, 16, 16, 16, 1), (1, 17, 16, 15, 2)])
def test_unet_output_shape_2d_3d_odd_sizes(upsample, shape):
    out = _out_shapes(UNet(num_classes=3, features=(8, 16, 32), upsample=upsample), shape, train=False)
    assert out.shape == shape[:-1] + (3,) and out.dtype == jnp.float32


def test_unet_param_counts_and_names():
    p = _shapes(UNet(num_classes=2), (1, 32, 32, 1))["params"]  # features (32, 64, 128, 256), batch norm
    assert _count(p) == 1_926_466
    assert set(p) == {"enc1", "enc2", "enc3", "enc4", "up3", "up2", "up1", "dec3", "dec2", "dec1", "final_conv"}
    assert set(p["enc1"]) == {"conv1", "norm1", "conv2", "norm2"}
    assert p["enc1"]["conv1"]["kernel"].shape == (3, 3, 1, 32) and "bias" not in p["enc1"]["conv1"]
    assert p["up3"]["kernel"].shape == (2, 2, 256, 128)  # transposed conv to the skip's width
    assert p["dec1"]["conv1"]["kernel"].shape == (3, 3, 64, 32)  # concat(skip 32, up 32)
    assert p["final_conv"]["kernel"].shape == (1, 1, 32, 2)
    assert _count(_shapes(UNet(num_classes=2), (1, 16, 16, 16, 1))["params"]) == 5_601_154
    # resize: a 1x1 conv replaces each 2x2 transposed conv
    p = _shapes(UNet(num_classes=2, upsample="resize"), (1, 32, 32, 1))["params"]
    assert _count(p) == 1_797_218 and p["up3"]["kernel"].shape == (1, 1, 256, 128) and "bias" not in p["up3"]


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (1, 16, 16, 16, 2)])
def test_unet_deep_supervision(shape):
    model = UNet(num_classes=3, features=(8, 16, 32, 64), deep_supervision=True)
    p = _shapes(model, shape)["params"]  # aux heads exist whichever mode init ran in
    assert {k for k in p if k.startswith("aux")} == {"aux2", "aux3"}
    assert p["aux3"]["kernel"].shape == (1,) * (len(shape) - 2) + (32, 3)
    outs = _out_shapes(model, shape, train=True)
    sp = shape[1:-1]
    assert isinstance(outs, tuple) and len(outs) == 3
    assert [o.shape for o in outs] == [(shape[0], *(s // f for s in sp), 3) for f in (1, 2, 4)]
    assert _out_shapes(model, shape, train=False).shape == shape[:-1] + (3,)  # eval: main logits only


@pytest.mark.parametrize("norm,stats", [("batch", True), ("instance", False), ("group", False)])
def test_unet_norms_and_batch_stats(norm, stats):
    v = _shapes(UNet(num_classes=2, features=(8, 16), norm=norm), (2, 16, 16, 1))
    assert ("batch_stats" in v) == stats
    assert set(v["params"]["enc2"]["norm1"]) == {"scale", "bias"}


@pytest.mark.parametrize(
    "kw",
    [dict(norm="batch", upsample="transpose", activation="relu", deep_supervision=True),
     dict(norm="group", upsample="resize", activation="leaky_relu")],
)
def test_unet_tiny_forward(kw):
    model = UNet(num_classes=2, features=(8, 16, 16), **kw)
    shape = (2, 12, 10, 1)
    v = _numpy_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape, np.float32))

    @jax.jit
    def run(v, x):
        out, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
        return out, upd, model.apply(v, x, train=False)

    out, upd, ev = run(v, x)
    main = out[0] if kw.get("deep_supervision") else out
    assert main.shape == ev.shape == (2, 12, 10, 2)
    assert np.isfinite(np.asarray(main)).all() and np.isfinite(np.asarray(ev)).all()
    assert ("batch_stats" in upd) == (kw["norm"] == "batch")
    if kw["norm"] == "group":  # no batch dependence: train and eval agree
        np.testing.assert_allclose(main, ev, atol=1e-5)


def test_unet_bad_choices():
    with pytest.raises(MedjaxError, match=r"'bilinear'.*transpose, resize"):
        UNet(num_classes=2, upsample="bilinear")
    with pytest.raises(MedjaxError, match=r"'gelu'.*relu, leaky_relu"):
        UNet(num_classes=2, activation="gelu")
    with pytest.raises(MedjaxError, match=r"'layer'"):
        build_model("unet", num_classes=2, norm="layer")
    with pytest.raises(MedjaxError, match="6 numbers"):
        basic_unet(2, features=(8, 16))


# ----------------------------------------------------------------------------------------------- BasicUNet
BASIC_UNET_PARAMS = {2: 1_978_532, 3: 5_749_476}  # monai BasicUNet(spatial_dims, in_channels=1, out_channels=4)


@pytest.mark.parametrize("nd", [2, 3])
def test_basic_unet_param_count_equals_monai(nd):
    model = build_model("basic_unet", num_classes=4, bn_axis_name=None)
    assert isinstance(model, BasicUNet)
    v = _shapes(model, (1,) + (16,) * nd + (1,))
    assert set(v) == {"params"}  # instance norm, no running stats (MONAI: track_running_stats=False)
    assert _count(v["params"]) == BASIC_UNET_PARAMS[nd]
    nets = pytest.importorskip("monai.networks.nets")
    net = nets.BasicUNet(spatial_dims=nd, in_channels=1, out_channels=4)
    assert sum(p.numel() for p in net.parameters()) == BASIC_UNET_PARAMS[nd]


def _monai_to_flax(state_dict) -> dict:
    """MONAI BasicUNet state_dict -> our param tree (the names mirror MONAI's module paths)."""
    params: dict = {}
    for key, t in state_dict.items():
        *path, leaf = key.split(".")
        w = t.detach().numpy()
        nd = w.ndim - 2
        if "adn" in path:  # conv_0.conv_0.adn.N.weight -> conv_0/conv_0/norm/scale
            path, leaf = path[: path.index("adn")] + ["norm"], {"weight": "scale", "bias": "bias"}[leaf]
        elif path[-1] == "deconv":  # torch (in, out, k..) -> flax (k.., in, out), spatially flipped
            path = path[:-1]
            if leaf == "weight":
                w = np.flip(np.transpose(w, (*range(2, 2 + nd), 0, 1)), axis=tuple(range(nd)))
        if leaf == "weight":  # conv: torch (out, in, k..) -> flax (k.., in, out)
            leaf, w = "kernel", (w if path[-1] == "upsample" else np.transpose(w, (*range(2, 2 + nd), 1, 0)))
        node = params
        for name in path:
            node = node.setdefault(name, {})
        node[leaf] = jnp.asarray(np.ascontiguousarray(w))
    return params


def test_basic_unet_matches_monai_outputs_on_odd_sizes():
    """Same weights -> same logits; 40x36 makes two decoder levels edge-pad (MONAI's `is_pad` replicate)."""
    torch = pytest.importorskip("torch")
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    features = (4, 4, 8, 8, 16, 6)
    net = nets.BasicUNet(spatial_dims=2, in_channels=2, out_channels=3, features=features).eval()
    with torch.no_grad():  # non-trivial norm affines, so a scale/bias mix-up cannot hide
        for name, p in net.named_parameters():
            if ".adn.N." in name:
                p.add_(0.1 * torch.randn_like(p))
    model = basic_unet(3, features=features)
    shape = (2, 40, 36, 2)
    params = _monai_to_flax(net.state_dict())
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(lambda s: s.shape, _shapes(model, shape)["params"])

    x = np.random.default_rng(0).standard_normal(shape, np.float32)
    ours = np.asarray(jax.jit(functools.partial(model.apply, train=False))({"params": params}, jnp.asarray(x)))
    with torch.no_grad():
        ref = net(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()
    assert ours.shape == (2, 40, 36, 3)
    np.testing.assert_allclose(ours, np.moveaxis(ref, 1, -1), atol=1e-4, rtol=1e-4)


def test_basic_unet_names_and_channel_arithmetic():
    p = _shapes(basic_unet(4), (1, 32, 32, 1))["params"]
    assert set(p) == {"conv_0", "down_1", "down_2", "down_3", "down_4",
                      "upcat_4", "upcat_3", "upcat_2", "upcat_1", "final_conv"}
    assert set(p["conv_0"]["conv_0"]) == {"conv", "norm"} and "bias" in p["conv_0"]["conv_0"]["conv"]
    assert p["down_4"]["convs"]["conv_1"]["conv"]["kernel"].shape == (3, 3, 256, 256)
    assert p["upcat_4"]["upsample"]["kernel"].shape == (2, 2, 256, 128)  # halves
    assert p["upcat_4"]["convs"]["conv_0"]["conv"]["kernel"].shape == (3, 3, 256, 128)  # cat 128 + up 128
    assert p["upcat_1"]["upsample"]["kernel"].shape == (2, 2, 32, 32)  # halves=False
    assert p["upcat_1"]["convs"]["conv_0"]["conv"]["kernel"].shape == (3, 3, 64, 32)
    assert p["final_conv"]["kernel"].shape == (1, 1, 32, 4)
