"""Adapting imported weights: input channels (RGB <-> grey) and 2D -> 3D inflation, as functions, through
`config.init` and through `medjax import-weights`."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from medjax import cli
from medjax.errors import MedjaxError
from medjax.models import build_model
from medjax.tasks.base import model_from_config
from medjax.train import loop
from medjax.train.parallel import replicated_to_host
from medjax.transfer.adapt import adapt_input_channels, inflate_2d_to_3d, inflate_kernel, to_grayscale
from medjax.transfer.convert import to_torch
from tests.train.helpers import synthetic_config

CLS = "classification"
SMALL_RESNET = dict(stage_sizes=(1, 1), block="basic", stem="small", width=4)  # the synthetic config's model


def flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(jax.tree.map(np.asarray, dict(tree))).items()}


def rng_array(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def random_variables(model, input_shape, seed=0):
    """Random variables for `model` without compiling its (slow on CPU) initialiser: He-scaled kernels and
    non-trivial BatchNorm statistics."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            return (rng.normal(size=s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))).astype(s.dtype)
        if leaf in ("scale", "var"):
            return (1 + 0.2 * np.abs(rng.normal(size=s.shape))).astype(s.dtype)
        return (0.1 * rng.normal(size=s.shape)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(fill, {k: v for k, v in shapes.items()})


# ---------------------------------------------------------------- input channels


@pytest.mark.parametrize("old, new", [(3, 1), (1, 3), (3, 6), (3, 4), (5, 2), (4, 3), (2, 2)])
def test_input_channel_rule_keeps_the_channel_sum(old, new):
    w = rng_array((3, 3, old, 5))
    a = adapt_input_channels(w, new)
    assert a.shape == (3, 3, new, 5) and a.dtype == w.dtype
    np.testing.assert_allclose(a.sum(axis=-2), w.sum(axis=-2), rtol=1e-6, atol=1e-6)
    t = adapt_input_channels(w.transpose(3, 2, 0, 1), new, axis=1)  # torch (O, I, kh, kw)
    np.testing.assert_array_equal(t, a.transpose(3, 2, 0, 1))
    if (old, new) == (3, 1):
        np.testing.assert_array_equal(a, w.sum(axis=-2, keepdims=True))
    if (old, new) == (1, 3):
        np.testing.assert_array_equal(a, np.repeat(w, 3, axis=-2) / 3)
    if (old, new) == (3, 6):
        np.testing.assert_array_equal(a, np.concatenate([w, w], axis=-2) / 2)


def test_to_grayscale_equals_rgb_replicated_grey_image_through_torch_conv():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 5, padding=2, bias=True)
    state = {k: v.detach().numpy().copy() for k, v in conv.state_dict().items()}
    grey_state = to_grayscale(state, "weight")  # a torch state dict: (O, 3, k, k) -> (O, 1, k, k)
    assert grey_state["weight"].shape == (6, 1, 5, 5)
    np.testing.assert_array_equal(grey_state["bias"], state["bias"])
    np.testing.assert_array_equal(state["weight"], conv.weight.detach().numpy())  # the input is not modified
    grey = torch.from_numpy(rng_array((2, 1, 17, 19)))
    grey_conv = torch.nn.Conv2d(1, 6, 5, padding=2)
    grey_conv.load_state_dict({k: torch.from_numpy(v) for k, v in grey_state.items()})
    with torch.no_grad():
        rgb_out = conv(grey.repeat(1, 3, 1, 1)).numpy()
        grey_out = grey_conv(grey).numpy()
    np.testing.assert_allclose(grey_out, rgb_out, rtol=0, atol=1e-5)
    print(f"torch conv: max |grey - replicated RGB| = {np.abs(grey_out - rgb_out).max():.2e}")


def test_to_grayscale_on_medjax_variables_and_a_whole_resnet():
    model = build_model("resnet", num_classes=3, **SMALL_RESNET)
    rgb = random_variables(model, (1, 16, 16, 3))
    grey_vars = to_grayscale(rgb, "stem_conv")
    np.testing.assert_array_equal(grey_vars["params"]["stem_conv"]["kernel"],
                                  np.asarray(rgb["params"]["stem_conv"]["kernel"]).sum(axis=-2, keepdims=True))
    x = rng_array((2, 16, 16, 1), 1)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out_grey = apply(grey_vars, x)
    out_rgb = apply(rgb, np.repeat(x, 3, axis=-1))
    np.testing.assert_allclose(out_grey, out_rgb, rtol=0, atol=1e-5)
    print(f"medjax resnet: max |grey - replicated RGB| logits = {np.abs(out_grey - out_rgb).max():.2e}")
    # flat medjax paths and the full leaf path work too; 1 -> 3 is the way back for a replicated image
    flat_grey = to_grayscale(flat(rgb), "params/stem_conv/kernel")
    np.testing.assert_array_equal(flat_grey["params/stem_conv/kernel"], grey_vars["params"]["stem_conv"]["kernel"])
    k1 = np.asarray(grey_vars["params"]["stem_conv"]["kernel"])
    back = jax.tree.map(np.asarray, grey_vars)
    back["params"]["stem_conv"]["kernel"] = adapt_input_channels(k1, 3)
    out_back = apply(back, np.repeat(x, 3, axis=-1))
    np.testing.assert_allclose(out_back, out_grey, rtol=0, atol=1e-5)


def test_input_channel_errors_name_what_is_wrong():
    model = build_model("resnet", num_classes=3, **SMALL_RESNET)
    grey = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))
    grey = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), grey)
    with pytest.raises(MedjaxError, match=r"'params/stem_conv/kernel' has shape \(3, 3, 1, 4\), i.e. 1 input"):
        to_grayscale(grey, "stem_conv")
    with pytest.raises(MedjaxError, match=r"no convolution kernel 'conv1'.*stage1_block1"):
        to_grayscale(grey, "conv1")
    with pytest.raises(MedjaxError, match="in_channels must be a positive int, got 0"):
        adapt_input_channels(np.zeros((3, 3, 3, 4)), 0)
    with pytest.raises(MedjaxError, match=r"expected a convolution kernel, got shape \(3, 4\)"):
        adapt_input_channels(np.zeros((3, 4)), 1)


# ---------------------------------------------------------------- 2D -> 3D inflation


def test_average_inflation_gives_the_2d_response_on_interior_slices():
    """One convolution: identical depth slices through the averaged kernel give the 2D output on every slice whose
    depth window lies inside the volume; a border slice sees zero padding and gets (valid taps / kd) of it."""
    w, b = rng_array((3, 3, 2, 4)), rng_array((4,), 1)
    x2 = rng_array((1, 9, 9, 2), 2)
    conv = lambda nd: nn.Conv(4, (3,) * nd, padding=[(1, 1)] * nd)  # noqa: E731
    y2 = conv(2).apply({"params": {"kernel": w, "bias": b}}, x2)
    x3 = np.repeat(x2[:, None], 5, axis=1)
    y3 = conv(3).apply({"params": {"kernel": inflate_kernel(w, 3, "average"), "bias": b}}, x3)
    diff = np.abs(y3[:, 1:-1] - y2[:, None]).max()
    assert diff < 1e-5
    print(f"average, single conv, interior slices: max diff {diff:.2e}")
    for border in (0, -1):
        np.testing.assert_allclose(y3[:, border] - b, (y2 - b) * 2 / 3, atol=1e-5)
    y3c = conv(3).apply({"params": {"kernel": inflate_kernel(w, 3, "center"), "bias": b}}, x3)
    np.testing.assert_allclose(y3c, np.broadcast_to(y2[:, None], y3c.shape), rtol=0, atol=1e-5)  # every slice


def test_center_inflated_resnet18_gives_the_2d_logits_on_identical_slices():
    model = build_model("resnet18", num_classes=5, width=4)
    x2 = rng_array((2, 32, 32, 3), 3)
    v2 = random_variables(model, x2.shape, 4)
    depth = 5  # the stem, max-pool and three strided stages all stride in depth too: 5 -> 3 -> 2 -> 1 -> 1 -> 1
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, depth, 32, 32, 3)), train=False))
    v3 = inflate_2d_to_3d(v2, target, mode="center")
    assert v3["params"]["stem_conv"]["kernel"].shape == (7, 7, 7, 3, 4)
    np.testing.assert_array_equal(v3["params"]["stem_conv"]["kernel"][3], v2["params"]["stem_conv"]["kernel"])
    np.testing.assert_array_equal(v3["params"]["head"]["kernel"], v2["params"]["head"]["kernel"])
    np.testing.assert_array_equal(v3["batch_stats"]["stem_bn"]["var"], v2["batch_stats"]["stem_bn"]["var"])
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    y2 = apply(v2, x2)
    y3 = apply(v3, np.repeat(x2[:, None], depth, axis=1))
    diff = float(np.abs(y3 - y2).max())
    assert diff < 1e-4, diff
    print(f"center, resnet18 logits: max diff {diff:.2e} (|logits| up to {np.abs(y2).max():.2f})")
    avg = inflate_2d_to_3d(v2, target, mode="average")
    np.testing.assert_allclose(avg["params"]["stem_conv"]["kernel"].sum(axis=0), v2["params"]["stem_conv"]["kernel"],
                               rtol=1e-5, atol=1e-7)
    assert avg["params"]["stage2_block1"]["downsample_conv"]["kernel"].shape == (1, 1, 1, 4, 8)


def test_inflation_errors_name_the_path():
    m2 = build_model("resnet", num_classes=3, **SMALL_RESNET)
    shapes = lambda m, s: jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros(s), train=False))  # noqa: E731
    v2 = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes(m2, (1, 8, 8, 1)))
    wrong = {**flat(v2), "params/stem_conv/kernel": np.ones((5, 5, 1, 4), np.float32)}
    with pytest.raises(MedjaxError, match=r"'params/stem_conv/kernel' has shape \(5, 5, 1, 4\) in the 2D variables "
                                          r"but \(3, 3, 3, 1, 4\) in the 3D target"):
        inflate_2d_to_3d(wrong, shapes(m2, (1, 4, 8, 8, 1)))
    other = build_model("resnet", num_classes=3, **{**SMALL_RESNET, "stage_sizes": (1, 2)})
    with pytest.raises(MedjaxError, match=r"only in the 3D target \['batch_stats/stage2_block2/bn1/mean'"):
        inflate_2d_to_3d(v2, shapes(other, (1, 4, 8, 8, 1)))
    with pytest.raises(MedjaxError, match="unknown inflation mode 'mean'"):
        inflate_2d_to_3d(v2, mode="mean")
    no_target = inflate_2d_to_3d(v2, mode="center")  # without a target: k x k -> k x k x k
    assert no_target["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 1, 4)
    assert inflate_2d_to_3d(flat(v2), depth=1)["params/stem_conv/kernel"].shape == (1, 3, 3, 1, 4)
    no_stats = inflate_2d_to_3d({"params": {"conv": {"kernel": np.ones((3, 3, 1, 2))}}, "batch_stats": {}})
    assert no_stats["batch_stats"] == {} and no_stats["params"]["conv"]["kernel"].shape == (3, 3, 3, 1, 2)


# ---------------------------------------------------------------- config.init and import-weights


def _medjax_to_torch(variables):
    """A torchvision-named state dict for the small ResNet (the inverse of the resnet table)."""
    out = {}
    names = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    for path, value in flat(variables).items():
        _, module, leaf = path.split("/", 1)[0], *path.split("/", 1)[1].rsplit("/", 1)
        m = re.fullmatch(r"stage(\d)_block(\d)/(\w+)", module)
        if module in ("stem_conv", "stem_bn", "head"):
            torch_module = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}[module]
        else:
            sub = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(m.group(3), m.group(3))
            torch_module = f"layer{m.group(1)}.{int(m.group(2)) - 1}.{sub}"
        kind = "linear" if module == "head" else "conv" if leaf == "kernel" else "batch_norm"
        out[f"{torch_module}.{names[leaf]}"] = to_torch(value, kind, names[leaf], value.shape)
    return dict(sorted(out.items(), key=lambda kv: not kv[0].startswith(("conv1.", "bn1."))))  # torch order: stem first


@pytest.fixture(scope="module")
def rgb_resnet(tmp_path_factory):
    """The synthetic config's ResNet initialised for RGB input: medjax .npz and torchvision-named .npz."""
    from tests.conftest import REPO

    config = synthetic_config(REPO, CLS)
    model = model_from_config(config.model, 3, None)
    variables = random_variables(model, (1, 16, 16, 3), 7)  # unlike any fresh init
    d = tmp_path_factory.mktemp("rgb")
    np.savez(d / "medjax.npz", **flat(variables))
    np.savez(d / "torch.npz", **_medjax_to_torch(variables))
    return flat(variables), d


def _initial(config, workdir):
    s = loop.setup(config, str(workdir))
    return flat(replicated_to_host(s.strategy.to_canonical(s.initial_state())).params)


def test_config_init_adapts_rgb_weights_to_grey_data(repo, tmp_path, rgb_resnet, capsys):
    source, d = rgb_resnet
    for name, layout in (("medjax.npz", "medjax"), ("torch.npz", "torchvision")):
        args = [f"--config.init.from={d / name}", f"--config.init.layout={layout}"]
        with pytest.raises(MedjaxError, match=r"'params/stem_conv/kernel' has shape \(3, 3, 3, 4\) but this model's "
                                              r"has shape \(3, 3, 1, 4\).*config.init.adapt_input_channels=True"):
            _initial(synthetic_config(repo, CLS, *args), tmp_path)
        params = _initial(synthetic_config(repo, CLS, *args, "--config.init.adapt_input_channels=True"), tmp_path)
        np.testing.assert_array_equal(params["stem_conv/kernel"],
                                      source["params/stem_conv/kernel"].sum(axis=-2, keepdims=True))
        for p, v in params.items():
            if p != "stem_conv/kernel":
                np.testing.assert_array_equal(v, source[f"params/{p}"], err_msg=p)
        assert "adapted: input channels 3->1 at params/stem_conv/kernel" in capsys.readouterr().err


def test_config_init_inflates_2d_weights_for_a_3d_model(repo, tmp_path, rgb_resnet):
    source, d = rgb_resnet
    volume = ["--config.data.size=(3,16,16)", "--config.data.num_train=8", "--config.data.num_eval=8"]
    args = [*volume, f"--config.init.from={d / 'medjax.npz'}", "--config.init.adapt_input_channels=True"]
    with pytest.raises(MedjaxError, match=r"'params/stage1_block1/conv1/kernel' has shape \(3, 3, 4, 4\) but this "
                                          r"model's has shape \(3, 3, 3, 4, 4\) \(6 such kernel\(s\)\); set "
                                          r"config.init.inflate=True \(2D weights for a 3D model\)"):
        _initial(synthetic_config(repo, CLS, *args), tmp_path)
    grey_2d = source["params/stem_conv/kernel"].sum(axis=-2, keepdims=True)
    for mode in ("average", "center"):
        params = _initial(synthetic_config(repo, CLS, *args, "--config.init.inflate=True",
                                           f"--config.init.inflate_mode={mode}"), tmp_path)
        np.testing.assert_array_equal(params["stem_conv/kernel"], inflate_kernel(grey_2d, 3, mode))
        block = "stage1_block1/conv1/kernel"
        np.testing.assert_array_equal(params[block], inflate_kernel(source[f"params/{block}"], 3, mode))
        np.testing.assert_array_equal(params["head/kernel"], source["params/head/kernel"])
        np.testing.assert_array_equal(params["stem_bn/scale"], source["params/stem_bn/scale"])


def test_import_weights_command_adapts_channels_and_inflates(tmp_path, rgb_resnet, capsys):
    from medjax.transfer.pretrained import load_pretrained

    source, d = rgb_resnet
    base = ["import-weights", "--arch", "resnet", "--layout", "torchvision", "--in", str(d / "torch.npz"),
            "--model.stage_sizes=(1,1)", "--model.block=basic", "--model.stem=small", "--model.width=4"]
    assert cli.run([*base, "--out", str(tmp_path / "grey"), "--in_channels", "1"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["in_channels"] == 1 and meta["adapted"] == {
        "input_channels": {"from": 3, "to": 1, "kernels": ["params/stem_conv/kernel"]}}
    variables, _ = load_pretrained(tmp_path / "grey")
    np.testing.assert_array_equal(variables["params"]["stem_conv"]["kernel"],
                                  source["params/stem_conv/kernel"].sum(axis=-2, keepdims=True))
    assert cli.run([*base, "--out", str(tmp_path / "vol"), "--spatial_dims", "3", "--inflate_mode", "center"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["spatial_dims"] == 3 and meta["adapted"] == {"inflate": {"mode": "center", "kernels": 6}}
    variables, _ = load_pretrained(tmp_path / "vol")
    np.testing.assert_array_equal(variables["params"]["stage2_block1"]["downsample_conv"]["kernel"],
                                  inflate_kernel(source["params/stage2_block1/downsample_conv/kernel"], 1, "center"))
    assert cli.run([*base, "--out", str(tmp_path / "plain")]) == 0  # the file's own input: nothing adapted
    assert json.loads(capsys.readouterr().out)["adapted"] == {}
