"""`medjax deid` on pydicom's shipped files: no identifying value of Table E.1-1 survives (nested ones included),
private / curve / overlay groups go, pixels are byte-identical, UIDs and pseudonyms are consistent (pinned to their
keyed-hash formulas), dates shift by one offset per patient, medjax's reader gets the same volume back, and
burned-in images, unparseable files and bad command lines are handled as documented."""

import csv
import hashlib
import hmac
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medjax import cli
from medjax.data.dicom import load_dicom_series
from medjax.data.formats import load_volume
from medjax.errors import MedjaxError
from medjax.privacy import deid

SECRET = b"test secret, kept outside OUT_DIR"
SEED = "5813"
CT_UID = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def keyed(key: bytes, kind: str, value: str) -> bytes:
    return hmac.new(key, kind.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()


def expected_uid(old: str) -> str:
    return "2.25." + str(int.from_bytes(keyed(SECRET, "uid", old)[:16], "big"))


def expected_shift(patient: str) -> int:
    return -(1 + int.from_bytes(keyed(SEED.encode(), "shift", patient)[:8], "big") % 3652)


def ct_slice(k: int) -> Dataset:
    """Slice k of a 3-slice CT series made from CT_small (5 mm apart), with identifying values nested in a
    sequence the profile keeps and, on slice 1, a reference to slice 0."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{CT_UID}.{k + 1}"
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [-158.135803, -179.035797, -75.699997 + 5 * k]
    ds.SliceLocation = -77.2040634155 + 5 * k
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "CTHEAD", "L", "CT head"
    item.InstitutionName, item.PerformingPhysicianName, item.StudyDate = "ST ELSEWHERE", "House^Greg", "20040119"
    item.PatientID = "OLD-ID-7"
    ds.ProcedureCodeSequence = Sequence([item])
    if k == 1:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, f"{CT_UID}.1"
        ds.ReferencedImageSequence = Sequence([ref])
    return ds


def write(ds: Dataset, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=False)


def snapshot(root) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """IN: a CT series, MR (plain and RLE: one patient, one study), RT dose (15 frames), an overlay file, a
    burned-in CT, and three files that are not (whole) DICOM; de-identified by default and with shifted dates."""
    root = tmp_path_factory.mktemp("deid")
    src = root / "in"
    for k in range(3):
        write(ct_slice(k), src / "ct" / f"IM{k}")
    for name, folder in (("MR_small.dcm", "mr"), ("MR_small_RLE.dcm", "mr_rle"), ("rtdose.dcm", "rt"),
                         ("examples_overlay.dcm", "overlay")):
        (src / folder).mkdir()
        shutil.copy(get_testdata_file(name), src / folder / name)
    burned = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    burned.BurnedInAnnotation = "YES"
    write(burned, src / "burned" / "bia.dcm")
    (src / "junk").mkdir()
    (src / "junk" / "notes.txt").write_text("Patient Doe, see images\n")
    (src / "junk" / "cut.dcm").write_bytes((src / "ct" / "IM0").read_bytes()[:1000])
    shutil.copy(get_testdata_file("MR_truncated.dcm"), src / "junk" / "MR_truncated.dcm")
    secret = root / "secret.key"
    secret.write_bytes(SECRET)
    before = snapshot(src)
    default = deid.deidentify_tree(str(src), str(root / "out"))
    shifted = deid.deidentify_tree(str(src), str(root / "shifted"), dates="shift", shift_seed=SEED,
                                   map_path=str(root / "map.csv"), secret_file=str(secret))
    return root, before, default, shifted


def read(path) -> Dataset:
    return pydicom.dcmread(path)


def test_report_names_every_file_with_its_outcome(data):
    root, _, default, shifted = data
    outcomes = {r["input"]: (r["outcome"], r["detail"]) for r in default}
    assert outcomes == {
        "burned/bia.dcm": ("refused", "BurnedInAnnotation=YES: text in the pixels; blanking needs the regions that "
                                      "hold it (--blank-burned-in COL0,ROW0,COL1,ROW1)"),
        "ct/IM0": ("deidentified", ""), "ct/IM1": ("deidentified", ""), "ct/IM2": ("deidentified", ""),
        "junk/MR_truncated.dcm": ("skipped", "pixel data cut short (8130 of 8192 bytes)"),
        "junk/cut.dcm": ("skipped", "CT Image Storage without pixel data: cut short"),
        "junk/notes.txt": ("skipped", "not a DICOM file (no 'DICM' marker after the 128-byte preamble)"),
        "mr/MR_small.dcm": ("deidentified", ""), "mr_rle/MR_small_RLE.dcm": ("deidentified", ""),
        "overlay/examples_overlay.dcm": ("deidentified", ""), "rt/rtdose.dcm": ("deidentified", ""),
    }
    with open(root / "out" / deid.REPORT_NAME) as f:
        on_disk = list(csv.DictReader(f))
    assert on_disk == default
    written = sorted(str(p.relative_to(root / "out")) for p in (root / "out").rglob("*") if p.is_file())
    assert written == sorted([deid.REPORT_NAME] + [r["output"] for r in default if r["output"]])  # no tmp left
    assert [r["outcome"] for r in shifted] == [r["outcome"] for r in default]


def test_inputs_are_untouched(data):
    root, before, _, _ = data
    assert snapshot(root / "in") == before


def _leaves(ds: Dataset):
    """(tag, value) of every non-sequence element, file meta and nested items included."""
    for elem in list(ds.file_meta.iterall()) + list(ds.iterall()):
        if elem.VR != "SQ" and elem.value not in (None, "", b""):
            yield int(elem.tag), str(elem.value)


def test_no_identifying_value_survives_anywhere(data):
    root, _, default, _ = data
    checked = [0, 0]  # distinct identifying values (public, private) in the 7 inputs, nested ones included
    for row in (r for r in default if r["outcome"] == "deidentified"):
        original = {(t, v) for t, v in _leaves(read(root / "in" / row["input"]))
                    if deid.table_action(t) not in (None, "K", "C")}
        out = read(root / "out" / row["output"])
        survivors = original & set(_leaves(out))
        assert not survivors, (row["input"], survivors)
        assert not [e.tag for e in out.iterall() if e.tag.group % 2 or e.tag.group & 0xFF00 in (0x5000, 0x6000)]
        checked[0] += sum(not (t >> 16) % 2 for t, _ in original)
        checked[1] += sum((t >> 16) % 2 for t, _ in original)
    assert checked == [208, 525]
    ct_in, ct_out = read(root / "in" / "ct" / "IM1"), read(root / "out" / "ct" / "IM1")
    removed = sorted(e.keyword for e in ct_in if e.tag not in ct_out and not e.tag.is_private)
    assert removed == ["AcquisitionDate", "AcquisitionTime", "AdditionalPatientHistory", "DataSetTrailingPadding",
                       "ImageComments", "InstanceCreationDate", "InstanceCreationTime", "InstitutionName",
                       "OtherPatientIDsSequence", "PatientAge", "PatientWeight", "SeriesDate", "SeriesTime",
                       "StationName", "StudyDescription", "TimezoneOffsetFromUTC"]
    assert (ct_out.StudyDate, ct_out.AccessionNumber, ct_out.ContrastBolusAgent, ct_out.PatientSex) == ("",) * 4
    nested = ct_out.ProcedureCodeSequence[0]  # kept (not in the table); what the table lists inside it is not
    assert nested.CodeValue == "CTHEAD" and nested.StudyDate == ""
    assert "InstitutionName" not in nested and "PerformingPhysicianName" not in nested
    assert nested.PatientID == read(root / "out" / "ct" / "IM2").ProcedureCodeSequence[0].PatientID != ct_out.PatientID
    assert ct_out.preamble == b"\x00" * 128 and "SourceApplicationEntityTitle" not in ct_out.file_meta
    overlay = read(root / "in" / "overlay" / "examples_overlay.dcm")
    assert 0x60003000 in overlay and sum(e.tag.is_private for e in overlay) == 9  # what the check above removed


def test_pixel_data_is_byte_identical(data):
    root, _, default, _ = data
    for row in (r for r in default if r["outcome"] == "deidentified"):
        assert read(root / "out" / row["output"]).PixelData == read(root / "in" / row["input"]).PixelData
    rle = read(root / "out" / "mr_rle" / "MR_small_RLE.dcm")
    assert rle.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless  # still compressed
    np.testing.assert_array_equal(rle.pixel_array, read(root / "in" / "mr" / "MR_small.dcm").pixel_array)


def test_uids_are_replaced_consistently(data):
    root, _, _, _ = data
    ins = [read(root / "in" / "ct" / f"IM{k}") for k in range(3)]
    outs = [read(root / "shifted" / "ct" / f"IM{k}") for k in range(3)]
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
        assert [o[kw].value for o in outs] == [expected_uid(i[kw].value) for i in ins]
    assert len({o.StudyInstanceUID for o in outs}) == 1 and len({o.SOPInstanceUID for o in outs}) == 3
    assert all(o.file_meta.MediaStorageSOPInstanceUID == o.SOPInstanceUID for o in outs)
    assert outs[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == outs[0].SOPInstanceUID  # link kept
    assert outs[0].StudyInstanceUID == "2.25.75189445587737916711827429580173167523"
    mr, rle = read(root / "shifted" / "mr" / "MR_small.dcm"), read(root / "shifted" / "mr_rle" / "MR_small_RLE.dcm")
    assert mr.StudyInstanceUID == rle.StudyInstanceUID != read(root / "in" / "mr" / "MR_small.dcm").StudyInstanceUID
    default = [read(root / "out" / "ct" / f"IM{k}") for k in range(3)]  # random secret: another mapping
    assert len({o.StudyInstanceUID for o in default}) == 1 and default[0].StudyInstanceUID != outs[0].StudyInstanceUID


def test_one_pseudonym_per_patient_and_the_method_is_recorded(data):
    root, _, default, shifted = data
    by_file = {r["input"]: r["patient"] for r in shifted}
    assert by_file["mr/MR_small.dcm"] == by_file["mr_rle/MR_small_RLE.dcm"] == "ANON-" + keyed(
        SECRET, "patient", "4MR1").hex()[:12].upper()
    assert len({by_file[f"ct/IM{k}"] for k in range(3)}) == 1 and by_file["ct/IM0"] != by_file["mr/MR_small.dcm"]
    for folder, codes, temporal in (("out", ["113100"], "REMOVED"), ("shifted", ["113100", "113107"], "MODIFIED")):
        ds = read(root / folder / "rt" / "rtdose.dcm")
        assert ds.PatientID == str(ds.PatientName) and ds.PatientID.startswith("ANON-")
        assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == temporal
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == codes
        assert {c.CodingSchemeDesignator for c in ds.DeidentificationMethodCodeSequence} == {"DCM"}
    assert read(root / "out" / "rt" / "rtdose.dcm").DeidentificationMethodCodeSequence[0].CodeMeaning == \
        "Basic Application Confidentiality Profile"


def test_dates_shift_by_one_offset_per_patient(data):
    root, _, _, _ = data
    days = expected_shift("1CT1")
    assert days == -1394
    for k in range(3):
        before, after = read(root / "in" / "ct" / f"IM{k}"), read(root / "shifted" / "ct" / f"IM{k}")
        assert (after.StudyDate, after.SeriesDate, after.AcquisitionDate, after.ContentDate) == (
            "20000326", "19930706", "19930706", "19930706")  # 20040119 and 19970430, 1394 days back
        assert after.ProcedureCodeSequence[0].StudyDate == "20000326"  # nested dates move too
        assert (after.StudyTime, after.SeriesTime) == (before.StudyTime, before.SeriesTime)  # times kept
    mr, rle = read(root / "shifted" / "mr" / "MR_small.dcm"), read(root / "shifted" / "mr_rle" / "MR_small_RLE.dcm")
    assert mr.StudyDate == rle.StudyDate != read(root / "in" / "mr" / "MR_small.dcm").StudyDate
    with open(root / "map.csv") as f:
        rows = list(csv.DictReader(f))
    patients = {r["original"]: (r["pseudonym"], r["date_shift_days"]) for r in rows if r["kind"] == "patient"}
    assert patients["1CT1"][1] == str(days) and patients["4MR1"][1] == str(expected_shift("4MR1"))
    assert sorted(patients) == ["021234567", "1CT1", "4MR1", "OLD-ID-7", "id11111"]
    assert patients["OLD-ID-7"] == (read(root / "shifted" / "ct" / "IM0").ProcedureCodeSequence[0].PatientID, "")
    uids = {r["original"]: r["pseudonym"] for r in rows if r["kind"] == "uid"}
    assert uids[f"{CT_UID}.2"] == read(root / "shifted" / "ct" / "IM1").SOPInstanceUID
    assert deid._shift_value("20040119", "DA", days) == "20000326"
    assert deid._shift_value("20040119083000.5+0100", "DT", -1) == "20040118083000.5+0100"
    assert deid._shift_value("2004", "DT", -1) is None and deid._shift_value("2004.01.19", "DA", 1) == "20040120"


@pytest.mark.parametrize("folder", ["out", "shifted"])
def test_medjax_reads_the_same_volume_back(data, folder):
    root, _, _, _ = data
    before, after = load_dicom_series(str(root / "in" / "ct")), load_dicom_series(str(root / folder / "ct"))
    assert after.array.shape == (128, 128, 3, 1)
    np.testing.assert_array_equal(after.array, before.array)
    np.testing.assert_array_equal(after.affine, before.affine)
    assert after.spacing == before.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    np.testing.assert_array_equal(load_volume(str(root / folder / "rt" / "rtdose.dcm")).array,
                                  load_volume(str(root / "in" / "rt" / "rtdose.dcm")).array)


def test_burned_in_images_are_blanked_only_in_the_named_regions(tmp_path):
    src = tmp_path / "in"
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.BurnedInAnnotation = "YES"
    write(ct, src / "ct.dcm")
    rle = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    rle.BurnedInAnnotation = "YES"
    write(rle, src / "rle.dcm")
    rows = deid.deidentify_tree(str(src), str(tmp_path / "out"), blank_regions=[(0, 0, 10, 5), (120, 100, 999, 999)])
    assert [r["outcome"] for r in rows] == ["deidentified", "deidentified"]
    for name, original in (("ct.dcm", ct.pixel_array), ("rle.dcm", rle.pixel_array)):
        out = read(tmp_path / "out" / name)
        pixels, expected = out.pixel_array, original.copy()
        expected[0:5, 0:10] = expected[100:, 120:] = 0
        np.testing.assert_array_equal(pixels, expected)
        assert int(np.abs(original[0:5, 0:10]).sum()) > 0  # there was something to blank
        assert out.BurnedInAnnotation == "NO" and [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == [
            "113100", "113101"]
    assert read(tmp_path / "out" / "rle.dcm").file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_keep_dates_through_the_cli(data, tmp_path, capsys):
    root, _, _, _ = data
    assert cli.run(["deid", str(root / "in" / "mr"), str(tmp_path / "out"), "--keep-dates"]) == 0
    assert capsys.readouterr().err == f"medjax: deid: 1 of 1 file(s) de-identified -> {tmp_path / 'out'} (0 " \
                                      f"skipped, 0 refused, 0 failed); report: {tmp_path / 'out' / deid.REPORT_NAME}\n"
    before, after = read(root / "in" / "mr" / "MR_small.dcm"), read(tmp_path / "out" / "MR_small.dcm")
    assert (after.StudyDate, after.SeriesDate, after.StudyTime) == (before.StudyDate, before.SeriesDate,
                                                                   before.StudyTime)
    assert [c.CodeValue for c in after.DeidentificationMethodCodeSequence] == ["113100", "113106"]
    assert after.LongitudinalTemporalInformationModified == "UNMODIFIED" and "PatientBirthDate" in after
    assert after.PatientBirthDate == ""


def test_bad_input_is_one_line_and_exit_2(data, tmp_path, capsys):
    root, _, _, _ = data
    src = str(root / "in")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.dcm").write_text("x")
    cases = [
        ([str(tmp_path / "nope"), str(tmp_path / "o1")], f"IN_DIR not found: {tmp_path / 'nope'}"),
        ([src, src], "is IN_DIR or inside it"),
        ([src, str(root / "in" / "ct" / "sub")], "is IN_DIR or inside it"),
        ([str(tmp_path / "empty"), str(tmp_path / "o2")], "no DICOM file in IN_DIR"),
        ([src, str(tmp_path / "file" / "out")], "cannot write to OUT_DIR"),
        ([src, str(tmp_path / "full")], "is not empty"),
        ([src, str(tmp_path / "o3"), "--map", str(tmp_path / "o3" / "map.csv")], "is inside OUT_DIR"),
        ([src, str(tmp_path / "o3"), "--map", str(root / "in" / "map.csv")], "is inside IN_DIR"),
        ([src, str(tmp_path / "o3"), "--map", str(tmp_path / "file" / "map.csv")], "cannot write to --map's folder"),
        ([src, str(tmp_path / "o4"), "--blank-burned-in", "0,0,10"], "expected COL0,ROW0,COL1,ROW1"),
    ]
    for args, message in cases:
        with pytest.raises(MedjaxError) as e:
            cli.run(["deid", *args])
        assert message in str(e.value) and "\n" not in str(e.value), (args, str(e.value))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    assert cli.main(["deid", str(tmp_path / "empty"), str(tmp_path / "o5")]) == 2
    assert capsys.readouterr().err == f"medjax: error: no DICOM file in IN_DIR {tmp_path / 'empty'} (1 file(s) " \
                                      f"looked at, recursively)\n"
    with pytest.raises(SystemExit) as e:
        cli.run(["deid", src, str(tmp_path / "o6"), "--keep-dates", "--shift-dates", "1"])
    assert e.value.code == 2


def test_a_dataset_in_memory():
    ds = Dataset()
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.BurnedInAnnotation = "X1", "Doe^Jane", "20200101", "YES"
    with pytest.raises(deid.Refused, match="BurnedInAnnotation=YES"):
        deid.Deidentifier(SECRET)(ds)
    ds.BurnedInAnnotation = "NO"
    out = deid.Deidentifier(SECRET, dates="keep")(ds)
    assert (out.PatientID, str(out.PatientName), out.StudyDate) == ("ANON-" + keyed(SECRET, "patient", "X1").hex()[
        :12].upper(),) * 2 + ("20200101",)


def test_help_has_a_description_and_examples():
    text = cli._parser()._subparsers._group_actions[0].choices["deid"].format_help()
    assert "examples:\n  medjax deid " in text and "--shift-dates SEED" in text and "Table E.1-1, 2026c" in text


def test_the_vendored_table():
    exact, masked = deid.annex_e()
    assert len(exact) + len(masked) == 655 and len(masked) == 3
    assert [deid.table_action(t) for t in (0x00100010, 0x00100020, 0x0020000D, 0x00080080, 0x00081140, 0x50001234,
                                           0x60003000, 0x00091001, 0x00280010)] == [
        "Z", "Z/D", "U", "X/Z/D", "X/Z/U*", "X", "X", "X", None]
