"""Losses: hand-computed values, MONAI parity for Dice/DiceCE (2D and 3D, values and gradients), padding
invariance, jit with a batch sharded over 4 devices.

Every loss is called jitted: one compile per (variant, shape) is much cheaper on CPU than op-by-op dispatch,
and it is how the train step runs them. The MONAI variants of one shape share a single compile.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from medjax import losses
from medjax.errors import MedjaxError

torch = pytest.importorskip("torch")
monai_losses = pytest.importorskip("monai.losses")

LN2, LN3, LN5 = math.log(2.0), math.log(3.0), math.log(5.0)
CE = jax.jit(losses.softmax_cross_entropy)
BCE = jax.jit(losses.sigmoid_binary_cross_entropy)
DICE = jax.jit(losses.soft_dice_loss, static_argnames=("num_classes", "include_background", "batch"))
DICE_CE = jax.jit(losses.dice_ce_loss, static_argnames=("num_classes", "include_background", "batch"))


# ------------------------------------------------------------------------------------------ by hand

def test_softmax_cross_entropy_by_hand():
    # example 0: logits (0, 0, ln2) -> softmax (1/4, 1/4, 1/2); label 2 -> -log(1/2) = ln 2
    # example 1: logits (ln3, 0, 0) -> softmax (3/5, 1/5, 1/5); label 1 -> -log(1/5) = ln 5
    logits = np.array([[0.0, 0.0, LN2], [LN3, 0.0, 0.0]], np.float32)
    labels = np.array([2, 1])
    np.testing.assert_allclose(CE(logits, labels), (LN2 + LN5) / 2, rtol=1e-6)
    np.testing.assert_allclose(CE(logits, labels[:, None]), (LN2 + LN5) / 2, rtol=1e-6)  # MedMNIST (N, 1) labels
    np.testing.assert_allclose(CE(logits, labels, np.array([1.0, 0.0])), LN2, rtol=1e-6)
    np.testing.assert_allclose(CE(logits, labels, np.array([0.0, 1.0])), LN5, rtol=1e-6)
    np.testing.assert_allclose(CE(logits, labels, np.array([1.0, 3.0])), (LN2 + 3 * LN5) / 4, rtol=1e-6)


def test_softmax_cross_entropy_spatial_by_hand():
    # image 0 (1x2 pixels): the two examples above, ln2 and ln5; image 1: logits 0 -> 1/3 each, ln3 twice.
    logits = np.array([[[[0.0, 0.0, LN2], [LN3, 0.0, 0.0]]], [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]], np.float32)
    labels = np.array([[[2, 1]], [[0, 2]]])  # (N, H, W) = (2, 1, 2)
    np.testing.assert_allclose(CE(logits, labels), (LN2 + LN5 + 2 * LN3) / 4, rtol=1e-6)
    t = torch.nn.CrossEntropyLoss()(torch.tensor(logits).permute(0, 3, 1, 2), torch.tensor(labels))
    np.testing.assert_allclose(CE(logits, labels), t.item(), rtol=1e-6)


def test_sigmoid_binary_cross_entropy_by_hand():
    # bce(x, t) = softplus(x) - x t:  x=0 -> ln2 for either t;  x=ln3, t=1 -> ln4 - ln3 = ln(4/3);
    # x=-ln3, t=0 -> softplus(-ln3) = ln(4/3);  x=-ln3, t=1 -> ln(4/3) + ln3 = ln4.
    logits = np.array([[0.0, LN3], [-LN3, 0.0]], np.float32)
    targets = np.array([[1, 1], [0, 0]])  # ln2, ln(4/3) | ln(4/3), ln2
    np.testing.assert_allclose(BCE(logits, targets), (LN2 + math.log(4 / 3)) / 2, rtol=1e-6)
    targets2 = np.array([[0, 1], [1, 0]])  # ln2, ln(4/3) | ln4, ln2
    np.testing.assert_allclose(BCE(logits, targets2), (2 * LN2 + math.log(4 / 3) + math.log(4)) / 4, rtol=1e-6)
    np.testing.assert_allclose(BCE(logits, targets2, np.array([0.0, 1.0])), (math.log(4) + LN2) / 2, rtol=1e-6)
    t = torch.nn.BCEWithLogitsLoss()(torch.tensor(logits), torch.tensor(targets2).float())
    np.testing.assert_allclose(BCE(logits, targets2), t.item(), rtol=1e-6)


def test_dice_by_hand():
    # one 1x2 image, 2 classes, logits 0 -> probability 1/2 everywhere.
    logits = np.zeros((1, 1, 2, 2), np.float32)
    # labels (0, 1): per class overlap 1/2, sum(p) = 1, sum(y) = 1 -> dice (1 + nr)/(2 + dr) = 1/2 at nr = dr = 0
    np.testing.assert_allclose(DICE(logits, np.array([[[0, 1]]]), 2, smooth_nr=0.0, smooth_dr=0.0), 0.5, rtol=1e-6)
    # labels (0, 0): class 0 overlap 1, sum(p) 1, sum(y) 2 -> dice 2/3; class 1 overlap 0, sum(p) 1, sum(y) 0
    # -> dice ~1e-5 -> loss = mean(1/3, 1) = 2/3
    np.testing.assert_allclose(DICE(logits, np.zeros((1, 1, 2), int), 2), 2 / 3, rtol=1e-4)
    # an absent class predicted absent costs nothing thanks to the smoothing: (0 + 1e-5) / (0 + 1e-5) = 1
    confident = np.array([[[[30.0, -30.0], [30.0, -30.0]]]], np.float32)
    np.testing.assert_allclose(DICE(confident, np.zeros((1, 1, 2), int), 2), 0.0, atol=1e-6)


# ------------------------------------------------------------------------------------------ MONAI parity

def _case(shape, num_classes, seed):
    """Random logits (N, *spatial, C) and labels; class 2 is missing from example 0 (the empty-class path)."""
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal(shape + (num_classes,))).astype(np.float32)
    labels = rng.integers(0, num_classes, shape)
    labels[0][labels[0] == 2] = 1
    return logits, labels


def _to_torch(logits, labels):
    """NHW[D]C / NHW[D] -> NCHW[D] / N1HW[D]."""
    perm = (0, logits.ndim - 1) + tuple(range(1, logits.ndim - 1))
    return torch.tensor(logits).permute(*perm).contiguous().requires_grad_(True), torch.tensor(labels)[:, None]


SHAPES = {"2d": (3, 7, 6), "3d": (2, 5, 4, 6)}
VARIANTS = [(ib, b) for ib in (True, False) for b in (False, True)]
SMOOTH = dict(smooth_nr=0.0, smooth_dr=1.0)


def _variant_losses(logits, labels):
    """Every (loss, include_background, batch) variant traced in one jitted function; the gradient of dice_ce
    (which covers both the Dice and the cross-entropy terms) too."""
    out = {}
    for ib, b in VARIANTS:
        kw = dict(num_classes=4, include_background=ib, batch=b)
        out["dice", ib, b] = losses.soft_dice_loss(logits, labels, **kw), None
        out["dice_smooth", ib, b] = losses.soft_dice_loss(logits, labels, **kw, **SMOOTH), None
        out["dice_ce", ib, b] = jax.value_and_grad(functools.partial(
            losses.dice_ce_loss, **kw, dice_weight=0.7, ce_weight=1.3))(logits, labels)
    return out


@functools.cache
def _ours(dims):
    logits, labels = _case(SHAPES[dims], 4, seed=len(dims))
    return logits, labels, jax.jit(_variant_losses)(logits, labels)


@pytest.mark.parametrize("dims", ["2d", "3d"])
@pytest.mark.parametrize("include_background,batch", VARIANTS)
def test_dice_losses_match_monai(dims, include_background, batch):
    """soft_dice_loss == DiceLoss and dice_ce_loss == DiceCELoss (softmax, to_onehot_y); DiceCE gradients too."""
    logits, labels, ours = _ours(dims)
    refs = {"dice": monai_losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=include_background,
                                          batch=batch),
            "dice_smooth": monai_losses.DiceLoss(softmax=True, to_onehot_y=True, batch=batch,
                                                 include_background=include_background, **SMOOTH),
            "dice_ce": monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, batch=batch, lambda_dice=0.7,
                                               include_background=include_background, lambda_ce=1.3)}
    for name, ref_fn in refs.items():
        x, y = _to_torch(logits, labels)
        ref = ref_fn(x, y)
        value, grad = ours[name, include_background, batch]
        np.testing.assert_allclose(float(value), ref.item(), atol=1e-5, err_msg=name)
        if grad is not None:
            ref.backward()
            ref_grad = x.grad.permute(0, *range(2, x.ndim), 1).numpy()  # back to channels-last
            np.testing.assert_allclose(grad, ref_grad, atol=1e-6, err_msg=name)


def test_dice_ce_defaults_match_monai_defaults():
    logits, labels = _case((2, 6, 6), 3, seed=99)
    ref = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True)(*_to_torch(logits, labels))
    np.testing.assert_allclose(float(DICE_CE(logits, labels, 3)), ref.item(), atol=1e-5)


# ------------------------------------------------------------------------------------------ padding, sharding

LOSS_FNS = {
    "dice_ce": jax.jit(functools.partial(losses.dice_ce_loss, num_classes=3)),  # CE + per-example Dice
    "dice_ce_batch": jax.jit(functools.partial(losses.dice_ce_loss, num_classes=3, batch=True,  # + batch Dice
                                               include_background=False)),
}


@pytest.mark.parametrize("name", list(LOSS_FNS))
def test_padded_rows_contribute_nothing(name):
    """Loss(batch) == Loss(batch + garbage rows of weight 0), the garbage at the end or in the middle, even inf/NaN;
    padded rows get zero gradient and the valid rows the gradient they have alone."""
    fn = LOSS_FNS[name]
    logits, labels = _case((3, 4, 5), 3, seed=5)
    rng = np.random.default_rng(6)
    pad_logits = (1e4 * rng.standard_normal((2, 4, 5, 3))).astype(np.float32)
    pad_labels = rng.integers(0, 3, (2, 4, 5))
    ones = np.ones(3, np.float32)
    alone = fn(logits, labels, weights=ones)
    batch = "batch" in name
    ref = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, batch=batch, include_background=not batch)
    np.testing.assert_allclose(float(alone), ref(*_to_torch(logits, labels)).item(), atol=1e-5)
    x = np.concatenate([logits, pad_logits])
    y = np.concatenate([labels, pad_labels])
    padded = fn(x, y, weights=np.array([1, 1, 1, 0, 0], np.float32))
    np.testing.assert_allclose(float(padded), float(alone), rtol=1e-6)
    pad_logits[0, 0, 0, 0], pad_logits[1, 1, 1, 1] = np.nan, np.inf
    mixed = fn(np.concatenate([pad_logits[:1], logits, pad_logits[1:]]),
               np.concatenate([pad_labels[:1], labels, pad_labels[1:]]), weights=np.array([0, 1, 1, 1, 0], np.float32))
    np.testing.assert_allclose(float(mixed), float(alone), rtol=1e-6)

    grad = jax.jit(jax.grad(lambda x, y, w: fn(x, y, weights=w)))
    g_padded = grad(x, y, np.array([1, 1, 1, 0, 0], np.float32))
    g_alone = grad(np.concatenate([logits, logits[:2]]), np.concatenate([labels, labels[:2]]),
                   np.array([1, 1, 1, 0, 0], np.float32))
    np.testing.assert_array_equal(g_padded[3:], 0.0)
    np.testing.assert_allclose(g_padded[:3], g_alone[:3], atol=1e-8)


def test_padded_rows_bce_and_classification_ce():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    targets = rng.integers(0, 2, (6, 5))
    labels = rng.integers(0, 5, (6,))
    w = np.array([1, 1, 1, 1, 0, 0], np.float32)
    ref_bce = torch.nn.BCEWithLogitsLoss()(torch.tensor(logits[:4]), torch.tensor(targets[:4]).float()).item()
    ref_ce = torch.nn.CrossEntropyLoss()(torch.tensor(logits[:4]), torch.tensor(labels[:4])).item()
    logits[4:] = np.nan
    np.testing.assert_allclose(BCE(logits, targets, w), ref_bce, rtol=1e-6)
    np.testing.assert_allclose(CE(logits, labels, w), ref_ce, rtol=1e-6)


def test_batch_sharded_over_four_devices_gives_the_same_numbers():
    """jit with the batch (and its padding) sharded over 4 fake CPU devices == MONAI/torch on the valid rows."""
    devices = np.array(jax.devices()[:4])
    if devices.size < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets JAX_NUM_CPU_DEVICES=4)")
    sharding = NamedSharding(Mesh(devices, ("data",)), P("data"))
    logits, labels = _case((8, 4, 6), 3, seed=11)
    weights = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    xs, ys, ws = (jax.device_put(a, sharding) for a in (logits, labels, weights))
    for name, fn in LOSS_FNS.items():
        batch = "batch" in name
        ref = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, batch=batch, include_background=not batch)(
            *_to_torch(logits[:6], labels[:6])).item()
        np.testing.assert_allclose(float(fn(xs, ys, weights=ws)), ref, atol=1e-5, err_msg=name)
    t = np.random.default_rng(12).integers(0, 2, (8, 3))
    ref = torch.nn.BCEWithLogitsLoss()(torch.tensor(logits[:6, 0, 0]), torch.tensor(t[:6]).float()).item()
    np.testing.assert_allclose(float(BCE(jax.device_put(logits[:, 0, 0], sharding), jax.device_put(t, sharding), ws)),
                               ref, rtol=1e-6)


def test_bfloat16_logits_give_a_float32_loss():
    logits, labels = _case((3, 4, 5), 3, seed=5)
    loss = LOSS_FNS["dice_ce"](jnp.asarray(logits, jnp.bfloat16), labels, weights=np.ones(3, np.float32))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), float(LOSS_FNS["dice_ce"](logits, labels, weights=np.ones(3))), rtol=2e-2)


def test_shape_errors_name_the_shapes():
    with pytest.raises(MedjaxError, match="num_classes=4"):
        losses.soft_dice_loss(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2), int), 4)
    with pytest.raises(MedjaxError, match=r"\(1, 3, 2\)"):
        losses.softmax_cross_entropy(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 3, 2), int))
    with pytest.raises(MedjaxError, match="num_classes=1"):
        losses.dice_ce_loss(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2), int), 1)


# ------------------------------------------------------------------------------------------ per-voxel masks

def test_masked_losses_by_hand():
    # one 1x2 image, 2 classes: pixel 0 logits (0, 0) -> p = (1/2, 1/2), label 0 -> CE ln2;
    # pixel 1 logits (ln3, 0) -> p = (3/4, 1/4), label 1 -> CE ln4. Mask (1, 0): only pixel 0 counts.
    logits = np.array([[[[0.0, 0.0], [LN3, 0.0]]]], np.float32)
    labels = np.array([[[0, 1]]])
    inside = np.array([[[1.0, 0.0]]], np.float32)
    np.testing.assert_allclose(CE(logits, labels), (LN2 + math.log(4)) / 2, rtol=1e-6)
    np.testing.assert_allclose(CE(logits, labels, mask=inside), LN2, rtol=1e-6)
    np.testing.assert_allclose(CE(logits, labels, mask=inside[..., None]), LN2, rtol=1e-6)  # (N, H, W, 1)
    # weights 3 and 1 on the pixels: (3 ln2 + ln4) / 4
    np.testing.assert_allclose(CE(logits, labels, mask=np.array([[[3.0, 1.0]]])), (3 * LN2 + 2 * LN2) / 4, rtol=1e-6)
    # Dice inside (pixel 0 only): class 0 I = 1/2, P = 1/2, L = 1 -> 1 - 1/1.5 = 1/3; class 1 I = 0, P = 1/2,
    # L = 0 -> 1; mean 2/3 (no smoothing)
    np.testing.assert_allclose(DICE(logits, labels, 2, smooth_nr=0.0, smooth_dr=0.0, mask=inside), 2 / 3, rtol=1e-6)
    # weighted (3, 1): class 0 I = 3/2, P = 3/2 + 3/4, L = 3 -> 1 - 3/5.25; class 1 I = 1/4, P = 3/2 + 1/4, L = 1
    # -> 1 - 0.5/2.75
    want = ((1 - 3 / 5.25) + (1 - 0.5 / 2.75)) / 2
    np.testing.assert_allclose(DICE(logits, labels, 2, smooth_nr=0.0, smooth_dr=0.0, mask=np.array([[[3.0, 1.0]]])),
                               want, rtol=1e-6)
    np.testing.assert_allclose(DICE_CE(logits, labels, 2, smooth_nr=0.0, smooth_dr=0.0, mask=inside), 2 / 3 + LN2,
                               rtol=1e-6)


MASKED = {
    "ce": jax.jit(losses.softmax_cross_entropy),
    "dice": jax.jit(functools.partial(losses.soft_dice_loss, num_classes=3)),
    "dice_batch": jax.jit(functools.partial(losses.soft_dice_loss, num_classes=3, batch=True,
                                            include_background=False)),
    "dice_ce": jax.jit(functools.partial(losses.dice_ce_loss, num_classes=3)),
}


@pytest.mark.parametrize("name", list(MASKED))
def test_masked_loss_is_the_loss_of_the_inside_voxels(name):
    """A rectangular mask gives the loss of the cropped arrays; logits and labels outside change nothing and
    get zero gradient; all-ones mask == no mask."""
    fn = MASKED[name]
    logits, labels = _case((3, 6, 7), 3, seed=21)
    mask = np.zeros((3, 6, 7), np.float32)
    mask[:, 1:5, 2:6] = 1.0
    crop = fn(logits[:, 1:5, 2:6], labels[:, 1:5, 2:6])
    np.testing.assert_allclose(float(fn(logits, labels, mask=mask)), float(crop), rtol=1e-6)
    np.testing.assert_allclose(float(fn(logits, labels, mask=np.ones_like(mask))), float(fn(logits, labels)),
                               rtol=1e-6)
    noisy, other = logits.copy(), labels.copy()
    outside = mask == 0
    noisy[outside] = 1e4 * np.random.default_rng(22).standard_normal((int(outside.sum()), 3))
    other[outside] = (other[outside] + 1) % 3
    np.testing.assert_allclose(float(fn(noisy, other, mask=mask)), float(crop), rtol=1e-6)
    noisy[0, 0, 0, 0], noisy[1, 5, 6, 2] = np.inf, -np.inf  # not even inf outside leaks into the value
    np.testing.assert_allclose(float(fn(noisy, other, mask=mask)), float(crop), rtol=1e-6)
    grad = jax.jit(jax.grad(lambda x, y, m: fn(x, y, mask=m)))
    g = np.asarray(grad(logits, labels, mask))
    np.testing.assert_array_equal(g[outside], 0.0)
    g_crop = np.asarray(jax.grad(lambda x: fn(x, labels[:, 1:5, 2:6]))(logits[:, 1:5, 2:6]))
    np.testing.assert_allclose(g[:, 1:5, 2:6], g_crop, atol=1e-7)


@pytest.mark.parametrize("name", list(MASKED))
def test_example_with_empty_mask_contributes_nothing(name):
    """An all-0 mask drops its example like a padded row: the loss of the others, zero gradient, no NaN; a batch
    with no voxel inside at all gives 0, not NaN."""
    fn = MASKED[name]
    logits, labels = _case((3, 4, 5), 3, seed=23)
    mask = np.ones((3, 4, 5), np.float32)
    mask[1] = 0.0
    keep = np.array([0, 2])
    alone = fn(logits[keep], labels[keep])
    value, g = jax.value_and_grad(lambda x: fn(x, labels, mask=mask))(logits)
    np.testing.assert_allclose(float(value), float(alone), rtol=1e-6)
    np.testing.assert_array_equal(g[1], 0.0)
    with_weights = fn(logits, labels, weights=np.array([1.0, 1.0, 0.0], np.float32), mask=mask)
    np.testing.assert_allclose(float(with_weights), float(fn(logits[:1], labels[:1])), rtol=1e-6)
    value, g = jax.value_and_grad(lambda x: fn(x, labels, mask=np.zeros_like(mask)))(logits)
    assert float(value) == 0.0 and np.isfinite(np.asarray(g)).all()  # batch Dice: 1 - smooth_nr/smooth_dr = 0


def test_mask_shape_error_names_the_shapes():
    with pytest.raises(MedjaxError, match=r"mask of shape \(1, 2, 3\)"):
        losses.softmax_cross_entropy(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2), int), mask=jnp.ones((1, 2, 3)))
    with pytest.raises(MedjaxError, match=r"mask of shape \(2, 2\)"):
        losses.dice_ce_loss(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2), int), 3, mask=jnp.ones((2, 2)))


def test_focal_and_smooth_l1_equal_monai_and_torch():
    """Elementwise focal loss = MONAI's sigmoid_focal_loss (with and without alpha, saturated logits included),
    gamma 0 without alpha = BCE; smooth L1 = torch.nn.SmoothL1Loss(beta, reduction='none'), beta 0 = L1."""
    from monai.losses.focal_loss import sigmoid_focal_loss

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 3, 40), [-60.0, 60.0, 0.0]]).astype(np.float32).reshape(43, 1)
    t = np.concatenate([rng.integers(0, 2, 40), [1, 0, 1]]).astype(np.float32).reshape(43, 1)
    focal = jax.jit(losses.sigmoid_focal_loss, static_argnames=("gamma", "alpha"))
    for gamma, alpha in ((2.0, 0.25), (1.5, None), (0.0, None)):
        ref = sigmoid_focal_loss(torch.from_numpy(x), torch.from_numpy(t), gamma, alpha).numpy()
        np.testing.assert_allclose(np.asarray(focal(x, t, gamma=gamma, alpha=alpha)), ref, rtol=1e-5, atol=1e-7)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(t),
                                                                reduction="none").numpy()
    np.testing.assert_allclose(np.asarray(focal(x, t, gamma=0.0, alpha=None)), bce, rtol=1e-6, atol=1e-7)
    d = rng.normal(0, 0.3, 50).astype(np.float32)
    smooth = jax.jit(losses.smooth_l1_loss, static_argnames="beta")
    for beta in (1.0 / 9, 1.0):
        ref = torch.nn.SmoothL1Loss(beta=beta, reduction="none")(torch.from_numpy(d), torch.zeros(50)).numpy()
        np.testing.assert_allclose(np.asarray(smooth(d, beta=beta)), ref, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(smooth(d, beta=0.0)), np.abs(d))
    assert float(smooth(np.float32(0.05), beta=0.1)) == pytest.approx(0.5 * 0.05**2 / 0.1)
