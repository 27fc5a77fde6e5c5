"""Detection post-processing inside the compiled program: thresholds, top-k, class-wise NMS, weighted box
fusion and the merge of sliding-window detections, all in fixed shapes, 2D and 3D.

Every output has a static size with a validity mask instead of a data-dependent length, so one image's
post-processing is a pure function that `jax.vmap` batches and `jax.jit` compiles together with the network:
`detect(cls_logits, box_deltas, anchors, ...)` takes a RetinaNet head's per-anchor outputs for a batch
((B, M, classes) and (B, M, 2d), in the anchors' order: `flatten_levels` builds them from channels-last
per-level maps) and returns `Detections` (boxes (B, K, 2d), scores (B, K), labels (B, K), valid (B, K)) for
`max_detections` = K, sorted by score, padding rows having score 0, label -1 and valid False.

`select_detections` (one image) follows MONAI's RetinaNet inference (`BoxCoder.decode_single` + `BoxSelector`)
step for step and gives its boxes, scores and labels in its order (tested): per level, sigmoid scores of every
(anchor, class) pair above `score_thresh` and of those the `topk_per_level` highest; their boxes decoded,
clipped to the image and dropped when thinner than one voxel on some axis; then class-wise NMS over all levels
keeping at most `max_detections`.

`nms` is greedy non-maximum suppression with MONAI's rules (`monai.data.box_utils.non_max_suppression`: a
stable sort by score, a box is suppressed by an earlier kept box of the same class with IoU > `iou_threshold`)
computed without a sequential loop over boxes: the kept set is the unique fixed point of
keep_i = valid_i and no earlier kept box suppresses i, reached by iterating that rule from all-valid
(each sweep one masked (N, N) reduction; the sweeps needed are the length of the longest suppression chain,
usually a handful, never more than N). `weighted_box_fusion` (Solovyev et al. 2021, as the `ensemble_boxes`
package with `conf_type="avg"`) averages overlapping boxes instead of dropping them; `merge_windows` shifts the
detections of sliding windows into image coordinates and merges them by either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from medjax.detection.boxes import box_iou, clip_boxes, nonempty, spatial_dims
from medjax.detection.coder import BOX_XFORM_CLIP, decode_boxes
from medjax.errors import MedjaxError

MERGE_METHODS = ("nms", "wbf")


class Detections(NamedTuple):
    """Fixed-size detections: rows where `valid` is False are padding (score 0, label -1, box 0)."""

    boxes: jnp.ndarray  # (..., K, 2d) corner format
    scores: jnp.ndarray  # (..., K) descending among valid rows
    labels: jnp.ndarray  # (..., K) int32 class index
    valid: jnp.ndarray  # (..., K) bool


def flatten_levels(maps: Sequence[jnp.ndarray], num_anchors: int) -> jnp.ndarray:
    """Per-level channels-last head maps (B, *feature_size, A * K) -> (B, sum over levels of
    prod(feature_size) * A, K), rows in the anchors' order (location-major, then anchor; MONAI's
    `RetinaNetDetector._reshape_maps` order, tested)."""
    flat = []
    for m in maps:
        if m.shape[-1] % num_anchors:
            raise MedjaxError(f"a head map with {m.shape[-1]} channels cannot hold {num_anchors} anchors per "
                              f"location")
        flat.append(m.reshape(m.shape[0], -1, m.shape[-1] // num_anchors))
    return jnp.concatenate(flat, axis=1)


def _pad_rows(order: jnp.ndarray, valid: jnp.ndarray, size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The first `size` entries of `order` whose `valid` is True, in order, padded with index 0 / False."""
    n = order.shape[0]
    first = jnp.argsort(~valid, stable=True)  # valid rows first, in order
    if n < size:
        first = jnp.concatenate([first, jnp.zeros(size - n, first.dtype)])
        keep = jnp.concatenate([valid[first[:n]], jnp.zeros(size - n, bool)])
    else:
        first = first[:size]
        keep = valid[first]
    return jnp.where(keep, order[first], 0), keep


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold: float, max_output: int,
        valid: jnp.ndarray | None = None, labels: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Greedy (class-wise when `labels` are given) NMS of (N, 2d) boxes: (indices (max_output,) into `boxes`
    of the kept boxes by descending score, valid (max_output,)); rows where `valid` is False take no part."""
    boxes, scores, n = jnp.asarray(boxes), jnp.asarray(scores), boxes.shape[0]
    valid = jnp.ones(n, bool) if valid is None else jnp.asarray(valid)
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
    b, v = boxes[order], valid[order]
    overlap = box_iou(b, b) > iou_threshold
    if labels is not None:
        lab = jnp.asarray(labels)[order]
        overlap &= lab[:, None] == lab[None, :]
    earlier = overlap & jnp.tril(jnp.ones((n, n), bool), k=-1)  # earlier[i, j]: j before i, would suppress i

    def sweep(keep):
        return v & ~(earlier & keep[None, :]).any(axis=1)

    def unsettled(state):
        return (state[0] != state[1]).any()

    keep, _ = jax.lax.while_loop(unsettled, lambda s: (sweep(s[0]), s[0]), (sweep(v), v))
    return _pad_rows(order, keep, max_output)


def _take(boxes, scores, labels, idx, keep) -> Detections:
    return Detections(jnp.where(keep[:, None], boxes[idx], 0), jnp.where(keep, scores[idx], 0),
                      jnp.where(keep, labels[idx], -1).astype(jnp.int32), keep)


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray,
                iou_threshold: float, max_detections: int) -> Detections:
    """Class-wise NMS of one image's candidates as fixed-size `Detections` (MONAI's `batched_nms`)."""
    idx, keep = nms(boxes, scores, iou_threshold, max_detections, valid=valid, labels=labels)
    return _take(boxes, scores, labels, idx, keep)


def select_detections(cls_logits: jnp.ndarray, box_deltas: jnp.ndarray, anchors: jnp.ndarray,
                      level_sizes: Sequence[int], image_size: Sequence[int], *, score_thresh: float = 0.05,
                      topk_per_level: int = 1000, nms_thresh: float = 0.5, max_detections: int = 300,
                      apply_sigmoid: bool = True, weights: Sequence[float] | None = None,
                      clip: float = BOX_XFORM_CLIP) -> Detections:
    """One image's detections from per-anchor class logits (M, classes) and box deltas (M, 2d) (see the
    module doc); the defaults are MONAI's `BoxSelector` defaults."""
    if sum(level_sizes) != anchors.shape[0]:
        raise MedjaxError(f"level sizes {tuple(level_sizes)} add up to {sum(level_sizes)}, not to the "
                          f"{anchors.shape[0]} anchors")
    num_classes, anchors = cls_logits.shape[-1], jnp.asarray(anchors)
    scores = jax.nn.sigmoid(cls_logits.astype(jnp.float32)) if apply_sigmoid else cls_logits.astype(jnp.float32)
    all_boxes, all_scores, all_labels, all_valid, start = [], [], [], [], 0
    for size in level_sizes:
        flat = scores[start:start + size].reshape(-1)
        top, idx = jax.lax.top_k(jnp.where(flat > score_thresh, flat, -jnp.inf), min(topk_per_level, flat.size))
        anchor = idx // num_classes + start
        boxes = clip_boxes(decode_boxes(box_deltas[anchor].astype(jnp.float32), anchors[anchor], weights, clip),
                           image_size)
        all_boxes.append(boxes)
        all_scores.append(jnp.where(top > score_thresh, top, 0.0))
        all_labels.append(idx % num_classes)
        all_valid.append((top > score_thresh) & nonempty(boxes))
        start += size
    return batched_nms(jnp.concatenate(all_boxes), jnp.concatenate(all_scores), jnp.concatenate(all_labels),
                       jnp.concatenate(all_valid), nms_thresh, max_detections)


def detect(cls_logits: jnp.ndarray, box_deltas: jnp.ndarray, anchors: jnp.ndarray, level_sizes: Sequence[int],
           image_size: Sequence[int], **options) -> Detections:
    """`select_detections` over a batch: logits (B, M, classes), deltas (B, M, 2d), shared anchors (M, 2d);
    `options` are its keyword arguments. Jit it with the network (level sizes, image size and options static)."""
    return jax.vmap(lambda c, d: select_detections(c, d, anchors, level_sizes, image_size, **options))(
        cls_logits, box_deltas)


def weighted_box_fusion(boxes: jnp.ndarray, scores: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray,
                        iou_threshold: float = 0.55, max_detections: int = 100,
                        num_sources: int = 1) -> Detections:
    """Weighted box fusion of one image's (N, 2d) boxes into at most `max_detections` clusters.

    Boxes are visited by descending score; each joins the cluster of its own class whose current fused box it
    overlaps most, if that IoU is > `iou_threshold`, else opens a new cluster (dropped once `max_detections`
    are open). A fused box is the score-weighted mean of its members' corners, its score their mean score
    times min(members, num_sources) / num_sources (`num_sources`: the models or windows that could each see
    the object once; 1 leaves the mean)."""
    boxes, scores, labels, valid = (jnp.asarray(a) for a in (boxes, scores, labels, valid))
    d2 = boxes.shape[1]
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
    k = max_detections

    def visit(state, i):
        wsum, ssum, count, lab = state  # (K, 2d) score-weighted corners, (K,) score sums, member counts, labels
        box, score, label, ok = boxes[i], scores[i], labels[i], valid[i]
        active = count > 0
        fused = wsum / jnp.where(active, ssum, 1.0)[:, None]
        iou = jnp.where(active & (lab == label), box_iou(box[None], fused)[0], -1.0)
        best = jnp.argmax(iou)
        slot = jnp.where(iou[best] > iou_threshold, best, jnp.argmin(active))  # else the first free cluster
        take = ok & ((iou[best] > iou_threshold) | ~active.all())
        add = jnp.zeros(k, bool).at[slot].set(take)
        return (wsum + add[:, None] * score * box, ssum + add * score, count + add, jnp.where(add, label, lab)), None

    init = (jnp.zeros((k, d2), boxes.dtype), jnp.zeros(k, scores.dtype), jnp.zeros(k, jnp.int32),
            jnp.full(k, -1, jnp.int32))
    (wsum, ssum, count, lab), _ = jax.lax.scan(visit, init, order)
    active = count > 0
    fused = wsum / jnp.where(active, ssum, 1.0)[:, None]
    score = ssum / jnp.maximum(count, 1) * jnp.minimum(count, num_sources) / num_sources
    by_score = jnp.argsort(jnp.where(active, -score, jnp.inf), stable=True)
    idx, keep = _pad_rows(by_score, active[by_score], k)
    return _take(fused, score, lab, idx, keep)


def merge_windows(boxes: jnp.ndarray, scores: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray,
                  window_starts: jnp.ndarray, image_size: Sequence[int], method: str = "nms",
                  iou_threshold: float = 0.5, max_detections: int = 300) -> Detections:
    """Detections of W windows ((W, D, 2d) boxes in window coordinates, (W, D) scores / labels / valid, e.g.
    stacked `Detections` of `detect` over the windows) -> one image's `Detections`: shifted by each window's
    start (W, d) (`medjax.inference.window_starts`), clipped to the image, merged by class-wise NMS or WBF."""
    if method not in MERGE_METHODS:
        raise MedjaxError(f"merge method must be one of {MERGE_METHODS}, got {method!r}")
    d = spatial_dims(boxes)
    starts = jnp.asarray(window_starts, boxes.dtype)
    if starts.shape != (boxes.shape[0], d):
        raise MedjaxError(f"window_starts must be ({boxes.shape[0]}, {d}), one start per window, got "
                          f"{tuple(starts.shape)}")
    shifted = clip_boxes(boxes + jnp.concatenate([starts, starts], axis=-1)[:, None, :], image_size)
    flat = (shifted.reshape(-1, 2 * d), scores.reshape(-1), labels.reshape(-1), valid.reshape(-1))
    if method == "nms":
        return batched_nms(*flat, iou_threshold, max_detections)
    return weighted_box_fusion(*flat, iou_threshold=iou_threshold, max_detections=max_detections)

