"""Surface distances of segmentations in physical units: HD95, ASSD and normalised surface Dice (NSD).

Host-side numpy/scipy, 2D and 3D alike, one case at a time, with the same numbers as MONAI's
`compute_hausdorff_distance(percentile=95)`, `compute_average_surface_distance(symmetric=True)` and
`compute_surface_dice` (default `use_subvoxels=False`) given the same `spacing` (tested):

- The surface of a binary mask is its voxels with a face neighbour outside it, the array's edge counting as
  outside (MONAI's `get_mask_edges`: the mask XOR its `scipy.ndimage.binary_erosion`).
- Distances are exact Euclidean distances in the units of `spacing` (mm for volumes), from every surface voxel of
  one mask to the nearest surface voxel of the other (`distance_transform_edt(..., sampling=spacing)`, the
  distances MONAI's KD-tree gives).
- HD95 is the larger of the two directed 95th percentiles (linear interpolation); ASSD the mean of both
  directions' distances together; NSD the share of both surfaces within `tolerance` of the other.
- Empty masks, as MONAI returns them: prediction and reference both empty -> NaN for all three (nothing to
  measure); exactly one empty -> ASSD inf, NSD 0, and HD95 NaN (MONAI takes the percentile of infinite distances,
  which is undefined). A missed or hallucinated structure therefore shows as ASSD inf and NSD 0, not in HD95.

`surface_metrics` scores the foreground classes (1..K-1) of one label map, as MONAI does with its default
`include_background=False`; with a per-voxel `mask` (a field of view), prediction and reference are set to
background outside it first (what MONAI's `ignore_index` does to both before it measures), so, as with Dice,
what lies outside the field of view does not count. `summarize` averages cases per class over the cases where a
value is defined (NaN skipped, inf kept, as MONAI's `mean_batch` reduction).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.errors import MedjaxError

METRICS = ("hd95", "assd", "nsd")


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    s = np.asarray(1.0 if spacing is None else spacing, np.float64)
    s = np.full(ndim, float(s)) if s.ndim == 0 else s
    if s.shape != (ndim,) or not (np.isfinite(s) & (s > 0)).all():
        raise MedjaxError(f"spacing must be one positive number or {ndim} (one per spatial axis), got {spacing!r}")
    return s


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a binary mask: those with a face neighbour outside it (or beyond the array edge)."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask)


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing: float | Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distance from each surface voxel of `pred` to the surface of `ref`, and from `ref`'s to `pred`'s), in
    the units of `spacing` (1 per voxel if None). Both empty when both masks are; when only one mask is
    empty, MONAI's convention: both arrays are inf, as long as the other mask's surface."""
    from scipy import ndimage

    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise MedjaxError(f"prediction {pred.shape} and reference {ref.shape} must have the same shape")
    sampling = _spacing(spacing, pred.ndim)
    either = pred | ref
    if not either.any():
        return np.zeros(0), np.zeros(0)
    # the bounding box of both, one voxel wider: the surfaces and the distances between them lie inside it
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(either))
    sp, sr = surface(pred[box]), surface(ref[box])
    if not (sp.any() and sr.any()):
        n = int(sp.sum() or sr.sum())
        return np.full(n, np.inf), np.full(n, np.inf)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=sampling)[sp]
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)[sr]
    return to_ref, to_pred


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: float | Sequence[float] | None = None,
                   tolerance: float = 1.0) -> tuple[float, float, float]:
    """(HD95, ASSD, NSD at `tolerance`) of one binary prediction against its reference (see the module doc)."""
    to_ref, to_pred = surface_distances(pred, ref, spacing)
    if not to_ref.size:
        return float("nan"), float("nan"), float("nan")
    with np.errstate(invalid="ignore"):  # the percentile of inf distances is NaN, as in MONAI
        hd95 = max(float(np.percentile(to_ref, 95)), float(np.percentile(to_pred, 95)))
    both = np.concatenate([to_ref, to_pred])
    return hd95, float(both.mean()), float((both <= tolerance).sum() / both.size)


def tolerances(value: float | Sequence[float], num_foreground: int, what: str = "tolerance") -> np.ndarray:
    """One NSD tolerance per foreground class from a number (every class) or one number per class."""
    t = np.asarray(value, np.float64)
    t = np.full(num_foreground, float(t)) if t.ndim == 0 else t
    if t.shape != (num_foreground,) or not (np.isfinite(t) & (t >= 0)).all():
        raise MedjaxError(f"{what} must be one number >= 0 or one per foreground class ({num_foreground}), "
                          f"got {value!r}")
    return t


def surface_metrics(pred: np.ndarray, label: np.ndarray, num_classes: int,
                    spacing: float | Sequence[float] | None = None, tolerance: float | Sequence[float] = 1.0,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """HD95, ASSD and NSD of one case's label maps (*spatial) for classes 1..K-1: an array (3, K-1), rows in
    `METRICS` order. `tolerance` (spacing units) is one number or one per foreground class; with `mask`, voxels
    where it is 0 are background in both maps."""
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise MedjaxError(f"prediction {pred.shape} and reference {label.shape} must have the same shape")
    tol = tolerances(tolerance, num_classes - 1)
    if mask is not None:
        inside = np.asarray(mask) > 0
        pred, label = np.where(inside, pred, 0), np.where(inside, label, 0)
    out = np.empty((len(METRICS), num_classes - 1))
    for c in range(1, num_classes):
        out[:, c - 1] = binary_metrics(pred == c, label == c, spacing, tol[c - 1])
    return out


def summarize(per_case: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """`<metric>/<class>`: the mean over the cases (N, 3, K-1) where the value is defined (NaN skipped, inf
    kept); `<metric>_mean`: the mean of those over the classes that have one. `class_names` are the
    foreground classes'."""
    per_case = np.asarray(per_case, np.float64).reshape(-1, len(METRICS), len(class_names))
    out: dict[str, float] = {}
    for m, metric in enumerate(METRICS):
        per_class = [_mean_defined(per_case[:, m, c]) for c in range(len(class_names))]
        out.update({f"{metric}/{name}": v for name, v in zip(class_names, per_class)})
        out[f"{metric}_mean"] = _mean_defined(np.array(per_class))
    return out


def _mean_defined(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def case_record(values: np.ndarray, class_names: Sequence[str]) -> dict[str, float | None]:
    """One case's (3, K-1) values as `{"hd95/<class>": ...}` for eval_cases.json: NaN (undefined) as None, inf
    kept (JSON Infinity)."""
    return {f"{metric}/{name}": (None if np.isnan(v) else float(v))
            for metric, row in zip(METRICS, np.asarray(values)) for name, v in zip(class_names, row)}
