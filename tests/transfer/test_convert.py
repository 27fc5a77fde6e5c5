"""The conversion core: tensor rules, the report, folding, and export as the inverse of import."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.models import build_model
from medjax.transfer import export_weights, get_layout, import_weights
from medjax.transfer.convert import to_medjax, to_torch

torch = pytest.importorskip("torch")
nets = pytest.importorskip("monai.networks.nets")


@pytest.mark.parametrize("kind, shape", [("conv", (4, 3, 3, 5)), ("conv", (4, 3, 3, 5, 2)),
                                         ("conv_transpose", (3, 4, 2, 2)), ("conv_transpose", (3, 4, 2, 2, 2)),
                                         ("linear", (5, 7))])
def test_tensor_rules_invert(kind, shape):
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    m = to_medjax(w, kind, "weight")
    if kind == "conv":
        assert m.shape == (*shape[2:], shape[1], shape[0])
    np.testing.assert_array_equal(to_torch(m, kind, "weight", shape), w)


def _target(name, shape, **kw):
    m = build_model(name, **kw)
    return m, jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros(shape), train=False))


def test_monai_resnet_downsample_bias_is_folded_into_the_running_mean():
    torch.manual_seed(0)
    net = nets.resnet18(spatial_dims=2, n_input_channels=3, num_classes=4, conv1_t_stride=2).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("downsample.0.bias"):
                p.normal_(0, 1.0)  # large, so an ignored bias would show in the outputs
    sd = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    model, target = _target("resnet18", (1, 32, 32, 3), num_classes=4)
    variables, report = import_weights(sd, get_layout("resnet18", "monai"), target)
    assert report.folded == [f"layer{i}.0.downsample.0.bias" for i in (2, 3, 4)]
    assert len(report.dropped) == 20 and not report.unused and not report.missing  # num_batches_tracked
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(model.apply(variables, x, train=False), ref, atol=1e-4)
    back = export_weights(variables, get_layout("resnet18", "monai"), sd)
    assert set(back) == set(sd) and not back["layer2.0.downsample.0.bias"].any()


def test_strict_import_names_unused_missing_and_mismatched_tensors():
    net = nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=3)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    layout = get_layout("basic_unet", "monai")
    _, target = _target("basic_unet", (1, 32, 32, 1), num_classes=3)
    with pytest.raises(MedjaxError, match=r"1 tensor\(s\) of state dict map to nothing.*'extra\.weight'"):
        import_weights({**sd, "extra.weight": np.zeros(3)}, layout, target)
    with pytest.raises(MedjaxError, match=r"2 medjax leaf/leaves get no tensor.*params/final_conv"):
        import_weights({k: v for k, v in sd.items() if not k.startswith("final_conv")}, layout, target)
    _, target4 = _target("basic_unet", (1, 32, 32, 1), num_classes=4)
    with pytest.raises(MedjaxError, match=r"'final_conv.weight' of shape \(3, 32, 1, 1\).*'params/final_conv/kernel'"):
        import_weights(sd, layout, target4)
    variables, report = import_weights(sd, layout, target4, skip=["params/final_conv/*"])  # a new head
    assert report.skipped == ["params/final_conv/bias", "params/final_conv/kernel"]
    with pytest.raises(MedjaxError, match="unknown weight layout 'timm'"):
        get_layout("resnet18", "timm")
