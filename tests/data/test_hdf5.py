"""HDF5 volumes and labels: files in the published layouts of fastMRI (reconstruction_rss beside complex k-space)
and the preprocessed ACDC / Synapse sets (image / label, slice first), read against the same arrays saved as NIfTI;
configurable keys and axis orders; spacing from an attribute or 1 mm with a note; broken input in one line."""

import sys

import h5py
import nibabel as nib
import numpy as np
import pytest

from medjax.data.formats import load_label, load_volume
from medjax.data.hdf5 import Hdf5Layout
from medjax.data.nifti import check_pair, load_nifti, load_nifti_label
from medjax.errors import MedjaxError

ZYX = (3, 8, 6)  # slices, rows, columns


def _image():
    return (np.arange(np.prod(ZYX)).reshape(ZYX) * 0.25).astype(np.float32)


def _label():
    y = np.zeros(ZYX, np.uint8)
    y[:, 2:6, 1:4] = 1
    y[1, 3:5, 2:3] = 3
    return y


@pytest.fixture
def acdc(tmp_path):
    """A preprocessed ACDC volume as SSL4MIS writes it (image and label in one file), plus a spacing attribute."""
    path = tmp_path / "patient001_frame01.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=_image(), compression="gzip")
        f.create_dataset("label", data=_label(), compression="gzip")
        f.attrs["spacing"] = (1.5, 1.25, 10.0)  # x, y, z mm
    return str(path)


def test_acdc_layout_equals_the_nifti_of_the_same_arrays(acdc, tmp_path):
    image, label = load_volume(acdc), load_label(acdc, num_classes=4)
    affine = np.diag([1.5, 1.25, 10.0, 1.0])
    nib.save(nib.Nifti1Image(np.transpose(_image(), (2, 1, 0)), affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(np.transpose(_label(), (2, 1, 0)), affine), str(tmp_path / "lab.nii.gz"))
    ref_image, ref_label = load_nifti(str(tmp_path / "img.nii.gz")), load_nifti_label(str(tmp_path / "lab.nii.gz"))
    assert image.array.shape == (6, 8, 3, 1) and label.array.shape == (6, 8, 3) and label.array.dtype == np.int32
    np.testing.assert_array_equal(image.array, ref_image.array)
    np.testing.assert_array_equal(label.array, ref_label.array)
    np.testing.assert_array_equal(image.affine, ref_image.affine)
    assert image.spacing == (1.5, 1.25, 10.0) and image.notes == ()
    assert image.array[5, 7, 2, 0] == 143 * 0.25  # x = column 5, y = row 7, z = slice 2
    assert np.bincount(label.array.ravel()).tolist() == [108, 34, 0, 2]
    check_pair(image, label)
    with pytest.raises(MedjaxError, match=r"patient001_frame01.h5: label values must be in 0..2, found \[3\]"):
        load_label(acdc, num_classes=3)


def test_fastmri_layout_with_its_key_and_no_spacing(tmp_path):
    path = str(tmp_path / "file1000001.h5")
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=(rng.normal(size=(3, 2, 8, 6)) + 1j).astype(np.complex64))
        f.create_dataset("reconstruction_rss", data=_image())
        f.create_dataset("ismrmrd_header", data=b"<ismrmrdHeader/>")
        f.attrs["acquisition"] = "CORPD_FBK"
    vol = load_volume(path, hdf5=Hdf5Layout(image_key="reconstruction_rss"))
    np.testing.assert_array_equal(vol.array[..., 0], np.transpose(_image(), (2, 1, 0)))
    np.testing.assert_array_equal(vol.affine, np.eye(4))
    assert vol.notes == ("no 'spacing' attribute in file1000001.h5: 1 mm voxels assumed",)
    with pytest.raises(MedjaxError, match=r"file1000001.h5: dataset 'kspace' holds complex64 values, not real numbers "
                                          r"\(raw k-space\? fastMRI keeps images under reconstruction_rss"):
        load_volume(path, hdf5=Hdf5Layout(image_key="kspace"))
    with pytest.raises(MedjaxError, match=r"file1000001.h5 has no dataset 'image' \(image\); its datasets: "
                                          r"ismrmrd_header, kspace, reconstruction_rss$"):
        load_volume(path)


def test_axis_orders_slices_and_channels(tmp_path):
    path = str(tmp_path / "cases.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("slice", data=_image()[1])  # (rows, columns): one 2D slice
        f.create_dataset("xyz", data=np.transpose(_image(), (2, 1, 0)))
        f.create_dataset("multi", data=np.stack([_image(), -_image()]))  # (channel, z, y, x)
        f["slice"].attrs["spacing"] = (0.5, 0.75)
    one = load_volume(path, hdf5=Hdf5Layout(image_key="slice", axes="yx"))
    assert one.array.shape == (6, 8, 1, 1) and one.spacing == (0.5, 0.75, 1.0) and one.notes == ()
    np.testing.assert_array_equal(one.array[:, :, 0, 0], _image()[1].T)
    same = load_volume(path, hdf5=Hdf5Layout(image_key="xyz", axes="xyz"))
    np.testing.assert_array_equal(same.array[..., 0], np.transpose(_image(), (2, 1, 0)))
    multi = load_volume(path, hdf5=Hdf5Layout(image_key="multi", axes="czyx"))
    assert multi.array.shape == (6, 8, 3, 2)
    np.testing.assert_array_equal(multi.array[..., 1], -same.array[..., 0])
    with pytest.raises(MedjaxError, match=r"cases.h5: dataset 'multi' has shape \(2, 3, 8, 6\) but the HDF5 axes "
                                          r"'zyx' name 3 axes"):
        load_volume(path, hdf5=Hdf5Layout(image_key="multi"))
    with pytest.raises(MedjaxError, match=r"HDF5 axes 'zyxq' must name each stored axis once"):
        load_volume(path, hdf5=Hdf5Layout(image_key="multi", axes="zyxq"))


def test_bad_spacing_corrupt_file_and_missing_extra(acdc, tmp_path, monkeypatch):
    with h5py.File(acdc, "a") as f:
        f.attrs["spacing"] = (1.5, 1.25)
    with pytest.raises(MedjaxError, match=r"attribute 'spacing' must hold 3 positive numbers \(x, y, z mm\), got "
                                          r"\[1.5, 1.25\]"):
        load_volume(acdc)
    data = open(acdc, "rb").read()
    (tmp_path / "cut.h5").write_bytes(data[:1000])
    with pytest.raises(MedjaxError, match=r"cannot read image file .*cut.h5: ") as e:
        load_volume(str(tmp_path / "cut.h5"))
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MedjaxError, match=r"reading .*patient001_frame01.h5 needs h5py: pip install 'medjax\[hdf5\]'"):
        load_volume(acdc)
