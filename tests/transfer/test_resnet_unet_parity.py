"""End-to-end parity: a torch model's weights, imported through a layout, make the medjax model compute the same
function (eval mode, float32, max abs difference <= 1e-4), and export writes the torch state dict back.

Torch models: torchvision's ResNet-18/50 (the verbatim copy in `torchvision_resnet.py`; torchvision is not
importable here), MONAI's 3D/2D ResNet-18 (its stem options through medjax's `stem_kernel`/`stem_stride`/
`stem_pool`; its downsample-conv bias folded into the BN running mean) and MONAI's BasicUNet in 2D and 3D.
Each is checked twice: "random", with every norm parameter and running statistic (and MONAI's downsample bias)
drawn at random, and "trained", after 3 torch SGD steps in train mode on off-centre inputs, so running
statistics are what training leaves, not the init's 0/1. Inputs are small, but large enough that the deepest
BatchNorm sees >= 8 values per channel in training (with 2, eval outputs after 3 steps reach 1e9 and an absolute
tolerance means nothing). One jitted medjax apply per case; torch runs on one thread (much faster on a busy box).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.models import basic_unet, resnet18, resnet50
from medjax.transfer import export_weights, get_layout, import_weights

torch = pytest.importorskip("torch")
nets = pytest.importorskip("monai.networks.nets")

from tests.transfer import torchvision_resnet as tvr  # noqa: E402  (needs torch)

ATOL = 1e-4
SMALL_UNET = (8, 8, 16, 32, 64, 8)

# name -> (torch builder, medjax builder, medjax model name, layout, NC... input shape, classifier?)
CASES = {
    "torchvision_resnet18_2d": (lambda: tvr.resnet18(num_classes=5), lambda: resnet18(5),
                                "resnet18", "torchvision", (2, 3, 64, 64), True),
    "torchvision_resnet50_2d": (lambda: tvr.resnet50(num_classes=5), lambda: resnet50(5),
                                "resnet50", "torchvision", (2, 3, 64, 64), True),
    # MONAI's defaults: conv1_t_size=7, conv1_t_stride=1, max-pool
    "monai_resnet18_3d_stride1": (lambda: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=3),
                                  lambda: resnet18(3, stem_stride=1),
                                  "resnet18", "monai", (2, 1, 20, 20, 20), True),
    "monai_resnet18_3d_stride2": (lambda: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=3,
                                                        conv1_t_stride=2),
                                  lambda: resnet18(3),
                                  "resnet18", "monai", (2, 1, 40, 40, 40), True),
    # anisotropic stem, as for thick-slice CT/MR volumes
    "monai_resnet18_3d_aniso": (lambda: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=3,
                                                      conv1_t_size=(3, 7, 7), conv1_t_stride=(1, 2, 2)),
                                lambda: resnet18(3, stem_kernel=(3, 7, 7), stem_stride=(1, 2, 2)),
                                "resnet18", "monai", (2, 1, 12, 64, 64), True),
    "monai_resnet18_2d_k3_nopool": (lambda: nets.resnet18(spatial_dims=2, n_input_channels=3, num_classes=4,
                                                          conv1_t_size=3, no_max_pool=True),
                                    lambda: resnet18(4, stem_kernel=3, stem_stride=1, stem_pool=False),
                                    "resnet18", "monai", (2, 3, 16, 16), True),
    "monai_basic_unet_2d": (lambda: nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=3),
                            lambda: basic_unet(3), "basic_unet", "monai", (2, 1, 32, 32), False),
    "monai_basic_unet_3d": (lambda: nets.BasicUNet(spatial_dims=3, in_channels=1, out_channels=2,
                                                   features=SMALL_UNET),
                            lambda: basic_unet(2, features=SMALL_UNET),
                            "basic_unet", "monai", (2, 1, 32, 32, 32), False),
}


def _channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


@functools.cache
def _medjax(case: str):
    """(model, variable shapes, jitted eval apply) for a case: compiled once, shared by its random/trained runs."""
    _, build, _, _, shape, _ = CASES[case]
    model = build()
    nhwc = (shape[0], *shape[2:], shape[1])
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(nhwc), train=False))
    return model, target, jax.jit(functools.partial(model.apply, train=False))


def _randomize(net, gen) -> None:
    """Random norm affines and running statistics (init leaves them 1/0/0/1) and random downsample biases."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase):  # batch and instance norm
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5, generator=gen)
                    m.bias.normal_(0.0, 0.2, generator=gen)
                if m.running_mean is not None:
                    m.running_mean.normal_(0.0, 0.2, generator=gen)
                    m.running_var.uniform_(0.5, 2.0, generator=gen)
        for name, p in net.named_parameters():
            if name.endswith("downsample.0.bias"):
                p.normal_(0.0, 0.5, generator=gen)


def _train(net, shape, classifier: bool, gen, lr: float, steps: int = 3) -> None:
    """`steps` plain SGD steps in train mode on off-centre random batches: every weight moves and BatchNorm's
    running statistics (torch's momentum 0.1) move off their init."""
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.randn(shape, generator=gen) * 1.5 + 0.7
        out = net(x)
        n_out = out.shape[1]
        labels = (torch.randint(0, n_out, (shape[0],), generator=gen) if classifier
                  else torch.randint(0, n_out, (shape[0], *shape[2:]), generator=gen))
        loss = torch.nn.functional.cross_entropy(out, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch's intra-op threads fight the other test processes for the CPUs (10x slower on a loaded box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(net) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("mode", ["random", "trained"])
@pytest.mark.parametrize("case", list(CASES))
def test_imported_weights_reproduce_torch_outputs_and_export_round_trips(case, mode):
    torch_build, _, model_name, layout_name, shape, classifier = CASES[case]
    gen = torch.Generator().manual_seed(sorted(CASES).index(case))
    torch.manual_seed(sorted(CASES).index(case))
    net = torch_build().eval()
    init = _state(net)
    if mode == "random":
        _randomize(net, gen)
    else:
        # ResNets get a small learning rate: eval-mode outputs of a net trained 3 steps on 2-example batches
        # explode otherwise (ResNet-50: ~1e4 at lr 0.01). BasicUNet's instance norm has no such problem.
        _train(net, shape, classifier, gen, lr=1e-3 if "resnet" in case else 0.05)
        now = _state(net)
        unchanged = {k for k in init if np.array_equal(init[k], now[k]) and not k.endswith("num_batches_tracked")}
        # Only biases a norm removes may stay put (their gradient is 0): BasicUNet's conv biases (instance norm
        # follows) and MONAI's downsample biases (batch norm follows).
        assert all(k.endswith((".conv.bias", ".downsample.0.bias")) for k in unchanged), sorted(unchanged)
        if "resnet" in case:
            assert np.abs(now["bn1.running_mean"]).max() > 0.05 and np.abs(now["bn1.running_var"] - 1).max() > 0.05
    sd = _state(net)

    model, target, apply = _medjax(case)
    layout = get_layout(model_name, layout_name)
    variables, report = import_weights(sd, layout, target, source=case)

    # The report accounts for every tensor: loaded, or dropped/folded by design; nothing unused/missing/skipped.
    assert not report.unused and not report.missing and not report.skipped
    assert report.dropped == [k for k in sd if k.endswith("num_batches_tracked")]
    expected_folded = [k for k in sd if k.endswith("downsample.0.bias")] if layout_name == "monai" else []
    assert report.folded == expected_folded
    assert len(report.loaded) + len(report.dropped) + len(report.folded) == len(sd)
    if "resnet" in case and layout_name == "monai":
        assert len(expected_folded) == 3  # layer2..4's shortcut convs carry MONAI's bias

    x = np.random.default_rng(7).normal(0.7, 1.5, size=shape).astype(np.float32)  # the training distribution
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = np.asarray(apply(variables, _channels_last(x)))
    if not classifier:
        out = np.moveaxis(out, -1, 1)
    assert out.shape == ref.shape
    assert np.abs(ref).max() < 100  # a sane network, so an absolute tolerance of 1e-4 means something
    diff = float(np.abs(out - ref).max())
    print(f"\n{case}/{mode}: max |medjax - torch| = {diff:.3g} (output scale {np.abs(ref).max():.3g})")
    assert diff <= ATOL, f"{case}/{mode}: max abs difference {diff}"

    # Export: back onto the torch keys; importing the export gives the same medjax variables bit for bit.
    back = export_weights(variables, layout, like=sd)
    assert list(back) == list(sd)
    again, _ = import_weights(back, layout, target)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)
    if layout_name == "torchvision" or "basic_unet" in case:
        for k in sd:  # bitwise, dtypes included
            assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape, k
            assert back[k].tobytes() == sd[k].tobytes(), k
    else:
        # MONAI ResNet: the folded biases come back as zeros (their effect lives in the running means), every
        # other tensor but those running means bitwise, and the torch model computes the same function.
        folded_means = {f[: -len("0.bias")] + "1.running_mean": f for f in expected_folded}
        for k in sd:
            assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape, k
            if k in expected_folded:
                assert not back[k].any(), k
            elif k in folded_means:
                assert back[k].tobytes() == (sd[k] - sd[folded_means[k]]).tobytes(), k
            else:
                assert back[k].tobytes() == sd[k].tobytes(), k
        reloaded = torch_build().eval()
        reloaded.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})
        with torch.no_grad():
            ref_back = reloaded(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ref_back, ref, rtol=0, atol=1e-5)
