"""Predictive uncertainty from S sampled predictions: ensemble members, MC-dropout passes or test-time
augmentation draws (`medjax.inference.predictive` makes them in one compiled program).

Samples are stacked on a leading axis: logits (S, N, ..., C). `kind` says what the logits parametrise:
"softmax" (one class per example or voxel), "sigmoid" (independent labels: multi-label classification) or
"mean" (regression outputs, averaged).

* `mean_logits`: the logits of the predictive mean, so a task scores an ensemble exactly as it scores one
  model: softmax -> log(mean_s softmax(l_s)); sigmoid -> logit(mean_s sigmoid(l_s)) per label; mean -> mean_s l_s.
* `entropy` (nats, 0 ln 0 = 0), `predictive_entropy` H[mean_s p_s] (total uncertainty), `expected_entropy`
  mean_s H[p_s] (the aleatoric part) and `mutual_information` = their difference (BALD, Houlsby et al. 2011: the
  epistemic part, >= 0 by the concavity of H; clipped at 0 against rounding). `uncertainty` gives both maps of
  logits: over the class axis, and for sigmoid labels summed over the labels (independent Bernoullis).
* `referral_curve`: the metric on the retained cases as the most uncertain fraction is referred to an expert
  (fractions 0, 0.05, ..., 0.5, as the RETINA benchmark of uncertainty-baselines reports; Band et al. 2021),
  with `classification_referral` (accuracy and ROC AUC) and `dice_referral` (mean per-case Dice).
* `save_maps`: per-voxel entropy and mutual information of segmentations, PNG for 2D, NIfTI for 3D.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import MedjaxError

KINDS = ("softmax", "sigmoid", "mean")
REFERRAL_FRACTIONS = tuple(i / 20 for i in range(11))  # 0, 0.05, ..., 0.5


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown prediction kind {kind!r}; known: {KINDS}")


def mean_logits(logits: jax.Array, kind: str) -> jax.Array:
    """Logits (..., C) of the mean prediction of the S samples in `logits` (S, ..., C), float32."""
    _check_kind(kind)
    logits = jnp.asarray(logits, jnp.float32)
    log_s = jnp.log(jnp.float32(logits.shape[0]))
    if kind == "softmax":
        return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - log_s
    if kind == "sigmoid":  # log p - log(1 - p) of p = mean_s sigmoid(l_s), each in log space
        log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(logits), axis=0) - log_s
        log_q = jax.nn.logsumexp(jax.nn.log_sigmoid(-logits), axis=0) - log_s
        return log_p - log_q
    return jnp.mean(logits, axis=0)


def entropy(probs: jax.Array, axis: int = -1) -> jax.Array:
    """Shannon entropy in nats along `axis` of probability vectors (0 ln 0 = 0)."""
    probs = jnp.asarray(probs, jnp.float32)
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=axis)


def predictive_entropy(probs: jax.Array) -> jax.Array:
    """H[mean_s p_s] of probabilities (S, ..., C): the total uncertainty, (...)."""
    return entropy(jnp.mean(jnp.asarray(probs, jnp.float32), axis=0))


def expected_entropy(probs: jax.Array) -> jax.Array:
    """mean_s H[p_s] of probabilities (S, ..., C): what every sample is unsure about (aleatoric), (...)."""
    return jnp.mean(entropy(probs), axis=0)


def mutual_information(probs: jax.Array) -> jax.Array:
    """BALD's mutual information H[mean_s p_s] - mean_s H[p_s] of probabilities (S, ..., C): where the samples
    disagree (epistemic), (...), clipped at 0."""
    return jnp.maximum(predictive_entropy(probs) - expected_entropy(probs), 0.0)


def uncertainty(logits: jax.Array, kind: str) -> tuple[jax.Array, jax.Array]:
    """(predictive entropy, mutual information) of sampled logits (S, N, ..., C) -> each (N, ...): per example
    for classification, per voxel for segmentation; sigmoid labels add up (independent Bernoullis)."""
    _check_kind(kind)
    if kind == "mean":
        raise ValueError("uncertainty needs class probabilities (softmax or sigmoid logits), not regression outputs")
    logits = jnp.asarray(logits, jnp.float32)
    if kind == "softmax":
        probs = jax.nn.softmax(logits, axis=-1)
        return predictive_entropy(probs), mutual_information(probs)
    p = jax.nn.sigmoid(logits)[..., None]
    probs = jnp.concatenate([1.0 - p, p], axis=-1)  # (S, N, L, 2)
    return predictive_entropy(probs).sum(-1), mutual_information(probs).sum(-1)


# ------------------------------------------------------------------------------------------------- referral


def referral_curve(scores: np.ndarray, metric: Callable[[np.ndarray], dict[str, float | None]],
                   fractions: Sequence[float] = REFERRAL_FRACTIONS) -> list[dict[str, Any]]:
    """For each fraction f: refer the floor(f * N) cases with the highest uncertainty `scores` (N,) and score the
    others with `metric(kept_indices)`; rows `{"fraction", "retained", **metric}`. Ties keep the lower index."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or not len(scores):
        raise MedjaxError(f"referral curve needs one uncertainty per case, got shape {scores.shape}")
    order = np.argsort(scores, kind="stable")  # most certain first
    n, rows = len(scores), []
    for f in fractions:
        if not 0 <= f < 1:
            raise MedjaxError(f"referral fractions must be in [0, 1), got {f}")
        keep = np.sort(order[: n - int(np.floor(f * n + 1e-9))])
        rows.append({"fraction": float(f), "retained": int(len(keep)), **metric(keep)})
    return rows


def _auc_or_none(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of the retained cases, None where it is undefined (one class left)."""
    from medjax.metrics import roc_auc

    try:
        return roc_auc(scores, labels)
    except MedjaxError:
        return None


def classification_referral(scores: np.ndarray, probs: np.ndarray, labels: np.ndarray, multi_label: bool = False,
                            fractions: Sequence[float] = REFERRAL_FRACTIONS) -> list[dict[str, Any]]:
    """Accuracy and ROC AUC (binary: the positive class; multi-class: one-vs-rest macro; multi-label: macro over
    labels, accuracy per label) of the retained cases, referring by `scores` (N,); `probs` are the predictive
    mean's probabilities (N, C) or (N, L), `labels` (N,) or (N, L). AUC is None where one class is left."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if multi_label:
        correct = ((probs > 0.5) == (labels > 0)).mean(axis=-1)
        auc_scores = probs
    else:
        correct = (probs.argmax(-1) == labels.reshape(-1)).astype(np.float64)
        auc_scores = probs[:, 1] if probs.shape[1] == 2 else probs

    def metric(keep: np.ndarray) -> dict[str, float | None]:
        return {"acc": float(correct[keep].mean()), "auc": _auc_or_none(auc_scores[keep], labels[keep])}

    return referral_curve(scores, metric, fractions)


def dice_referral(scores: np.ndarray, case_dice: np.ndarray,
                  fractions: Sequence[float] = REFERRAL_FRACTIONS) -> list[dict[str, Any]]:
    """Mean per-case Dice (`case_dice` (N,), NaN for a case without foreground: not counted) of the retained
    cases, referring by `scores` (N,); None where no retained case has a Dice."""
    case_dice = np.asarray(case_dice, np.float64)

    def metric(keep: np.ndarray) -> dict[str, float | None]:
        d = case_dice[keep]
        d = d[~np.isnan(d)]
        return {"dice": float(d.mean()) if d.size else None}

    return referral_curve(scores, metric, fractions)


# ----------------------------------------------------------------------------------------------- the maps


def save_maps(prefix: str, images: np.ndarray, preds: np.ndarray, entropy_maps: np.ndarray,
              mi_maps: np.ndarray, class_names: Sequence[str], spacings: Sequence[Any] | None = None) -> list[str]:
    """Per-voxel uncertainty of the first cases: 2D (images (N, H, W, C)) -> `<prefix>.png`, rows of image,
    prediction, entropy and mutual information; 3D (N, D, H, W, C) -> `<prefix>_case<i>_entropy.nii.gz` and
    `..._mutual_information.nii.gz` per case, with each case's voxel spacing (`spacings`, mm; 1 without).
    Returns the paths written (atomically)."""
    images, entropy_maps, mi_maps = np.asarray(images), np.asarray(entropy_maps), np.asarray(mi_maps)
    spatial = entropy_maps.shape[1:]
    if len(spatial) == 2:
        from medjax.viz import save_uncertainty_png

        save_uncertainty_png(f"{prefix}.png", images, np.asarray(preds), entropy_maps, mi_maps, class_names)
        return [f"{prefix}.png"]
    if len(spatial) != 3:
        raise MedjaxError(f"uncertainty maps are 2D or 3D; got maps of shape {entropy_maps.shape}")
    import nibabel as nib

    paths = []
    for i in range(len(entropy_maps)):
        spacing = np.ones(3) if spacings is None or spacings[i] is None else np.asarray(spacings[i], np.float64)
        affine = np.diag([*spacing, 1.0])
        for name, maps in (("entropy", entropy_maps), ("mutual_information", mi_maps)):
            path = f"{prefix}_case{i}_{name}.nii.gz"
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.nii.gz"
            nib.save(nib.Nifti1Image(np.asarray(maps[i], np.float32), affine), tmp)
            os.replace(tmp, path)
            paths.append(path)
    return paths
