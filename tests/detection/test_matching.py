"""Anchor matching in fixed shapes: IoU thresholds by hand and against a numpy transcription of torchvision's
`Matcher` (torchvision does not install here), ATSS against MONAI's `ATSSMatcher` on random boxes (2D and 3D),
padding rows that never match, and the targets a RetinaNet loss takes."""

import jax
import numpy as np
import pytest

from medjax.detection import anchors as an
from medjax.detection import matching
from medjax.detection.boxes import box_iou
from tests.detection.helpers import random_boxes


def _torchvision_matcher(quality, high, low, allow_low_quality):
    """torchvision.models.detection._utils.Matcher.__call__ (0.28), line for line on a (G, M) numpy matrix."""
    matched_vals, matches = quality.max(axis=0), quality.argmax(axis=0)
    all_matches = matches.copy()
    matches[matched_vals < low] = -1
    matches[(matched_vals >= low) & (matched_vals < high)] = -2
    if allow_low_quality:
        highest = quality.max(axis=1)
        pred_inds = np.nonzero(quality == highest[:, None])[1]
        matches[pred_inds] = all_matches[pred_inds]
    return matches


def test_iou_matching_by_hand():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 6], [20, 20, 30, 30], [0, 0, 4, 4], [40, 40, 41, 41]],
                       np.float32)
    gt = np.array([[0, 0, 10, 10], [21, 21, 29, 30], [0, 0, 0, 0]], np.float32)  # the last row is padding
    valid = np.array([True, True, False])

    @jax.jit
    def all_cases(gt, valid, anchors):
        return (matching.match_iou(gt, valid, anchors, allow_low_quality_matches=False),
                matching.match_iou(gt, valid, anchors, 0.8, 0.5, False),
                matching.match_iou(gt, valid, anchors, 0.8, 0.5, True),
                matching.match_iou(gt, valid & False, anchors))

    default, strict, low_quality, empty = all_cases(gt, valid, anchors)
    # IoUs with gt 0: 1, 0.6, 0, 0.16, 0; with gt 1: 0, 0, 0.72, 0, 0
    np.testing.assert_array_equal(default, [0, 0, 1, -1, -1])
    np.testing.assert_array_equal(strict, [0, -2, -2, -1, -1])
    # low-quality matches: gt 1's best anchor (IoU 0.72) comes back even though 0.72 < 0.8
    np.testing.assert_array_equal(low_quality, [0, -2, 1, -1, -1])
    np.testing.assert_array_equal(empty, [-1] * 5)  # no valid box: everything is background


@pytest.mark.parametrize("dims", [2, 3])
def test_iou_matching_equals_torchvision_matcher_on_random_boxes(dims):
    rng = np.random.default_rng(dims)
    anchors = random_boxes(rng, 300, dims, extent=40, max_side=12)
    gt = random_boxes(rng, 6, dims, extent=40, max_side=12)
    padded, valid = np.concatenate([gt, np.zeros((3, 2 * dims), np.float32)]), np.arange(9) < 6
    configs = [(0.5, 0.4, True), (0.5, 0.4, False), (0.3, 0.1, True)]
    quality, *ours = jax.jit(lambda g, v, a: [box_iou(g[:6], a)] + [matching.match_iou(g, v, a, *c)
                                                                     for c in configs])(padded, valid, anchors)
    results = {}
    for (high, low, low_quality), matches in zip(configs, ours):
        expected = _torchvision_matcher(np.asarray(quality), high, low, low_quality)
        np.testing.assert_array_equal(matches, expected)
        results[high, low_quality] = expected
    # every branch is exercised: matches, ignored, background, and matches only the low-quality rule makes
    assert all((results[0.3, True] == v).any() for v in (0, -1, -2))
    assert ((results[0.5, True] >= 0) & (results[0.5, False] < 0)).any()


@pytest.fixture(scope="module")
def monai_atss():
    pytest.importorskip("torch")
    from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher

    return ATSSMatcher


@pytest.mark.parametrize("dims, center_in_gt", [(2, True), (2, False), (3, True)])
def test_atss_parity_with_monai(monai_atss, dims, center_in_gt):
    import torch

    rng = np.random.default_rng(7 + dims)
    if dims == 2:
        image, feats, shapes = (64, 64), [(16, 16), (8, 8), (4, 4)], ((8, 8), (12, 6), (6, 12))
    else:
        image, feats, shapes = (32, 32, 16), [(8, 8, 4), (4, 4, 2)], ((6, 6, 4), (10, 6, 4), (6, 10, 6))
    cells = [an.cell_anchors_from_shapes(shapes, s) for s in (1, 2, 4)[:len(feats)]]
    anchors, level_sizes = an.generate_anchors(image, feats, cells)
    lo = rng.uniform(0, np.array(image) * 0.7, (5, dims))
    gt = np.concatenate([lo, lo + rng.uniform(4, 20, (5, dims))], 1).astype(np.float32)
    _, expected = monai_atss(num_candidates=4, center_in_gt=center_in_gt)(
        torch.from_numpy(gt), torch.from_numpy(anchors), [int(np.prod(f)) for f in feats], len(shapes))
    padded, valid = np.concatenate([gt, np.zeros((2, 2 * dims), np.float32)]), np.arange(7) < 5
    ours = jax.jit(matching.match_atss, static_argnums=(3, 4, 5, 6))(padded, valid, anchors, level_sizes,
                                                                      len(shapes), 4, center_in_gt)
    np.testing.assert_array_equal(ours, expected.numpy())
    assert len(set(expected.numpy()[expected.numpy() >= 0])) >= 3  # several boxes matched


def test_anchor_targets_by_hand():
    anchors = np.array([[0, 0, 4, 4], [4, 4, 8, 8], [0, 0, 2, 2]], np.float32)
    gt = np.array([[1, 1, 5, 5], [0, 0, 0, 0]], np.float32)
    labels, deltas = jax.jit(matching.anchor_targets)(np.array([0, -1, -2]), gt, np.array([3, 0]), anchors)
    np.testing.assert_array_equal(labels, [3, -1, -2])
    np.testing.assert_allclose(deltas[0], [0.25, 0.25, 0, 0], atol=1e-6)  # centre (3, 3) vs (2, 2), size 4
    np.testing.assert_array_equal(deltas[1:], 0)  # no NaN from the padding box
