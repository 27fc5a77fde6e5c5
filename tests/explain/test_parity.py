"""Parity on the SAME weights: every medjax explainer against its PyTorch reference (MONAI 1.6 `monai.visualize`,
Captum's IntegratedGradients), max |medjax - reference| <= 1e-4 * max |reference| per map.

Model pairs (torch weights imported into medjax through `medjax.transfer`, BatchNorm statistics drawn at random so
eval mode is not the identity): a small MONAI ResNet in 2D (1 channel, 16 px) and 3D (12^3), torchvision's ResNet
with one block per stage (its ReLUs are named `relu`, which MONAI's guided backprop needs; MONAI's own ResNet
names them `act`, so `GuidedBackpropGrad` silently leaves them alone there), and a small MONAI BasicUNet in 2D for
the segmentation target (a class's logit summed over a region mask; the torch side wraps the net so that it
returns those sums as its "logits"). MONAI's CAMs and gradients take one example at a time (its class score
indexing mixes targets across a batch), so the torch side loops; medjax runs the batch as one program.
Conventions matched: MONAI's postprocessing is set to the identity (its default maps max -> 0, min -> 1), its
Grad-CAM++ carries exp(score) (medjax leaves that positive factor out), its occlusion map holds the mean occluded
logit per class (medjax: score - that) and runs with a constant fill and `activate=False`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.explain import cam, core, gradients, occlusion
from medjax.explain.run import choose_targets
from medjax.models import BasicUNet, ResNet
from medjax.transfer import get_layout, import_weights

torch = pytest.importorskip("torch")
nets = pytest.importorskip("monai.networks.nets")
visualize = pytest.importorskip("monai.visualize")
captum_attr = pytest.importorskip("captum.attr")

from tests.transfer import torchvision_resnet as tvr  # noqa: E402  (needs torch)
from tests.transfer.test_resnet_unet_parity import _randomize  # noqa: E402

RTOL = 1e-4


def assert_parity(ours, ref) -> None:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 1e-6, "a reference map of zeros proves nothing"
    assert np.abs(ours - ref).max() <= RTOL * scale, (np.abs(ours - ref).max(), scale)


class RegionScore(torch.nn.Module):
    """A segmenter as a 'classifier' of region sums: logits[k] = sum over the region of class k's logit (the
    regions tiled along the batch, as Captum stacks the integration steps of all examples)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.region = None

    def forward(self, x):
        region = self.region.repeat(len(x) // len(self.region), *(1,) * (self.region.ndim - 1))
        return (self.net(x) * region[:, None]).flatten(2).sum(-1)


def _pair(torch_net, model, layout: str, model_name: str, shape_nc: tuple[int, ...], seed: int):
    """(torch net, medjax apply, variables, x NHWC, x NCHW tensor) on the same randomised weights."""
    torch.manual_seed(seed)
    net = torch_net()
    _randomize(net, torch.Generator().manual_seed(seed))
    net.eval()
    x_nc = np.random.default_rng(seed).normal(0.3, 1.0, size=shape_nc).astype(np.float32)
    x = np.moveaxis(x_nc, 1, -1)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(x), train=False))
    sd = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    variables, _ = import_weights(sd, get_layout(model_name, layout), target)
    return net, functools.partial(model.apply, train=False), variables, x, torch.from_numpy(x_nc)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = dict(layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32], conv1_t_size=3, conv1_t_stride=1,
             no_max_pool=True, num_classes=3, n_input_channels=1)


@pytest.fixture(scope="module")
def resnet2d():
    return _pair(lambda: nets.ResNet("basic", spatial_dims=2, **SMALL),
                 ResNet((1, 1, 1, 1), "basic", 3, stem_kernel=3, stem_stride=1, stem_pool=False, width=4),
                 "monai", "resnet", (2, 1, 16, 16), seed=1)


@pytest.fixture(scope="module")
def resnet3d():
    return _pair(lambda: nets.ResNet("basic", spatial_dims=3, **SMALL),
                 ResNet((1, 1, 1, 1), "basic", 3, stem_kernel=3, stem_stride=1, stem_pool=False, width=4),
                 "monai", "resnet", (2, 1, 8, 8, 8), seed=2)


@pytest.fixture(scope="module")
def unet2d():
    features = (4, 4, 8, 8, 16, 4)
    return _pair(lambda: nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=features),
                 BasicUNet(3, features=features), "monai", "basic_unet", (2, 1, 32, 32), seed=3)


TARGETS = np.array([2, 0], np.int32)


def _per_example(fn, xt, *args):
    return np.concatenate([fn(xt[i:i + 1], *(a[i] for a in args)) for i in range(len(xt))])


def _monai_cam(kind, net, layer, xt, targets):
    maker = getattr(visualize, kind)(nn_module=net, target_layers=layer, postprocessing=lambda m: m)
    return np.moveaxis(_per_example(lambda x, t: maker(x, class_idx=int(t)).detach().numpy(), xt, targets), 1, -1)


@pytest.mark.parametrize("case", ["resnet2d", "resnet3d"])
def test_gradcam_matches_monai(case, request):
    """Grad-CAM at layer3 (4x4 of 16 px; 2^3 of 8^3), bi/trilinearly upsampled as MONAI's default upsampler."""
    net, apply, variables, x, xt = request.getfixturevalue(case)
    ours = cam.gradcam(apply, variables, x, TARGETS, layer="stage3_block1")
    assert ours.shape == x.shape[:-1] + (1,)
    assert_parity(ours, _monai_cam("GradCAM", net, "layer3", xt, TARGETS))


def test_gradcampp_matches_monai_up_to_its_exp_score_factor(resnet2d):
    net, apply, variables, x, xt = resnet2d
    ours = cam.gradcampp(apply, variables, x, TARGETS, layer="stage4_block1")
    scores = np.asarray(apply(variables, x))[np.arange(2), TARGETS]
    ref = _monai_cam("GradCAMpp", net, "layer4", xt, TARGETS)
    assert_parity(np.asarray(ours) * np.exp(scores)[:, None, None, None], ref)


def test_segmentation_target_gradcam_and_ig_match_monai_and_captum(unet2d):
    """The segmentation target: class t's logit summed over the voxels predicted as t (the default region)."""
    net, apply, variables, x, xt = unet2d
    targets, region = choose_targets(np.asarray(apply(variables, x)), None)
    assert targets.tolist() == [2, 2] and region.sum((1, 2)).tolist() == [983.0, 982.0]
    wrapper = RegionScore(net).eval()
    ours = cam.gradcam(apply, variables, x, targets, region, layer="upcat_2")

    def monai_one(x1, t, r):
        wrapper.region = torch.from_numpy(r[None])
        maker = visualize.GradCAM(nn_module=wrapper, target_layers="net.upcat_2", postprocessing=lambda m: m)
        return maker(x1, class_idx=int(t)).detach().numpy()

    assert_parity(ours, np.moveaxis(_per_example(monai_one, xt, targets, region), 1, -1))

    # A per-example baseline image: toward a constant image instance norm's gradients grow like 1 / alpha, and
    # float32 rounding in either framework then dominates the integral.
    baseline = np.random.default_rng(9).normal(size=x.shape).astype(np.float32)
    ig = gradients.integrated_gradients(apply, variables, x, targets, region, steps=16, baseline=baseline)
    wrapper.region = torch.from_numpy(region)
    ref = captum_attr.IntegratedGradients(wrapper).attribute(
        xt, baselines=torch.from_numpy(np.moveaxis(baseline, -1, 1).copy()), target=torch.from_numpy(targets),
        n_steps=16)
    assert_parity(ig, np.moveaxis(ref.detach().numpy(), 1, -1))


def test_integrated_gradients_match_captum(resnet2d):
    net, apply, variables, x, xt = resnet2d
    ours = gradients.integrated_gradients(apply, variables, x, TARGETS, steps=20, baseline=-0.5)
    ref = captum_attr.IntegratedGradients(net).attribute(xt, baselines=-0.5, target=torch.from_numpy(TARGETS),
                                                         n_steps=20)
    assert_parity(ours, np.moveaxis(ref.detach().numpy(), 1, -1))
    # completeness: the attributions add up to score(x) - score(baseline), up to 5% with 20 Gauss-Legendre points
    gap = (np.asarray(apply(variables, x)) - np.asarray(apply(variables, np.full_like(x, -0.5))))[[0, 1], TARGETS]
    np.testing.assert_allclose(np.asarray(ours).reshape(2, -1).sum(1), gap, rtol=0.05)


@pytest.mark.parametrize("method", gradients.IG_METHODS)
def test_integration_rules_are_captums(method):
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters(method)
    a, w = gradients.ig_rule(7, method)
    np.testing.assert_allclose(a, alphas(7), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(w, step_sizes(7), rtol=1e-6)


def test_occlusion_matches_monai(resnet2d):
    """Windows of 4 every 2 px (MONAI: mask_size 4, overlap 0.5), filled with 0. (3D: the bench's smoke rows.)"""
    net, apply, variables, x, xt = resnet2d
    ours = occlusion.occlusion(apply, variables, x, TARGETS, window=4, stride=2, baseline=0.0)
    occ = visualize.OcclusionSensitivity(net, mask_size=4, n_batch=64, verbose=False, mode=0.0, overlap=0.5,
                                         activate=False)
    maps = _per_example(lambda x1: occ(x1)[0].detach().numpy(), xt)  # (N, K, *spatial): mean occluded logits
    occluded = np.take_along_axis(maps, TARGETS.reshape((2, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
    scores = np.asarray(apply(variables, x))[[0, 1], TARGETS]
    assert occlusion.num_windows(x.shape[1:-1], 4, 2) == 7 * 7
    assert_parity(ours[..., 0], scores.reshape((2,) + (1,) * (x.ndim - 2)) - occluded)


def test_smoothgrad_matches_monai_on_the_same_noise(resnet2d, monkeypatch):
    net, apply, variables, x, xt = resnet2d
    ours = gradients.smoothgrad(apply, variables, x, TARGETS, num_samples=6, stdev_spread=0.2, seed=3)
    draws = iter(np.concatenate([np.moveaxis(np.asarray(gradients.smoothgrad_noise(3, i, 6, x.shape[1:])), -1, 1)
                                 for i in range(2)]))

    def same_noise(mean, std, size, dtype, device):
        return torch.from_numpy(next(draws)[None] * np.float32(std))

    monkeypatch.setattr(torch, "normal", same_noise)
    sg = visualize.SmoothGrad(net, stdev_spread=0.2, n_samples=6, magnitude=True, verbose=False)
    ref = _per_example(lambda x1, t: sg(x1, index=int(t)).numpy(), xt, TARGETS)
    assert_parity(ours, np.moveaxis(ref, 1, -1))


def test_vanilla_and_guided_gradients_match_monai():
    net, apply, variables, x, xt = _pair(lambda: tvr.ResNet(tvr.BasicBlock, [1, 1, 1, 1], num_classes=3),
                                         ResNet((1, 1, 1, 1), "basic", 3), "torchvision", "resnet",
                                         (2, 3, 16, 16), seed=4)
    for ours_fn, ref_cls in ((gradients.saliency, visualize.VanillaGrad),
                             (gradients.guided_backprop, visualize.GuidedBackpropGrad)):
        ours = ours_fn(apply, variables, x, TARGETS)
        maker = ref_cls(net)
        ref = _per_example(lambda x1, t, m=maker: m(x1.clone(), index=int(t)).numpy(), xt, TARGETS)
        assert_parity(ours, np.moveaxis(ref, 1, -1))
    assert gradients.count_relus(apply, variables, x) == 1 + 4 * 2  # the stem's and two per basic block
    assert not np.allclose(gradients.saliency(apply, variables, x, TARGETS),
                           gradients.guided_backprop(apply, variables, x, TARGETS))


def test_one_program_sharded_and_chunked_equals_plain(resnet2d):
    """4 fake devices (conftest): the batch split over the data mesh, and samples chunked by lax.map, change no
    number."""
    _, apply, variables, x, _ = resnet2d
    x4 = np.concatenate([x, x[::-1]])
    t4 = np.array([2, 0, 1, 1], np.int32)
    plain = gradients.integrated_gradients(apply, variables, x4, t4, steps=4)
    run = core.shard_over_data(lambda v, b: gradients.integrated_gradients(apply, v, **b, steps=4, batch_size=3))
    sharded = run(variables, {"x": x4, "target": t4})
    assert len(sharded.sharding.device_set) == 4
    np.testing.assert_allclose(sharded, plain, rtol=1e-5, atol=1e-6)
    assert core.plan(4, 8, 3) == (1, 3) and core.plan(4, 8, 16) == (2, None) and core.plan(4, 8, None) == (None,
                                                                                                           None)


def test_layer_and_method_errors_name_the_fix(resnet2d, unet2d):
    _, apply, variables, x, _ = resnet2d
    with pytest.raises(MedjaxError, match=r"no layer named 'layer4'; layers with a spatial output: stem_conv, "
                                          r"stem_bn, stem_relu, stage1_block1, stage2_block1, stage3_block1, "
                                          r"stage4_block1 \(nested"):
        core.check_layer(apply, variables, x, "layer4", "gradcam")
    with pytest.raises(MedjaxError, match=r"gradcam needs a spatial feature map but layer 'head' outputs shape "
                                          r"\(2, 3\)"):
        core.check_layer(apply, variables, x, "head", "gradcam")
    assert core.check_layer(apply, variables, x, None, "gradcam") == "stage4_block1"
    _, u_apply, u_variables, ux, _ = unet2d
    assert core.check_layer(u_apply, u_variables, ux, None, "gradcam") == "upcat_1"
    with pytest.raises(MedjaxError, match="has none \\(e.g. leaky ReLU\\)"):
        gradients.guided_backprop(u_apply, u_variables, ux, TARGETS)
