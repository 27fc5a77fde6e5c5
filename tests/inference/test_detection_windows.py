"""Sliding-window detection: windows placed as MONAI's, batched at a fixed shape, detections shifted into the
volume (padding included) and merged; a numpy detector that sees the objects lying fully inside a window."""

import numpy as np
import pytest

from medjax.detection.instances import component_boxes
from medjax.inference import sliding_window_detect, window_starts

D = 4  # detections per window


def _detector(calls):
    """Fixed-size detections of the blobs (> 0.5) a window holds without touching its border, scored by their
    peak; records the shapes it is called with."""
    def predict(windows):
        calls.append(windows.shape)
        out = {"boxes": np.zeros((len(windows), D, 2 * (windows.ndim - 2)), np.float32),
               "scores": np.zeros((len(windows), D), np.float32), "labels": np.full((len(windows), D), -1),
               "valid": np.zeros((len(windows), D), bool)}
        for w, window in enumerate(windows[..., 0]):
            boxes, _ = component_boxes((window > 0.5).astype(np.int32))
            d = window.ndim
            inner = [b for b in boxes if (b[:d] > 0).all() and (b[d:] < window.shape).all()]
            for k, b in enumerate(inner[:D]):
                region = window[tuple(slice(int(lo), int(hi)) for lo, hi in zip(b[:d], b[d:]))]
                out["boxes"][w, k], out["scores"][w, k] = b, region.max()
                out["labels"][w, k], out["valid"][w, k] = 0, True
        return out
    return predict


@pytest.mark.parametrize("merge", ["nms", "wbf"])
def test_objects_seen_by_several_windows_come_back_once_in_volume_coordinates(merge):
    image = np.zeros((10, 30, 1), np.float32)  # 10 rows < the 12-row roi: padded by 1 row on each side
    image[2:5, 3:6] = 0.9
    image[4:8, 10:14] = 0.8  # across the border of the first window, inside the second
    image[1:3, 24:27] = 0.7
    calls = []
    dets = sliding_window_detect(_detector(calls), image, (12, 12), overlap=0.5, sw_batch_size=3, merge=merge,
                                 iou_threshold=0.5, max_detections=5)
    starts = window_starts((12, 30), (12, 12), 0.5)
    assert len(starts) == 4 and calls == [(3, 12, 12, 1), (3, 12, 12, 1)]  # 4 windows in 2 fixed-shape chunks
    np.testing.assert_array_equal(dets.valid, [True, True, True, False, False])
    np.testing.assert_allclose(dets.boxes[:3], [[2, 3, 5, 6], [4, 10, 8, 14], [1, 24, 3, 27]])
    np.testing.assert_allclose(dets.scores[:3], [0.9, 0.8, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(dets.labels, [0, 0, 0, -1, -1])
