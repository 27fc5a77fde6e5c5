"""Axis-aligned boxes in 2D and 3D: one corner convention, conversions, clipping, area/volume, IoU and GIoU.

The one convention (MONAI's `StandardMode`, "xyxy" / "xyzxyz"): a box is (x1, y1, [z1,] x2, y2, [z2]) in the
last axis, low corner first, then high corner; its rank follows the coordinate count (4 -> 2D, 6 -> 3D), so
every function here serves both. Coordinate i runs along the image's i-th spatial axis (x along the first
spatial axis of a channels-last (N, *spatial, C) array, as MONAI's "ij" indexing), in voxel units by default: a
box from 2 to 5 along an axis is 3 voxels long (MONAI's `TO_REMOVE = 0`, torchvision's convention). World
coordinates (mm) are the same boxes mapped through the volume's affine (`medjax.data.volume.Volume.affine`
maps a voxel index to RAS mm): `voxel_to_world` / `world_to_voxel`.

Every function is pure `jax.numpy` with leading batch dimensions broadcast, so it runs inside `jax.jit` and
`jax.vmap`; the pairwise ones return (..., N, M). IoU and GIoU divide by `union + eps` (float32 eps), as
`monai.data.box_utils.box_iou` / `box_giou` do, so degenerate boxes give 0 instead of NaN (tested against both
and hand-computed values).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from medjax.errors import MedjaxError

EPS = float(np.finfo(np.float32).eps)


def spatial_dims(boxes: jnp.ndarray) -> int:
    """2 for (..., 4) boxes, 3 for (..., 6): the rank every function here infers from the coordinate count."""
    n = boxes.shape[-1]
    if n not in (4, 6):
        raise MedjaxError(f"boxes need 4 (2D) or 6 (3D) coordinates in the last axis, got shape {boxes.shape}")
    return n // 2


def split(boxes: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(low corners, high corners), each (..., dims)."""
    d = spatial_dims(boxes)
    return boxes[..., :d], boxes[..., d:]


def box_size(boxes: jnp.ndarray) -> jnp.ndarray:
    """Side lengths (..., dims); negative for malformed boxes (high < low)."""
    lo, hi = split(boxes)
    return hi - lo


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
    """Area (2D) or volume (3D) of each box (...,); boxes with a negative side count as 0."""
    return jnp.prod(jnp.maximum(box_size(boxes), 0), axis=-1)


def box_centers(boxes: jnp.ndarray) -> jnp.ndarray:
    """Centre points (..., dims)."""
    lo, hi = split(boxes)
    return (lo + hi) / 2


def to_center_size(boxes: jnp.ndarray) -> jnp.ndarray:
    """Corner boxes -> (cx, cy, [cz,] w, h, [d]) (MONAI's "ccwh" / "cccwhd")."""
    return jnp.concatenate([box_centers(boxes), box_size(boxes)], axis=-1)


def from_center_size(boxes: jnp.ndarray) -> jnp.ndarray:
    """(cx, cy, [cz,] w, h, [d]) -> corner boxes; negative sizes clamp to 0 (as MONAI's conversion does)."""
    d = spatial_dims(boxes)
    c, half = boxes[..., :d], jnp.maximum(boxes[..., d:], 0) / 2
    return jnp.concatenate([c - half, c + half], axis=-1)


def clip_boxes(boxes: jnp.ndarray, spatial_size: Sequence[int]) -> jnp.ndarray:
    """Boxes clipped into the image [0, size] along every axis (MONAI's `clip_boxes_to_image` without removal)."""
    d = spatial_dims(boxes)
    if len(spatial_size) != d:
        raise MedjaxError(f"{d}D boxes need a {d}D image size, got {tuple(spatial_size)}")
    size = jnp.asarray(spatial_size, boxes.dtype)
    return jnp.clip(boxes, 0, jnp.concatenate([size, size]))


def nonempty(boxes: jnp.ndarray, min_size: float = 1.0) -> jnp.ndarray:
    """Boxes at least `min_size` long on every axis (...,) bool: MONAI's `remove_empty` rule after clipping
    (x2 >= x1 + 1), which drops slivers a clip leaves at the image border."""
    lo, hi = split(boxes)
    return jnp.all(hi >= lo + min_size, axis=-1)


def _inter_union(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    lo1, hi1 = split(boxes1)
    lo2, hi2 = split(boxes2)
    if lo1.shape[-1] != lo2.shape[-1]:
        raise MedjaxError(f"cannot compare {lo1.shape[-1]}D boxes with {lo2.shape[-1]}D boxes")
    lo = jnp.maximum(lo1[..., :, None, :], lo2[..., None, :, :])
    hi = jnp.minimum(hi1[..., :, None, :], hi2[..., None, :, :])
    inter = jnp.prod(jnp.maximum(hi - lo, 0), axis=-1)
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    return inter, union


def box_iou(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> jnp.ndarray:
    """Pairwise intersection over union (..., N, M) of boxes (..., N, 2d) and (..., M, 2d)."""
    inter, union = _inter_union(boxes1, boxes2)
    return inter / (union + EPS)


def box_giou(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> jnp.ndarray:
    """Pairwise generalised IoU (Rezatofighi et al. 2019): IoU minus the share of the smallest enclosing box
    that neither box covers; in [-1, 1], informative where boxes do not overlap (a box-regression loss)."""
    inter, union = _inter_union(boxes1, boxes2)
    lo1, hi1 = split(boxes1)
    lo2, hi2 = split(boxes2)
    lo = jnp.minimum(lo1[..., :, None, :], lo2[..., None, :, :])
    hi = jnp.maximum(hi1[..., :, None, :], hi2[..., None, :, :])
    enclosure = jnp.prod(jnp.maximum(hi - lo, 0), axis=-1)
    return inter / (union + EPS) - (enclosure - union) / (enclosure + EPS)


def spacing_affine(spacing: Sequence[float], origin: Sequence[float] | None = None) -> np.ndarray:
    """The (dims+1, dims+1) affine of an axis-aligned grid: voxel index * spacing + origin (world units)."""
    spacing = np.asarray(spacing, np.float64)
    d = spacing.shape[0]
    affine = np.diag(np.concatenate([spacing, [1.0]]))
    if origin is not None:
        if len(origin) != d:
            raise MedjaxError(f"origin needs {d} values, one per spatial axis, got {tuple(origin)}")
        affine[:d, d] = origin
    return affine


def _apply_affine(boxes: jnp.ndarray, affine: np.ndarray | jnp.ndarray) -> jnp.ndarray:
    d = spatial_dims(boxes)
    boxes = jnp.asarray(boxes, jnp.promote_types(boxes.dtype, jnp.float32))  # integer voxel boxes map to floats
    affine = jnp.asarray(affine, boxes.dtype)
    if affine.shape != (d + 1, d + 1):
        raise MedjaxError(f"{d}D boxes need a ({d + 1}, {d + 1}) affine, got shape {tuple(affine.shape)}")
    lo, hi = split(boxes)
    # all 2**d corners: a rotation moves the extremes away from the two stored corners
    picks = np.array(np.meshgrid(*[[0, 1]] * d, indexing="ij")).reshape(d, -1).T  # (2**d, d)
    both = jnp.stack([lo, hi], axis=-2)  # (..., 2, d)
    corners = jnp.stack([both[..., picks[:, a], a] for a in range(d)], axis=-1)  # (..., 2**d, d)
    mapped = corners @ affine[:d, :d].T + affine[:d, d]
    return jnp.concatenate([mapped.min(axis=-2), mapped.max(axis=-2)], axis=-1)


def voxel_to_world(boxes: jnp.ndarray, affine: np.ndarray | jnp.ndarray) -> jnp.ndarray:
    """Boxes in voxel coordinates -> world coordinates through `affine` (voxel index -> world, e.g. a Volume's
    RAS mm affine, or `spacing_affine(spacing, origin)`). Flips stay well-formed (low corner first); under a
    rotation the result is the axis-aligned box around the mapped box. Equals MONAI's `apply_affine_to_boxes`
    for axis-aligned affines (tested)."""
    return _apply_affine(boxes, affine)


def world_to_voxel(boxes: jnp.ndarray, affine: np.ndarray | jnp.ndarray) -> jnp.ndarray:
    """World-coordinate boxes -> voxel coordinates of the image whose voxel-to-world affine is `affine`."""
    return _apply_affine(boxes, jnp.linalg.inv(jnp.asarray(affine, jnp.float32)))
