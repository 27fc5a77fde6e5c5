"""Matching anchors to ground-truth boxes in fixed shapes (so a training step jits), 2D and 3D.

Ground truth of one image is padded to a fixed G: `gt_boxes` (G, 2d) with a validity mask `gt_valid` (G,);
padded rows never match. Both matchers return, per anchor (M,), the index of its matched box or
`NEGATIVE` (-1, background) / `IGNORE` (-2, neither: excluded from the classification loss), as torchvision's
`Matcher` and MONAI's `ATSSMatcher` do; vmap them over a batch.

- `match_iou`: torchvision's `Matcher` (MONAI RetinaNet's `set_regular_matcher`): an anchor whose best IoU is
  >= `fg_iou` matches that box, < `bg_iou` is background, in between is ignored; with
  `allow_low_quality_matches`, every anchor that is some box's best anchor (ties included) gets back its own
  best box. As in torchvision, a box that overlaps no anchor at all (best IoU 0) makes every anchor with IoU 0
  to it such a "best anchor" (torchvision's behaviour, kept for parity; give boxes anchors that fit them).
- `match_atss`: ATSS (Zhang et al., CVPR 2020) as MONAI's `ATSSMatcher` (from nnDetection): per box and level,
  the `num_candidates * A` anchors with the nearest centres (A anchors per location; at most the level's number
  of locations, MONAI's cap), a box-specific IoU threshold mean + std (unbiased) of the candidates' IoUs,
  positives above it whose centre lies inside the box (more than 0.01 from its border, `center_in_gt`), and an
  anchor positive for several boxes goes to the one with the highest IoU. Everything else is background.

`anchor_targets` turns matches into the per-anchor class targets and regression deltas a RetinaNet loss needs.
Tested against MONAI's `ATSSMatcher` and a numpy transcription of torchvision's `Matcher` on random boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from medjax.detection.boxes import box_centers, box_iou, split
from medjax.detection.coder import encode_boxes
from medjax.errors import MedjaxError

NEGATIVE = -1
IGNORE = -2


def match_iou(gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray, anchors: jnp.ndarray, fg_iou: float = 0.5,
              bg_iou: float = 0.4, allow_low_quality_matches: bool = True) -> jnp.ndarray:
    """Per-anchor matches (M,) int32 by IoU thresholds (see the module doc)."""
    if bg_iou > fg_iou:
        raise MedjaxError(f"bg_iou ({bg_iou}) must not exceed fg_iou ({fg_iou})")
    quality = jnp.where(gt_valid[:, None], box_iou(gt_boxes, anchors), -1.0)  # (G, M); padded rows below any IoU
    best = quality.max(axis=0)
    best_gt = quality.argmax(axis=0).astype(jnp.int32)
    matches = jnp.where(best < bg_iou, NEGATIVE, jnp.where(best < fg_iou, IGNORE, best_gt))
    if allow_low_quality_matches:
        is_best = (quality == quality.max(axis=1, keepdims=True)) & gt_valid[:, None]
        matches = jnp.where(is_best.any(axis=0), best_gt, matches)
    return matches


def match_atss(gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray, anchors: jnp.ndarray, level_sizes: Sequence[int],
               num_anchors_per_loc: int, num_candidates: int = 4, center_in_gt: bool = True) -> jnp.ndarray:
    """Per-anchor matches (M,) int32 by ATSS (see the module doc); `level_sizes` are the anchors per level
    (`anchors.generate_anchors`' second output), `num_anchors_per_loc` the A cell anchors of every level."""
    if sum(level_sizes) != anchors.shape[0]:
        raise MedjaxError(f"level sizes {tuple(level_sizes)} add up to {sum(level_sizes)}, not to the "
                          f"{anchors.shape[0]} anchors")
    num_gt = gt_boxes.shape[0]
    anchor_centres = box_centers(anchors)
    distances = jnp.sqrt(((box_centers(gt_boxes)[:, None, :] - anchor_centres[None]) ** 2).sum(-1))  # (G, M)
    candidates, start = [], 0
    for size in level_sizes:
        k = min(num_candidates * num_anchors_per_loc, size // num_anchors_per_loc)
        _, idx = jax.lax.top_k(-distances[:, start:start + size], k)
        candidates.append(idx + start)
        start += size
    candidates = jnp.concatenate(candidates, axis=1)  # (G, C)
    if candidates.shape[1] < 2:
        raise MedjaxError("ATSS needs at least 2 candidate anchors per box (a standard deviation of one IoU)")
    iou = box_iou(gt_boxes, anchors)  # (G, M)
    cand_iou = jnp.take_along_axis(iou, candidates, axis=1)
    threshold = cand_iou.mean(axis=1) + cand_iou.std(axis=1, ddof=1)
    positive = (cand_iou >= threshold[:, None]) & gt_valid[:, None]
    if center_in_gt:
        lo, hi = split(gt_boxes)
        c = anchor_centres[candidates]  # (G, C, d)
        margin = jnp.minimum(c - lo[:, None, :], hi[:, None, :] - c).min(axis=-1)
        positive &= margin > 0.01
    rows = jnp.broadcast_to(jnp.arange(num_gt)[:, None], candidates.shape)
    masked = jnp.full(iou.shape, -jnp.inf, iou.dtype).at[rows, candidates].set(
        jnp.where(positive, jnp.take_along_axis(iou, candidates, axis=1), -jnp.inf))
    best = masked.max(axis=0)
    return jnp.where(best == -jnp.inf, NEGATIVE, masked.argmax(axis=0)).astype(jnp.int32)


def anchor_targets(matches: jnp.ndarray, gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray, anchors: jnp.ndarray,
                   weights: Sequence[float] | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(class targets (M,) int32: the matched box's label, or NEGATIVE / IGNORE; regression targets (M, 2d): the
    deltas from each anchor to its matched box, 0 where an anchor has no match so the loss sees no NaN)."""
    fg = matches >= 0
    idx = jnp.maximum(matches, 0)
    labels = jnp.where(fg, gt_labels[idx], matches).astype(jnp.int32)
    target = jnp.where(fg[:, None], gt_boxes[idx], anchors)
    return labels, jnp.where(fg[:, None], encode_boxes(target, anchors, weights), 0.0)
