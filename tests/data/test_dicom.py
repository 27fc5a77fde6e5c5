"""DICOM series reader: pydicom's real test series (CT, MR, RT dose) and series written here from CT_small.dcm with
a known geometry, shuffled files, per-slice rescale and every kind of broken folder."""

import hashlib
import os
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medjax.data.dicom import load_dicom_series
from medjax.errors import MedjaxError

TEST_FILES = os.path.dirname(get_testdata_file("CT_small.dcm"))
CT5N = os.path.join(TEST_FILES, "dicomdirtests", "98892001", "CT5N")  # 5 axial CT slices 16x16, 2.5 mm apart
CT2 = os.path.join(TEST_FILES, "dicomdirtests", "77654033", "CT2")  # 4 slices with a 202.5 mm gap
MR2 = os.path.join(TEST_FILES, "dicomdirtests", "98892003", "MR2")  # 3 localizer series
MR700 = os.path.join(TEST_FILES, "dicomdirtests", "98892003", "MR700")  # one series, rotating planes (radial)

# Synthetic series geometry: a coronal stack tilted 5 degrees about z (LPS), rows 0.7 mm apart, columns 0.9 mm.
ROWS, COLS, N, STEP = 6, 8, 5, 2.5
_T = np.deg2rad(5.0)
_ROT = np.array([[np.cos(_T), -np.sin(_T), 0], [np.sin(_T), np.cos(_T), 0], [0, 0, 1]])
ROW_DIR = np.round(_ROT @ [1.0, 0, 0], 6)
COL_DIR = np.round(_ROT @ [0, 0, -1.0], 6)
NORMAL = np.cross(ROW_DIR, COL_DIR)
ORIGIN = np.array([-30.0, 12.5, 40.0])
PIXEL_SPACING = (0.7, 0.9)  # (between rows, between columns)


def _stored(s: int) -> np.ndarray:
    """Stored value encodes (slice, row, col): 100 s + 10 r + c."""
    r, c = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    return (100 * s + 10 * r + c).astype(np.int16)


def _slope(s: int) -> float:
    return 1.0 if s % 2 == 0 else 2.0  # per-slice rescale, as some scanners write


def _ds(s: int, uid: str = "1.2.826.0.1.3680043.2.1125.1"):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = ROWS, COLS
    ds.PixelData = _stored(s).tobytes()
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ORIGIN + s * STEP * NORMAL]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in [*ROW_DIR, *COL_DIR]]
    ds.PixelSpacing = [str(v) for v in PIXEL_SPACING]
    ds.SliceThickness = "2.5"
    ds.RescaleSlope, ds.RescaleIntercept = str(_slope(s)), "-1024"
    ds.SeriesInstanceUID = uid
    ds.SOPInstanceUID = f"{uid}.{s}"
    ds.InstanceNumber = (7 * s) % N + 1  # deliberately not the spatial order
    ds.SliceLocation = f"{s * STEP:.2f}"
    return ds


def _write_series(folder, slices=range(N), uid="1.2.826.0.1.3680043.2.1125.1", prefix="IM"):
    os.makedirs(folder, exist_ok=True)
    names = np.random.default_rng(0).permutation(len(slices))  # file names in shuffled order
    for name, s in zip(names, slices):
        _ds(s, uid).save_as(os.path.join(folder, f"{prefix}{name:04d}"))
    return str(folder)


def _fingerprints(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        with open(p, "rb") as f:
            out[name] = (os.stat(p).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out


def test_real_ct_series_is_ordered_in_hu_and_ras():
    vol = load_dicom_series(CT5N)
    assert vol.array.shape == (16, 16, 5, 1) and vol.array.dtype == np.float32
    assert vol.spacing == pytest.approx((0.488281, 0.488281, 2.5))
    np.testing.assert_allclose(vol.affine, [[0.488281, 0, 0, 64.875782], [0, 0.488281, 0, 135.675785],
                                            [0, 0, 2.5, -1.2375], [0, 0, 0, 1]], atol=1e-6)
    assert vol.path == CT5N
    # k = 0 is the most inferior slice (file 3353, z = -1.2375 mm, InstanceNumber 10); LPS -> RAS flips x and y.
    first = pydicom.dcmread(os.path.join(CT5N, "3353"))
    np.testing.assert_array_equal(vol.array[:, :, 0, 0], first.pixel_array[::-1, ::-1].T - 1024.0)
    assert vol.array[3, 5, 0, 0] == 26.0 and vol.array[8, 8, 4, 0] == -119.0
    np.testing.assert_allclose(vol.array[..., 0].mean(axis=(0, 1)), [-68.72656, -37.89453, -42.828125, -188.92188,
                                                                   -354.28516], rtol=1e-6)


def test_real_single_files(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path)
    ct = load_dicom_series(str(tmp_path))
    assert ct.array.shape == (128, 128, 1, 1) and ct.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    raw = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    assert ct.array[10, 20, 0, 0] == 61.0 == raw[127 - 20, 127 - 10] - 1024.0
    # Voxel (0, 0, 0) is pixel (row 127, col 127): LPS (-158.1358 + 127 * 0.661468, -179.0358 + 127 * 0.661468).
    np.testing.assert_allclose(ct.affine[:3, 3], [74.129367, 95.029367, -75.7], atol=1e-5)
    mr_dir = tmp_path / "mr"
    mr_dir.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), mr_dir)
    mr = load_dicom_series(str(mr_dir))
    assert mr.array.shape == (64, 64, 1, 1) and mr.spacing == pytest.approx((0.3125, 0.3125, 0.8))
    assert mr.array[10, 20, 0, 0] == 1184.0  # no rescale tags: stored values


def test_real_sagittal_localizer_chosen_by_uid():
    with pytest.raises(MedjaxError, match=r"MR2 holds 3 DICOM series; pass series_uid= one of: "
                                          r"1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136 \(3 files, MR"):
        load_dicom_series(MR2)
    vol = load_dicom_series(MR2, series_uid="1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.481")
    assert vol.array.shape == (1, 16, 16, 1)  # sagittal: the slice axis becomes x
    assert vol.spacing == pytest.approx((10.0, 1.367188, 1.367188))
    with pytest.raises(MedjaxError, match=r"series 9.9.9 is not in .*MR2; it holds: "):
        load_dicom_series(MR2, series_uid="9.9.9")


def test_real_broken_series_name_the_folder():
    with pytest.raises(MedjaxError, match=r"CT2: inconsistent slice spacing \(mm between consecutive slices: "
                                          r"\[1.25, 202.5\]\)"):
        load_dicom_series(CT2)
    with pytest.raises(MedjaxError, match=r"MR700: slices have different ImageOrientationPatient"):
        load_dicom_series(MR700)


def test_real_multiframe_rt_dose(tmp_path):
    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path)
    vol = load_dicom_series(str(tmp_path))
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    assert vol.array.shape == (10, 10, 15, 1) and vol.spacing == pytest.approx((10.0, 10.0, 5.0))
    assert vol.array.max() == pytest.approx(ds.pixel_array.max() * float(ds.DoseGridScaling), rel=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 3], [-279.43125, -289.43125, -761.87], atol=1e-4)
    np.testing.assert_allclose(vol.array[:, :, 7, 0], ds.pixel_array[7, ::-1, ::-1].T * 1e-6, rtol=1e-6)
    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "rtdose_copy.dcm")
    with pytest.raises(MedjaxError, match=r"a series of 2 files with multi-frame ones among them is not supported yet"):
        load_dicom_series(str(tmp_path))
    other = tmp_path / "rgb"
    other.mkdir()
    shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm"), other)
    with pytest.raises(MedjaxError, match=r"SC_rgb_rle_2frame.dcm: multi-frame DICOM with neither per-frame "
                                          r"functional groups \(enhanced CT/MR\) nor GridFrameOffsetVector"):
        load_dicom_series(str(other))


def test_synthetic_series_order_rescale_and_world_coordinates(tmp_path):
    folder = _write_series(tmp_path / "series")
    (tmp_path / "series" / "README.txt").write_text("exported by a PACS")  # non-DICOM files are skipped
    (tmp_path / "series" / "._IM0001").write_bytes(b"\x00\x05\x16\x07")
    vol = load_dicom_series(folder)
    # Stored (col, row, slice) = (8, 6, 5); RAS: columns -> x (flipped), slices -> y (LPS +y), rows -> z (down).
    assert vol.array.shape == (COLS, N, ROWS, 1)
    assert vol.spacing == pytest.approx((0.9, STEP, 0.7), abs=1e-5)
    inv = np.linalg.inv(vol.affine)
    assert np.all(np.diag(vol.affine)[:3] > 0)
    checked = 0
    for s in range(N):
        for r in range(ROWS):
            for c in range(COLS):
                lps = ORIGIN + s * STEP * NORMAL + c * PIXEL_SPACING[1] * ROW_DIR + r * PIXEL_SPACING[0] * COL_DIR
                ijk = (inv @ [-lps[0], -lps[1], lps[2], 1.0])[:3]
                np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
                i, j, k = np.round(ijk).astype(int)
                assert vol.array[i, j, k, 0] == (100 * s + 10 * r + c) * _slope(s) - 1024.0
                checked += 1
    assert checked == vol.array.size
    assert vol.array.min() == -1024.0 and vol.array.max() == 357 * 2.0 - 1024.0  # slice 3, row 5, col 7, slope 2
    # RAS voxel 0 = most right, anterior, inferior: col 7, slice 4 (slices run posterior), row 5 (rows run down).
    assert vol.array[0, 0, 0, 0] == 457 * 1.0 - 1024.0


def test_missing_slice_and_missing_tags(tmp_path):
    folder = _write_series(tmp_path / "gap", slices=[0, 1, 3, 4])
    with pytest.raises(MedjaxError, match=r"gap: inconsistent slice spacing \(mm between consecutive slices: "
                                          r"\[2.5, 5.0\]\); a slice is missing"):
        load_dicom_series(folder)
    folder = _write_series(tmp_path / "nopos")
    victim = os.path.join(folder, sorted(os.listdir(folder))[2])
    ds = pydicom.dcmread(victim)
    del ds.ImagePositionPatient
    ds.save_as(victim)
    with pytest.raises(MedjaxError, match=rf"{victim}: DICOM tag ImagePositionPatient is missing"):
        load_dicom_series(folder)
    folder = _write_series(tmp_path / "dup", slices=[0, 1, 2])
    _ds(1).save_as(os.path.join(folder, "copy_of_slice_1"))
    with pytest.raises(MedjaxError, match=r"dup: 2 slices share a position"):
        load_dicom_series(folder)


def test_two_series_in_one_folder(tmp_path):
    folder = _write_series(tmp_path / "mixed", uid="1.2.3.1")
    _write_series(tmp_path / "mixed", slices=range(3), uid="1.2.3.2", prefix="B")
    with pytest.raises(MedjaxError, match=r"mixed holds 2 DICOM series; pass series_uid= one of: 1.2.3.1 \(5 files, "
                                          r"CT, .*\); 1.2.3.2 \(3 files"):
        load_dicom_series(folder)
    assert load_dicom_series(folder, series_uid="1.2.3.2").array.shape == (COLS, 3, ROWS, 1)
    assert load_dicom_series(folder, series_uid="1.2.3.1").array.shape == (COLS, N, ROWS, 1)


def test_unreadable_folders_name_the_path(tmp_path):
    with pytest.raises(MedjaxError, match=r"DICOM folder not found: .*nowhere"):
        load_dicom_series(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedjaxError, match=r"DICOM folder .*empty is empty"):
        load_dicom_series(str(empty))
    (empty / "series1").mkdir()
    with pytest.raises(MedjaxError, match=r"empty is empty .*subfolders \['series1'\]"):
        load_dicom_series(str(empty))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        (junk / "cut.dcm").write_bytes(f.read()[:300])  # header cut short
    shutil.copy(os.path.join(TEST_FILES, "dicomdirtests", "DICOMDIR"), junk)  # DICOM, but not an image
    with pytest.raises(MedjaxError, match=r"no readable DICOM image in .*junk \(3 file\(s\) skipped, e.g. DICOMDIR: "
                                          r"not an image"):
        load_dicom_series(str(junk))
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    shutil.copy(get_testdata_file("MR_truncated.dcm"), truncated)
    with pytest.raises(MedjaxError, match=r"MR_truncated.dcm: cannot decode pixel data"):
        load_dicom_series(str(truncated))


def test_files_on_disk_are_unchanged(tmp_path):
    folder = _write_series(tmp_path / "series")
    before = _fingerprints(folder), _fingerprints(CT5N)
    load_dicom_series(folder)
    load_dicom_series(CT5N)
    assert (_fingerprints(folder), _fingerprints(CT5N)) == before


# ------------------------------------------------------------------------------------------- compressed pixel data

LOSSLESS_TWINS = [  # pydicom's shipped compressed copies of MR_small.dcm, with their transfer syntaxes
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),  # RLE Lossless: pydicom's own numpy decoder
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS Lossless: pyjpegls / gdcm
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 Lossless: pylibjpeg-openjpeg / gdcm
]


@pytest.mark.parametrize("name, syntax", LOSSLESS_TWINS)
def test_lossless_compressed_files_read_exactly_as_their_uncompressed_twin(name, syntax):
    from medjax.data.formats import load_volume

    assert pydicom.dcmread(get_testdata_file(name)).file_meta.TransferSyntaxUID == syntax
    plain, packed = load_volume(get_testdata_file("MR_small.dcm")), load_volume(get_testdata_file(name))
    assert packed.array.shape == (64, 64, 1, 1)
    np.testing.assert_array_equal(packed.array, plain.array)
    np.testing.assert_array_equal(packed.affine, plain.affine)
    assert plain.spacing == pytest.approx((0.3125, 0.3125, 0.8))  # one slice: SliceThickness as the third step


def test_rle_multiframe_dose_and_jpeg_lossless_pixels():
    from medjax.data.dicom import decode_pixels
    from medjax.data.formats import load_volume

    plain, packed = load_volume(get_testdata_file("rtdose.dcm")), load_volume(get_testdata_file("rtdose_rle.dcm"))
    np.testing.assert_array_equal(packed.array, plain.array)
    np.testing.assert_array_equal(packed.affine, plain.affine)
    # JPEG Lossless (process 14 SV1) has no grey twin here: the RGB screenshot must decode exactly as its RLE copy
    # (neither has patient geometry, so they are compared as pixels).
    jpeg, rle = get_testdata_file("SC_rgb_jpeg_gdcm.dcm"), get_testdata_file("SC_rgb_rle.dcm")
    assert pydicom.dcmread(jpeg).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    a, b = decode_pixels(pydicom.dcmread(jpeg), jpeg), decode_pixels(pydicom.dcmread(rle), rle)
    assert a.shape == (100, 100, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) == 10  # the test card's colours


def test_a_compressed_file_without_its_decoder_names_the_extra(monkeypatch, tmp_path):
    from pydicom.pixels import get_decoder

    from medjax.data.formats import load_volume

    decoder = get_decoder("1.2.840.10008.1.2.4.80")
    monkeypatch.setattr(decoder, "_available", {})  # as if neither pyjpegls nor gdcm were installed
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(MedjaxError, match=r"MR_small_jpeg_ls_lossless.dcm: pixel data compressed as JPEG-LS Lossless "
                                          r"Image Compression \(1.2.840.10008.1.2.4.80\) and no decoder for it is "
                                          r"installed: pip install 'medjax\[dicom\]'$"):
        load_volume(path)
    shutil.copy(path, tmp_path)
    with pytest.raises(MedjaxError, match=r"pip install 'medjax\[dicom\]'"):  # the same from a series folder
        load_dicom_series(str(tmp_path))


# ------------------------------------------------------------------------------------ enhanced multi-frame CT/MR

def _enhanced_mr(path, slices=range(N), orientation_per_frame=False):
    """An Enhanced MR Image Storage file built from scratch with the synthetic series' geometry: frames stored out
    of spatial order, positions and rescale per frame, orientation and pixel measures shared (or per frame)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.9.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "MR", "1.2.826.0.1.3680043.2.1125.9"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLS, len(slices)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    orientation = Dataset()
    orientation.ImageOrientationPatient = [f"{v:.6f}" for v in [*ROW_DIR, *COL_DIR]]
    measures = Dataset()
    measures.PixelSpacing = [str(v) for v in PIXEL_SPACING]
    measures.SliceThickness = "2.5"
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    if not orientation_per_frame:
        shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    order = [slices[i] for i in np.random.default_rng(1).permutation(len(slices))]
    frames = []
    for s in order:
        position, rescale, frame = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in ORIGIN + s * STEP * NORMAL]
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = str(_slope(s)), "-1024", "US"
        frame.PlanePositionSequence, frame.PixelValueTransformationSequence = [position], [rescale]
        if orientation_per_frame:
            frame.PlaneOrientationSequence = [orientation]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack([_stored(s) for s in order]).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


@pytest.mark.parametrize("orientation_per_frame", [False, True])
def test_enhanced_multiframe_equals_the_single_frame_series(tmp_path, orientation_per_frame):
    from medjax.data.formats import load_volume

    series = load_dicom_series(_write_series(tmp_path / "series"))
    enhanced = load_volume(_enhanced_mr(tmp_path / "enhanced.dcm", orientation_per_frame=orientation_per_frame))
    assert enhanced.array.shape == (COLS, N, ROWS, 1)
    np.testing.assert_array_equal(enhanced.array, series.array)
    np.testing.assert_array_equal(enhanced.affine, series.affine)
    assert enhanced.array[0, 0, 0, 0] == 457 * 1.0 - 1024.0  # as the series test: col 7, slice 4, row 5


def test_enhanced_multiframe_errors(tmp_path):
    path = _enhanced_mr(tmp_path / "gap.dcm", slices=[0, 1, 3, 4])
    with pytest.raises(MedjaxError, match=r"gap.dcm: inconsistent slice spacing \(mm between consecutive slices: "
                                          r"\[2.5, 5.0\]\)"):
        load_dicom_series(path)
    path = _enhanced_mr(tmp_path / "echoes.dcm", slices=[0, 1, 1, 2])  # two echoes at one position
    with pytest.raises(MedjaxError, match=r"echoes.dcm: 2 slices share a position along the slice normal"):
        load_dicom_series(path)
    ds = pydicom.dcmread(_enhanced_mr(tmp_path / "short.dcm"))
    del ds.PerFrameFunctionalGroupsSequence[0]
    ds.save_as(str(tmp_path / "short.dcm"))
    with pytest.raises(MedjaxError, match=r"short.dcm: PerFrameFunctionalGroupsSequence has 4 items for 5 frames"):
        load_dicom_series(str(tmp_path / "short.dcm"))


def test_dispatcher_reads_a_folder_or_one_file_and_names_bad_ones():
    from medjax.data.formats import load_label, load_volume

    np.testing.assert_array_equal(load_volume(CT5N).array, load_dicom_series(CT5N).array)
    one = sorted(os.listdir(CT5N))[0]
    single = load_volume(os.path.join(CT5N, one))  # one slice of the series, read alone
    assert single.array.shape == (16, 16, 1, 1)
    with pytest.raises(MedjaxError, match=r"MR_truncated.dcm: cannot decode pixel data \(transfer syntax "
                                          r"1.2.840.10008.1.2.1\)"):
        load_volume(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(MedjaxError, match=r"rtplan.dcm is not a DICOM image \(no Rows/Columns; RTPLAN object\)"):
        load_volume(get_testdata_file("rtplan.dcm"))
    with pytest.raises(MedjaxError, match=r"CT_small.dcm: DICOM labels \(SEG / RTSTRUCT\) are not read"):
        load_label(get_testdata_file("CT_small.dcm"))
