"""3D TIFF stacks through tifffile: ImageJ hyperstacks and OME-TIFF with their voxel sizes converted to mm, plain
multi-page stacks at 1 mm with a note, labels checked like NIfTI labels, broken input in one line."""

import sys

import numpy as np
import pytest
import tifffile

from medjax.data.formats import load_label, load_volume
from medjax.errors import MedjaxError

ZYX = (4, 5, 6)


def _stack():
    return np.arange(np.prod(ZYX), dtype=np.uint16).reshape(ZYX) * 100 + 7


def test_imagej_hyperstack_channels_and_spacing(tmp_path):
    data = np.stack([_stack(), _stack() + 1], axis=1)  # ImageJ order Z, C, Y, X
    path = str(tmp_path / "cells.tif")
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZCYX"})
    vol = load_volume(path)
    assert vol.array.shape == (6, 5, 4, 2) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array[..., 0], np.transpose(_stack(), (2, 1, 0)))
    np.testing.assert_array_equal(vol.array[..., 1] - vol.array[..., 0], np.ones((6, 5, 4)))
    assert vol.spacing == pytest.approx((0.5e-3, 0.25e-3, 2e-3), rel=1e-6) and vol.notes == ()
    np.testing.assert_allclose(vol.affine, np.diag([0.5e-3, 0.25e-3, 2e-3, 1.0]), rtol=1e-6)


def test_ome_tiff_spacing_with_units(tmp_path):
    path = str(tmp_path / "scan.ome.tif")
    tifffile.imwrite(path, _stack(), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.25,
        "PhysicalSizeZ": 2.0, "PhysicalSizeZUnit": "mm"})  # Y has OME's default unit, micrometres
    vol = load_volume(path)
    assert vol.array.shape == (6, 5, 4, 1) and vol.array[5, 4, 3, 0] == 119 * 100 + 7
    assert vol.spacing == pytest.approx((0.5e-3, 0.25e-3, 2.0), rel=1e-9)


def test_plain_stack_is_one_mm_with_a_note_and_labels(tmp_path):
    path = str(tmp_path / "pages.tif")
    for page in _stack():
        tifffile.imwrite(path, page, append=True, metadata=None)  # a bare multi-page TIFF
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array[..., 0], np.transpose(_stack(), (2, 1, 0)))
    assert vol.spacing == (1.0, 1.0, 1.0)
    assert vol.notes == ("pages.tif: no ImageJ or OME spacing with a length unit: 1 mm assumed along xyz",)
    label = (_stack() % 3).astype(np.uint8)
    tifffile.imwrite(str(tmp_path / "seg.tif"), label, imagej=True, metadata={"axes": "ZYX", "unit": "pixel"})
    seg = load_label(str(tmp_path / "seg.tif"), num_classes=3)
    assert seg.array.dtype == np.int32 and seg.array.shape == (6, 5, 4)
    np.testing.assert_array_equal(seg.array, np.transpose(label, (2, 1, 0)))
    with pytest.raises(MedjaxError, match=r"seg.tif: label values must be in 0..1, found \[2\]"):
        load_label(str(tmp_path / "seg.tif"), num_classes=2)


def test_broken_tiffs_name_the_file(tmp_path, monkeypatch):
    both = np.zeros((2, 3, 2, 5, 6), np.uint8)  # T, Z, C, Y, X: time and channels cannot both be channels
    tifffile.imwrite(str(tmp_path / "tzc.tif"), both, imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(MedjaxError, match=r"tzc.tif: TIFF axes TZCYX \(2, 3, 2, 5, 6\) hold more than one axis of "
                                          r"a kind"):
        load_volume(str(tmp_path / "tzc.tif"))
    tifffile.imwrite(str(tmp_path / "ok.tif"), _stack(), photometric="minisblack")
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:100])
    with pytest.raises(MedjaxError, match=r"cannot read image file .*cut.tif: ") as e:
        load_volume(str(tmp_path / "cut.tif"))
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "tifffile", None)
    with pytest.raises(MedjaxError, match=r"reading .*ok.tif needs tifffile: pip install 'medjax\[pathology\]'"):
        load_volume(str(tmp_path / "ok.tif"))
