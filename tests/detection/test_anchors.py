"""Anchors per feature level: hand-computed cells and centres, and parity with MONAI's `AnchorGenerator` and
`AnchorGeneratorWithAnchorShape` (2D and 3D) on the same feature-map sizes."""

import numpy as np
import pytest

from medjax.detection import anchors as an
from medjax.errors import MedjaxError


def test_cells_and_level_by_hand():
    # size 8 at ratio 4 (w:h = 1:4): w = 8 / 2 = 4, h = 16; ratio 1: 8 x 8
    np.testing.assert_array_equal(an.cell_anchors([8], [4.0, 1.0]), [[-2, -8, 2, 8], [-4, -4, 4, 4]])
    # 3D, ratios (2, 4): a = 8^(1/3) = 2 -> w = s/2, h = s, d = 2s
    np.testing.assert_array_equal(an.cell_anchors([4], [(2.0, 4.0)]), [[-1, -2, -4, 1, 2, 4]])
    np.testing.assert_array_equal(an.cell_anchors_from_shapes([(6, 4, 2)], scale=2), [[-6, -4, -2, 6, 4, 2]])
    # a (2, 3) feature map at stride (4, 2): centres 2, 6 along x and 1, 3, 5 along y, location-major
    cells = an.cell_anchors_from_shapes([(2, 2), (4, 2)])
    level = np.asarray(an.level_anchors(cells, (2, 3), (4, 2)))
    assert level.shape == (12, 4)
    np.testing.assert_array_equal(level[:2], [[1, 0, 3, 2], [0, 0, 4, 2]])  # location (0, 0), both cells
    np.testing.assert_array_equal(level[2], [1, 2, 3, 4])  # location (0, 1): y centre 3
    np.testing.assert_array_equal(level[6], [5, 0, 7, 2])  # location (1, 0): x centre 6
    anchors, sizes = an.generate_anchors((8, 6), [(2, 3), (1, 1)], [cells, cells])
    assert sizes == (12, 2) and anchors.shape == (14, 4)
    np.testing.assert_array_equal(anchors[12:], [[3, 2, 5, 4], [2, 2, 6, 4]])  # stride (8, 6): centre (4, 3)
    with pytest.raises(MedjaxError, match="2 feature levels but 1 sets"):
        an.generate_anchors((8, 6), [(2, 3), (1, 1)], [cells])


@pytest.fixture(scope="module")
def monai_anchor_utils():
    pytest.importorskip("torch")
    from monai.apps.detection.utils import anchor_utils

    return anchor_utils


def _monai_anchors(generator, image_size, feature_sizes):
    import torch

    images = torch.zeros((1, 1, *image_size))
    return generator(images, [torch.zeros((1, 2, *fs)) for fs in feature_sizes])[0].numpy()


@pytest.mark.parametrize("dims", [2, 3])
def test_parity_with_monai_generators(monai_anchor_utils, dims):
    if dims == 2:
        image, feats = (64, 48), [(16, 12), (8, 6), (4, 3)]
        sizes, ratios = ((10, 14), (20, 28), (40, 56)), (0.5, 1.0, 2.0)
        shapes = ((8, 8), (12, 6), (6, 12))
    else:
        image, feats = (32, 32, 16), [(8, 8, 4), (4, 4, 2)]
        sizes, ratios = ((6, 9), (12, 18)), ((1.0, 1.0), (1.0, 0.5), (2.0, 2.0))
        shapes = ((8, 8, 4), (12, 6, 4), (6, 12, 6))
    theirs = _monai_anchors(monai_anchor_utils.AnchorGenerator(sizes, (ratios,) * len(feats)), image, feats)
    ours, level_sizes = an.generate_anchors(image, feats, [an.cell_anchors(s, ratios) for s in sizes])
    np.testing.assert_array_equal(ours, theirs)
    assert level_sizes == tuple(int(np.prod(f)) * 2 * 3 for f in feats)
    scales = (1, 2, 4)[:len(feats)]
    theirs = _monai_anchors(monai_anchor_utils.AnchorGeneratorWithAnchorShape(scales, shapes), image, feats)
    ours, _ = an.generate_anchors(image, feats, [an.cell_anchors_from_shapes(shapes, s) for s in scales])
    np.testing.assert_array_equal(ours, theirs)
