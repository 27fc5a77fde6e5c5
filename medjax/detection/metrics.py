"""Detection metrics on the host (numpy): COCO mAP / AP50 / AP75 / AR, LUNA16's FROC and CPM, and bootstrap
confidence intervals over cases for both, 2D and 3D alike.

Inputs are per case (image or scan) lists of numpy arrays in the corner format of `medjax.detection.boxes`:
predicted boxes (n, 2d), scores (n,) and labels (n,), reference boxes (g, 2d) and labels (g,).
`unpad` turns the fixed-size `postprocess.Detections` of a batch into such lists.

`coco_metrics` is COCOeval's bbox evaluation (pycocotools 2.0; parity tested in 2D on random detections of
several images and classes): per image and class, detections by descending score (stable), at most
`max_dets[-1]`, are matched greedily to the unmatched reference of highest IoU >= t for each of the 10 IoU
thresholds 0.50:0.05:0.95 (references outside the area range are matched only when nothing else is, and their
detections are ignored, as are unmatched detections outside the range); precision is interpolated at the 101
recall points 0:0.01:1; AP is the mean over thresholds, recall points and the classes that have references,
AR the mean recall over thresholds and classes. The area ranges are COCO's for 2D (small < 32**2 <= medium <
96**2 <= large) and, for 3D, the same definitions on volumes with the cubes of those sides (32**3, 96**3 voxels),
or pass your own (e.g. in mm**3 with world-coordinate boxes). There are no crowd regions.

`froc` is the LUNA16 evaluation (`noduleCADEvaluationLUNA16.py`, Setio et al. 2017): a detection hits a
reference when its centre lies within the reference's radius of the reference's centre (`match="distance"`,
the default; radius = half the reference box's longest side, LUNA16's diameter / 2 for its cubes, or given) or
when their IoU is >= `iou_threshold` (`match="iou"`). Each reference counts once, with the highest score of
the detections that hit it (a detection may hit several); detections hitting a reference (or an ignored one,
LUNA16's "excluded" findings) are no false positives; all other detections are. The FROC curve is the
sensitivity against the mean number of false positives per case at every score threshold, and the
sensitivities at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per case are read off it by linear
interpolation (`numpy.interp`, as LUNA16); CPM is their mean. A missed reference lowers the sensitivity at
every threshold. (LUNA16 reports NaN sensitivities for a system with no hit at all; here they are 0.)

Bootstrap (`num_resamples > 0`): cases are resampled with replacement (`bootstrap_counts`: how often each case
is drawn, one row per resample) and the statistic is recomputed for all resamples at once from the per-case
matches (matching does not depend on which other cases are drawn), weighting every case by its count; the
interval is the percentile interval at `confidence`. (A small helper of this module until medjax has a shared
resampling utility.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.errors import MedjaxError

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)  # as COCOeval
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES_2D = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
                  "large": (96.0 ** 2, 1e5 ** 2)}
AREA_RANGES_3D = {"all": (0.0, 1e5 ** 3), "small": (0.0, 32.0 ** 3), "medium": (32.0 ** 3, 96.0 ** 3),
                  "large": (96.0 ** 3, 1e5 ** 3)}
LUNA16_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


# ----------------------------------------------------------------------------------------------- shared helpers

def unpad(detections: Sequence) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Batched fixed-size `Detections` (B, K, ...) -> per-image (boxes, scores, labels) lists of the valid rows."""
    boxes, scores, labels, valid = (np.asarray(a) for a in detections)
    return ([b[v] for b, v in zip(boxes, valid)], [s[v] for s, v in zip(scores, valid)],
            [lab[v] for lab, v in zip(labels, valid)])


def _boxes(a, what: str, d: int | None = None) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.size == 0:
        a = a.reshape(0, 2 * d if d else 4)
    if a.ndim != 2 or a.shape[1] not in (4, 6) or (d and a.shape[1] != 2 * d):
        raise MedjaxError(f"{what} must be (n, 4) or (n, 6) corner boxes" + (f" ({d}D like the others)" if d else "")
                          + f", got shape {a.shape}")
    return a


def _case_boxes(pb, gb, d: int | None) -> tuple[np.ndarray, np.ndarray, int | None]:
    """One case's predicted and reference boxes with the rank `d` of the cases before it, or, while no case had a
    box, the rank its own boxes fix (so cases without boxes, written as [], can come first)."""
    pb, gb = _boxes(pb, "predicted boxes", d), _boxes(gb, "reference boxes", d)
    if d is None:
        widths = {a.shape[1] for a in (pb, gb) if len(a)}
        if len(widths) > 1:
            raise MedjaxError(f"predicted boxes {pb.shape} and reference boxes {gb.shape} mix 2D and 3D")
        if widths:
            d = widths.pop() // 2
            pb, gb = pb.reshape(-1, 2 * d), gb.reshape(-1, 2 * d)
    return pb, gb, d


def _area(boxes: np.ndarray) -> np.ndarray:
    d = boxes.shape[1] // 2
    return np.prod(np.maximum(boxes[:, d:] - boxes[:, :d], 0), axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) without an epsilon (COCOeval's bbox IoU)."""
    d = a.shape[1] // 2
    inter = np.prod(np.maximum(np.minimum(a[:, None, d:], b[None, :, d:]) - np.maximum(a[:, None, :d],
                                                                                       b[None, :, :d]), 0), axis=2)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check_cases(n: int, **lists) -> None:
    for name, value in lists.items():
        if value is not None and len(value) != n:
            raise MedjaxError(f"{name} has {len(value)} cases, the predictions {n}")


def bootstrap_counts(num_cases: int, num_resamples: int, seed: int = 0) -> np.ndarray:
    """(num_resamples, num_cases) int: how often each case is drawn in each resample with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_cases, np.full(num_cases, 1.0 / num_cases), size=num_resamples)


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _first_at_least(rows: np.ndarray, queries: np.ndarray, side: str) -> np.ndarray:
    """Per row of the non-decreasing (N, P) `rows`, numpy.searchsorted(row, queries, side) (N, Q), exactly (the
    values are replaced by their ranks among all values so one flat search serves every row)."""
    n, p = rows.shape
    uniq = np.unique(np.concatenate([rows.ravel(), queries]))
    rank_rows, rank_q = np.searchsorted(uniq, rows), np.searchsorted(uniq, queries)
    offset = np.arange(n)[:, None] * (uniq.size + 1)
    flat = np.searchsorted((rank_rows + offset).ravel(), (rank_q[None, :] + offset).ravel(), side=side)
    return flat.reshape(n, -1) - np.arange(n)[:, None] * p


# ------------------------------------------------------------------------------------------------------- COCO

def _match_image(ious: np.ndarray, gt_ignore: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.evaluateImg's greedy matching (no crowd) of detections (rows of `ious`, by descending score) to
    references (columns, non-ignored first), for all thresholds at once: (matched (T, D), matched-to-ignored)."""
    t, (d, g) = len(thresholds), ious.shape
    gt_taken = np.zeros((t, g), bool)
    matched, to_ignored = np.zeros((t, d), bool), np.zeros((t, d), bool)
    if g == 0:
        return matched, to_ignored
    need = np.minimum(thresholds, 1 - 1e-10)[:, None]
    rows = np.arange(t)
    for i in range(d):
        ok = ~gt_taken & (ious[i][None, :] >= need)
        normal = ok & ~gt_ignore[None, :]
        ok = np.where(normal.any(axis=1, keepdims=True), normal, ok & gt_ignore[None, :])
        found = ok.any(axis=1)
        best = g - 1 - np.argmax(np.where(ok, ious[i], -np.inf)[:, ::-1], axis=1)  # ties: the last, as COCOeval
        matched[:, i] = found
        to_ignored[:, i] = found & gt_ignore[best]
        gt_taken[rows[found], best[found]] = True
    return matched, to_ignored


def _coco_records(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, num_classes, area_ranges,
                  max_det, thresholds):
    """Per (class, area range): the per-image evaluations COCOeval.evaluate makes, as lists of
    (image, scores (D,), matched (T, D), ignored (T, D), non-ignored references)."""
    d = None
    records = {(k, a): [] for k in range(num_classes) for a in area_ranges}
    for img, (pb, ps, pl, gb, gl) in enumerate(zip(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels)):
        pb, gb, d = _case_boxes(pb, gb, d)
        ps, pl, gl = np.asarray(ps, np.float64).reshape(-1), np.asarray(pl).reshape(-1), np.asarray(gl).reshape(-1)
        if not (len(ps) == len(pl) == len(pb)) or len(gl) != len(gb):
            raise MedjaxError(f"case {img}: boxes, scores and labels must have one row per box")
        for k in range(num_classes):
            dets, gts = np.flatnonzero(pl == k), np.flatnonzero(gl == k)
            if dets.size == 0 and gts.size == 0:
                continue
            dets = dets[np.argsort(-ps[dets], kind="mergesort")][:max_det]
            ious = _iou(pb[dets], gb[gts])
            det_area, gt_area = _area(pb[dets]), _area(gb[gts])
            for name, (lo, hi) in area_ranges.items():
                gt_ig = (gt_area < lo) | (gt_area > hi)
                order = np.argsort(gt_ig, kind="mergesort")
                matched, ignored = _match_image(ious[:, order], gt_ig[order], thresholds)
                ignored |= ~matched & ((det_area < lo) | (det_area > hi))[None, :]
                records[k, name].append((img, ps[dets], matched, ignored, int((~gt_ig).sum())))
    return records


def _accumulate(records, weights: np.ndarray, max_det: int, num_thresholds: int) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate for one class, area range and detection limit, for every row of case weights
    (B, cases) at once: precision (B, T, R) and recall (B, T), -1 where the class has no reference."""
    b, t = weights.shape[0], num_thresholds
    if not records:  # the class is absent from every case
        return -np.ones((b, t, len(RECALL_THRESHOLDS))), -np.ones((b, t))
    scores = np.concatenate([r[1][:max_det] for r in records])
    images = np.concatenate([np.full(min(len(r[1]), max_det), r[0]) for r in records])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([r[2][:, :max_det] for r in records], axis=1)[:, order]
    ignored = np.concatenate([r[3][:, :max_det] for r in records], axis=1)[:, order]
    npig = weights[:, [r[0] for r in records]] @ np.array([r[4] for r in records], np.float64)
    w = weights[:, images[order]].astype(np.float64)[:, None, :]  # (B, 1, D): a case drawn c times counts c times
    tp = np.cumsum(w * (matched & ~ignored)[None], axis=-1)
    fp = np.cumsum(w * (~matched & ~ignored)[None], axis=-1)
    present, nd = npig > 0, tp.shape[-1]
    if nd == 0:
        return (np.where(present[:, None, None], 0.0, -1.0) * np.ones((b, t, len(RECALL_THRESHOLDS))),
                np.where(present[:, None], 0.0, -1.0) * np.ones((b, t)))
    rc = tp / np.where(present, npig, 1.0)[:, None, None]
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[..., ::-1], axis=-1)[..., ::-1]  # precision made non-increasing in recall
    idx = _first_at_least(rc.reshape(b * t, nd), RECALL_THRESHOLDS, "left").reshape(b, t, -1)
    q = np.where(idx < nd, np.take_along_axis(pr, np.minimum(idx, nd - 1), axis=-1), 0.0)
    return np.where(present[:, None, None], q, -1.0), np.where(present[:, None], rc[..., -1], -1.0)


def _mean_present(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """COCOeval.summarize's mean over entries > -1 (-1 where there is none)."""
    ok = values > -1
    count = ok.sum(axis=axes)
    return np.where(count > 0, np.where(ok, values, 0).sum(axis=axes) / np.maximum(count, 1), -1.0)


def coco_metrics(pred_boxes: Sequence, pred_scores: Sequence, pred_labels: Sequence, gt_boxes: Sequence,
                 gt_labels: Sequence, num_classes: int, *, max_dets: Sequence[int] = MAX_DETS,
                 area_ranges: dict[str, tuple[float, float]] | None = None,
                 iou_thresholds: Sequence[float] = IOU_THRESHOLDS, num_resamples: int = 0, seed: int = 0,
                 confidence: float = 0.95) -> dict:
    """COCO box metrics over cases (see the module doc): a dict with COCOeval's 12 summary numbers ("mAP",
    "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small", "AR_medium",
    "AR_large"; AR keys follow `max_dets`), "AP_per_class" (classes without references -1), "precision"
    (T, R, K, A, M) and "recall" (T, K, A, M) as COCOeval.eval; with `num_resamples`, "mAP_ci" (the percentile
    interval) and "mAP_samples"."""
    n = len(pred_boxes)
    _check_cases(n, pred_scores=pred_scores, pred_labels=pred_labels, gt_boxes=gt_boxes, gt_labels=gt_labels)
    if n == 0:
        raise MedjaxError("coco_metrics needs at least one case")
    max_dets = sorted(int(m) for m in max_dets)
    thresholds = np.asarray(iou_thresholds, np.float64)
    if area_ranges is None:
        dims = {np.asarray(b).shape[-1] for b in list(pred_boxes) + list(gt_boxes) if np.asarray(b).size}
        area_ranges = AREA_RANGES_3D if dims == {6} else AREA_RANGES_2D
    if "all" not in area_ranges:
        raise MedjaxError(f"area_ranges needs an 'all' entry, got {sorted(area_ranges)}")
    records = _coco_records(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, num_classes, area_ranges,
                            max_dets[-1], thresholds)
    ones = np.ones((1, n))
    t, r, a_names = len(thresholds), len(RECALL_THRESHOLDS), list(area_ranges)
    precision = -np.ones((t, r, num_classes, len(a_names), len(max_dets)))
    recall = -np.ones((t, num_classes, len(a_names), len(max_dets)))
    for k in range(num_classes):
        for a, name in enumerate(a_names):
            for m, md in enumerate(max_dets):
                p, rc = _accumulate(records[k, name], ones, md, t)
                precision[:, :, k, a, m], recall[:, k, a, m] = p[0], rc[0]
    top = len(max_dets) - 1

    def ap(a="all", iou=None):
        s = precision[:, :, :, a_names.index(a), top] if a in a_names else -np.ones(1)
        s = s[np.isclose(thresholds, iou)] if iou is not None else s
        return float(_mean_present(s.reshape(-1), (0,))) if s.size else -1.0

    def ar(a="all", m=top):
        return float(_mean_present(recall[:, :, a_names.index(a), m].reshape(-1), (0,))) if a in a_names else -1.0

    out = {"mAP": ap(), "AP50": ap(iou=0.5), "AP75": ap(iou=0.75)}
    out.update({f"AP_{a}": ap(a) for a in ("small", "medium", "large")})
    out.update({f"AR{md}": ar(m=m) for m, md in enumerate(max_dets)})
    out.update({f"AR_{a}": ar(a) for a in ("small", "medium", "large")})
    out["AP_per_class"] = _mean_present(precision[:, :, :, a_names.index("all"), top], (0, 1))
    out["precision"], out["recall"] = precision, recall
    if num_resamples > 0:
        counts = bootstrap_counts(n, num_resamples, seed)
        per_class = np.stack([_accumulate(records[k, "all"], counts, max_dets[-1], t)[0]
                              for k in range(num_classes)], axis=-1)  # (B, T, R, K)
        samples = _mean_present(per_class, (1, 2, 3))
        samples = np.where(samples > -1, samples, np.nan)
        out["mAP_samples"], out["mAP_ci"] = samples, _interval(samples, confidence)
    return out


# ------------------------------------------------------------------------------------------------------- FROC

def _interp_rows(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """numpy.interp(x, xp[i], fp[i]) for every row i of non-decreasing (N, P) `xp` at once (N, len(x))."""
    n, p = xp.shape
    j = np.clip(_first_at_least(xp, x, "right") - 1, 0, p - 1)  # the last xp <= x
    j1 = np.minimum(j + 1, p - 1)
    x0, x1 = np.take_along_axis(xp, j, 1), np.take_along_axis(xp, j1, 1)
    y0, y1 = np.take_along_axis(fp, j, 1), np.take_along_axis(fp, j1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        inner = y0 + (y1 - y0) / (x1 - x0) * (x[None, :] - x0)
    out = np.where((x[None, :] == x0) | (j1 == j), y0, inner)
    out = np.where(x[None, :] < xp[:, :1], fp[:, :1], out)
    return np.where(x[None, :] >= xp[:, -1:], fp[:, -1:], out)


def _centres(boxes: np.ndarray) -> np.ndarray:
    d = boxes.shape[1] // 2
    return (boxes[:, :d] + boxes[:, d:]) / 2


def _froc_entries(pred_boxes, pred_scores, gt_boxes, match, iou_threshold, gt_radius, gt_ignore):
    """LUNA16's candidate bookkeeping per case: (case, score, is_hit) entries and the references per case."""
    cases, scores, hits, lesions, d = [], [], [], [], None
    for i, (pb, ps, gb) in enumerate(zip(pred_boxes, pred_scores, gt_boxes)):
        pb, gb, d = _case_boxes(pb, gb, d)
        ps = np.asarray(ps, np.float64).reshape(-1)
        if len(ps) != len(pb):
            raise MedjaxError(f"case {i}: {len(pb)} predicted boxes but {len(ps)} scores")
        ignore = np.zeros(len(gb), bool) if gt_ignore is None else np.asarray(gt_ignore[i], bool).reshape(-1)
        if match == "distance":
            radius = ((gb[:, d:] - gb[:, :d]).max(axis=1) / 2 if gt_radius is None
                      else np.asarray(gt_radius[i], np.float64).reshape(-1))
            dist2 = ((_centres(gb)[:, None, :] - _centres(pb)[None, :, :]) ** 2).sum(-1)
            hit = dist2 < radius[:, None] ** 2
        else:
            hit = _iou(gb, pb) >= iou_threshold
        if len(ignore) != len(gb) or hit.shape != (len(gb), len(pb)):
            raise MedjaxError(f"case {i}: gt_ignore / gt_radius need one value per reference box ({len(gb)})")
        for g in np.flatnonzero(~ignore):
            if hit[g].any():
                cases.append(i), scores.append(ps[hit[g]].max()), hits.append(True)
        false = ~hit.any(axis=0)
        cases += [i] * int(false.sum())
        scores += list(ps[false])
        hits += [False] * int(false.sum())
        lesions.append(int((~ignore).sum()))
    return np.array(cases, int), np.array(scores, np.float64), np.array(hits, bool), np.array(lesions, float)


def _froc_curves(cases, scores, hits, lesions, weights):
    """FROC curves (fps (B, P), sensitivity (B, P)) for rows of case weights (B, cases), with the origin first."""
    order = np.argsort(-scores, kind="mergesort")
    s, w = scores[order], weights[:, cases[order]].astype(float)
    last = np.append(s[1:] != s[:-1], True) if s.size else np.zeros(0, bool)  # one point per score threshold
    tp = np.cumsum(w * hits[order], axis=1)[:, last]
    fp = np.cumsum(w * ~hits[order], axis=1)[:, last]
    total = weights @ lesions
    zeros = np.zeros((weights.shape[0], 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(total[:, None] > 0, tp / total[:, None], np.nan)
    return np.hstack([zeros, fp / weights.shape[1]]), np.hstack([np.where(total[:, None] > 0, 0.0, np.nan), sens])


def froc(pred_boxes: Sequence, pred_scores: Sequence, gt_boxes: Sequence, *, match: str = "distance",
         iou_threshold: float = 0.1, gt_radius: Sequence | None = None, gt_ignore: Sequence | None = None,
         fp_rates: Sequence[float] = LUNA16_FP_RATES, num_resamples: int = 0, seed: int = 0,
         confidence: float = 0.95) -> dict:
    """LUNA16 FROC over cases (see the module doc): "sensitivity" at `fp_rates` false positives per case,
    "cpm" (their mean), the curve ("fps", "curve_sensitivity"), "num_lesions", "num_cases"; with
    `num_resamples`, "cpm_ci" (the percentile interval) and "cpm_samples"."""
    if match not in ("distance", "iou"):
        raise MedjaxError(f"match must be 'distance' (LUNA16's centre rule) or 'iou', got {match!r}")
    n = len(pred_boxes)
    _check_cases(n, pred_scores=pred_scores, gt_boxes=gt_boxes, gt_radius=gt_radius, gt_ignore=gt_ignore)
    if n == 0:
        raise MedjaxError("froc needs at least one case")
    cases, scores, hits, lesions = _froc_entries(pred_boxes, pred_scores, gt_boxes, match, iou_threshold,
                                                 gt_radius, gt_ignore)
    rates = np.asarray(fp_rates, np.float64)
    fps, sens = _froc_curves(cases, scores, hits, lesions, np.ones((1, n)))
    at = _interp_rows(rates, fps, sens)[0]
    out = {"fp_rates": rates, "sensitivity": at, "cpm": float(at.mean()), "fps": fps[0],
           "curve_sensitivity": sens[0], "num_lesions": int(lesions.sum()), "num_cases": n}
    if num_resamples > 0:
        counts = bootstrap_counts(n, num_resamples, seed)
        fps_b, sens_b = _froc_curves(cases, scores, hits, lesions, counts)
        samples = _interp_rows(rates, fps_b, sens_b).mean(axis=1)
        out["cpm_samples"], out["cpm_ci"] = samples, _interval(samples, confidence)
    return out
