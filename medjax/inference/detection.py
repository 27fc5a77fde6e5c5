"""Sliding-window detection: a detector run on the windows of a volume larger than what it trained on, its
detections shifted into the volume and merged.

`sliding_window_detect(predict_windows, image, roi_size)` places windows exactly as the segmentation sliding
window does (`medjax.inference.window_starts`: MONAI's positions, the volume padded symmetrically with
`padding_value` where it is smaller than the roi) and calls `predict_windows` on chunks of `sw_batch_size`
windows, always of shape (sw_batch_size, *roi, C), so the detector (network + `postprocess.detect`) is one
compiled program for every chunk and every case; a last chunk is filled with copies of its first window, whose
detections are dropped. The windows' fixed-size detections are shifted by their starts (in the unpadded
volume's coordinates), clipped to the volume and merged by class-wise NMS or weighted box fusion
(`medjax.detection.postprocess.merge_windows`, jitted: one program per volume shape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from medjax.detection.postprocess import Detections, merge_windows
from medjax.errors import MedjaxError
from medjax.inference.sliding_window import resolve_roi_size, window_starts

_merge = jax.jit(merge_windows, static_argnames=("image_size", "method", "iou_threshold", "max_detections"))


def sliding_window_detect(predict_windows: Callable[[np.ndarray], dict], image: np.ndarray,
                          roi_size: int | Sequence[int | None], *, overlap: float | Sequence[float] = 0.25,
                          sw_batch_size: int = 4, padding_value: float = 0.0, merge: str = "nms",
                          iou_threshold: float = 0.5, max_detections: int = 100) -> Detections:
    """Detections (numpy, `max_detections` rows) of one volume `image` (*spatial, C); `predict_windows` maps
    windows (sw_batch_size, *roi, C) to a dict of "boxes" (sw, D, 2d) in window coordinates, "scores", "labels"
    and "valid" (sw, D) (e.g. `DetectionTask.detect(...)._asdict()` on the device)."""
    image = np.asarray(image)
    nd = image.ndim - 1
    if nd not in (2, 3):
        raise MedjaxError(f"sliding-window detection needs one image (*spatial, C) in 2D or 3D, got {image.shape}")
    if int(sw_batch_size) < 1:
        raise MedjaxError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    sw = int(sw_batch_size)
    spatial = tuple(int(n) for n in image.shape[:-1])
    roi = resolve_roi_size(roi_size, spatial)
    pads = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for r, n in zip(roi, spatial)]
    if any(a or b for a, b in pads):
        image = np.pad(image, [*pads, (0, 0)], constant_values=padding_value)
    starts = window_starts(image.shape[:-1], roi, overlap)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in Detections._fields}
    for first in range(0, len(starts), sw):
        chunk = starts[first:first + sw]
        cuts = [tuple(slice(s, s + r) for s, r in zip(start, roi)) for start in chunk]
        windows = np.stack([image[c] for c in cuts] + [image[cuts[0]]] * (sw - len(cuts)))
        out = predict_windows(windows)
        for k in Detections._fields:
            parts[k].append(np.asarray(out[k])[:len(cuts)])
    shift = np.asarray(starts, np.float32) - np.asarray([a for a, _ in pads], np.float32)
    stacked = {k: np.concatenate(v) for k, v in parts.items()}
    merged = _merge(stacked["boxes"], stacked["scores"], stacked["labels"], stacked["valid"], shift,
                    image_size=spatial, method=merge, iou_threshold=float(iou_threshold),
                    max_detections=int(max_detections))
    return Detections(*(np.asarray(a) for a in merged))
