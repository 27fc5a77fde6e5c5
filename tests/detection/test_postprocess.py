"""Post-processing in fixed shapes: NMS against MONAI's `non_max_suppression` / `batched_nms` (same kept indices in
the same order), RetinaNet inference against MONAI's `BoxCoder` + `BoxSelector` (2D and 3D, jitted and vmapped
over a batch), the head-map flattening against MONAI's `_reshape_maps`, and WBF / window merging on hand-built
cases."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.detection import anchors as an
from medjax.detection import postprocess as pp
from medjax.errors import MedjaxError
from tests.detection.helpers import random_boxes

NMS = jax.jit(pp.nms, static_argnames=("max_output",))  # the threshold is traced: one program for all of them
WBF = jax.jit(pp.weighted_box_fusion, static_argnames=("max_detections",))
MERGE = jax.jit(pp.merge_windows, static_argnames=("image_size", "method", "max_detections"))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [2, 0, 12, 10], [0, 0, 10, 10]],
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.1], np.float32)
    # by score: 3 (0.95), 0 (0.9; IoU with 3 = 8/12 -> suppressed), 1 (0.8; IoU with 3 = 9/11 -> suppressed), 2, 4
    # (IoU with 3 = 2/3 -> suppressed): a chain where 0 would have suppressed 1 had it been kept
    idx, valid = NMS(boxes, scores, 0.5, max_output=4)
    np.testing.assert_array_equal(idx, [3, 2, 0, 0])
    np.testing.assert_array_equal(valid, [True, True, False, False])
    idx, valid = NMS(boxes, scores, 0.7, max_output=4)  # 0 survives 3 (0.667 <= 0.7); 1 dies by 3; 4 by 0
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], [3, 0, 2])
    # classes: box 1 (class 1) is not suppressed by box 3 (class 0); the invalid box 4 takes no part
    idx, valid = NMS(boxes, scores, 0.5, max_output=5, valid=np.array([True, True, True, True, False]),
                     labels=np.array([0, 1, 0, 0, 1]))
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], [3, 1, 2])


@pytest.mark.parametrize("dims", [2, 3])
def test_nms_parity_with_monai(torch, dims):
    from monai.data.box_utils import batched_nms, non_max_suppression

    rng = np.random.default_rng(20 + dims)
    boxes = random_boxes(rng, 150, dims, extent=30, max_side=14)
    scores = rng.random(150).astype(np.float32)
    labels = rng.integers(0, 3, 150)
    both = jax.jit(lambda b, s, lab, t: (pp.nms(b, s, t, 160), pp.nms(b, s, t, 20, labels=lab)))  # one program
    for thresh in (0.1, 0.3, 0.6):
        (idx, valid), (idx_c, valid_c) = both(boxes, scores, labels, thresh)
        expected = non_max_suppression(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).numpy()
        np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], expected)
        expected = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), thresh,
                               max_proposals=20).numpy()
        np.testing.assert_array_equal(np.asarray(idx_c)[np.asarray(valid_c)], expected)
    assert 1 < len(expected) <= 20


def _level_setup(dims):
    if dims == 2:
        image, feats, shapes = (48, 40), [(12, 10), (6, 5)], ((8, 8), (12, 6), (6, 12))
    else:
        image, feats, shapes = (24, 24, 16), [(6, 6, 4), (3, 3, 2)], ((6, 6, 4), (10, 6, 4), (6, 10, 6))
    cells = [an.cell_anchors_from_shapes(shapes, s) for s in (1, 2)]
    anchors, level_sizes = an.generate_anchors(image, feats, cells)
    return image, feats, len(shapes), anchors, level_sizes


@pytest.mark.parametrize("dims", [2, 3])
def test_detect_parity_with_monai_retinanet_inference(torch, dims):
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.box_coder import BoxCoder
    from monai.apps.detection.utils.box_selector import BoxSelector

    image, feats, num_anchors, anchors, level_sizes = _level_setup(dims)
    classes, batch = 3, 2
    rng = np.random.default_rng(30 + dims)
    # channels-last head maps per level, as a Flax head emits them
    cls_maps = [rng.normal(-2.5, 1.5, (batch, *f, num_anchors * classes)).astype(np.float32) for f in feats]
    box_maps = [rng.normal(0, 0.5, (batch, *f, num_anchors * 2 * dims)).astype(np.float32) for f in feats]
    options = dict(score_thresh=0.1, topk_per_level=40, nms_thresh=0.3, max_detections=25)

    @jax.jit
    def infer(cls_maps, box_maps):
        logits, deltas = pp.flatten_levels(cls_maps, num_anchors), pp.flatten_levels(box_maps, num_anchors)
        return pp.detect(logits, deltas, anchors, level_sizes, image, **options)

    ours = infer(cls_maps, box_maps)
    assert ours.boxes.shape == (batch, 25, 2 * dims) and ours.labels.dtype == jnp.int32

    # MONAI: channels-first maps through RetinaNetDetector._reshape_maps, BoxCoder.decode_single, BoxSelector
    fake = types.SimpleNamespace(num_anchors_per_loc=num_anchors, spatial_dims=dims)
    def to_monai(maps):
        return RetinaNetDetector._reshape_maps(fake, [torch.from_numpy(np.moveaxis(m, -1, 1).copy()) for m in maps])
    logits, deltas = to_monai(cls_maps), to_monai(box_maps)
    np.testing.assert_array_equal(pp.flatten_levels(cls_maps, num_anchors), logits.numpy())
    coder = BoxCoder(weights=(1.0,) * 2 * dims)
    selector = BoxSelector(score_thresh=0.1, topk_candidates_per_level=40, nms_thresh=0.3, detections_per_img=25)
    splits = np.cumsum(level_sizes)[:-1]
    for b in range(batch):
        per_level = [coder.decode_single(d, torch.from_numpy(a)) for d, a in
                     zip(np.split(deltas[b], splits), np.split(anchors, splits))]
        boxes, scores, labels = selector.select_boxes_per_image(per_level, list(np.split(logits[b], splits)), image)
        n = int(ours.valid[b].sum())
        assert n == len(scores) and n > 3
        np.testing.assert_allclose(ours.boxes[b, :n], boxes.numpy(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ours.scores[b, :n], scores.numpy(), rtol=1e-6)
        np.testing.assert_array_equal(ours.labels[b, :n], labels.numpy())
        np.testing.assert_array_equal(ours.labels[b, n:], -1)
        np.testing.assert_array_equal(ours.scores[b, n:], 0)


def test_flatten_and_select_errors():
    with pytest.raises(MedjaxError, match="cannot hold 3 anchors"):
        pp.flatten_levels([np.zeros((1, 2, 2, 7))], 3)
    with pytest.raises(MedjaxError, match="add up to 5, not to the 4 anchors"):
        pp.select_detections(np.zeros((4, 2)), np.zeros((4, 4)), np.zeros((4, 4)), (2, 3), (8, 8))
    with pytest.raises(MedjaxError, match="merge method"):
        pp.merge_windows(np.zeros((1, 2, 4)), np.zeros((1, 2)), np.zeros((1, 2), int), np.ones((1, 2), bool),
                         np.zeros((1, 2)), (8, 8), method="soft")


def test_weighted_box_fusion_by_hand():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [30, 30, 40, 40], [0, 0, 10, 10], [31, 30, 41, 40]],
                     np.float32)
    scores = np.array([0.9, 0.3, 0.8, 0.5, 0.2], np.float32)
    labels = np.array([0, 0, 0, 1, 0])
    out = WBF(boxes, scores, labels, np.ones(5, bool), iou_threshold=0.55, max_detections=4)
    # cluster A (class 0): boxes 0 and 1 (IoU 8/12 > 0.55): x1 = (0.9*0 + 0.3*2) / 1.2 = 0.5, x2 = 10.5,
    # score (0.9 + 0.3) / 2; cluster B: boxes 2 and 4: x1 = (0.8*30 + 0.2*31) / 1.0 = 30.2, score 0.5;
    # box 3 is class 1: its own cluster, score 0.5 (sorted after B: equal scores keep cluster order)
    np.testing.assert_array_equal(out.valid, [True, True, True, False])
    np.testing.assert_allclose(out.scores, [0.6, 0.5, 0.5, 0], rtol=1e-6)
    np.testing.assert_array_equal(out.labels, [0, 0, 1, -1])
    np.testing.assert_allclose(out.boxes[:3], [[0.5, 0, 10.5, 10], [30.2, 30, 40.2, 40], [0, 0, 10, 10]],
                               rtol=1e-6)
    # two sources (e.g. two overlapping windows): a box seen once is down-weighted by 1/2
    two = WBF(boxes, scores, labels, np.ones(5, bool), iou_threshold=0.55, max_detections=4, num_sources=2)
    np.testing.assert_allclose(two.scores, [0.6, 0.5, 0.25, 0], rtol=1e-6)
    # boxes are compared with the running fused box: box 1 joins box 0 (IoU 6/14 > 0.4) and the fused box becomes
    # [2, 12]; box 2 overlaps the cluster's first box by only 5/15 < 0.4 but the fused box by 7/13, so it joins
    # (padded to the shapes above with invalid rows: the same compiled program)
    moving = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [5, 0, 15, 10], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    out = WBF(moving, np.array([1.0, 1.0, 1.0, 0, 0], np.float32), np.zeros(5, int), np.arange(5) < 3,
              iou_threshold=0.4, max_detections=4)
    np.testing.assert_array_equal(out.valid, [True, False, False, False])
    np.testing.assert_allclose(out.boxes[0], [3, 0, 13, 10], rtol=1e-6)  # the mean of the three
    np.testing.assert_allclose(out.scores[0], 1.0)


def test_merge_windows_by_hand():
    # two 3D windows starting at x = 0 and x = 8 see the same object at image x 10..14
    boxes = np.array([[[10, 2, 2, 14, 6, 6], [0, 0, 0, 0, 0, 0]], [[2, 2, 2, 6, 6, 6], [0, 0, 0, 3, 3, 3]]],
                     np.float32)
    scores = np.array([[0.9, 0.0], [0.7, 0.4]], np.float32)
    labels = np.zeros((2, 2), int)
    valid = np.array([[True, False], [True, True]])
    starts = np.array([[0, 0, 0], [8, 0, 0]])
    nms = MERGE(boxes, scores, labels, valid, starts, image_size=(20, 10, 10), method="nms", iou_threshold=0.5,
                max_detections=3)
    np.testing.assert_array_equal(nms.valid, [True, True, False])
    np.testing.assert_allclose(nms.boxes[:2], [[10, 2, 2, 14, 6, 6], [8, 0, 0, 11, 3, 3]])
    np.testing.assert_allclose(nms.scores[:2], [0.9, 0.4])
    wbf = MERGE(boxes, scores, labels, valid, starts, image_size=(20, 10, 10), method="wbf", iou_threshold=0.5,
                max_detections=3)
    np.testing.assert_allclose(wbf.boxes[:2], [[10, 2, 2, 14, 6, 6], [8, 0, 0, 11, 3, 3]])
    np.testing.assert_allclose(wbf.scores[:2], [0.8, 0.4], rtol=1e-6)
    with pytest.raises(MedjaxError, match="one start per window"):
        pp.merge_windows(boxes, scores, labels, valid, starts[:, :2], (20, 10, 10))
