"""Objects from label maps and back, on the host (numpy + scipy.ndimage), 2D and 3D alike.

- `component_boxes`: the instances of a semantic label map as boxes, one per connected component of each class
  (face connectivity, `scipy.ndimage.label`'s default), nnDetection's convention for training a detector on a
  segmentation dataset. A component's box is its voxels' extent in the corner convention of
  `medjax.detection.boxes` (voxels 2, 3, 4 give 2..5) and its class is its label value - 1 (detection classes
  are the foreground classes, 0-based).
- `pad_boxes`: a case's boxes padded to the fixed count a batch holds, with the validity mask.
- `rasterize_boxes`: boxes painted into a label map (value class + 1; later boxes over earlier ones), the
  segmentation target and patch-sampling foreground of datasets that have boxes only.
- `segmentation_detections`: the common baseline detector, a segmenter whose connected components of the
  predicted classes are the detections: box = the component's extent, score = the mean predicted probability of
  its class over its voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.errors import MedjaxError


def component_boxes(label_map: np.ndarray, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (n, 2d) float32, classes (n,) int32) of the connected components of every foreground value of
    `label_map` (*spatial), ordered by class, then by scipy's component order (the first voxel in C order).
    `num_classes` (foreground classes) bounds the values; None takes the largest value present."""
    from scipy import ndimage

    label_map = np.asarray(label_map)
    d = label_map.ndim
    top = int(label_map.max(initial=0)) if num_classes is None else int(num_classes)
    boxes, classes = [], []
    for value in range(1, top + 1):
        components, _ = ndimage.label(label_map == value)
        for sl in ndimage.find_objects(components):
            boxes.append([s.start for s in sl] + [s.stop for s in sl])
            classes.append(value - 1)
    return np.asarray(boxes, np.float32).reshape(-1, 2 * d), np.asarray(classes, np.int32)


def pad_boxes(boxes: np.ndarray, classes: np.ndarray, max_boxes: int,
              where: str = "case") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (G, 2d) float32, classes (G,) int32, valid (G,) bool) with G = `max_boxes`: padding rows are zero
    boxes of class -1. More than G boxes is an error naming `where` and config.data.max_boxes."""
    boxes = np.asarray(boxes, np.float32)
    n = len(boxes)
    if n > max_boxes:
        raise MedjaxError(f"{where} has {n} boxes, more than config.data.max_boxes={max_boxes}: raise it")
    out_boxes = np.zeros((max_boxes, boxes.shape[-1]), np.float32)
    out_classes = np.full(max_boxes, -1, np.int32)
    out_boxes[:n], out_classes[:n] = boxes, classes
    return out_boxes, out_classes, np.arange(max_boxes) < n


def rasterize_boxes(boxes: np.ndarray, classes: np.ndarray, valid: np.ndarray,
                    spatial_shape: Sequence[int]) -> np.ndarray:
    """An int32 label map of `spatial_shape` with every valid box's voxels (those whose centres it contains:
    floor(lo + 1/2) .. ceil(hi - 1/2), at least one voxel) set to its class + 1."""
    out = np.zeros(tuple(spatial_shape), np.int32)
    d = len(spatial_shape)
    for box, cls, ok in zip(np.asarray(boxes), np.asarray(classes), np.asarray(valid)):
        if not ok:
            continue
        lo = np.floor(box[:d] + 0.5).astype(int)
        hi = np.maximum(np.ceil(box[d:] - 0.5).astype(int), lo + 1)
        out[tuple(slice(max(a, 0), max(b, 0)) for a, b in zip(lo, hi))] = int(cls) + 1
    return out


def segmentation_detections(probs: np.ndarray, *, min_voxels: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections (boxes (n, 2d), scores (n,), classes (n,)) from one case's class probabilities (*spatial, K+1)
    (background first): the components of the argmax's foreground classes with at least `min_voxels` voxels,
    scored by the mean probability of their class over their voxels."""
    from scipy import ndimage

    if min_voxels < 1:
        raise MedjaxError(f"min_voxels must be >= 1, got {min_voxels}")
    probs = np.asarray(probs)
    pred = probs.argmax(-1)
    boxes, scores, classes = [], [], []
    for value in range(1, probs.shape[-1]):
        components, n = ndimage.label(pred == value)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(np.ones_like(components), components, index)
        means = ndimage.mean(probs[..., value], components, index)
        for sl, size, mean in zip(ndimage.find_objects(components), sizes, means):
            if size >= min_voxels:
                boxes.append([s.start for s in sl] + [s.stop for s in sl])
                scores.append(mean)
                classes.append(value - 1)
    d = probs.ndim - 1
    return (np.asarray(boxes, np.float32).reshape(-1, 2 * d), np.asarray(scores, np.float64),
            np.asarray(classes, np.int32))
