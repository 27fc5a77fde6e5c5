"""NIfTI reader: real files (nibabel's test data, nilearn's ICBM152) and files written here with chosen affines."""

import gzip
import hashlib
import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from medjax.data.icbm152 import FILES, default_root
from medjax.data.nifti import check_pair, load_nifti, load_nifti_label
from medjax.errors import MedjaxError

ANATOMICAL = os.path.join(data_path, "anatomical.nii")  # 33x41x25 big-endian int16, LAS, 2 mm
EXAMPLE4D = os.path.join(data_path, "example4d.nii.gz")  # 128x96x24x2 int16 fMRI, oblique LAS


def _save(path, data, affine, **header):
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return str(path)


def _fingerprint(path):
    with open(path, "rb") as f:
        return os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest()


def _las_oblique():
    """LAS with a 7-degree tilt about x (anisotropic 0.9 x 1.1 x 3 mm): canonical must flip x, keep world."""
    t = np.deg2rad(7.0)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-0.9, 1.1, 3.0])
    a[:3, 3] = [60.0, -80.0, -20.0]
    return a


def test_real_anatomical_las_becomes_ras():
    vol = load_nifti(ANATOMICAL)
    assert vol.array.shape == (33, 41, 25, 1) and vol.array.dtype == np.float32
    assert vol.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(vol.affine, [[2, 0, 0, -32], [0, 2, 0, -40], [0, 0, 2, -16], [0, 0, 0, 1]])
    assert vol.array[10, 20, 12, 0] == 11650.0  # = stored voxel [33 - 1 - 10, 20, 12]: x flipped
    raw = nib.load(ANATOMICAL).get_fdata()
    np.testing.assert_array_equal(vol.array[..., 0], raw[::-1])
    assert vol.path == ANATOMICAL
    stored = load_nifti(ANATOMICAL, canonical=False)
    np.testing.assert_array_equal(stored.array[..., 0], raw)
    assert nib.aff2axcodes(stored.affine) == ("L", "A", "S")


def test_real_4d_keeps_channels_and_oblique_affine():
    vol = load_nifti(EXAMPLE4D)
    assert vol.array.shape == (128, 96, 24, 2)
    assert vol.spacing == pytest.approx((2.0, 2.0, 2.2), abs=1e-5)
    np.testing.assert_allclose(vol.affine[:3, 3], [-136.1449, -35.7229, -7.2488], atol=1e-3)
    np.testing.assert_array_equal(vol.array[60, 40, 10], [498.0, 491.0])
    assert load_nifti(EXAMPLE4D, dtype=np.float64).array.dtype == np.float64
    nifti2 = load_nifti(os.path.join(data_path, "example_nifti2.nii.gz"))  # NIfTI-2 header
    assert nifti2.array.shape == (32, 20, 12, 2)
    np.testing.assert_array_equal(nifti2.array[16, 10, 6], [180.0, 188.0])


def test_real_icbm152_template():
    vol = load_nifti(os.path.join(default_root(), FILES["t1"]))
    assert vol.array.shape == (197, 233, 189, 1) and vol.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(vol.affine[:3, 3], [-98.0, -134.0, -72.0])
    assert vol.array[98, 116, 94, 0] == 198.0 and vol.array[60, 100, 80, 0] == 219.0
    assert vol.array.max() == 255.0


def test_canonical_reorientation_preserves_world_coordinates(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 5, 4)).astype(np.float32)
    affine = _las_oblique()
    path = _save(tmp_path / "las.nii.gz", data, affine)
    vol = load_nifti(path)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.spacing == pytest.approx((0.9, 1.1, 3.0), abs=1e-6)
    for ijk in [(0, 0, 0), (1, 2, 3), (5, 4, 0), (3, 1, 2)]:
        world = affine @ [*ijk, 1]
        new = np.linalg.solve(vol.affine, world)[:3]
        np.testing.assert_allclose(new, np.round(new), atol=1e-4)
        assert vol.array[tuple(np.round(new).astype(int))][0] == data[ijk]


def test_intensity_scaling_and_vector_images(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = _save(tmp_path / "scaled.nii", data, np.eye(4), scl_slope=0.5, scl_inter=-10.0)
    np.testing.assert_allclose(load_nifti(path).array[..., 0], data * 0.5 - 10.0)
    vec = np.arange(2 * 3 * 4 * 3, dtype=np.float32).reshape(2, 3, 4, 1, 3)  # NIfTI vector layout
    vol = load_nifti(_save(tmp_path / "vec.nii.gz", vec, np.eye(4)))
    assert vol.array.shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(vol.array, vec[:, :, :, 0, :])
    with pytest.raises(MedjaxError, match=r"2d.nii: expected a 3D or 4D"):
        load_nifti(_save(tmp_path / "2d.nii", np.zeros((4, 4), np.float32), np.eye(4)))
    with pytest.raises(MedjaxError, match="dtype must be a floating type"):
        load_nifti(path, dtype=np.int16)


def test_unreadable_files_name_the_path(tmp_path):
    with open(EXAMPLE4D, "rb") as f:
        blob = f.read()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(blob[: len(blob) // 2])  # a download interrupted half-way
    with pytest.raises(MedjaxError, match=r"cannot read image file .*cut.nii.gz"):
        load_nifti(str(cut))
    with pytest.raises(MedjaxError, match=r"cannot read label file .*cut.nii.gz"):
        load_nifti_label(str(cut))
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"not a nifti header" * 10)
    with pytest.raises(MedjaxError, match=r"cannot read image file .*junk.nii"):
        load_nifti(str(junk))
    short = tmp_path / "short.nii.gz"  # valid gzip, header fine, voxels missing
    short.write_bytes(gzip.compress(gzip.decompress(blob)[:5000]))
    with pytest.raises(MedjaxError, match=r"cannot read image file .*short.nii.gz: OSError: Expected 1179648") as e:
        load_nifti(str(short))
    assert "\n" not in str(e.value)  # nibabel's two-line message is folded: the CLI prints one line
    with pytest.raises(MedjaxError, match=r"image file not found: .*missing.nii.gz"):
        load_nifti(str(tmp_path / "missing.nii.gz"))
    with pytest.raises(MedjaxError, match=r"image path is not a file: "):
        load_nifti(str(tmp_path))


def test_labels_are_integer_class_maps(tmp_path):
    label = np.zeros((5, 4, 3), np.uint8)
    label[1:3, 1:3, 1] = 2
    label[4, 0, 0] = 1
    vol = load_nifti_label(_save(tmp_path / "seg.nii.gz", label, _las_oblique()), num_classes=3)
    assert vol.array.shape == (5, 4, 3) and vol.array.dtype == np.int32
    np.testing.assert_array_equal(vol.array, label[::-1].astype(np.int32))  # LAS -> RAS flips x
    assert np.bincount(vol.array.ravel()).tolist() == [55, 1, 4]
    as_float = load_nifti_label(_save(tmp_path / "f.nii", label.astype(np.float32), np.eye(4)))
    np.testing.assert_array_equal(as_float.array, label)
    with_channel = load_nifti_label(_save(tmp_path / "c.nii", label[..., None], np.eye(4)))
    assert with_channel.array.shape == (5, 4, 3)


def test_bad_labels_name_the_file_and_values(tmp_path):
    label = np.zeros((4, 4, 4), np.int16)
    label[0, 0, :2] = 3
    label[1, 1, 1] = 7
    path = _save(tmp_path / "case_3.nii.gz", label, np.eye(4))
    with pytest.raises(MedjaxError, match=r"case_3.nii.gz: label values must be in 0..2, found \[3, 7\] \(3 voxels\)"):
        load_nifti_label(path, num_classes=3)
    assert load_nifti_label(path).array.max() == 7  # no class count given: any non-negative integer
    neg = label.copy()
    neg[2, 2, 2] = -1
    with pytest.raises(MedjaxError, match=r"neg.nii.gz: label values must be non-negative, found \[-1\]"):
        load_nifti_label(_save(tmp_path / "neg.nii.gz", neg, np.eye(4)))
    frac = label.astype(np.float32)
    frac[3, 3, 3] = 0.5
    with pytest.raises(MedjaxError, match=r"frac.nii.gz: label values must be whole numbers.*0.5"):
        load_nifti_label(_save(tmp_path / "frac.nii.gz", frac, np.eye(4)))
    frac[3, 3, 3] = np.nan
    with pytest.raises(MedjaxError, match=r"nan.nii.gz: label has 1 non-finite voxels"):
        load_nifti_label(_save(tmp_path / "nan.nii.gz", frac, np.eye(4)))
    with pytest.raises(MedjaxError, match=r"multi.nii.gz: a label must be 3D"):
        load_nifti_label(_save(tmp_path / "multi.nii.gz", np.zeros((4, 4, 4, 2), np.uint8), np.eye(4)))


def test_check_pair_names_both_files(tmp_path):
    affine = _las_oblique()
    image = load_nifti(_save(tmp_path / "img.nii.gz", np.zeros((6, 5, 4), np.float32), affine))
    label = load_nifti_label(_save(tmp_path / "lab.nii.gz", np.zeros((6, 5, 4), np.uint8), affine))
    check_pair(image, label)
    nudged = affine.copy()
    nudged[0, 3] += 1e-5  # float32 header rounding: accepted
    check_pair(image, load_nifti_label(_save(tmp_path / "ok.nii.gz", np.zeros((6, 5, 4), np.uint8), nudged)))
    shifted = affine.copy()
    shifted[1, 3] += 0.01
    bad = load_nifti_label(_save(tmp_path / "shifted.nii.gz", np.zeros((6, 5, 4), np.uint8), shifted))
    with pytest.raises(MedjaxError, match=r"image .*img.nii.gz and label .*shifted.nii.gz are on different grids: "
                                          r"corner voxels differ by up to 0.01 mm"):
        check_pair(image, bad)
    flipped = load_nifti_label(_save(tmp_path / "ras.nii.gz", np.zeros((6, 5, 4), np.uint8), np.diag([0.9, 1.1, 3, 1])))
    with pytest.raises(MedjaxError, match=r"img.nii.gz and label .*ras.nii.gz are on different grids"):
        check_pair(image, flipped)
    small = load_nifti_label(_save(tmp_path / "small.nii.gz", np.zeros((6, 5, 3), np.uint8), affine))
    with pytest.raises(MedjaxError, match=r"image .*img.nii.gz has shape \(6, 5, 4\) but label .*small.nii.gz has "
                                          r"\(6, 5, 3\)"):
        check_pair(image, small)


def test_files_on_disk_are_unchanged(tmp_path):
    written = _save(tmp_path / "w.nii.gz", np.ones((3, 3, 3), np.float32), _las_oblique())
    paths = [ANATOMICAL, EXAMPLE4D, written]
    before = [_fingerprint(p) for p in paths]
    for p in paths:
        load_nifti(p)
    load_nifti_label(written)
    assert [_fingerprint(p) for p in paths] == before
