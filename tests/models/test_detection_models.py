"""RetinaNet and Retina U-Net: MONAI RetinaNet output parity on imported weights (2D through
`resnet_fpn_feature_extractor`, 3D with an anisotropic stem), level shapes and parameter names, and backbone
weights from an ImageNet (torchvision) ResNet file through `config.init.from`."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medjax import rng
from medjax.models import build_model
from medjax.transfer import export_weights, get_layout, import_weights

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from medjax.bench.detection_bench import medjax_kwargs, monai_retinanet  # noqa: E402  (needs torch)

CASES = {  # name -> (spatial dims, input size, network arguments)
    "2d_fpn256": (2, (32, 32), dict(stage_sizes=(1, 1, 1, 1), width=8, returned_layers=(1, 2))),
    "3d_aniso": (3, (24, 24, 12), dict(stage_sizes=(1, 1, 1, 1), width=8, returned_layers=(1, 2), fpn_channels=16,
                                       stem_kernel=(7, 7, 3), stem_stride=(2, 2, 1))),
}


def _randomize(net, gen) -> None:
    """Weights with real contrast: random BatchNorm statistics, GroupNorm affines and head convs (MONAI's heads
    start at N(0, 0.01^2), which would make every location's output nearly the same)."""
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.2, generator=gen)
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.normal_(0.0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
            if name.endswith("head.conv.0") or name.endswith("head.conv.3") or "cls_logits" in name \
                    or "bbox_reg" in name:
                m.weight.normal_(0.0, 0.1, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)


@pytest.mark.parametrize("case", list(CASES))
def test_monai_retinanet_weights_give_monai_outputs(case):
    dims, size, kw = CASES[case]
    torch.manual_seed(0)
    net = monai_retinanet(dims, 1, 2, 3, **kw).eval()
    _randomize(net, torch.Generator().manual_seed(1))
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    model = build_model("retinanet", num_classes=2, num_anchors=3, **medjax_kwargs(**kw))
    target = jax.eval_shape(lambda: model.init(rng.key(0), jnp.zeros((1, *size, 1)), train=False))
    layout = get_layout("retinanet", "monai")
    variables, report = import_weights(state, layout, target, source=case)
    assert not report.unused and not report.missing
    assert report.folded == [k for k in state if k.endswith("downsample.0.bias")] and len(report.folded) == \
        len(kw["returned_layers"]) - 1  # stages 2.. have a strided shortcut
    x = np.random.default_rng(2).normal(0.3, 1.2, (2, 1, *size)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, np.moveaxis(x, 1, -1))
    assert len(out["cls"]) == len(kw["returned_layers"]) + 1
    for ours, theirs in zip(out["cls"] + out["box"], ref["classification"] + ref["box_regression"]):
        theirs = np.moveaxis(theirs.numpy(), 1, -1)
        assert ours.shape == theirs.shape
        assert np.abs(theirs).std() > 0.1  # outputs that vary, so the tolerance means something
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=2e-5)
    back = export_weights(variables, layout, like=state)  # and back onto MONAI's keys
    assert list(back) == list(state)
    assert all(np.array_equal(back[k], state[k]) for k in state if "downsample" not in k and "running_mean" not in k)


def test_levels_strides_and_parameter_names():
    unet = build_model("retina_unet", num_classes=2, num_anchors=3, features=(4, 8, 16), head_channels=8,
                       head_levels=(2, 3))
    out = jax.eval_shape(lambda: unet.init_with_output(rng.key(0), jnp.zeros((1, 16, 16, 8, 1)), train=False))
    maps, variables = out
    assert [m.shape for m in maps["cls"]] == [(1, 8, 8, 4, 6), (1, 4, 4, 2, 6)]  # strides 2 and 4, A * K = 6
    assert [m.shape for m in maps["box"]] == [(1, 8, 8, 4, 18), (1, 4, 4, 2, 18)]  # A * 2d = 18
    assert maps["seg"].shape == (1, 16, 16, 8, 3)  # background + 2 classes, full resolution
    assert sorted(variables["params"]) == ["heads", "proj2", "proj3", "unet"]
    assert sorted(variables["params"]["heads"]["cls_head"]) == ["conv0", "conv1", "norm0", "norm1", "out"]
    # one set of head weights for every level: 2 x (3x3x3 conv 8->8 + GroupNorm) + the 3x3x3 output conv
    cls_params = sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"]["heads"]["cls_head"]))
    assert cls_params == 2 * (27 * 8 * 8 + 8 + 16) + 27 * 8 * 6 + 6
    net = build_model("retinanet", num_classes=1, num_anchors=2, stage_sizes=(1, 1), width=8, stem="small",
                      returned_layers=(1, 2), fpn_channels=8)
    maps, variables = jax.eval_shape(lambda: net.init_with_output(rng.key(0), jnp.zeros((1, 16, 12, 1)), train=False))
    assert [m.shape for m in maps["cls"]] == [(1, 16, 12, 2), (1, 8, 6, 2), (1, 4, 3, 2)]  # + the pooled level
    assert "head" not in variables["params"]["backbone"]


def test_imagenet_resnet_backbone_through_config_init(tmp_path):
    from medjax.train.init_from import load_init
    from tests.transfer import torchvision_resnet as tvr

    torch.manual_seed(0)
    state = tvr.resnet18(num_classes=1000).state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(state, path)
    model = build_model("retinanet", num_classes=1, num_anchors=3, stage_sizes=(2, 2, 2, 2))
    abstract = jax.eval_shape(lambda: model.init(rng.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    config = ml_collections.ConfigDict(dict(model=dict(name="retinanet"), init={
        "from": str(path), "layout": "torchvision", "strict": False}))
    values = load_init(config, abstract, verbose=False)
    backbone = {k for k in values if k.split("/")[1] == "backbone"}
    assert backbone == set(values)  # only the backbone comes from the file; FPN and heads stay fresh
    assert len(backbone) == 15 + 15 * 4  # stem + stages 1-3: 15 convs, 15 BatchNorms (scale, bias, mean, var)
    kernel = values["params/backbone/stage2_block1/conv1/kernel"]
    np.testing.assert_array_equal(kernel, state["layer2.0.conv1.weight"].numpy().transpose(2, 3, 1, 0))
