"""Objects from label maps: connected-component boxes (scipy face connectivity), padding, painting boxes back,
and the segmentation baseline's detections, on hand-made maps."""

import numpy as np
import pytest

from medjax.detection.instances import component_boxes, pad_boxes, rasterize_boxes, segmentation_detections
from medjax.errors import MedjaxError


def test_component_boxes_per_class_and_face_connectivity():
    label = np.zeros((6, 7), np.int32)
    label[0:2, 0:2] = 1
    label[2, 2] = 1  # touches the first block only at a corner: its own component
    label[4:6, 1:6] = 2
    label[4, 6] = 1
    boxes, classes = component_boxes(label)
    np.testing.assert_array_equal(boxes, [[0, 0, 2, 2], [2, 2, 3, 3], [4, 6, 5, 7], [4, 1, 6, 6]])
    np.testing.assert_array_equal(classes, [0, 0, 0, 1])
    volume = np.zeros((4, 4, 4), np.int32)
    volume[1:3, 0:1, 2:4] = 3
    b3, c3 = component_boxes(volume, num_classes=3)
    np.testing.assert_array_equal(b3, [[1, 0, 2, 3, 1, 4]])
    np.testing.assert_array_equal(c3, [2])
    assert component_boxes(np.zeros((3, 3), np.int32))[0].shape == (0, 4)


def test_pad_and_rasterize_round_trip():
    boxes = np.array([[1, 2, 3, 5], [0.4, 0, 1.6, 1]], np.float32)
    padded, classes, valid = pad_boxes(boxes, np.array([1, 0]), 4)
    np.testing.assert_array_equal(valid, [True, True, False, False])
    np.testing.assert_array_equal(classes, [1, 0, -1, -1])
    painted = rasterize_boxes(padded, classes, valid, (5, 6))
    expected = np.zeros((5, 6), np.int32)
    expected[1:3, 2:5] = 2
    expected[0:2, 0:1] = 1  # voxels whose centres lie in 0.4..1.6: 0 and 1
    np.testing.assert_array_equal(painted, expected)
    np.testing.assert_array_equal(component_boxes(painted)[0], [[0, 0, 2, 1], [1, 2, 3, 5]])
    with pytest.raises(MedjaxError, match="has 2 boxes, more than config.data.max_boxes=1"):
        pad_boxes(boxes, np.array([1, 0]), 1)


def test_segmentation_detections_score_components_by_their_mean_probability():
    probs = np.zeros((6, 6, 3), np.float32)
    probs[..., 0] = 1.0
    probs[1:3, 1:3] = (0.2, 0.8, 0.0)
    probs[1, 1] = (0.4, 0.6, 0.0)
    probs[4:6, 4] = (0.1, 0.2, 0.7)
    probs[0, 5] = (0.3, 0.7, 0.0)  # one voxel: dropped with min_voxels=2
    boxes, scores, classes = segmentation_detections(probs, min_voxels=2)
    np.testing.assert_array_equal(boxes, [[1, 1, 3, 3], [4, 4, 6, 5]])
    np.testing.assert_allclose(scores, [(0.6 + 3 * 0.8) / 4, 0.7])
    np.testing.assert_array_equal(classes, [0, 1])
    assert len(segmentation_detections(probs)[0]) == 3
