"""Cine readers: 4D NIfTI written here with chosen affines and frame intervals, multi-frame DICOM (pydicom's real
RGB two-frame file, and an ultrasound-like loop written here), cine MR folders of single-frame phases, and a
folder of cases through the `cine_folder` source."""

import os

import ml_collections
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medjax.data.cine import beating_heart
from medjax.data.cine_io import load_cine, load_cine_file, load_cine_folder, load_cine_label, load_dicom_cine
from medjax.data.dicom import load_dicom_series
from medjax.data.sources import load_splits
from medjax.data.volume import as_ras
from medjax.errors import MedjaxError

LPS = np.diag([-1.5, -1.5, 8.0, 1.0])  # a 2D short-axis cine stored L-P-S: x and y must flip


def _save_nifti(path, data, affine=LPS, dt=None, unit="msec"):
    img = nib.Nifti1Image(data, affine)
    if dt is not None:
        img.header.set_xyzt_units("mm", unit)
        zooms = list(img.header.get_zooms())
        zooms[3] = dt
        img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return str(path)


def test_4d_nifti_is_time_first_ras_with_frame_times(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 5, 1, 4)).astype(np.float32)
    cine = load_cine_file(_save_nifti(tmp_path / "c.nii.gz", data, dt=0.04, unit="sec"))
    assert cine.array.shape == (4, 6, 5, 1, 1) and cine.array.dtype == np.float32
    for t in range(4):
        np.testing.assert_array_equal(cine.array[t, ..., 0], as_ras(data[..., t], LPS)[0])
    np.testing.assert_allclose(cine.frame_times_ms, [0, 40, 80, 120])
    assert cine.spacing == pytest.approx((1.5, 1.5, 8.0)) and cine.num_frames == 4
    assert load_cine_file(_save_nifti(tmp_path / "n.nii", data)).frame_times_ms is None  # no interval stored
    with pytest.raises(MedjaxError, match=r"3d.nii: a cine image needs a 4th \(time\) axis"):
        load_cine_file(_save_nifti(tmp_path / "3d.nii", data[..., 0]))


def test_real_4d_fmri_frames_equal_the_volume_reader_channels():
    """nibabel's example4d.nii.gz (128x96x24, 2 time points, oblique LAS): frame t is load_nifti's channel t."""
    from nibabel.testing import data_path

    from medjax.data.nifti import load_nifti

    path = os.path.join(data_path, "example4d.nii.gz")
    cine, volume = load_cine(path), load_nifti(path)
    assert cine.array.shape == (2, *volume.array.shape[:3], 1)
    for t in range(2):
        np.testing.assert_array_equal(cine.array[t, ..., 0], volume.array[..., t])
    np.testing.assert_allclose(cine.affine, volume.affine)
    # Its header says 2000 *seconds* per frame (a TR of 2000 ms stored with the wrong unit): kept, and named.
    np.testing.assert_allclose(cine.frame_times_ms, [0.0, 2e6])
    assert cine.notes and "2000 s as the header states it" in cine.notes[0]


def test_4d_nifti_labels_are_checked(tmp_path):
    label = np.zeros((6, 5, 1, 4), np.int16)
    label[1:3, 1:3, 0, :] = 1
    out = load_cine_label(_save_nifti(tmp_path / "l.nii.gz", label), num_classes=2)
    assert out.array.shape == (4, 6, 5, 1) and out.array.dtype == np.int32
    np.testing.assert_array_equal(out.array[2], as_ras(label[..., 2], LPS)[0])
    with pytest.raises(MedjaxError, match=r"bad.nii: label values must be in 0..1, found \[3\]"):
        load_cine_label(_save_nifti(tmp_path / "bad.nii", label * 3), num_classes=2)


def test_real_rgb_multiframe_dicom_becomes_a_luminance_cine():
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    cine = load_dicom_cine(path)
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float32)  # (2, 100, 100, 3)
    assert cine.array.shape == (2, 100, 100, 1, 1)
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(cine.array[:, :, :, 0, 0], np.transpose(grey, (0, 2, 1)), rtol=1e-6)
    assert any("no patient geometry" in n for n in cine.notes) and cine.frame_times_ms is None


def _ultrasound(path, frames=5, rows=6, cols=8):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                    "RescaleIntercept"):
        delattr(ds, keyword)
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "US", rows, cols, frames
    t, r, c = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(cols), indexing="ij")
    ds.PixelData = (100 * t + 10 * r + c).astype(np.int16).tobytes()
    ds.FrameTime = "33.3"
    region = Dataset()
    region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3  # cm
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.02, 0.03
    ds.SequenceOfUltrasoundRegions = [region]
    ds.save_as(str(path))
    return str(path)


def test_ultrasound_loop_keeps_image_axes_region_spacing_and_frame_time(tmp_path):
    cine = load_cine(_ultrasound(tmp_path / "echo.dcm"))
    assert cine.array.shape == (5, 8, 6, 1, 1)  # (T, columns, rows, 1, 1)
    assert cine.array[3, 7, 2, 0, 0] == 100 * 3 + 10 * 2 + 7
    assert cine.spacing == pytest.approx((0.2, 0.3, 1.0))  # PhysicalDeltaX/Y in cm
    np.testing.assert_allclose(cine.frame_times_ms, np.arange(5) * 33.3)
    folder = tmp_path / "folder"
    folder.mkdir()
    os.rename(tmp_path / "echo.dcm", folder / "echo.dcm")
    np.testing.assert_array_equal(load_cine(str(folder)).array, cine.array)  # a folder holding the one file


def test_rt_dose_grid_is_not_a_cine():
    with pytest.raises(MedjaxError, match="slices of one volume, not time points"):
        load_dicom_cine(get_testdata_file("rtdose.dcm"))


def _cine_mr(folder, positions=2, phases=3, drop=None, same_trigger=False):
    """Single-frame files: `positions` axial slices 2.5 mm apart x `phases` trigger times, shuffled names.
    Stored value 100 * phase + 10 * position + column."""
    os.makedirs(folder, exist_ok=True)
    names = np.random.default_rng(1).permutation(positions * phases)
    k = 0
    for p in range(positions):
        for t in range(phases):
            if (p, t) == drop:
                continue
            ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            ds.Rows, ds.Columns = 4, 5
            ds.PixelData = (100 * t + 10 * p + np.arange(5)[None].repeat(4, 0)).astype(np.int16).tobytes()
            ds.ImagePositionPatient = ["0", "0", f"{2.5 * p}"]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.PixelSpacing = ["1.25", "1.25"]
            ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
            ds.TriggerTime = "0" if same_trigger else f"{40.0 * t + 0.5 * p:.1f}"
            ds.InstanceNumber = (5 * k) % 7
            ds.SOPInstanceUID = f"1.2.3.{p}.{t}"
            ds.save_as(os.path.join(folder, f"IM{names[k]:03d}"))
            k += 1
    return str(folder)


def test_cine_mr_folder_orders_phases_by_trigger_time(tmp_path):
    cine = load_dicom_cine(_cine_mr(tmp_path / "mr"))
    assert cine.array.shape == (3, 5, 4, 2, 1)  # (T, X, Y, Z, 1)
    # Columns run towards the patient's left (LPS +x), so RAS x reverses them: compare each row as a set.
    for t in range(3):
        for p in range(2):
            np.testing.assert_array_equal(sorted(cine.array[t, :, 0, p, 0]), 100 * t + 10 * p + np.arange(5))
    np.testing.assert_allclose(cine.frame_times_ms, [0, 40, 80])
    one_phase = tmp_path / "phase0"
    one_phase.mkdir()
    # The geometry of every phase is the series reader's.
    for name in os.listdir(tmp_path / "mr"):
        ds = pydicom.dcmread(tmp_path / "mr" / name)
        if float(ds.TriggerTime) < 1:
            ds.save_as(one_phase / name)
    vol = load_dicom_series(str(one_phase))
    np.testing.assert_allclose(cine.affine, vol.affine)
    np.testing.assert_array_equal(cine.array[0], vol.array)
    with pytest.raises(MedjaxError, match=r"different numbers of cardiac phases \[2, 3\]"):
        load_dicom_cine(_cine_mr(tmp_path / "missing", drop=(1, 2)))
    with pytest.raises(MedjaxError, match="share a TriggerTime"):
        load_dicom_cine(_cine_mr(tmp_path / "same", same_trigger=True))
    with pytest.raises(MedjaxError, match="this is a volume, not a cine"):
        load_dicom_cine(_cine_mr(tmp_path / "vol", phases=1))


def _cases(root, n=5, frames=6, size=32, targets=True):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = ["case,ef"]
    for i in range(n):
        q = beating_heart(i, num_frames=frames, size=size)
        # 2D cine as NIfTI: (X, Y, 1, T), RAS already.
        _save_nifti(root / "images" / f"p{i}.nii.gz", np.moveaxis(q["image"][..., 0], 0, -1)[:, :, None],
                    np.eye(4), dt=30.0)
        _save_nifti(root / "labels" / f"p{i}.nii.gz", np.moveaxis(q["label"], 0, -1)[:, :, None].astype(np.uint8),
                    np.eye(4))
        rows.append(f"p{i},{q['ef']:.6f}")
    if targets:
        (root / "targets.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cine_folder_reads_cases_labels_and_targets(tmp_path):
    root = _cases(tmp_path / "cines")
    out = load_cine_folder(str(root), num_classes=3)
    assert out["cases"] == [f"p{i}" for i in range(5)]
    assert out["image"].shape == (5, 6, 32, 32, 1) and out["label"].shape == (5, 6, 32, 32)
    q = beating_heart(2, num_frames=6, size=32)
    np.testing.assert_array_equal(out["label"][2], q["label"])
    z = (q["image"] - q["image"].mean()) / q["image"].std()
    np.testing.assert_allclose(out["image"][2], z, atol=1e-5)  # z-scored over all frames
    np.testing.assert_allclose(out["target"][:, 0], [beating_heart(i, num_frames=6, size=32)["ef"] for i in range(5)],
                               atol=1e-6)
    cfg = ml_collections.ConfigDict(dict(name="cine_folder", root=str(root), num_classes=3, val_fraction=0.2,
                                         test_fraction=0.2, class_names=("bg", "lv", "myo")))
    data = load_splits(cfg)
    assert {k: len(v["image"]) for k, v in data.splits.items()} == {"train": 3, "val": 1, "test": 1}
    assert data.class_names == ["bg", "lv", "myo"]
    for split, arrays in data.splits.items():  # each split's case ids name its examples, in order
        np.testing.assert_array_equal(arrays["target"], out["target"][[int(c[1:]) for c in data.cases(split)]])
    assert sorted(c for split in data.splits for c in data.cases(split)) == out["cases"]


def test_cine_folder_errors_name_the_case(tmp_path):
    root = _cases(tmp_path / "a", n=2)
    os.remove(root / "labels" / "p1.nii.gz")
    with pytest.raises(MedjaxError, match="no label for case 'p1'"):
        load_cine_folder(str(root))
    root = _cases(tmp_path / "b", n=2)
    _save_nifti(root / "images" / "p1.nii.gz", np.zeros((32, 32, 1, 5), np.float32), np.eye(4))
    with pytest.raises(MedjaxError, match=r"label .*p1.nii.gz has shape \(T, X, Y, Z\) \(6, 32, 32, 1\) but its "
                                          r"image .*p1.nii.gz has \(5, 32, 32, 1\)"):
        load_cine_folder(str(root))
    _save_nifti(root / "images" / "p1.nii.gz", np.zeros((32, 32, 1, 6), np.float32), np.diag([2, 2, 1, 1]))
    with pytest.raises(MedjaxError, match=r"cases differ in in-plane spacing \(p0: 1 x 1 mm, p1: 2 x 2 mm\): set "
                                          r"config.data.in_plane_mm"):
        load_cine_folder(str(root))
    root = _cases(tmp_path / "c", n=2)
    (root / "targets.csv").write_text("case,ef\np0,0.5\n")
    with pytest.raises(MedjaxError, match=r"targets.csv: no targets for cases \['p1'\]"):
        load_cine_folder(str(root))
    with pytest.raises(MedjaxError, match="normalize='robust' is not one of"):
        load_cine_folder(str(root), normalize="robust")
    with pytest.raises(MedjaxError, match="cine image folder not found"):
        load_cine_folder(str(tmp_path / "nowhere"))


def test_cines_in_other_formats_read_like_the_nifti(tmp_path):
    """The same sequence as a 4D NRRD (SimpleITK, LPS) and as an HDF5 file (time first) gives the NIfTI's frames."""
    import h5py
    import SimpleITK as sitk

    from medjax.data.hdf5 import Hdf5Layout

    data = np.random.default_rng(0).normal(size=(6, 5, 1, 4)).astype(np.float32)  # (x, y, z, t), stored LPS
    ref = load_cine_file(_save_nifti(tmp_path / "c.nii.gz", data, affine=np.diag([-1.0, -1.0, 8.0, 1.0])))
    itk = sitk.JoinSeries([sitk.GetImageFromArray(np.transpose(data[..., t], (2, 1, 0))) for t in range(4)])
    itk.SetSpacing((1.0, 1.0, 8.0, 1.0))  # index (i, j, k) -> LPS (i, j, 8 k) = RAS (-i, -j, 8 k)
    sitk.WriteImage(itk, str(tmp_path / "c.nrrd"))
    nrrd = load_cine(str(tmp_path / "c.nrrd"))
    np.testing.assert_array_equal(nrrd.array, ref.array)
    np.testing.assert_allclose(nrrd.affine, ref.affine)
    assert nrrd.frame_times_ms is None  # only NIfTI stores a frame interval
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("image", data=np.transpose(data, (3, 2, 1, 0)))  # (t, z, y, x)
        f.create_dataset("label", data=(np.transpose(data, (3, 2, 1, 0)) > 0).astype(np.uint8))
        f.create_dataset("still", data=np.transpose(data[..., 0], (2, 1, 0)))  # one frame: (z, y, x)
    h5 = load_cine(str(tmp_path / "c.h5"), hdf5=Hdf5Layout(axes="tzyx"))
    np.testing.assert_array_equal(h5.array, load_cine_file(_save_nifti(tmp_path / "eye.nii", data, np.eye(4))).array)
    label = load_cine_label(str(tmp_path / "c.h5"), num_classes=2, hdf5=Hdf5Layout(axes="tzyx"))
    assert label.array.shape == (4, 6, 5, 1)
    np.testing.assert_array_equal(label.array, (h5.array[..., 0] > 0).astype(np.int32))
    with pytest.raises(MedjaxError, match=r"c.h5: a cine image needs a 4th \(time\) axis of several frames, got "
                                          r"shape \(6, 5, 1\)"):
        load_cine(str(tmp_path / "c.h5"), hdf5=Hdf5Layout(image_key="still"))


# ------------------------------------------------ labels on ED and ES only: the ACDC and M&Ms layouts, written here

ACDC_LV, ACDC_MYO = 3, 2  # ACDC's label values (1 is the RV, which the simulator has not)


def _heart(seed, frames, size, spatial_dims=2):
    """A simulated patient as stored on disk: image (X, Y, Z, T) and labels (T, X, Y, Z), Z = 1 for 2D."""
    q = beating_heart(seed, num_frames=frames, size=size, spatial_dims=spatial_dims)
    image = np.moveaxis(q["image"][..., 0], 0, -1)
    label = q["label"]
    if spatial_dims == 2:
        image, label = image[:, :, None], label[..., None]
    return q, image, label


def write_acdc(root, specs, spatial_dims=2, frames_of=None):
    """ACDC's training/ layout: patientXXX/ with Info.cfg (ED and ES counted from 1), patientXXX_4d.nii.gz and the
    ED / ES frames with their _gt labels (ACDC's values: LV 3, myocardium 2). `specs` are (seed, frames, size,
    in-plane mm); `frames_of(q)` picks (ED, ES) from 0 (default: the simulator's)."""
    for seed, frames, size, mm in specs:
        q, image, label = _heart(seed, frames, size, spatial_dims)
        label = np.select([label == 1, label == 2], [ACDC_LV, ACDC_MYO], 0).astype(np.uint8)
        name = f"patient{seed + 1:03d}"
        case = root / name
        case.mkdir(parents=True)
        affine = np.diag([mm, mm, 10.0 if spatial_dims == 2 else mm, 1.0])
        _save_nifti(case / f"{name}_4d.nii.gz", image, affine, dt=30.0)
        ed, es = frames_of(q) if frames_of else (q["ed_frame"], q["es_frame"])
        (case / "Info.cfg").write_text(f"ED: {ed + 1}\nES: {es + 1}\nGroup: NOR\nHeight: 170.0\nNbFrame: {frames}\n"
                                       f"Weight: 70.0\n")
        for t in (ed, es):
            _save_nifti(case / f"{name}_frame{t + 1:02d}.nii.gz", image[..., t], affine)
            _save_nifti(case / f"{name}_frame{t + 1:02d}_gt.nii.gz", label[t], affine)
    return root


def write_mnms(root, specs, spatial_dims=2, csv="info.csv"):
    """M&Ms' Training/Labeled/ layout: <code>/<code>_sa.nii.gz and <code>_sa_gt.nii.gz (labelled on ED and ES only,
    M&Ms' values: LV 1, myocardium 2, as the simulator's), and the dataset CSV (frames from 0) beside the root."""
    rows = ["External code,VendorName,Vendor,Centre,ED,ES"]
    for seed, frames, size, mm in specs:
        q, image, label = _heart(seed, frames, size, spatial_dims)
        code = f"A{seed}B{seed}C{seed}"
        (root / code).mkdir(parents=True)
        ed, es = q["ed_frame"], q["es_frame"]
        keep = np.zeros_like(label)
        keep[[ed, es]] = label[[ed, es]]
        affine = np.diag([mm, mm, 10.0 if spatial_dims == 2 else mm, 1.0])
        _save_nifti(root / code / f"{code}_sa.nii.gz", image, affine)
        _save_nifti(root / code / f"{code}_sa_gt.nii.gz", np.moveaxis(keep, 0, -1).astype(np.uint8), affine)
        rows.append(f"{code},Siemens,A,1,{ed},{es}")
    (root.parent / csv).write_text("\n".join(rows) + "\n")
    return root


# (seed, frames, size, mm): 20 px at 1.2 mm and 16 at 1.5 become 16 px at 1.5 mm; 16 at 1.2 becomes 13 (padded)
ACDC_SPECS = ((0, 8, 20, 1.2), (1, 6, 16, 1.5), (2, 10, 16, 1.2))


def test_acdc_layout_brings_cases_onto_one_grid_and_masks_all_but_the_labelled_frames(tmp_path):
    root = write_acdc(tmp_path / "training", ACDC_SPECS)
    qs = [beating_heart(seed, num_frames=f, size=s) for seed, f, s, _ in ACDC_SPECS]
    ed_es = [(q["ed_frame"], q["es_frame"]) for q in qs]
    assert ed_es == [(6, 2), (0, 3), (7, 2)]
    out = load_cine_folder(str(root), layout="acdc", in_plane_mm=1.5, ef_class=ACDC_LV)
    assert out["cases"] == ["patient001", "patient002", "patient003"]
    assert out["image"].shape == (3, 10, 16, 16, 1) and out["label"].shape == out["mask"].shape == (3, 10, 16, 16)
    np.testing.assert_array_equal(out["ed_es"], ed_es)
    inside = np.zeros((3, 10))  # voxels with a reference per (case, frame): the ED and ES frames, inside the FOV
    for i, (pixels, (ed, es)) in enumerate(zip((256, 256, 13 * 13), ed_es)):
        inside[i, [ed, es]] = pixels
    np.testing.assert_array_equal(out["mask"].sum(axis=(2, 3)), inside)
    np.testing.assert_array_equal(out["mask"][2, 7, 1:14, 1:14], 1.0)  # 13 px centred in 16: rows / cols 1..13
    # patient002 is stored at 1.5 mm and 16 px: its frames are the simulator's, z-scored, then 4 padded frames
    q = qs[1]
    np.testing.assert_allclose(out["image"][1, :6, :, :, 0], (q["image"][..., 0] - q["image"].mean()) /
                               q["image"].std(), atol=1e-5)
    assert not out["image"][1, 6:].any()
    np.testing.assert_array_equal(out["label"][1, 0], np.select([q["label"][0] == 1, q["label"][0] == 2], [3, 2]))
    assert not out["label"][1, 1].any()  # an unlabelled frame: 0, and masked out
    # EF of the labels at ED and ES on the stored grids: (EDV - ESV) / EDV of the LV voxels
    ef = [1 - (q["label"][es] == 1).sum() / (q["label"][ed] == 1).sum() for q, (ed, es) in zip(qs, ed_es)]
    np.testing.assert_allclose(out["target"][:, 0], ef, rtol=1e-6)
    # a common length shorter than a case keeps the window that holds its ED and ES frames
    out = load_cine_folder(str(root), layout="acdc", in_plane_mm=1.5, num_frames=6, grid=(14, 18))
    assert out["image"].shape == (3, 6, 14, 18, 1)
    np.testing.assert_array_equal(out["ed_es"], [(5, 1), (0, 3), (5, 0)])  # windows from frames 1, 0 and 2
    np.testing.assert_array_equal(out["mask"].sum(axis=(2, 3))[0], [0, 14 * 16, 0, 0, 0, 14 * 16])
    with pytest.raises(MedjaxError, match=r"case 'patient003': its labelled frames 2..7 \(from 0\) span 6 frames, "
                                          r"more than config.data.num_frames=5"):
        load_cine_folder(str(root), layout="acdc", in_plane_mm=1.5, num_frames=5)


def test_mnms_layout_reads_the_ed_es_csv_and_the_source_splits_every_array(tmp_path):
    root = write_mnms(tmp_path / "Training" / "Labeled", ((3, 7, 16, 1.5), (4, 9, 16, 1.5), (5, 8, 16, 1.5),
                                                          (6, 6, 16, 1.5), (7, 7, 16, 1.5)))
    qs = {seed: beating_heart(seed, num_frames=f, size=16) for seed, f in ((3, 7), (4, 9), (5, 8), (6, 6), (7, 7))}
    out = load_cine_folder(str(root), layout="mnms", frames_csv="../info.csv")
    assert out["cases"] == ["A3B3C3", "A4B4C4", "A5B5C5", "A6B6C6", "A7B7C7"] and "target" not in out
    np.testing.assert_array_equal(out["ed_es"], [(q["ed_frame"], q["es_frame"]) for q in qs.values()])
    assert out["mask"].sum() == 5 * 2 * 256  # two labelled frames per case, no in-plane padding
    np.testing.assert_array_equal(out["label"][1, qs[4]["es_frame"]], qs[4]["label"][qs[4]["es_frame"]])
    cfg = ml_collections.ConfigDict(dict(name="cine_folder", root=str(root), layout="mnms", ef_class=1,
                                         frames_csv=str(tmp_path / "Training" / "info.csv")))
    splits = load_splits(cfg).splits
    assert {k: len(v["image"]) for k, v in splits.items()} == {"train": 3, "val": 1, "test": 1}
    assert set(splits["val"]) == {"image", "label", "mask", "ed_es", "target"}
    assert splits["train"]["mask"].shape == (3, 9, 16, 16)


def test_folder_layout_pads_shorter_cases_and_masks_the_padding(tmp_path):
    root = _cases(tmp_path / "a", n=2, size=16)
    q = beating_heart(1, num_frames=4, size=16)
    _save_nifti(root / "images" / "p1.nii.gz", np.moveaxis(q["image"][..., 0], 0, -1)[:, :, None], np.eye(4))
    _save_nifti(root / "labels" / "p1.nii.gz", np.moveaxis(q["label"], 0, -1)[:, :, None].astype(np.uint8),
                np.eye(4))
    out = load_cine_folder(str(root), targets_csv="none.csv")
    assert out["image"].shape == (2, 6, 16, 16, 1) and "ed_es" not in out
    np.testing.assert_array_equal(out["mask"].sum(axis=(2, 3)), [[256] * 6, [256] * 4 + [0, 0]])


def test_partial_label_layouts_name_what_is_wrong(tmp_path):
    root = write_acdc(tmp_path / "no_es", ACDC_SPECS[:1])
    (root / "patient001" / "Info.cfg").write_text("ED: 7\nGroup: NOR\n")
    with pytest.raises(MedjaxError, match=r"patient001/Info.cfg: no 'ES: <frame>' line"):
        load_cine_folder(str(root), layout="acdc")
    (root / "patient001" / "Info.cfg").write_text("ED: 7\nES: 9\n")
    with pytest.raises(MedjaxError, match=r"Info.cfg: ES frame 9 of case 'patient001' is beyond the 8 frames of "
                                          r".*patient001_4d.nii.gz \(frames count from 1\)"):
        load_cine_folder(str(root), layout="acdc")
    root = write_acdc(tmp_path / "grid", ACDC_SPECS[:1])
    _save_nifti(root / "patient001" / "patient001_frame03_gt.nii.gz", np.zeros((20, 19, 1), np.uint8),
                np.diag([1.2, 1.2, 10.0, 1.0]))
    with pytest.raises(MedjaxError, match=r"image .*patient001_4d.nii.gz has shape \(20, 20, 1\) but label "
                                          r".*patient001_frame03_gt.nii.gz has \(20, 19, 1\)"):
        load_cine_folder(str(root), layout="acdc")
    _save_nifti(root / "patient001" / "patient001_frame03_gt.nii.gz", np.zeros((20, 20, 1), np.uint8),
                np.diag([1.3, 1.2, 10.0, 1.0]))
    with pytest.raises(MedjaxError, match=r"image .*patient001_4d.nii.gz and label .*patient001_frame03_gt.nii.gz "
                                          r"are on different grids"):
        load_cine_folder(str(root), layout="acdc")
    root = write_mnms(tmp_path / "m" / "Labeled", ((3, 7, 16, 1.5),))
    _save_nifti(root / "A3B3C3" / "A3B3C3_sa_gt.nii.gz", np.zeros((16, 16, 1, 7), np.uint8),
                np.diag([1.5, 1.5, 10, 1]))
    with pytest.raises(MedjaxError, match=r"A3B3C3_sa_gt.nii.gz: case 'A3B3C3' has no labelled frame: its ED and ES "
                                          r"frames \[2, 5\] \(from 0\) hold background only"):
        load_cine_folder(str(root), layout="mnms", frames_csv="../info.csv")
    (tmp_path / "m" / "info.csv").write_text("External code,ED,ES\nZZZ,0,3\n")
    with pytest.raises(MedjaxError, match=r"info.csv: no ED/ES row for case 'A3B3C3'"):
        load_cine_folder(str(root), layout="mnms", frames_csv="../info.csv")
    with pytest.raises(MedjaxError, match="frames_csv must name the CSV of each case's ED and ES frames"):
        load_cine_folder(str(root), layout="mnms")
    with pytest.raises(MedjaxError, match=r"config.data.layout='ukbb' is not one of \['folder', 'acdc', 'mnms'\]"):
        load_cine_folder(str(root), layout="ukbb")
