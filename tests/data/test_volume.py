"""Volume geometry helpers: RAS reorientation (= nibabel), field-of-view-preserving resampling, CT window,
MR z-score, the finiteness check. Real files: nibabel's test data and nilearn's ICBM152 T1."""

import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from medjax.data.icbm152 import FILES, default_root
from medjax.data.nifti import load_nifti
from medjax.data.volume import Volume, as_ras, check_finite, ct_window, resample_to_spacing, voxel_sizes, zscore
from medjax.errors import MedjaxError


def _rotation(degrees: float) -> np.ndarray:
    """Rotation about an oblique axis: the test affines are neither axis-aligned nor RAS."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _oblique_affine(spacing=(2.0, 3.0, 4.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = _rotation(10.0) @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(spacing)  # LAS-ish, rotated 10 degrees
    a[:3, 3] = [40.0, -20.0, 7.5]
    return a


def _world(affine, ijk):
    return (affine @ np.append(np.asarray(ijk, float), 1.0))[:3]


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "test.mgz"])
def test_as_ras_is_nibabel_closest_canonical(name):
    img = nib.load(os.path.join(data_path, name))
    ref = nib.as_closest_canonical(img)
    array, affine = as_ras(np.asanyarray(img.dataobj), img.affine)
    np.testing.assert_array_equal(array, np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(affine, ref.affine, atol=1e-6)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_voxel_sizes_are_the_affine_column_lengths():
    assert voxel_sizes(_oblique_affine()) == pytest.approx((2.0, 3.0, 4.0))


def test_resample_keeps_the_field_of_view_and_interpolates_linearly():
    """A linear function of world position is reproduced exactly at every new voxel whose sample lies inside the
    old grid: the new affine and the resampled values describe the same world."""
    affine = _oblique_affine()
    shape = (10, 7, 5)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = (affine[:3, :3] @ ijk.T).T + affine[:3, 3]
    f = world @ np.array([0.5, -1.0, 2.0]) + 3.0
    array = np.stack([f, -f], -1).reshape(*shape, 2).astype(np.float32)
    vol = Volume(array, affine, voxel_sizes(affine), "oblique.nii")

    out = resample_to_spacing(vol, (1.0, 1.5, 2.5))
    assert out.array.shape == (20, 14, 8, 2) and out.array.dtype == np.float32
    assert out.spacing == pytest.approx((1.0, 1.5, 2.5))
    assert out.path == "oblique.nii"
    # The outer corner of voxel 0 is fixed; the far corner moves by less than one new voxel.
    np.testing.assert_allclose(_world(out.affine, [-0.5] * 3), _world(affine, [-0.5] * 3), atol=1e-9)
    far_old, far_new = _world(affine, np.array(shape) - 0.5), _world(out.affine, np.array(out.array.shape[:3]) - 0.5)
    assert np.linalg.norm(far_new - far_old) < np.linalg.norm([1.0, 1.5, 2.5])
    # Directions are unchanged, only scaled.
    np.testing.assert_allclose(out.affine[:3, :3] / [1.0, 1.5, 2.5], affine[:3, :3] / [2.0, 3.0, 4.0], atol=1e-12)
    # Values: exact wherever the sample point is interior (between the old first and last voxel centres).
    j = np.stack(np.meshgrid(*[np.arange(n) for n in out.array.shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    src = (np.linalg.inv(affine) @ out.affine @ np.c_[j, np.ones(len(j))].T)[:3].T
    inside = np.all((src >= 0) & (src <= np.array(shape) - 1), axis=1)
    assert inside.sum() > 0.5 * len(j)
    w = (out.affine[:3, :3] @ j[inside].T).T + out.affine[:3, 3]
    expected = w @ np.array([0.5, -1.0, 2.0]) + 3.0
    got = out.array.reshape(-1, 2)[inside]
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-3)
    np.testing.assert_allclose(got[:, 1], -expected, atol=1e-3)


def test_resample_labels_nearest_keeps_classes_and_dtype():
    label = np.zeros((8, 8, 4), np.int32)
    label[:4, :, :] = 1
    label[4:, 4:, 2:] = 2
    vol = Volume(label, np.diag([1.0, 1.0, 2.0, 1.0]), (1.0, 1.0, 2.0), "seg.nii.gz")
    down = resample_to_spacing(vol, 2.0, is_label=True)
    assert down.array.shape == (4, 4, 4) and down.array.dtype == np.int32
    np.testing.assert_array_equal(down.array, label[::2, ::2, :])  # offset 0.5 rounds to the first of each pair
    up = resample_to_spacing(vol, (0.5, 0.5, 1.0), is_label=True)
    assert up.array.shape == (16, 16, 8) and set(np.unique(up.array)) == {0, 1, 2}
    np.testing.assert_array_equal(up.array[::2, ::2, ::2], label)
    assert resample_to_spacing(vol, (1.0, 1.0, 2.0), is_label=True) is vol
    with pytest.raises(MedjaxError, match="seg.nii.gz: a label volume must hold integers"):
        resample_to_spacing(Volume(label.astype(np.float32), vol.affine, vol.spacing, "seg.nii.gz"), 2.0, True)
    with pytest.raises(MedjaxError, match="seg.nii.gz: spacing must be a positive"):
        resample_to_spacing(vol, (1.0, 0.0, 1.0), is_label=True)


def test_resample_real_icbm152_to_2mm():
    t1 = load_nifti(os.path.join(default_root(), FILES["t1"]))
    out = resample_to_spacing(t1, 2.0)
    assert out.array.shape == (98, 116, 94, 1)  # round(197/2), round(233/2), round(189/2), half to even
    assert out.spacing == pytest.approx((2.0, 2.0, 2.0))
    np.testing.assert_allclose(_world(out.affine, [-0.5] * 3), _world(t1.affine, [-0.5] * 3))
    # Halving with corners aligned samples half-way between voxel pairs: linear = exact 2x2x2 block averages.
    blocks = t1.array[:196, :232, :188, 0].reshape(98, 2, 116, 2, 94, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(out.array[..., 0], blocks, rtol=1e-5, atol=1e-4)
    assert float(out.array[49, 58, 47, 0]) == pytest.approx(float(blocks[49, 58, 47]))


def test_ct_window_maps_the_window_to_unit_range():
    hu = np.array([-1000.0, -160.0, 40.0, 140.0, 240.0, 3000.0])
    np.testing.assert_allclose(ct_window(hu), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    lung = ct_window(hu, level=-600, width=1500)  # window [-1350, 150]
    np.testing.assert_allclose(lung, [0.2333333, 0.7933333, 0.9266667, 0.9933333, 1.0, 1.0], rtol=1e-6)
    assert ct_window(hu.astype(np.int16)).dtype == np.float32
    with pytest.raises(MedjaxError, match="width must be > 0"):
        ct_window(hu, 40, 0)


def test_zscore_per_channel_over_nonzero_or_mask():
    rng = np.random.default_rng(0)
    x = np.zeros((6, 5, 4, 2), np.float32)
    x[1:5, 1:4, 1:3, 0] = rng.normal(300, 40, (4, 3, 2))
    x[..., 1] = rng.normal(-5, 2, (6, 5, 4))
    z = zscore(x)
    fg = x[..., 0] != 0
    assert z.dtype == np.float32 and z.shape == x.shape
    assert abs(z[..., 0][fg].mean()) < 1e-5 and abs(z[..., 0][fg].std() - 1) < 1e-5
    assert np.all(z[..., 0][~fg] == 0)
    assert abs(z[..., 1].mean()) < 1e-5 and abs(z[..., 1].std() - 1) < 1e-5
    mask = np.zeros((6, 5, 4), bool)
    mask[:3] = True
    zm = zscore(x[..., 1], mask)
    assert zm.shape == (6, 5, 4) and abs(zm[mask].mean()) < 1e-5 and np.all(zm[~mask] == 0)
    assert np.all(zscore(np.full((2, 2, 2), 7.0)) == 0)  # constant: centred, not divided by 0
    with pytest.raises(MedjaxError, match="mask shape"):
        zscore(x, mask[:2])


def test_check_finite_names_the_file_and_counts():
    a = np.ones((4, 4, 4, 1), np.float32)
    vol = Volume(a, np.eye(4), (1.0, 1.0, 1.0), "/data/ct_007.nii.gz")
    assert check_finite(vol) is vol
    a = a.copy()
    a[0, 0, 0], a[1, 1, 1], a[2, 2, 2] = np.nan, np.nan, np.inf
    with pytest.raises(MedjaxError, match=r"/data/ct_007.nii.gz: 3 non-finite voxels \(2 NaN, 1 inf\) of 64"):
        check_finite(Volume(a, np.eye(4), (1.0, 1.0, 1.0), "/data/ct_007.nii.gz"))


def test_volume_rejects_bad_geometry():
    with pytest.raises(MedjaxError, match="x.nii: affine must be 4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3), (1.0, 1.0, 1.0), "x.nii")
    with pytest.raises(MedjaxError, match=r"x.nii: expected an \(X, Y, Z\)"):
        Volume(np.zeros((2, 2)), np.eye(4), (1.0, 1.0, 1.0), "x.nii")
