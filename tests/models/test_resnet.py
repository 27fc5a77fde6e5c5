"""ResNet: torchvision-exact parameter counts, explicit names, 2D/3D shapes, one real tiny forward pass.

Structure checks use `jax.eval_shape` (free). Real variables come from `_numpy_variables`, not `model.init`:
jitting flax's random initialisers compiles very slowly on XLA:CPU (minutes for a ResNet), and these tests are
about the architecture, not the initialiser.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.models import MODELS, ResNet, build_model, resnet18, resnet34, resnet50


def _shapes(model, shape, dtype=jnp.float32):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape, dtype))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _numpy_variables(model, shape):
    rng = np.random.default_rng(0)

    def fill(path, s):
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.ones(s.shape, s.dtype)
        if name in ("bias", "mean"):
            return jnp.zeros(s.shape, s.dtype)
        return jnp.asarray(rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1])), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, _shapes(model, shape))


# torchvision.models.resnet{18,34,50}(num_classes=1000) parameter counts (torchvision is not installed here).
@pytest.mark.parametrize(
    "factory,params,batch_stats",
    [(resnet18, 11_689_512, 9_600), (resnet34, 21_797_672, 17_024), (resnet50, 25_557_032, 53_120)],
)
def test_param_counts_match_torchvision(factory, params, batch_stats):
    v = _shapes(factory(1000), (1, 224, 224, 3))
    assert _count(v["params"]) == params
    assert _count(v["batch_stats"]) == batch_stats  # torch's running_mean + running_var


def test_param_counts_small_stem_and_3d():
    # 3x3 stem (1,728 weights instead of 9,408) and a 9-class head: 11,689,512 - 9,408 + 1,728 - 513,000 + 4,617
    assert _count(_shapes(resnet18(9, stem="small"), (1, 28, 28, 3))["params"]) == 11_173_449
    # 3D ResNet-18, 1 input channel, 2 classes (pinned once; every 3x3 kernel becomes 3x3x3)
    assert _count(_shapes(resnet18(2), (1, 32, 32, 32, 1))["params"]) == 33_161_026


def test_explicit_names():
    p = _shapes(resnet50(1000), (1, 64, 64, 3))["params"]
    assert p["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
    assert set(p["stem_bn"]) == {"scale", "bias"}
    b = p["stage1_block1"]
    assert set(b) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn"}
    assert "bias" not in b["conv1"]  # convs followed by BN carry no bias
    assert b["conv3"]["kernel"].shape == (1, 1, 64, 256)
    assert p["stage2_block1"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert "downsample_conv" not in p["stage2_block2"]
    assert {k for k in p if k.startswith("stage4")} == {"stage4_block1", "stage4_block2", "stage4_block3"}
    assert p["head"]["kernel"].shape == (2048, 1000)

    p18 = _shapes(resnet18(10), (1, 64, 64, 3))["params"]
    assert set(p18["stage1_block1"]) == {"conv1", "bn1", "conv2", "bn2"}  # 64 -> 64, stride 1: no shortcut conv
    assert set(p18["stage2_block1"]) == {"conv1", "bn1", "conv2", "bn2", "downsample_conv", "downsample_bn"}
    assert len(p18) == 2 + 8 + 1


@pytest.mark.parametrize(
    "shape,stem,factory",
    [((2, 64, 64, 3), "standard", resnet18), ((2, 28, 28, 1), "small", resnet18),
     ((1, 32, 32, 32, 1), "standard", resnet18), ((1, 16, 16, 16, 2), "small", resnet18),
     ((1, 33, 31, 17, 1), "standard", resnet50)],
)
def test_output_shapes_2d_3d(shape, stem, factory):
    model = factory(7, stem=stem, width=8)
    v = _shapes(model, shape)
    out = jax.eval_shape(functools.partial(model.apply, train=False), v, jnp.zeros(shape))
    assert out.shape == (shape[0], 7) and out.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = resnet18(3, width=8, dtype=jnp.bfloat16)
    v = _shapes(model, (2, 32, 32, 1))
    assert {x.dtype for x in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(functools.partial(model.apply, train=False), v, jnp.zeros((2, 32, 32, 1)))
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_non_batch_norms_have_no_batch_stats(norm):
    v = _shapes(resnet18(3, width=8, norm=norm), (2, 32, 32, 1))
    assert set(v) == {"params"}
    assert set(v["params"]["stage1_block1"]["bn1"]) == {"scale", "bias"}


def test_tiny_forward_train_updates_batch_stats_and_eval_uses_them():
    model = resnet18(4, stem="small", width=8)
    shape = (4, 16, 16, 2)
    v = _numpy_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape, np.float32) + 3)

    @jax.jit
    def run(v, x):
        logits, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
        return logits, upd["batch_stats"], model.apply({**v, "batch_stats": upd["batch_stats"]}, x, train=False)

    logits, stats, eval_logits = run(v, x)
    assert logits.shape == eval_logits.shape == (4, 4)
    assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(eval_logits)).all()
    # running mean of the stem BN moved 1/10 of the way toward the batch mean (input mean ~3, so non-zero)
    assert float(jnp.abs(stats["stem_bn"]["mean"]).sum()) > 0
    assert not np.allclose(logits, eval_logits)  # eval uses running stats, not batch stats


def test_bad_choices_raise_medjax_error():
    with pytest.raises(MedjaxError, match=r"'wide'.*basic, bottleneck"):
        ResNet(stage_sizes=(1,), block="wide", num_classes=2)
    with pytest.raises(MedjaxError, match=r"'tiny'.*standard, small"):
        resnet18(2, stem="tiny")
    with pytest.raises(MedjaxError, match=r"'layer'"):
        resnet18(2, norm="layer")
    with pytest.raises(MedjaxError, match=r"rank 4 .* or 5"):
        jax.eval_shape(functools.partial(resnet18(2).init, train=False), jax.random.key(0), jnp.zeros((2, 8, 3)))


def test_build_model_registry():
    assert set(MODELS) == {"resnet", "resnet18", "resnet34", "resnet50", "unet", "basic_unet", "densenet",
                           "densenet121", "monai_unet", "convlstm_unet", "convlstm_regressor", "abmil", "retinanet",
                           "retina_unet"}
    m = build_model("resnet34", num_classes=5, stem="small")
    assert isinstance(m, ResNet) and tuple(m.stage_sizes) == (3, 4, 6, 3) and m.stem == "small"
    with pytest.raises(MedjaxError, match=r"'resnet101'.*abmil, basic_unet, convlstm_regressor, convlstm_unet, "
                                         r"densenet, densenet121, monai_unet, resnet, resnet18, resnet34, "
                                         r"resnet50, retina_unet, retinanet, unet"):
        build_model("resnet101", num_classes=2)
    with pytest.raises(TypeError):  # a wrong keyword stays a TypeError; the task layer names the config key
        build_model("resnet18", num_classes=2, depth=3)


def test_stem_overrides_reproduce_monai_stems():
    # MONAI's ResNet: conv1_t_size (kernel), conv1_t_stride (default 1), no_max_pool; None keeps `stem`'s value.
    assert resnet18(2).stem_kernel is None and resnet18(2).stem_stride is None and resnet18(2).stem_pool is None
    p = _shapes(resnet18(2, stem_kernel=(3, 7, 7), stem_stride=(1, 2, 2)), (1, 8, 16, 16, 1))["params"]
    assert p["stem_conv"]["kernel"].shape == (3, 7, 7, 1, 64)
    assert _shapes(resnet18(9, stem="small", stem_kernel=7), (1, 28, 28, 3))["params"]["stem_conv"]["kernel"].shape \
        == (7, 7, 3, 64)

    def stem_out(**kw):
        model = resnet18(2, width=8, **kw)
        x = jnp.zeros((1, 32, 32, 1))
        v = _shapes(model, x.shape)

        def f(v, x):
            _, state = model.apply(v, x, train=False, capture_intermediates=lambda m, _: m.name == "stage1_block1",
                                   mutable=["intermediates"])
            return state["intermediates"]["stage1_block1"]["__call__"][0]

        return jax.eval_shape(f, v, x).shape[1:3]

    assert stem_out() == (8, 8)  # 7x7/2 conv, 3x3/2 pool
    assert stem_out(stem_stride=1) == (16, 16)  # MONAI's default conv1_t_stride=1
    assert stem_out(stem_stride=1, stem_pool=False) == (32, 32)  # MONAI no_max_pool=True
    assert stem_out(stem="small") == (32, 32)
    assert stem_out(stem="small", stem_pool=True) == (16, 16)
    assert stem_out(stem_stride=(1, 2)) == (16, 8)


def test_bad_stem_overrides_raise_medjax_error():
    with pytest.raises(MedjaxError, match=r"stem_stride must be a positive int.*0"):
        resnet18(2, stem_stride=0)
    with pytest.raises(MedjaxError, match=r"stem_kernel must be a positive int"):
        resnet18(2, stem_kernel="7")
    with pytest.raises(MedjaxError, match=r"stem_kernel \(3, 3\) has 2 entries for 3D input"):
        _shapes(resnet18(2, stem_kernel=(3, 3)), (1, 8, 8, 8, 1))


def test_batchnorm_running_statistics_use_torchs_momentum():
    """One training step moves the running mean 0.1 of the way to the batch mean (torch's momentum=0.1, flax's 0.9)
    and the running variance to 0.9 * 1 + 0.1 * the biased batch variance; eval mode then uses them."""
    from medjax.models import layers

    x = jnp.asarray(np.arange(2 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 2))
    bn = layers.norm("batch", train=True, name="bn")
    variables = bn.init(jax.random.key(0), x)
    _, updated = bn.apply(variables, x, mutable=["batch_stats"])
    mean, var = np.asarray(x).reshape(-1, 2).mean(0), np.asarray(x).reshape(-1, 2).var(0)
    np.testing.assert_allclose(updated["batch_stats"]["mean"], 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(updated["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-6)
    np.testing.assert_allclose(updated["batch_stats"]["mean"], [1.7, 1.8], rtol=1e-6)  # channel means 17, 18
    np.testing.assert_allclose(updated["batch_stats"]["var"], [0.9 + 0.1 * 323 / 3] * 2, rtol=1e-6)  # var 107.67
    eval_out = layers.norm("batch", train=False, name="bn").apply(dict(variables, **updated), x)
    expected = (np.asarray(x) - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + layers.NORM_EPSILON)
    np.testing.assert_allclose(eval_out, expected, rtol=1e-5, atol=1e-6)
