"""DenseNet-121: torchvision/MONAI parameter counts, and weight import/export for both layouts, 2D and 3D.

The torchvision reference is `torchvision_densenet.py` beside this file (torchvision itself cannot be imported
here). Parity is checked on random weights and again after 3 torch SGD steps in train mode, so BatchNorm running
statistics and affine parameters are no longer their initial 0/1. Inputs are 32 px, the smallest power of two that
survives the standard stem's five halvings. The medjax forwards are compiled once per (rank, classes) and
shared.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.models import DenseNet, build_model
from medjax.transfer import export_weights, get_layout, import_weights

torch = pytest.importorskip("torch")
nets = pytest.importorskip("monai.networks.nets")
from tests.transfer import torchvision_densenet as tv  # noqa: E402 (needs torch)

N_BN = 121  # norm0, 2 per dense layer (58 layers), 3 transitions, norm5: one num_batches_tracked each
N_KEYS = 727  # 121 BatchNorms x 5 tensors, 120 convolutions, the head's weight and bias


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch's CPU thread pool contends with XLA's (and other processes') on a small machine: measured 10-20x
    slower train steps with 2 threads than with 1 on a loaded 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _torch_count(net) -> int:
    return sum(p.numel() for p in net.parameters())


def _shapes(model, shape):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape))


@functools.cache
def _model(nd: int, classes: int):
    """(medjax densenet121, its variable shapes for a 2 x 32^nd x 3 batch, a compiled eval forward).

    Compiled with LLVM optimisation level 0: 3-4x faster to compile on XLA:CPU (about 3 s instead of 9-13 s),
    and at these sizes it still runs in well under a second."""
    model = build_model("densenet121", num_classes=classes)
    shape = (2,) + (32,) * nd + (3,)
    shapes = _shapes(model, shape)
    forward = jax.jit(functools.partial(model.apply, train=False))
    lowered = forward.lower(shapes, jax.ShapeDtypeStruct(shape, jnp.float32))
    return model, shapes, lowered.compile({"xla_backend_optimization_level": 0})


def _state(net) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _to_torch(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _train(net, x: np.ndarray, classes: int, steps: int = 3) -> None:
    """A few SGD steps in train mode on random labels: moves weights, BatchNorm affines and running statistics.

    The gradient norm is clipped: at 32 px the last block is 1x1 spatial, so with a small batch its BatchNorms
    normalise over a handful of values per channel, gradient norms reach 1e2-1e8, and unclipped steps wreck the
    network (eval-mode logits in the thousands, or NaN)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    y = torch.from_numpy(np.random.default_rng(5).integers(0, classes, size=len(x)))
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(_to_torch(x)), y).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    net.eval()


def _torch_net(layout: str, nd: int, classes: int):
    if layout == "torchvision":
        assert nd == 2
        return tv.densenet121(num_classes=classes)
    return nets.DenseNet121(spatial_dims=nd, in_channels=3, out_channels=classes)


def test_param_counts_match_torchvision_and_monai():
    v = _shapes(build_model("densenet121", num_classes=1000), (1, 32, 32, 3))
    assert _count(v["params"]) == 7_978_856 == _torch_count(tv.densenet121())  # torchvision's published count
    assert _count(v["batch_stats"]) == 83_648  # running_mean + running_var of the 121 BatchNorms
    for nd, classes, in_ch in ((2, 1000, 3), (3, 2, 1)):
        ours = _count(_shapes(build_model("densenet121", num_classes=classes), (1,) + (32,) * nd + (in_ch,))["params"])
        monai = _torch_count(nets.DenseNet121(spatial_dims=nd, in_channels=in_ch, out_channels=classes))
        assert ours == monai, (nd, classes, in_ch)
    # the 3x3 stem: 64*3*3*3 = 1,728 stem weights instead of 9,408
    small = _shapes(build_model("densenet121", num_classes=1000, stem="small"), (1, 28, 28, 3))
    assert _count(small["params"]) == 7_978_856 - 9_408 + 1_728


def test_names_mirror_torchvision():
    p = _model(2, 5)[1]["params"]
    assert len(p) == 1 + 1 + 58 + 3 + 1 + 1  # conv0, norm0, dense layers, transitions, norm5, head
    assert set(p["denseblock3_denselayer24"]) == {"norm1", "conv1", "norm2", "conv2"}
    assert set(p["transition2"]) == {"norm", "conv"}
    assert p["denseblock4_denselayer16"]["conv1"]["kernel"].shape == (1, 1, 992, 128)
    assert p["head"]["kernel"].shape == (1024, 5)
    with pytest.raises(MedjaxError, match="unknown densenet stem 'tiny'"):
        DenseNet(num_classes=2, stem="tiny")


@pytest.mark.parametrize("layout, nd", [("torchvision", 2), ("monai", 2), ("monai", 3)])
def test_import_parity_report_and_export_round_trip(layout, nd):
    classes = 5
    torch.manual_seed(0)
    net = _torch_net(layout, nd, classes).eval()
    model, target, forward = _model(nd, classes)
    lay = get_layout("densenet121", layout)
    rng = np.random.default_rng(nd)
    x = rng.normal(size=(2,) + (32,) * nd + (3,)).astype(np.float32)

    for stage in ("init", "trained"):
        if stage == "trained":
            _train(net, rng.normal(0.3, 0.5, size=(4,) + x.shape[1:]).astype(np.float32), classes)
            assert net.features.norm5.running_mean.abs().max() > 0.1  # the statistics moved
        sd = _state(net)
        assert len(sd) == N_KEYS
        variables, report = import_weights(sd, lay, target)
        assert not report.unused and not report.missing and not report.skipped and not report.folded
        assert sorted(report.dropped) == sorted(k for k in sd if k.endswith("num_batches_tracked"))
        assert len(report.dropped) == N_BN and len(report.loaded) == N_KEYS - N_BN
        with torch.no_grad():
            ref = net(_to_torch(x)).numpy()
        assert np.isfinite(ref).all() and np.abs(ref).max() < 100
        ours = np.asarray(forward(variables, x))
        diff = float(np.abs(ours - ref).max())
        print(f"{layout} {nd}D {stage}: max |medjax - torch| = {diff:.2e} (max |logit| {np.abs(ref).max():.2f})")
        assert diff < 1e-4

        back = export_weights(variables, lay, like=sd)
        assert list(back) == list(sd)
        for k, v in sd.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            assert back[k].tobytes() == v.tobytes(), k  # bitwise


def test_shape_mismatch_names_both_keys_and_skip_loads_all_but_the_head():
    torch.manual_seed(1)
    sd = _state(tv.densenet121(num_classes=10))
    lay = get_layout("densenet121", "torchvision")
    shapes = _shapes(build_model("densenet121", num_classes=3), (1, 32, 32, 3))
    with pytest.raises(MedjaxError, match=r"'classifier\.weight' of shape \(10, 1024\).*'params/head/kernel' has "
                                          r"shape \(1024, 3\)"):
        import_weights(sd, lay, shapes)
    target = jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), shapes)  # recognisable "new head" values
    variables, report = import_weights(sd, lay, target, skip=["params/head/*"])
    assert report.skipped == ["params/head/bias", "params/head/kernel"]
    assert not report.unused and not report.missing and len(report.loaded) == N_KEYS - N_BN - 2
    assert (variables["params"]["head"]["kernel"] == 7.0).all()
    np.testing.assert_array_equal(variables["batch_stats"]["norm5"]["var"], sd["features.norm5.running_var"])


def test_small_densenet_train_mode_batchnorm_matches_torch():
    """The free-field `densenet` through the same table; in train mode the outputs (batch statistics) and the
    running-mean updates (torch's momentum 0.1) agree with torch's."""
    cfg = dict(growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2)
    torch.manual_seed(2)
    net = tv.DenseNet(num_classes=3, **cfg).train()
    x = np.random.default_rng(3).normal(size=(4, 16, 16, 3)).astype(np.float32) + 1.0
    model = build_model("densenet", num_classes=3, **cfg)
    sd = _state(net)
    variables, _ = import_weights(sd, get_layout("densenet", "torchvision"), _shapes(model, x.shape))
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    with torch.no_grad():
        ref = net(_to_torch(x)).numpy()
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4)
    moved = {k: v.numpy() for k, v in net.state_dict().items() if k.endswith("running_mean")}
    new = export_weights({**variables, "batch_stats": jax.tree.map(np.asarray, upd["batch_stats"])},
                         get_layout("densenet", "torchvision"), like=sd)
    for k, v in moved.items():
        np.testing.assert_allclose(new[k], v, atol=1e-5, err_msg=k)
