"""Box conventions, conversions, clipping, area/volume, IoU and GIoU: hand-computed values in 2D and 3D and parity
with `monai.data.box_utils` on random boxes."""

import jax
import numpy as np
import pytest

from medjax.detection import boxes as bx
from medjax.errors import MedjaxError
from tests.detection.helpers import random_boxes

A2 = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 7]], np.float32)
A3 = np.array([[0, 0, 0, 2, 2, 2], [1, 1, 1, 3, 3, 3], [4, 0, 0, 6, 1, 1]], np.float32)


@jax.jit
def _basics(a2, a3):
    return (bx.box_area(a2), bx.box_area(a3), bx.to_center_size(a2), bx.to_center_size(a3),
            bx.from_center_size(bx.to_center_size(a2)), bx.from_center_size(bx.to_center_size(a3)))


def test_area_centres_sizes_and_center_size_round_trip():
    malformed = np.array([[3, 3, 1, 5]], np.float32)
    area2, area3, cs2, cs3, back2, back3 = _basics(np.concatenate([A2, malformed]), A3)
    np.testing.assert_array_equal(area2, [4, 4, 2, 0])  # a malformed box has area 0
    np.testing.assert_array_equal(area3, [8, 8, 2])
    np.testing.assert_array_equal(cs2[2], [5.5, 6, 1, 2])
    np.testing.assert_array_equal(cs3[2], [5, 0.5, 0.5, 2, 1, 1])
    np.testing.assert_array_equal(back2[:3], A2)
    np.testing.assert_array_equal(back3, A3)
    assert bx.spatial_dims(A2) == 2 and bx.spatial_dims(A3) == 3
    with pytest.raises(MedjaxError, match="4 \\(2D\\) or 6 \\(3D\\)"):
        bx.box_area(np.zeros((2, 5)))


@jax.jit
def _overlaps(a2, a3):
    return bx.box_iou(a2, a2), bx.box_giou(a2, a2), bx.box_iou(a3, a3), bx.box_giou(a3, a3)


def test_iou_and_giou_by_hand():
    iou, giou, iou3, giou3 = (np.asarray(a) for a in _overlaps(A2, A3))
    # 2D: [0,2]^2 and [1,3]^2 meet in a unit square: IoU 1/7; the enclosing [0,3]^2 (9) leaves 2 uncovered
    np.testing.assert_allclose(iou[0, 1], 1 / 7, rtol=1e-6)
    np.testing.assert_allclose(giou[0, 1], 1 / 7 - 2 / 9, rtol=1e-6)
    # disjoint [0,2]^2 and [5,6]x[5,7]: IoU 0; enclosure [0,6]x[0,7] = 42, union 6 -> GIoU -36/42
    np.testing.assert_allclose(iou[0, 2], 0)
    np.testing.assert_allclose(giou[0, 2], -36 / 42, rtol=1e-6)
    np.testing.assert_allclose(np.diag(iou), 1, rtol=1e-6)
    # 3D: unit cube shared by two 2-cubes: 1 / (8 + 8 - 1); enclosure 27 -> GIoU 1/15 - 12/27
    np.testing.assert_allclose(iou3[0, 1], 1 / 15, rtol=1e-6)
    np.testing.assert_allclose(giou3[0, 1], 1 / 15 - 12 / 27, rtol=1e-6)
    # [0,2]^3 and [4,6]x[0,1]^2: disjoint, enclosure 6*2*2 = 24, union 10
    np.testing.assert_allclose(giou3[0, 2], -14 / 24, rtol=1e-6)
    # leading batch dimensions broadcast: (2, 3, 4) x (2, 3, 4) -> (2, 3, 3)
    assert jax.eval_shape(bx.box_iou, np.stack([A2, A2]), np.stack([A2, A2])).shape == (2, 3, 3)
    with pytest.raises(MedjaxError, match="cannot compare 2D boxes with 3D"):
        bx.box_iou(A2, A3)


def test_clip_and_nonempty_by_hand():
    boxes = np.array([[-3, 2, 5, 12], [9.5, 1, 14, 4]], np.float32)
    clipped, keep = jax.jit(lambda b: (bx.clip_boxes(b, (10, 8)), bx.nonempty(bx.clip_boxes(b, (10, 8)))))(boxes)
    np.testing.assert_array_equal(clipped, [[0, 2, 5, 8], [9.5, 1, 10, 4]])
    np.testing.assert_array_equal(keep, [True, False])  # 0.5 wide after clipping: MONAI drops it
    with pytest.raises(MedjaxError, match="2D boxes need a 2D image size"):
        bx.clip_boxes(boxes, (10, 8, 4))


@jax.jit
def _world(box3, affine3, box2, flip2, rot2):
    world = bx.voxel_to_world(box3, affine3)
    return world, bx.world_to_voxel(world, affine3), bx.voxel_to_world(box2, flip2), bx.voxel_to_world(box2, rot2)


def test_world_coordinates_by_hand():
    # spacing (0.5, 2, 3) mm, origin (10, -4, 1): voxel (1, 2, 3) -> (10.5, 0, 10)
    affine = bx.spacing_affine((0.5, 2.0, 3.0), (10.0, -4.0, 1.0))
    box = np.array([[1, 2, 3, 3, 4, 5]], np.float32)
    # in 2D a flipped x axis (RAS <- LPS style), and a 90-degree rotation: the box around the rotated box
    flip = np.diag([-1.0, 1.0, 1.0])
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0, 0, 1]])
    world, back, flipped, rotated = _world(box, affine, np.array([[1, 2, 4, 3]], np.float32), flip, rot)
    np.testing.assert_allclose(world, [[10.5, 0, 10, 11.5, 4, 16]])
    np.testing.assert_allclose(back, box, atol=1e-5)
    np.testing.assert_allclose(flipped, [[-4, 2, -1, 3]])  # the low corner stays first
    np.testing.assert_allclose(rotated, [[-3, 1, -2, 4]], atol=1e-6)  # from all four corners
    with pytest.raises(MedjaxError, match="need a \\(4, 4\\) affine"):
        bx.voxel_to_world(box, np.eye(3))


@pytest.mark.parametrize("dims", [2, 3])
def test_parity_with_monai_box_utils(dims):
    torch = pytest.importorskip("torch")
    from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes
    from monai.data import box_utils as bu

    rng = np.random.default_rng(dims)
    a, b = random_boxes(rng, 9, dims), random_boxes(rng, 7, dims)
    centre_size = {2: "ccwh", 3: "cccwhd"}[dims]
    cs = bu.convert_box_mode(a, dst_mode=centre_size)
    size = (40, 50, 36)[:dims]
    affine = np.diag([0.7, -1.3, 2.1][:dims] + [1.0])
    affine[:dims, dims] = [5.0, -3.0, 11.0][:dims]

    @jax.jit
    def ours(a, b, cs, affine):
        clipped = bx.clip_boxes(a, size)
        return (bx.box_iou(a, b), bx.box_giou(a, b), bx.box_area(a), bx.to_center_size(a), bx.from_center_size(cs),
                clipped, bx.nonempty(clipped), bx.voxel_to_world(a, affine))

    iou, giou, area, to_cs, from_cs, clipped, keep, world = (np.asarray(x) for x in ours(a, b, cs, affine))
    np.testing.assert_allclose(iou, bu.box_iou(a, b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(giou, bu.box_giou(a, b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(area, bu.box_area(a), rtol=1e-6)
    np.testing.assert_allclose(to_cs, cs, rtol=1e-6)
    np.testing.assert_allclose(from_cs, bu.convert_box_mode(cs, src_mode=centre_size), rtol=1e-6)
    theirs, their_keep = bu.clip_boxes_to_image(a, size, remove_empty=True)
    np.testing.assert_array_equal(keep, their_keep)
    assert 0 < keep.sum() < len(keep)  # some boxes leave the image
    np.testing.assert_allclose(clipped[keep], theirs, rtol=1e-6)
    np.testing.assert_allclose(world, apply_affine_to_boxes(torch.from_numpy(a), torch.from_numpy(affine)).numpy(),
                               rtol=1e-5, atol=1e-4)
