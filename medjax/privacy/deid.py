"""DICOM de-identification: the Basic Application Level Confidentiality Profile of DICOM PS3.15 Annex E.

    medjax deid IN_DIR OUT_DIR [--keep-dates | --shift-dates SEED] [--map FILE] [--blank-burned-in REGION]

The table
    ``annex_e.csv`` beside this module is Table E.1-1 of DICOM PS3.15, edition 2026c (Application Level
    Confidentiality Profile Attributes): the Basic Profile action of each attribute it lists (655 rows; its
    Private Attributes row is applied in code, below), transcribed from dicom-anonymizer 2.1.0 (the file's header
    names the source). Every listed attribute gets its action wherever it occurs, inside sequences too (Table
    E.1-1a): X removed; Z emptied; D a dummy value of its VR (a dummy sequence is one empty item); U a new UID
    (below); K kept; C (no Basic Profile row uses it) is applied as X.
    Combined actions choose by the attribute's Type in the object's IOD, which the table does not carry and medjax
    does not look up. They resolve to the least that may be retained: Z/D -> Z; X/Z, X/D, X/Z/D -> X. The
    exception is X/Z/U* (Referenced / Source Image Sequence): the sequence is kept and its items processed, so the
    instance UIDs in it are replaced (U) and references between de-identified instances still resolve.
    Beyond the table: every private attribute (odd group; the table's "Private Attributes" row), every attribute of
    the curve (50xx) and overlay (60xx) groups (the table lists curve data and overlay data and comments; what is
    left of an overlay is meaningless without them), group lengths (gggg,0000), the file meta's AE titles and
    private information (0002,0016/0017/0018/0100/0102), and the 128-byte preamble (zeroed: dual-personality files
    keep a TIFF header there).
UIDs
    New UID = "2.25." + the first 128 bits of HMAC-SHA256(run secret, old UID) as a decimal integer: one input UID
    always maps to the same new one in a run (and in every run given the same secret file), so study, series,
    frame-of-reference and instance references keep linking; without the secret nothing maps back.
Patients
    Patient ID and Patient's Name become one pseudonym per input patient, "ANON-" + 12 hex digits of
    HMAC-SHA256(secret, patient key); the key is the Patient ID (with its Issuer), else Patient's Name and Birth
    Date, else the Study Instance UID. A Patient ID nested in a sequence the profile keeps gets the pseudonym of
    its own value.
Dates (``dates``)
    "remove" (default): the table's actions (Study Date emptied; Series, Acquisition dates ... removed);
    Longitudinal Temporal Information Modified = REMOVED.
    "keep": every DA / DT / TM attribute of the table and Timezone Offset From UTC is kept (PS3.15 Retain
    Longitudinal Temporal Information with Full Dates Option, code 113106); UNMODIFIED.
    "shift": kept as with "keep", then every DA and DT value in the file, listed in the table or not (an unshifted
    date would give the offset away), moves back by one number of days per patient, 1 to 3652, from
    HMAC-SHA256(shift seed, patient key); times of day are kept (Modified Dates Option, 113107); MODIFIED. A value
    that cannot be shifted (partial or malformed date) is emptied.
    Patient's Birth Date and Birth Time follow the table in every mode (the options do not cover them).
Burned-in text
    An image flagged BurnedInAnnotation=YES is refused: medjax cannot tell where text is in the pixels. Given blank
    regions (COL0,ROW0,COL1,ROW1: columns COL0..COL1-1 and rows ROW0..ROW1-1, e.g. a scanner's header band) such
    images get those rectangles set to 0 in every frame (compressed pixel data is decoded and written
    uncompressed), BurnedInAnnotation=NO and the Clean Pixel Data Option (113101): the claim is only as good as
    the regions. Every other image keeps its pixel data byte for byte.
Not covered
    Text burned into images that are not flagged; faces recoverable from 3D renderings of CT / MR; identifying free
    text in attributes the table does not list; file and folder names (the output mirrors them).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import hmac
import io
import os
import warnings
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from importlib import resources

from medjax.data.volume import reason
from medjax.errors import MedjaxError

EDITION = "2026c"
REPORT_NAME = "deid_report.csv"
DATES = ("remove", "keep", "shift")
ACTIONS = ("D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*")
# Combined actions without the IOD's attribute Types: the least that may be retained; "U*" = keep, process items.
RESOLVED = {"Z/D": "Z", "X/Z": "X", "X/D": "X", "X/Z/D": "X", "X/Z/U*": "U*", "C": "X"}
MAX_SHIFT_DAYS = 3652
PATIENT_ID = 0x00100020
BIRTH = (0x00100030, 0x00100032)  # Patient's Birth Date / Time: no date option retains them
TIMEZONE_OFFSET = 0x00080201
META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
DATE_VRS = ("DA", "DT", "TM")
CODES = {  # DICOM CID 7050 (De-identification Method), scheme DCM
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "pixels": ("113101", "Clean Pixel Data Option"),
    "keep": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "shift": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
}
METHOD_NOTES = {"pixels": "burned-in regions blanked", "keep": "dates kept", "shift": "dates shifted per patient"}
TEMPORAL = {"remove": "REMOVED", "keep": "UNMODIFIED", "shift": "MODIFIED"}
_TEXT_DUMMY = "ANONYMIZED"
_DUMMIES = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0", "AS": "000D"}
_BINARY_VRS = ("OB", "OW", "OD", "OF", "OL", "OV", "UN")
_NUMBER_VRS = ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT")

Region = tuple[int, int, int, int]  # COL0, ROW0, COL1, ROW1 (half-open)


@functools.cache
def annex_e() -> tuple[dict[int, str], tuple[tuple[int, int, str], ...]]:
    """Table E.1-1's Basic Profile: ({tag: action}, ((value, mask, action), ...) for rows with x digits)."""
    text = resources.files("medjax.privacy").joinpath("annex_e.csv").read_text()
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    exact, masked = {}, []
    for row in rows:
        tag, action = row["tag"], row["action"]
        if action not in ACTIONS or len(tag) != 8:
            raise ValueError(f"annex_e.csv: bad row {row}")
        if "x" in tag:
            masked.append((int(tag.replace("x", "0"), 16), int("".join("0" if c == "x" else "F" for c in tag), 16),
                           action))
        else:
            exact[int(tag, 16)] = action
    return exact, tuple(masked)


def table_action(tag: int) -> str | None:
    """Table E.1-1's Basic Profile action for ``tag`` ("X" for a private attribute), None when it is not listed."""
    if (tag >> 16) % 2:
        return "X"
    exact, masked = annex_e()
    if tag in exact:
        return exact[tag]
    return next((action for value, mask, action in masked if tag & mask == value), None)


def parse_region(text: str) -> Region:
    """'COL0,ROW0,COL1,ROW1' (pixels, half-open) -> a blank region."""
    try:
        c0, r0, c1, r1 = (int(v) for v in text.split(","))
    except ValueError:
        raise MedjaxError(f"--blank-burned-in {text!r}: expected COL0,ROW0,COL1,ROW1 (four integers, pixels)") from None
    if not (0 <= c0 < c1 and 0 <= r0 < r1):
        raise MedjaxError(f"--blank-burned-in {text!r}: need 0 <= COL0 < COL1 and 0 <= ROW0 < ROW1")
    return c0, r0, c1, r1


class Refused(MedjaxError):
    """An image medjax will not de-identify as asked: burned-in text and no regions to blank, or pixel data it
    cannot blank."""


class _Skipped(Exception):
    """A file that is not a complete DICOM object (the message says why)."""


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def patient_key(ds) -> str:
    """What identifies a dataset's patient: Patient ID (+ issuer), else name and birth date, else the study."""
    pid, issuer = _text(ds.get("PatientID")), _text(ds.get("IssuerOfPatientID"))
    if pid:
        return f"{pid} (issuer {issuer})" if issuer else pid
    name, birth = _text(ds.get("PatientName")), _text(ds.get("PatientBirthDate"))
    if name or birth:
        return f"name {name} born {birth}"
    return f"study {_text(ds.get('StudyInstanceUID'))}"


def _shift_value(value: str, vr: str, days: int) -> str | None:
    """A DA or DT value moved by ``days`` (the rest of a DT kept); None when it holds no full date."""
    v = value.strip()
    if vr == "DA" and len(v) == 10 and v[4] == v[7] == ".":  # ACR-NEMA YYYY.MM.DD
        v = v.replace(".", "")
    if len(v) < 8 or not v[:8].isdigit() or (vr == "DA" and len(v) != 8):
        return None
    try:
        shifted = date(int(v[:4]), int(v[4:6]), int(v[6:8])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}{v[8:]}"


def _empty(vr: str):
    from pydicom.sequence import Sequence

    return Sequence() if vr == "SQ" else b"" if vr in _BINARY_VRS else None


def _dummy(vr: str):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if vr == "SQ":
        return Sequence([Dataset()])
    if vr in _BINARY_VRS:
        return b"\x00\x00"
    if vr in _NUMBER_VRS or vr.startswith(("US or", "OB or")):
        return 0
    return _DUMMIES.get(vr, _TEXT_DUMMY)


class Deidentifier:
    """One run: the secret that keys new UIDs and pseudonyms, the date mode, and every mapping made (for the
    data controller's map). Calling it de-identifies one dataset in place."""

    def __init__(self, secret: bytes, dates: str = "remove", shift_seed: str | None = None,
                 blank_regions: Sequence[Region] = ()):
        if dates not in DATES:
            raise MedjaxError(f"dates={dates!r}: one of {', '.join(DATES)}")
        if (dates == "shift") != (shift_seed is not None):
            raise MedjaxError("a date shift needs a seed (--shift-dates SEED), and a seed needs dates='shift'")
        if not secret:
            raise MedjaxError("the de-identification secret is empty")
        self.secret, self.dates, self.blank_regions = bytes(secret), dates, tuple(blank_regions)
        self.shift_seed = None if shift_seed is None else str(shift_seed).encode()
        self.uids: dict[str, str] = {}
        self.patients: dict[str, str] = {}
        self.shifts: dict[str, int] = {}

    def _digest(self, key: bytes, kind: str, value: str) -> bytes:
        return hmac.new(key, kind.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()

    def uid(self, old: str) -> str:
        """The run's replacement for ``old`` (the same every time)."""
        old = old.strip().rstrip("\x00")
        if old not in self.uids:
            self.uids[old] = "2.25." + str(int.from_bytes(self._digest(self.secret, "uid", old)[:16], "big"))
        return self.uids[old]

    def pseudonym(self, key: str) -> str:
        """The pseudonymous Patient ID / Patient's Name of the patient ``key`` (see ``patient_key``)."""
        if key not in self.patients:
            self.patients[key] = "ANON-" + self._digest(self.secret, "patient", key).hex()[:12].upper()
        return self.patients[key]

    def shift_days(self, key: str) -> int:
        """This patient's date offset in days (negative: back in time)."""
        if key not in self.shifts:
            digest = self._digest(self.shift_seed, "shift", key)
            self.shifts[key] = -(1 + int.from_bytes(digest[:8], "big") % MAX_SHIFT_DAYS)
        return self.shifts[key]

    def __call__(self, ds):
        """De-identify ``ds`` (a pydicom Dataset, usually read from a file) in place and return it; raises
        ``Refused`` for burned-in annotation without blank regions."""
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        blanked = False
        if _text(ds.get("BurnedInAnnotation")).upper() == "YES":
            if not self.blank_regions:
                raise Refused("BurnedInAnnotation=YES: text in the pixels; blanking needs the regions that hold it "
                              "(--blank-burned-in COL0,ROW0,COL1,ROW1)")
            _blank(ds, self.blank_regions)
            blanked = True
        key = patient_key(ds)
        pseudonym = self.pseudonym(key)
        shift = self.shift_days(key) if self.dates == "shift" else None
        self._walk(ds, pseudonym, shift, top=True)
        meta = getattr(ds, "file_meta", None)  # None for a dataset built in memory
        for tag in META_REMOVED if meta is not None else ():
            if tag in meta:
                del meta[tag]
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.uid(meta.MediaStorageSOPInstanceUID)
        ds.preamble = b"\x00" * 128
        ds.PatientID = ds.PatientName = pseudonym
        ds.PatientIdentityRemoved = "YES"
        options = ["basic"] + (["pixels"] if blanked else []) + ([self.dates] if self.dates != "remove" else [])
        ds.DeidentificationMethod = [f"medjax deid: DICOM PS3.15 {EDITION} Basic Profile"] + [
            METHOD_NOTES[option] for option in options[1:]]  # never the offset itself
        items = []
        for option in options:
            value, meaning = CODES[option]
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = TEMPORAL[self.dates]
        if blanked:
            ds.BurnedInAnnotation = "NO"
        return ds

    def _action(self, elem) -> str:
        """What happens to one element: X Z D U K, U* (keep, process its items) or P (the pseudonym)."""
        tag = int(elem.tag)
        group = tag >> 16
        if tag & 0xFFFF == 0 or group % 2 or group & 0xFF00 in (0x5000, 0x6000):
            return "X"  # group length, private, curve, overlay
        if tag == PATIENT_ID:
            return "P"
        if self.dates != "remove" and (elem.VR in DATE_VRS or tag == TIMEZONE_OFFSET) and tag not in BIRTH:
            return "K"
        action = table_action(tag) or "K"
        return RESOLVED.get(action, action)

    def _walk(self, ds, pseudonym: str, shift: int | None, top: bool) -> None:
        for elem in list(ds):
            action = self._action(elem)
            vr = elem.VR
            if action == "X":
                del ds[elem.tag]
            elif action == "P":
                nested = _text(elem.value)
                elem.value = pseudonym if top else self.pseudonym(nested) if nested else None
            elif action == "Z":
                elem.value = _empty(vr)
            elif action in ("D", "U") and (vr == "UI" or (action == "U" and vr == "UN")):
                self._replace_uids(ds, elem)
            elif action in ("D", "U"):
                elem.value = _dummy(vr)  # D, or U on an attribute that holds no UID
            elif vr == "SQ":  # K, U*: keep the sequence, de-identify its items
                for item in elem.value:
                    self._walk(item, pseudonym, shift, top=False)
            elif shift is not None and vr in ("DA", "DT") and elem.value not in (None, ""):
                values = elem.value if elem.VM > 1 else [elem.value]
                shifted = [_shift_value(str(v), vr, shift) for v in values]
                elem.value = None if None in shifted else shifted if elem.VM > 1 else shifted[0]

    def _replace_uids(self, ds, elem) -> None:
        from pydicom.dataelem import DataElement

        value = elem.value
        if isinstance(value, bytes):  # UN: an implicit-VR file's attribute pydicom does not know
            value = value.decode("ascii", "replace").rstrip("\x00 ")
        values = [_text(v) for v in (value.split("\\") if isinstance(value, str) else value or [])]
        mapped = [self.uid(v) if v else "" for v in values]
        ds[elem.tag] = DataElement(elem.tag, "UI", mapped if len(mapped) > 1 else (mapped[0] if mapped else None))

    def mapping_rows(self) -> list[list]:
        """[kind, original, pseudonym, date shift days] for every patient and UID this run mapped."""
        rows = [["patient", key, p, self.shifts.get(key, "")] for key, p in sorted(self.patients.items())]
        return rows + [["uid", old, new, ""] for old, new in sorted(self.uids.items())]


def _blank(ds, regions: Sequence[Region]) -> None:
    """Set ``regions`` to 0 in every frame; compressed pixel data is decoded (and stays uncompressed)."""
    import numpy as np

    if int(ds.get("BitsAllocated", 16)) == 1 or not ds.file_meta.TransferSyntaxUID.is_little_endian:
        raise Refused("BurnedInAnnotation=YES and its pixel data (1-bit or big endian) cannot be blanked by medjax")
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)  # as RGB for colour; the new UID comes from the profile
    ds.pixel_array_options(raw=True)  # stored values, no colour conversion
    frames, rows, cols = int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
    pixels = np.array(ds.pixel_array).reshape(frames, rows, cols, -1)
    for c0, r0, c1, r1 in regions:
        pixels[:, r0:r1, c0:c1] = 0
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0  # pixel_array interleaves the samples
    ds.PixelData = pixels.tobytes()


def _read(path: str):
    """The dataset in ``path``, fully parsed; ``_Skipped(why)`` for a file that is not DICOM, a DICOMDIR, cut short."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels.utils import get_expected_length
    from pydicom.uid import UID

    try:
        ds = pydicom.dcmread(path)
        for _ in ds.iterall():  # converts every raw element now: a malformed value fails here, not half-way through
            pass
    except InvalidDicomError:
        raise _Skipped("not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from None
    except MemoryError:
        raise
    except Exception as e:
        raise _Skipped(f"cannot parse: {reason(e)}") from None
    if "DirectoryRecordSequence" in ds:
        raise _Skipped("a DICOMDIR (it names files and patients; rebuild one for the output)")
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise _Skipped("no SOP Class / Instance UID: cut short, or not a DICOM object")
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels and "Image Storage" in UID(ds.SOPClassUID).name:
        raise _Skipped(f"{UID(ds.SOPClassUID).name} without pixel data: cut short")
    if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
        try:
            expected = int(get_expected_length(ds))
        except (TypeError, ValueError, AttributeError) as e:  # Rows, Columns ... missing or not numbers
            raise _Skipped(f"cannot parse the image description: {reason(e)}") from None
        if len(ds.PixelData) < expected:
            raise _Skipped(f"pixel data cut short ({len(ds.PixelData)} of {expected} bytes)")
    return ds


def _atomic(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then move it onto ``path``: nobody sees a half-written file, a failure leaves none."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_csv(path: str, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(buffer.getvalue())

    _atomic(path, write)


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _input_files(in_dir: str) -> list[str]:
    """Every file under ``in_dir`` (relative, '/'-separated, sorted)."""
    found = []
    for root, dirs, names in os.walk(in_dir):
        dirs.sort()
        found += [os.path.relpath(os.path.join(root, n), in_dir).replace(os.sep, "/") for n in sorted(names)]
    return found


def _is_dicom(path: str) -> bool:
    import pydicom

    try:
        return "SOPInstanceUID" in pydicom.dcmread(path, stop_before_pixels=True)
    except MemoryError:
        raise
    except Exception:
        return False


def _check_paths(in_dir: str, out_dir: str, map_path: str | None, secret_file: str | None) -> None:
    if not os.path.isdir(in_dir):
        raise MedjaxError(f"IN_DIR {in_dir} is not a folder" if os.path.exists(in_dir) else
                          f"IN_DIR not found: {in_dir}")
    if _inside(out_dir, in_dir):
        raise MedjaxError(f"OUT_DIR {out_dir} is IN_DIR or inside it: write the de-identified copy elsewhere (the "
                          f"input folder is never modified)")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise MedjaxError(f"OUT_DIR {out_dir} is not empty: give a new or empty folder (one run, one consistent "
                          f"set of UIDs and pseudonyms)")
    for option, path in (("--map", map_path), ("--secret-file", secret_file)):
        if path is not None and _inside(path, out_dir):
            raise MedjaxError(f"{option} {path} is inside OUT_DIR {out_dir}, which ships with the data: keep it "
                              f"outside")
    if secret_file is not None and not os.path.isfile(secret_file):
        raise MedjaxError(f"--secret-file not found: {secret_file}")
    if map_path is not None:
        if _inside(map_path, in_dir):
            raise MedjaxError(f"--map {map_path} is inside IN_DIR {in_dir}, which is never modified: keep it outside")
        _probe(os.path.dirname(map_path), "--map's folder", make=False)
        if os.path.isdir(map_path):
            raise MedjaxError(f"--map {map_path} is a folder: give a file name")


def _probe(folder: str, what: str, make: bool) -> None:
    """Fail now, with one line, if ``folder`` cannot be written (rather than after every file was processed)."""
    probe = os.path.join(folder, f".medjax-write-test.{os.getpid()}")
    try:
        if make:
            os.makedirs(folder, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise MedjaxError(f"cannot write to {what} {folder}: {reason(e)}") from e


def deidentify_tree(in_dir: str, out_dir: str, *, dates: str = "remove", shift_seed: str | None = None,
                    map_path: str | None = None, blank_regions: Sequence[Region] = (),
                    secret_file: str | None = None) -> list[dict]:
    """De-identify every DICOM file under ``in_dir`` into the same relative path under ``out_dir`` (each written
    atomically; inputs are only read) and write ``out_dir/deid_report.csv``: one row per input file with its
    outcome (deidentified | skipped | refused | failed). ``map_path`` (outside both folders) gets the original ->
    pseudonym map of patients and UIDs. ``secret_file``'s bytes key the UIDs and pseudonyms (the same secret gives
    the same mapping in another run); without one, a random secret makes this run's mapping its own. Returns the
    report's rows."""
    in_dir, out_dir = os.path.realpath(in_dir), os.path.realpath(out_dir)
    map_path = None if map_path is None else os.path.realpath(map_path)
    secret_file = None if secret_file is None else os.path.realpath(secret_file)
    _check_paths(in_dir, out_dir, map_path, secret_file)
    files = _input_files(in_dir)
    if not any(_is_dicom(os.path.join(in_dir, rel)) for rel in files):
        raise MedjaxError(f"no DICOM file in IN_DIR {in_dir} ({len(files)} file(s) looked at, recursively)")
    secret = os.urandom(32)
    if secret_file is not None:
        with open(secret_file, "rb") as f:
            secret = f.read()
        if not secret:
            raise MedjaxError(f"--secret-file {secret_file} is empty")
    run = Deidentifier(secret, dates, shift_seed, blank_regions)
    _probe(out_dir, "OUT_DIR", make=True)
    rows = []
    for rel in files:
        row = {"input": rel, "output": "", "outcome": "deidentified", "patient": "", "detail": ""}
        try:
            with warnings.catch_warnings():  # pydicom warns about every odd value; the report says what happened
                warnings.simplefilter("ignore")
                ds = run(_read(os.path.join(in_dir, rel)))
                dest = os.path.join(out_dir, *rel.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                _atomic(dest, lambda tmp, ds=ds: ds.save_as(tmp, enforce_file_format=False))
            row["output"], row["patient"] = rel, str(ds.PatientID)
        except (_Skipped, Refused) as e:
            row["outcome"], row["detail"] = "skipped" if isinstance(e, _Skipped) else "refused", str(e)
        except MemoryError:
            raise
        except Exception as e:  # one odd file must not stop a hospital-sized run; the report names it
            row["outcome"], row["detail"] = "failed", reason(e)
        rows.append(row)
    _write_csv(os.path.join(out_dir, REPORT_NAME), list(rows[0]), [list(r.values()) for r in rows])
    if map_path is not None:
        _write_csv(map_path, ["kind", "original", "pseudonym", "date_shift_days"], run.mapping_rows())
    return rows
