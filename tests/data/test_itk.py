"""ITK formats (NRRD, MetaImage) through SimpleITK: the same data written by SimpleITK and saved as NIfTI with
nibabel reads back identical (array and RAS affine), world coordinates match SimpleITK's own index -> LPS point
(x, y negated), labels are checked like NIfTI labels, and broken input is one line naming the file."""

import os
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medjax.data.formats import load_label, load_volume
from medjax.data.nifti import check_pair, load_nifti, load_nifti_label
from medjax.errors import MedjaxError

SHAPE_ZYX = (4, 5, 6)  # SimpleITK's numpy order: index (i, j, k) = array[k, j, i]
SPACING = (0.5, 1.25, 2.0)
ORIGIN = (-10.5, 20.25, 3.0)
# Index axis i runs to LPS -y (anterior), j to +z (superior), k to +x (the patient's left): a permuted grid with
# one flip, whose floats are exact in float32 (NIfTI stores its affine as float32), so the readers agree exactly.
DIRECTION = np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], np.float64)


def _itk(array_zyx, spacing=SPACING, origin=ORIGIN, direction=DIRECTION):
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.asarray(direction, np.float64).ravel().tolist())
    return image


def _nifti_by_hand(path, array_zyx, spacing=SPACING, origin=ORIGIN, direction=DIRECTION):
    """The NIfTI a careful user would write: voxel (i, j, k) -> RAS = diag(-1, -1, 1) (origin + D diag(s) ijk)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction) * np.asarray(spacing)
    lps[:3, 3] = origin
    nib.save(nib.Nifti1Image(np.transpose(array_zyx, (2, 1, 0)), np.diag([-1.0, -1, 1, 1]) @ lps), str(path))
    return str(path)


@pytest.fixture(scope="module")
def image_zyx():
    return (np.arange(np.prod(SHAPE_ZYX)).reshape(SHAPE_ZYX) * 7 - 50).astype(np.int16)


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_itk_volume_equals_the_nifti_of_the_same_data(tmp_path, image_zyx, suffix):
    path = str(tmp_path / f"ct{suffix}")
    sitk.WriteImage(_itk(image_zyx), path)
    vol = load_volume(path)
    ref = load_nifti(_nifti_by_hand(tmp_path / "ct.nii.gz", image_zyx))
    assert vol.array.shape == ref.array.shape == (4, 6, 5, 1) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_array_equal(vol.affine, ref.affine)
    assert vol.spacing == ref.spacing == (2.0, 0.5, 1.25)  # RAS order: x <- k, y <- i, z <- j
    # RAS voxel 0 is the left-most, posterior, inferior one: k = 3, i = 0, j = 0, stored value (3 * 30) * 7 - 50;
    # RAS voxel (3, 5, 4) is k = 0, i = 5, j = 4: (4 * 6 + 5) * 7 - 50.
    assert vol.array[0, 0, 0, 0] == 580.0 and vol.array[3, 5, 4, 0] == 153.0
    # SimpleITK's own NIfTI writer (its LPS -> RAS) agrees too.
    sitk.WriteImage(_itk(image_zyx), str(tmp_path / "itk.nii.gz"))
    np.testing.assert_array_equal(load_nifti(str(tmp_path / "itk.nii.gz")).affine, vol.affine)


def test_oblique_world_coordinates_match_simpleitk(tmp_path, image_zyx):
    t = np.deg2rad(30.0)
    rotation = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ DIRECTION
    image = _itk(image_zyx, direction=rotation)
    sitk.WriteImage(image, str(tmp_path / "oblique.mha"))
    vol = load_volume(str(tmp_path / "oblique.mha"))
    ref = load_nifti(_nifti_by_hand(tmp_path / "oblique.nii", image_zyx, direction=rotation))
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-5)  # NIfTI keeps float32
    for value_index in (0, 37, 119):  # each stored value is unique: find it, compare world positions
        k, j, i = np.unravel_index(value_index, SHAPE_ZYX)
        lps = image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        ijk = np.argwhere(vol.array[..., 0] == image_zyx[k, j, i])[0]
        ras = vol.affine @ [*ijk, 1.0]
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-9)


def test_itk_labels_are_checked_like_nifti_labels(tmp_path):
    label = np.zeros(SHAPE_ZYX, np.uint8)
    label[1:3, 2:4, 1:5] = 1
    label[2, 3, 2] = 2
    sitk.WriteImage(_itk(label), str(tmp_path / "seg.nrrd"))
    vol = load_label(str(tmp_path / "seg.nrrd"), num_classes=3)
    ref = load_nifti_label(_nifti_by_hand(tmp_path / "seg.nii.gz", label), num_classes=3)
    assert vol.array.dtype == np.int32 and vol.array.shape == (4, 6, 5)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_array_equal(vol.affine, ref.affine)
    assert np.bincount(vol.array.ravel()).tolist() == [104, 15, 1]
    label[0, 0, 0] = 5
    sitk.WriteImage(_itk(label), str(tmp_path / "bad.nrrd"))
    with pytest.raises(MedjaxError, match=r"bad.nrrd: label values must be in 0..2, found \[5\] \(1 voxels\)"):
        load_label(str(tmp_path / "bad.nrrd"), num_classes=3)


def test_vector_and_2d_images(tmp_path):
    rgb = np.arange(3 * 4 * 5 * 3, dtype=np.uint8).reshape(3, 4, 5, 3)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.mha"))
    vol = load_volume(str(tmp_path / "rgb.mha"))
    assert vol.array.shape == (5, 4, 3, 3)  # components become channels
    # Identity direction: i runs to the patient's left, j posterior, so RAS+ reverses both.
    np.testing.assert_array_equal(vol.array, np.transpose(rgb, (2, 1, 0, 3))[::-1, ::-1].astype(np.float32))
    flat = sitk.GetImageFromArray(np.arange(12, dtype=np.float32).reshape(3, 4))
    flat.SetSpacing((0.7, 0.9))
    sitk.WriteImage(flat, str(tmp_path / "slice.nrrd"))
    one = load_volume(str(tmp_path / "slice.nrrd"))
    assert one.array.shape == (4, 3, 1, 1) and one.spacing == pytest.approx((0.7, 0.9, 1.0))
    assert one.array[0, 0, 0, 0] == 11.0 and one.array[3, 2, 0, 0] == 0.0  # (i, j) = (3, 2) is left-most, posterior


def test_mismatched_spacing_between_image_and_label_is_one_line(tmp_path, image_zyx):
    sitk.WriteImage(_itk(image_zyx), str(tmp_path / "img.nrrd"))
    sitk.WriteImage(_itk(np.zeros(SHAPE_ZYX, np.uint8), spacing=(0.5, 1.25, 2.5)), str(tmp_path / "lab.nrrd"))
    with pytest.raises(MedjaxError, match=r"image .*img.nrrd and label .*lab.nrrd are on different grids: corner "
                                          r"voxels differ by up to 1.5 mm") as e:  # 3 steps of 2.5 vs 2.0 mm
        check_pair(load_volume(str(tmp_path / "img.nrrd")), load_label(str(tmp_path / "lab.nrrd")))
    assert "\n" not in str(e.value)


def test_broken_itk_files_name_the_file(tmp_path, image_zyx, monkeypatch):
    sitk.WriteImage(_itk(image_zyx), str(tmp_path / "ct.nrrd"))
    data = (tmp_path / "ct.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(data[: len(data) - 100])
    with pytest.raises(MedjaxError, match=r"cannot read image file .*cut.nrrd: Read: Error reading .*cut.nrrd: "
                                          r".*fread got only 70 2-sized things, not 120") as e:
        load_volume(str(tmp_path / "cut.nrrd"))
    assert "\n" not in str(e.value)
    sitk.WriteImage(_itk(image_zyx), str(tmp_path / "ct.mhd"))
    os.remove(tmp_path / "ct.raw")  # the header's ElementDataFile is gone
    with pytest.raises(MedjaxError, match=r"ct.mhd: its data file .*ct.raw is missing"):
        load_volume(str(tmp_path / "ct.mhd"))
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(MedjaxError, match=r"notes.xyz: unknown image file type; medjax reads .nii .nii.gz .hdr "
                                          r".img .mgh .mgz .nrrd .nhdr .mha .mhd"):
        load_volume(str(tmp_path / "notes.xyz"))
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # as if the extra were not installed
    with pytest.raises(MedjaxError, match=r"reading .*ct.nrrd needs SimpleITK: pip install 'medjax\[itk\]'"):
        load_volume(str(tmp_path / "ct.nrrd"))
