"""Metrics of per-frame segmentations of image sequences (cine MRI, echo): per-frame Dice, temporal consistency,
and the ejection fraction measured from the segmented cavity. Host-side numpy on per-frame Dice counts.

Counts are `metrics.dice_counts` per example and frame: (N, T, 3, C) = (intersection, predicted, reference) voxels
of each class. From them:

* `frame_dice`: (N, T, C) Dice of every frame, NaN where the reference lacks the class (MONAI's ignore_empty).
* `temporal_dice_change`: the mean |Dice_t - Dice_{t-1}| over consecutive frames (a flickering segmentation has
  a large change even at a good mean Dice; the reference's own is 0).
* `ejection_fraction`: 1 - (min_t V_t / max_t V_t)^exponent of a volume curve (N, T); from predicted or
  reference voxel counts of the cavity class. Where the data names each sequence's end-diastolic and
  end-systolic frames (ACDC, M&Ms: only those are labelled), 1 - (V_ES / V_ED)^exponent at those frames, i.e.
  (EDV - ESV) / EDV, for the reference and the prediction alike. `exponent=1` for volumes (3D + time). A 2D
  short-axis slice shows an area; for a cavity that contracts isotropically (the synthetic heart in
  `medjax.data.cine`) volume is area^(3/2), so `exponent=1.5`. Real 2D cine needs a biplane/Simpson model
  instead; this is not one.
"""

from __future__ import annotations

import numpy as np

from medjax.errors import MedjaxError


def frame_dice(counts: np.ndarray) -> np.ndarray:
    """(N, T, 3, C) counts -> (N, T, C) per-frame Dice, NaN where the reference frame lacks the class."""
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 4 or counts.shape[2] != 3:
        raise MedjaxError(f"per-frame Dice counts must be (N, T, 3, C), got shape {counts.shape}")
    inter, pred, ref = counts[:, :, 0], counts[:, :, 1], counts[:, :, 2]
    return np.where(ref > 0, 2.0 * inter / np.where(ref > 0, pred + ref, 1.0), np.nan)


def temporal_dice_change(dice: np.ndarray) -> np.ndarray:
    """(N, T, C) per-frame Dice -> (C,) mean |Dice_t - Dice_{t-1}| over examples and consecutive frame pairs
    where both frames have the class (NaN for a class never present in two consecutive frames)."""
    dice = np.asarray(dice, np.float64)
    if dice.ndim != 3 or dice.shape[1] < 2:
        raise MedjaxError(f"temporal Dice change needs (N, T >= 2, C) per-frame Dice, got shape {dice.shape}")
    change = np.abs(np.diff(dice, axis=1)).reshape(-1, dice.shape[2])
    valid = ~np.isnan(change)
    total = np.where(valid, change, 0.0).sum(0)
    return np.where(valid.any(0), total / np.maximum(valid.sum(0), 1), np.nan)


def ejection_fraction(volumes: np.ndarray, exponent: float = 1.0, ed_es: np.ndarray | None = None) -> np.ndarray:
    """(N, T) cavity sizes -> (N,) 1 - (ESV / EDV)^exponent; NaN where the EDV is 0 (no cavity).

    Without `ed_es` the EDV and ESV are each curve's largest and smallest frame. With `ed_es` (N, 2), the ED and
    ES frame of each sequence: the sizes at those frames, so a prediction whose ES cavity is larger than its ED
    one measures a negative EF instead of hiding the swap."""
    v = np.asarray(volumes, np.float64)
    if v.ndim != 2:
        raise MedjaxError(f"volume curves must be (N, T), got shape {v.shape}")
    if not exponent > 0:
        raise MedjaxError(f"EF exponent must be > 0, got {exponent}")
    if ed_es is None:
        ed, es = v.max(1), v.min(1)
    else:
        frames = np.asarray(ed_es, np.int64)
        if frames.shape != (v.shape[0], 2) or frames.min(initial=0) < 0 or frames.max(initial=0) >= v.shape[1]:
            raise MedjaxError(f"ED/ES frames must be (N, 2) = ({v.shape[0]}, 2) indices below T = {v.shape[1]}, got "
                              f"{frames.tolist()}")
        ed, es = np.take_along_axis(v, frames, axis=1).T
    return np.where(ed > 0, 1.0 - (es / np.where(ed > 0, ed, 1.0)) ** exponent, np.nan)


def sequence_summary(counts: np.ndarray, class_names: list[str], ef_class: int | None = None,
                     ef_exponent: float = 1.0, ed_es: np.ndarray | None = None) -> dict[str, float]:
    """`frame_dice/<class>` and `frame_dice_mean` (mean over examples and frames, then over foreground classes),
    `temporal_dice_change` (foreground mean); with `ef_class`, `ef_mae` and `ef_rmse` between the EF measured on
    the predicted and on the reference cavity (a cavity never predicted measures EF 0: it counts, as a miss), at
    the (N, 2) `ed_es` frames when given (`ejection_fraction`).

    Frames without a reference (counted inside a per-voxel mask that is 0 there: unlabelled or padded frames)
    have no reference voxels, so their Dice is NaN and they drop out of every mean."""
    dice = frame_dice(counts)
    per_class = np.array([np.nanmean(d) if np.any(~np.isnan(d)) else np.nan
                          for d in dice.reshape(-1, dice.shape[2]).T])
    out = {f"frame_dice/{name}": float(d) for name, d in zip(class_names, per_class)}
    fg = per_class[1:][~np.isnan(per_class[1:])]
    out["frame_dice_mean"] = float(fg.mean()) if fg.size else float("nan")
    if dice.shape[1] >= 2:
        change = temporal_dice_change(dice)[1:]
        change = change[~np.isnan(change)]
        out["temporal_dice_change"] = float(change.mean()) if change.size else float("nan")
    if ef_class is not None:
        counts = np.asarray(counts)
        if not 0 < ef_class < counts.shape[3]:
            raise MedjaxError(f"config.task.ef_class={ef_class} must name a foreground class "
                              f"(1..{counts.shape[3] - 1})")
        pred = np.nan_to_num(ejection_fraction(counts[:, :, 1, ef_class], ef_exponent, ed_es), nan=0.0)
        ref = ejection_fraction(counts[:, :, 2, ef_class], ef_exponent, ed_es)
        err = pred - ref  # NaN only where the reference has no cavity: no EF to compare with
        err = err[~np.isnan(err)]
        out["ef_mae"] = float(np.abs(err).mean()) if err.size else float("nan")
        out["ef_rmse"] = float(np.sqrt((err**2).mean())) if err.size else float("nan")
    return out
