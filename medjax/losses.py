"""Training losses: pure `jax.numpy`, jit-able, channels-last, 2D and 3D alike.

Every loss takes optional per-example `weights` of shape (N,): the global batch is padded to a multiple of
the device count and padded rows carry weight 0. Masking uses `jnp.where`, not multiplication, so whatever
the padded rows hold (even inf/NaN logits) cannot leak into the value; their gradient is exactly 0 while their
logits are finite (a NaN logit still turns its own row's gradient NaN). Reductions are plain sums over the
batch axis, so the functions give the same number under any batch sharding of `jax.jit`.

The segmentation losses also take an optional per-voxel `mask` (N, *spatial) (e.g. a field-of-view mask, 1
inside and 0 outside; non-negative float weights work too): voxels where it is 0 count for nothing, by the same
`jnp.where` rule, and an example whose mask is all 0 drops out of the mean over examples like a padded row.
`mask=None` is the unmasked loss, unchanged.

Computation is in float32 whatever the logits' dtype, so bfloat16 models get float32 losses.
The Dice definitions match MONAI 1.6 (`monai.losses.DiceLoss` / `DiceCELoss` with `softmax=True,
to_onehot_y=True`), which the tests check to 1e-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medjax.errors import MedjaxError


def _labels_like(labels: jax.Array, logits: jax.Array) -> jax.Array:
    """Integer labels shaped like `logits` without its class axis; a trailing channel of 1 is dropped."""
    if labels.ndim == logits.ndim and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.shape != logits.shape[:-1]:
        raise MedjaxError(f"labels of shape {labels.shape} do not match logits of shape {logits.shape}: "
                          f"expected labels {logits.shape[:-1]} (integer class per element)")
    return labels


def _mask_like(mask: jax.Array | None, logits: jax.Array) -> jax.Array | None:
    """float32 per-voxel weights shaped like `logits` without its class axis; a trailing channel of 1 is dropped."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.ndim == logits.ndim and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != logits.shape[:-1]:
        raise MedjaxError(f"mask of shape {mask.shape} does not match logits of shape {logits.shape}: expected "
                          f"{logits.shape[:-1]} (one weight per voxel, 0 outside the region that counts)")
    return mask.astype(jnp.float32)


def _masked_example_weights(mask: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Per-example weights with the examples whose mask is all 0 set to 0: they have no voxel to average."""
    has_voxels = jnp.any(mask.reshape(mask.shape[0], -1) != 0, axis=1)
    w = jnp.ones(mask.shape[0], jnp.float32) if weights is None else (
        jnp.asarray(weights, jnp.float32).reshape(mask.shape[0]))
    return jnp.where(has_voxels, w, 0.0)


def _check_num_classes(logits: jax.Array, num_classes: int) -> None:
    if num_classes < 2:
        raise MedjaxError(f"num_classes={num_classes}: softmax Dice needs at least 2 classes (background + one)")
    if logits.shape[-1] != num_classes:
        raise MedjaxError(f"logits have {logits.shape[-1]} channels but num_classes={num_classes}")


def weighted_mean(per_example: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Weighted mean over the batch axis of an (N,) array; rows with weight 0 are excluded, not multiplied."""
    if weights is None:
        return jnp.mean(per_example)
    w = jnp.asarray(weights, jnp.float32).reshape(per_example.shape[0])
    total = jnp.sum(jnp.where(w != 0, w * per_example, 0.0))
    return total / jnp.maximum(jnp.sum(w), jnp.finfo(jnp.float32).tiny)


def _weighted_batch_sum(x: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Sum over the batch axis (axis 0) with per-example weights; padded rows contribute exactly 0."""
    if weights is None:
        return jnp.sum(x, axis=0)
    w = jnp.asarray(weights, jnp.float32).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.sum(jnp.where(w != 0, w * x, 0.0), axis=0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None,
                          mask: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy of integer `labels` (N, ...) under `logits` (N, ..., C); scalar.

    Classification (N, C) and segmentation (N, *spatial, C) alike: the mean is over every element of the
    examples with non-zero weight (all examples share one spatial size, so this is the weighted mean of the
    per-example means). Labels outside [0, C) contribute 0 but still count in the mean: keep them in range.
    Matches `torch.nn.CrossEntropyLoss()` on NC[D]HW inputs.

    With a per-voxel `mask` (N, *spatial), each example's mean is the `mask`-weighted mean over its voxels
    (for a 0/1 mask: over the voxels inside), then the weighted mean over the examples that have any.
    """
    logits = logits.astype(jnp.float32)
    labels = _labels_like(labels, logits)
    mask = _mask_like(mask, logits)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    # A one-hot contraction (rather than a gather) stays elementwise and fuses under any sharding.
    ce = -jnp.sum(jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32) * log_probs, axis=-1)
    if mask is None:
        per_example = jnp.mean(ce.reshape(ce.shape[0], -1), axis=1)
        return weighted_mean(per_example, weights)
    m = mask.reshape(ce.shape[0], -1)
    total = jnp.sum(jnp.where(m != 0, m * ce.reshape(ce.shape[0], -1), 0.0), axis=1)
    per_example = total / jnp.maximum(jnp.sum(m, axis=1), jnp.finfo(jnp.float32).tiny)
    return weighted_mean(per_example, _masked_example_weights(mask, weights))


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array,
                                 weights: jax.Array | None = None) -> jax.Array:
    """Multi-label BCE of 0/1 `targets` (N, K) under `logits` (N, K), mean over examples and labels; scalar.

    Uses the stable form softplus(x) - x*t, as `torch.nn.BCEWithLogitsLoss()` does.
    """
    logits = logits.astype(jnp.float32)
    targets = jnp.asarray(targets).astype(jnp.float32)
    if targets.shape != logits.shape:
        raise MedjaxError(f"multi-label targets of shape {targets.shape} do not match logits of shape {logits.shape}")
    bce = jnp.logaddexp(0.0, logits) - logits * targets
    per_example = jnp.mean(bce.reshape(bce.shape[0], -1), axis=1)
    return weighted_mean(per_example, weights)


def _dice_terms(logits: jax.Array, labels: jax.Array, num_classes: int, include_background: bool,
                mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-(example, class) soft intersection, predicted mass and label mass, each (N, C').

    With a `mask`, each voxel's probabilities and one-hot are weighted by it once (`jnp.where` first, so what
    lies outside cannot leak): for a 0/1 mask, the sums over the voxels inside."""
    _check_num_classes(logits, num_classes)
    logits = logits.astype(jnp.float32)
    labels = _labels_like(labels, logits)
    mask = _mask_like(mask, logits)
    probs = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if not include_background:
        probs, onehot = probs[..., 1:], onehot[..., 1:]
    spatial = tuple(range(1, logits.ndim - 1))
    if mask is None:
        intersection = jnp.sum(probs * onehot, axis=spatial)
        return intersection, jnp.sum(probs, axis=spatial), jnp.sum(onehot, axis=spatial)
    m = mask[..., None]
    probs = jnp.where(m != 0, probs, 0.0)
    weighted = m * onehot
    intersection = jnp.sum(probs * weighted, axis=spatial)
    return intersection, jnp.sum(m * probs, axis=spatial), jnp.sum(weighted, axis=spatial)


def soft_dice_loss(logits: jax.Array, labels: jax.Array, num_classes: int, *, include_background: bool = True,
                   smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                   weights: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
    """Soft Dice loss of softmax(`logits`) (N, *spatial, C) against one-hot integer `labels`; scalar.

    Per (example, class): 1 - (2*sum(p*y) + smooth_nr) / (sum(p) + sum(y) + smooth_dr) over the spatial axes,
    then the mean over examples and classes. With `batch=True` the sums run over the batch too (one Dice per
    class), which is steadier when classes are often absent from single examples. `include_background=False`
    drops class 0. Exactly MONAI's `DiceLoss(softmax=True, to_onehot_y=True, ...)` (its 2*(tp+fp/2+fn/2) is
    sum(p)+sum(y)).

    A per-voxel `mask` (N, *spatial) restricts every sum to the voxels inside (weighted by it); an example with
    an all-0 mask is left out of the mean over examples (with `batch=True` it adds nothing to the sums).
    """
    intersection, pred_sum, label_sum = _dice_terms(logits, labels, num_classes, include_background, mask)
    if mask is not None and not batch:
        weights = _masked_example_weights(_mask_like(mask, logits), weights)
    if batch:
        intersection = _weighted_batch_sum(intersection, weights)
        pred_sum = _weighted_batch_sum(pred_sum, weights)
        label_sum = _weighted_batch_sum(label_sum, weights)
    loss = 1.0 - (2.0 * intersection + smooth_nr) / (pred_sum + label_sum + smooth_dr)
    if batch:
        return jnp.mean(loss)
    return weighted_mean(jnp.mean(loss, axis=-1), weights)


def dice_ce_loss(logits: jax.Array, labels: jax.Array, num_classes: int, *, dice_weight: float = 1.0,
                 ce_weight: float = 1.0, include_background: bool = True, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, weights: jax.Array | None = None,
                 mask: jax.Array | None = None) -> jax.Array:
    """`dice_weight * soft_dice_loss + ce_weight * softmax_cross_entropy`; scalar.

    As MONAI's `DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=dice_weight, lambda_ce=ce_weight)`:
    `include_background`, the smoothing terms and `batch` affect only the Dice part; cross-entropy always
    covers every class and voxel (inside the per-voxel `mask`, which both parts respect).
    """
    dice = soft_dice_loss(logits, labels, num_classes, include_background=include_background, smooth_nr=smooth_nr,
                          smooth_dr=smooth_dr, batch=batch, weights=weights, mask=mask)
    ce = softmax_cross_entropy(logits, labels, weights=weights, mask=mask)
    return dice_weight * dice + ce_weight * ce


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, gamma: float = 2.0,
                       alpha: float | None = None) -> jax.Array:
    """Elementwise sigmoid focal loss (Lin et al. 2017) of 0/1 `targets` under `logits` (same shape), unreduced:
    BCE(x, t) * (1 - p_t)^gamma, times alpha for t = 1 and 1 - alpha for t = 0 when `alpha` is given. The
    RetinaNet classification loss; the numbers of MONAI's `sigmoid_focal_loss` (tested), which computes
    (1 - p_t)^gamma as exp(gamma * log_sigmoid(-x * (2t - 1))) so saturated logits cannot overflow. gamma = 0
    without alpha is plain BCE."""
    x = logits.astype(jnp.float32)
    t = jnp.asarray(targets).astype(jnp.float32)
    bce = x - x * t - jax.nn.log_sigmoid(x)
    loss = jnp.exp(gamma * jax.nn.log_sigmoid(-x * (2 * t - 1))) * bce
    if alpha is not None:
        loss = (t * alpha + (1 - t) * (1 - alpha)) * loss
    return loss


def smooth_l1_loss(diff: jax.Array, beta: float = 1.0) -> jax.Array:
    """Elementwise smooth L1 (Huber / beta) of a difference, unreduced: 0.5 d^2 / beta where |d| < beta, else
    |d| - 0.5 beta (`torch.nn.SmoothL1Loss(beta)`, tested; beta = 1/9 is MONAI's RetinaNet box loss); beta = 0
    is L1."""
    d = jnp.abs(diff.astype(jnp.float32))
    if beta <= 0:
        return d
    return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
