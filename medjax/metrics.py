"""Evaluation metrics: jit-friendly per-batch pieces (accuracy, Dice counts) and host-side numpy finishers.

Split this way because evaluation runs over many batches and possibly many hosts: the jitted step returns
sums or per-example values, the loop adds them up (or gathers them), and the numpy finisher turns totals into
the number reported. Conventions follow MedMNIST v2 (accuracy, AUC) and MONAI (`DiceMetric(ignore_empty=True)`).

- `accuracy`, `correct`, `multilabel_accuracy`, `multilabel_correct`: jnp, inside jit.
- `dice_counts` (jnp, inside jit) -> sum over batches/hosts -> `dice_from_counts`, `mean_foreground_dice` (numpy).
- `roc_auc`: numpy, on all gathered scores at once (AUC does not decompose into batch sums).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import MedjaxError
from medjax.losses import weighted_mean

TASKS = ("binary", "multiclass", "multilabel")


# --------------------------------------------------------------------------------------------- accuracy (jnp)

def _drop_channel(labels: jax.Array, ndim: int) -> jax.Array:
    """Accept labels as (N, ...) or with a trailing channel of 1, as MedMNIST stores them ((N, 1))."""
    if labels.ndim == ndim + 1 and labels.shape[-1] == 1:
        return labels[..., 0]
    return labels


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1.0 where argmax(`logits`, -1) equals the integer label, else 0.0; shape of `labels` (per example).

    Returned per example (not averaged) so the caller can drop padded rows or sum over hosts.
    A 2-class softmax argmax equals MedMNIST's binary rule `p(class 1) > 0.5` (ties go to class 0 in both).
    """
    labels = _drop_channel(jnp.asarray(labels), logits.ndim - 1)
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Multi-class accuracy (argmax) over examples with non-zero weight; scalar."""
    return weighted_mean(correct(logits, labels).reshape(logits.shape[0], -1).mean(axis=1), weights)


def multilabel_correct(logits: jax.Array, targets: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Per example, the fraction of the K labels right when predicting sigmoid(logit) > `threshold`; (N,)."""
    pred = jax.nn.sigmoid(logits.astype(jnp.float32)) > threshold
    hits = (pred == (jnp.asarray(targets) > 0.5)).astype(jnp.float32)
    return hits.reshape(hits.shape[0], -1).mean(axis=1)


def multilabel_accuracy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None,
                        threshold: float = 0.5) -> jax.Array:
    """MedMNIST multi-label ACC: per-label accuracy at `threshold`, averaged over labels (and examples); scalar.

    The mean over labels of per-label accuracies equals the mean over all (example, label) pairs.
    """
    return weighted_mean(multilabel_correct(logits, targets, threshold), weights)


# ---------------------------------------------------------------------------------------------- Dice

def dice_counts(pred_labels: jax.Array, labels: jax.Array, num_classes: int, weights: jax.Array | None = None,
                mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-class (intersection, predicted voxels, reference voxels), each int32 (num_classes,), summed over
    the batch and all spatial axes.

    Integer counts, so adding them over batches and hosts is exact; turn the totals into Dice with
    `dice_from_counts`. `pred_labels` and `labels` are integer maps (N, *spatial) (a trailing channel of 1 on
    `labels` is dropped). `weights` (N,) is a padding mask: an example with weight 0 is not counted, any
    non-zero weight counts it fully. `mask` (N, *spatial) (e.g. a field-of-view mask) does the same per voxel:
    voxels where it is 0 are not counted, whatever is predicted there. Labels outside [0, num_classes) count
    for no class.
    """
    pred_labels = jnp.asarray(pred_labels)
    labels = _drop_channel(jnp.asarray(labels), pred_labels.ndim)
    if labels.shape != pred_labels.shape:
        raise MedjaxError(f"labels of shape {labels.shape} do not match predictions of shape {pred_labels.shape}")
    classes = jnp.arange(num_classes)
    # compare-and-reduce, which XLA fuses without materialising the one-hot maps (no scatter as in bincount)
    pred = pred_labels[..., None] == classes
    ref = labels[..., None] == classes
    if weights is not None:
        keep = (jnp.asarray(weights) != 0).reshape((pred.shape[0],) + (1,) * (pred.ndim - 1))
        pred, ref = pred & keep, ref & keep
    if mask is not None:
        mask = _drop_channel(jnp.asarray(mask), pred_labels.ndim)
        if mask.shape != pred_labels.shape:
            raise MedjaxError(f"mask of shape {mask.shape} does not match predictions of shape {pred_labels.shape}: "
                              f"expected one value per voxel, 0 where voxels are not counted")
        inside = (mask != 0)[..., None]
        pred, ref = pred & inside, ref & inside
    axes = tuple(range(pred.ndim - 1))
    return (jnp.sum(pred & ref, axis=axes, dtype=jnp.int32), jnp.sum(pred, axis=axes, dtype=jnp.int32),
            jnp.sum(ref, axis=axes, dtype=jnp.int32))


def dice_from_counts(intersection: np.ndarray, pred_sum: np.ndarray, label_sum: np.ndarray, *,
                     ignore_empty: bool = True) -> np.ndarray:
    """Per-class Dice 2*I / (P + L) from summed counts; float64 numpy (num_classes,).

    A class absent from the reference (L == 0) is NaN with `ignore_empty=True` (the default), whatever was
    predicted -- MONAI's `DiceMetric(ignore_empty=True)` rule -- so it drops out of NaN-aware means instead of
    counting as a perfect 1.0. With `ignore_empty=False`: 1.0 if also never predicted, else 0.0.
    Counts pooled over a dataset give the Dice of the dataset as one volume; for one example this is exactly
    MONAI's per-image `DiceMetric`.
    """
    inter = np.asarray(intersection, np.float64)
    pred = np.asarray(pred_sum, np.float64)
    ref = np.asarray(label_sum, np.float64)
    denom = pred + ref
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(denom > 0, 2.0 * inter / denom, 1.0)
    if ignore_empty:
        return np.where(ref > 0, dice, np.nan)
    return dice


def mean_foreground_dice(dice: np.ndarray, *, include_background: bool = False) -> float:
    """Mean of per-class Dice over classes 1.. (all classes with `include_background`), ignoring NaN classes.

    NaN if every selected class is NaN (no foreground in the reference at all), without numpy's warning.
    """
    dice = np.asarray(dice, np.float64)
    selected = dice if include_background else dice[1:]
    selected = selected[~np.isnan(selected)]
    return float(selected.mean()) if selected.size else float("nan")


# ---------------------------------------------------------------------------------------------- ROC AUC

def _binary_auc(scores: np.ndarray, positive: np.ndarray, what: str) -> float:
    """ROC AUC by Mann-Whitney U with mid-ranks for ties: P(score_pos > score_neg) + 0.5 P(equal).

    Equal to sklearn's trapezoidal ROC AUC (tied scores form one diagonal step of the ROC curve).
    """
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        only = "0 (no positive example)" if n_pos == 0 else "1 (no negative example)"
        raise MedjaxError(f"ROC AUC is undefined for {what}: all {positive.size} labels are {only}")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)                      # 1-based rank of the last member of each tie group
    mid_ranks = (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]
    rank_sum = mid_ranks[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _binary_labels(labels: np.ndarray, what: str) -> np.ndarray:
    values = np.unique(labels)
    if not np.all(np.isin(values, (0, 1))):
        raise MedjaxError(f"ROC AUC of {what} needs 0/1 labels, got values {values[:10].tolist()}")
    return labels == 1


def _infer_task(scores: np.ndarray, labels: np.ndarray) -> str:
    if labels.ndim == 2:
        return "multilabel"
    if scores.ndim == 1 or scores.shape[1] == 2:
        return "binary"
    return "multiclass"


def roc_auc(scores: np.ndarray, labels: np.ndarray, *, task: str | None = None) -> float:
    """ROC AUC as MedMNIST v2 reports it (numpy, host side, on all examples at once).

    - binary: `scores` (N,) positive-class score, or (N, 2) class probabilities (column 1 is used);
      `labels` (N,) 0/1.
    - multiclass: `scores` (N, C) (softmax probabilities), `labels` (N,) ints in [0, C): one-vs-rest AUC of
      column c against `labels == c`, unweighted mean over classes (sklearn `multi_class='ovr'`, macro).
    - multilabel: `scores` (N, K), `labels` (N, K) 0/1: per-label AUC, unweighted mean.
    `task` is inferred from the shapes (2-D labels: multilabel; 1-D or 2-column scores: binary) unless given.
    Labels shaped (N, 1) are taken as (N,). Ties are handled exactly as sklearn's `roc_auc_score`.
    Raises MedjaxError naming the class when a class has only one label value (AUC undefined there), rather
    than skipping it and silently reporting a mean over fewer classes.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim not in (1, 2) or labels.ndim not in (1, 2) or len(scores) != len(labels) or not len(labels):
        raise MedjaxError(f"roc_auc needs scores (N,) or (N, C) and labels (N,) or (N, K) with N > 0; "
                          f"got scores {scores.shape} and labels {labels.shape}")
    if np.isnan(scores).any():
        raise MedjaxError(f"roc_auc: {int(np.isnan(scores).sum())} scores are NaN (did training diverge?)")
    task = task or _infer_task(scores, labels)
    if task not in TASKS:
        raise MedjaxError(f"roc_auc: unknown task {task!r}; known: {list(TASKS)}")

    if task == "binary":
        if labels.ndim != 1 or (scores.ndim == 2 and scores.shape[1] != 2):
            raise MedjaxError(f"binary roc_auc needs labels (N,) and scores (N,) or (N, 2); "
                              f"got scores {scores.shape} and labels {labels.shape}")
        positive_score = scores if scores.ndim == 1 else scores[:, 1]
        return _binary_auc(positive_score, _binary_labels(labels, "the binary task"), "the binary task")

    if task == "multilabel":
        if labels.shape != scores.shape:
            raise MedjaxError(f"multi-label roc_auc needs scores and labels of one shape (N, K); "
                              f"got scores {scores.shape} and labels {labels.shape}")
        positive = _binary_labels(labels, "the multi-label task")
        per_label = [_binary_auc(scores[:, k], positive[:, k], f"label {k}") for k in range(scores.shape[1])]
        return float(np.mean(per_label))

    if labels.ndim != 1 or scores.ndim != 2:
        raise MedjaxError(f"multi-class roc_auc needs scores (N, C) and labels (N,); "
                          f"got scores {scores.shape} and labels {labels.shape}")
    num_classes = scores.shape[1]
    if not np.issubdtype(labels.dtype, np.integer) and not np.all(labels == np.round(labels)):
        raise MedjaxError("multi-class roc_auc needs integer class labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise MedjaxError(f"multi-class roc_auc: labels span [{labels.min()}, {labels.max()}] but scores have "
                          f"{num_classes} classes")
    per_class = [_binary_auc(scores[:, c], labels == c, f"class {c} (one-vs-rest)") for c in range(num_classes)]
    return float(np.mean(per_class))
