"""Image sequences from disk: 4D files (x, y, z, t) and cine DICOM, as a ``Cine``: (T, X, Y, Z, C) RAS+ frames.

Every frame follows the ``Volume`` conventions (``medjax.data.volume``: channels-last, RAS+, affine to world mm)
with time first, so a frame is ``cine.array[t]`` and a 2D cine (one slice) has Z = 1. Data on disk is only read.

NIfTI, ITK, HDF5, TIFF (read by ``formats.read_array``, with each format's geometry rules)
    A 4D image is (X, Y, Z, T); a 5D one (X, Y, Z, T, C) keeps C channels. NIfTI's frame interval is pixdim[4]
    in the header's time unit (converted to ms; unknown or 0 -> no frame times); the other formats store none.
    A label sequence is (X, Y, Z, T) whole numbers (``volume.check_label_values``).
Cine DICOM
    * one multi-frame file (ultrasound / echo loops, multi-frame MR or XA): its frames are time points. Frame
      times come from FrameTimeVector (ms between frames) or FrameTime (ms); geometry from ImagePositionPatient /
      ImageOrientationPatient / PixelSpacing when present. Ultrasound has no patient geometry: the affine is then
      diagonal, with the first ultrasound region's PhysicalDeltaX/Y (cm -> mm) or PixelSpacing, else 1 mm (named
      in ``Cine.notes``). Colour frames (RGB; pydicom converts YBR) become luminance 0.299 R + 0.587 G + 0.114 B.
      Multi-frame files placed by GridFrameOffsetVector are spatial grids (``dicom.load_dicom_series``).
    * a folder of single-frame files (cine MR): the same slice position(s) at several cardiac phases. Files are
      grouped by position along the slice normal; every position must hold the same number of phases, ordered by
      TriggerTime (else InstanceNumber); each phase is then read as a series (``dicom.load_dicom_series`` rules:
      one orientation, even slice gaps, rescale), and all phases must share one geometry.
A folder of cases (``load_cine_folder``, the ``cine_folder`` source)
    images/ + labels/ (every frame labelled), or the published layouts of ACDC (labels on the ED and ES frames,
    named in each case's Info.cfg) and M&Ms (a 4D label empty but on ED and ES, a CSV of those frames). Cases
    differ in frames, grid and spacing: ``harmonise`` resamples them in-plane, crops or pads them to one grid and
    length, and marks the voxels that have a reference in a per-voxel "mask" (the one the segmentation loss and
    Dice already respect), so unlabelled frames and padding count for nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from medjax.data.formats import case_files, case_name, find_case, format_of, read_array
from medjax.data.hdf5 import DEFAULT_LAYOUT, Hdf5Layout
from medjax.data.volume import LPS_TO_RAS, Volume, as_ras, check_label_values, reason, resample_to_spacing, voxel_sizes
from medjax.errors import MedjaxError

TIME_UNIT_MS = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}
LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as DICOM's YBR_FULL


@dataclasses.dataclass(frozen=True, eq=False)
class Cine:
    """A sequence of frames on one grid: array (T, X, Y, Z, C) image or (T, X, Y, Z) label."""

    array: np.ndarray
    affine: np.ndarray  # (4, 4) voxel index (i, j, k, 1) -> RAS world mm, the same for every frame
    spacing: tuple[float, float, float]
    frame_times_ms: np.ndarray | None  # (T,) from the first frame, when the file says
    path: str
    notes: tuple[str, ...] = ()  # what the reader had to assume (e.g. "no patient geometry")

    @property
    def num_frames(self) -> int:
        return int(self.array.shape[0])


# ------------------------------------------------------------------------------------- NIfTI, ITK, HDF5, TIFF

def _nifti_frame_times(img, num_frames: int) -> np.ndarray | None:
    zooms = img.header.get_zooms()
    try:
        unit = img.header.get_xyzt_units()[1]
    except AttributeError:  # Analyze / MGH headers carry no time unit
        unit = "unknown"
    if len(zooms) < 4 or not zooms[3] > 0 or unit not in TIME_UNIT_MS:
        return None
    return np.arange(num_frames) * float(zooms[3]) * TIME_UNIT_MS[unit]


def _interval_notes(times: np.ndarray | None) -> tuple[str, ...]:
    """Headers are taken literally; a frame interval over 100 s is named (often milliseconds stored as seconds)."""
    if times is not None and len(times) > 1 and times[1] > 100_000:
        return (f"frame interval {times[1] / 1000:g} s as the header states it: check its time unit",)
    return ()


def _open_4d(path: str, what: str, dtype, hdf5: Hdf5Layout, key: str | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """(data (X, Y, Z, T[, C]), affine, frame times or None, notes) of a NIfTI / ITK / HDF5 / TIFF file."""
    data, affine, notes = read_array(path, what, dtype, hdf5=hdf5, key=key)
    if data.ndim == 3 or (data.ndim == 4 and data.shape[3] == 1):
        raise MedjaxError(f"{path}: a cine {what} needs a 4th (time) axis of several frames, got shape {data.shape}")
    if data.ndim not in (4, 5):
        raise MedjaxError(f"{path}: expected a 4D (X, Y, Z, T) or 5D (X, Y, Z, T, C) {what}, got shape {data.shape}")
    times = None
    if format_of(path) == "nifti":  # only NIfTI headers carry a frame interval
        import nibabel as nib

        times = _nifti_frame_times(nib.load(path), data.shape[3])
    return data, affine, times, notes


def load_cine_file(path: str, *, canonical: bool = True, dtype=np.float32, hdf5: Hdf5Layout = DEFAULT_LAYOUT
                   ) -> Cine:
    """A 4D (X, Y, Z, T) or 5D (X, Y, Z, T, C) image file (NIfTI, ITK, HDF5 ``hdf5.image_key``, TIFF: see
    ``formats``) as a (T, X, Y, Z, C) ``Cine``; frame times come from NIfTI headers only."""
    path = os.fspath(path)
    data, affine, times, notes = _open_4d(path, "image", np.dtype(dtype), hdf5, None)
    if data.ndim == 4:
        data = data[..., None]
    if canonical:
        data, affine = as_ras(data, affine)
    array = np.ascontiguousarray(np.moveaxis(data, 3, 0), dtype=dtype)
    return Cine(array, affine, voxel_sizes(affine), times, path, notes + _interval_notes(times))


def load_cine_label(path: str, num_classes: int | None = None, *, canonical: bool = True,
                    hdf5: Hdf5Layout = DEFAULT_LAYOUT) -> Cine:
    """A 4D (X, Y, Z, T) label sequence file (any ``load_cine_file`` format; HDF5 ``hdf5.label_key``) as
    (T, X, Y, Z) int32 class indices."""
    path = os.fspath(path)
    data, affine, times, notes = _open_4d(path, "label", None, hdf5, hdf5.label_key)
    if data.ndim == 5:
        raise MedjaxError(f"{path}: a label sequence must be 4D (X, Y, Z, T), got shape {data.shape}")
    check_label_values(data, path, num_classes)
    if canonical:
        data, affine = as_ras(data, affine)
    array = np.ascontiguousarray(np.moveaxis(data, 3, 0), dtype=np.int32)
    return Cine(array, affine, voxel_sizes(affine), times, path, notes)


# ---------------------------------------------------------------------------------------------------- DICOM

def _ultrasound_spacing(ds) -> tuple[float, float] | None:
    """(between rows, between columns) mm of the first ultrasound region measured in cm, if any."""
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        return None
    r = regions[0]
    if int(r.get("PhysicalUnitsXDirection", 0)) == 3 and int(r.get("PhysicalUnitsYDirection", 0)) == 3:
        dx, dy = float(r.get("PhysicalDeltaX", 0)), float(r.get("PhysicalDeltaY", 0))
        if dx > 0 and dy > 0:
            return 10.0 * abs(dy), 10.0 * abs(dx)
    return None


def _frame_times(ds, n: int, path: str) -> np.ndarray | None:
    if "FrameTimeVector" in ds:
        steps = np.asarray([float(v) for v in ds.FrameTimeVector], np.float64)
        if steps.shape != (n,):
            raise MedjaxError(f"{path}: FrameTimeVector has {steps.size} entries for {n} frames")
        return np.cumsum(np.concatenate([[0.0], steps[1:]]))  # entry 0 is the first frame's (0) offset
    if float(ds.get("FrameTime", 0) or 0) > 0:
        return np.arange(n) * float(ds.FrameTime)
    return None


def _luminance(pixels: np.ndarray, ds, path: str) -> np.ndarray:
    """(T, rows, cols) grey values; colour (T, rows, cols, 3) RGB -> luminance."""
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 1:
        return pixels
    if samples != 3 or pixels.shape[-1] != 3:
        raise MedjaxError(f"{path}: {samples} samples per pixel ({ds.get('PhotometricInterpretation')}) is not "
                          f"supported; expected grey or RGB")
    return pixels.astype(np.float32) @ LUMINANCE


def _multi_frame_cine(path: str) -> Cine:
    import pydicom

    from medjax.data.dicom import _floats, _plane, _scale, decode_pixels

    try:
        ds = pydicom.dcmread(path)
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except MemoryError:
        raise
    except Exception as e:  # not DICOM, or truncated
        raise MedjaxError(f"cannot read DICOM cine {path}: {reason(e)}") from e
    pixels = decode_pixels(ds, path)
    if "GridFrameOffsetVector" in ds:
        raise MedjaxError(f"{path}: frames placed by GridFrameOffsetVector are slices of one volume, not time "
                          f"points: read it with medjax.data.dicom.load_dicom_series")
    if n < 2:
        raise MedjaxError(f"{path}: a cine needs several frames, NumberOfFrames is {n}")
    frame_shape = pixels.shape[-3:] if int(ds.get("SamplesPerPixel", 1)) > 1 else pixels.shape[-2:]
    pixels = _luminance(pixels.reshape(n, *frame_shape), ds, path)
    slope, intercept = _scale(ds)
    frames = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)  # (T, rows, cols)
    notes: list[str] = []
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
        row, col, spacing = _plane(ds, path)
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1] = row * spacing[1], col * spacing[0]
        lps[:3, 2] = np.cross(row, col) * float(ds.get("SliceThickness", 1.0) or 1.0)
        lps[:3, 3] = _floats(ds, "ImagePositionPatient", 3, path)
        affine = LPS_TO_RAS @ lps
    else:
        spacing = _ultrasound_spacing(ds)
        if spacing is None and "PixelSpacing" in ds:
            spacing = tuple(float(v) for v in ds.PixelSpacing)
        if spacing is None:
            spacing = (1.0, 1.0)
            notes.append("no pixel spacing in the file: 1 mm assumed")
        notes.append("no patient geometry (ImagePositionPatient / ImageOrientationPatient): image axes used")
        affine = np.diag([spacing[1], spacing[0], 1.0, 1.0])
    array = np.transpose(frames, (2, 1, 0))[:, :, None, :, None]  # (cols, rows, 1, T, 1): i along a row
    array, affine = as_ras(array, affine)
    array = np.ascontiguousarray(np.moveaxis(array, 3, 0), np.float32)
    return Cine(array, affine, voxel_sizes(affine), _frame_times(ds, n, path), path, tuple(notes))


def _phase_key(ds) -> tuple[float, float]:
    trigger = ds.get("TriggerTime")
    return (float(trigger) if trigger not in (None, "") else np.nan, float(ds.get("InstanceNumber", 0) or 0))


def _single_frame_cine(folder: str, files: list) -> Cine:
    from medjax.data.dicom import _floats, _plane, _single_frames

    row, col, _ = _plane(files[0][1], files[0][0])
    normal = np.cross(row, col)
    by_position: dict[float, list] = {}
    for path, ds in files:
        d = round(float(_floats(ds, "ImagePositionPatient", 3, path) @ normal), 2)
        by_position.setdefault(d, []).append((path, ds))
    counts = {d: len(v) for d, v in by_position.items()}
    num_phases = next(iter(counts.values()))
    if len(set(counts.values())) > 1:
        raise MedjaxError(f"{folder}: slice positions hold different numbers of cardiac phases "
                          f"{sorted(set(counts.values()))} (a phase is missing, or series are mixed)")
    if num_phases < 2:
        raise MedjaxError(f"{folder}: every slice position holds one image: this is a volume, not a cine "
                          f"(read it with medjax.data.dicom.load_dicom_series)")
    phases: list[list] = [[] for _ in range(num_phases)]
    times = np.zeros((len(by_position), num_phases))
    for p, group in enumerate(by_position.values()):
        keys = [_phase_key(ds) for _, ds in group]
        use_trigger = not any(np.isnan(k[0]) for k in keys)
        order = np.argsort([k[0] if use_trigger else k[1] for k in keys], kind="stable")
        ranked = [keys[i][0 if use_trigger else 1] for i in order]
        if len(set(ranked)) < len(ranked):
            raise MedjaxError(f"{folder}: images at one slice position share a TriggerTime / InstanceNumber, so "
                              f"their phase order is unknown (e.g. {group[order[0]][0]})")
        for t, i in enumerate(order):
            phases[t].append(group[i])
        times[p] = [keys[i][0] for i in order]
    volumes = [_single_frames(folder, phase) for phase in phases]
    for t, v in enumerate(volumes[1:], 1):
        if v.array.shape != volumes[0].array.shape or np.abs(v.affine - volumes[0].affine).max() > 1e-3:
            raise MedjaxError(f"{folder}: phase {t} lies on a different grid than phase 0")
    frame_times = None if np.isnan(times).any() else times.mean(0) - times.mean(0)[0]
    array = np.stack([v.array for v in volumes])
    return Cine(array, volumes[0].affine, volumes[0].spacing, frame_times, folder)


def load_dicom_cine(path: str, series_uid: str | None = None) -> Cine:
    """A cine from one multi-frame DICOM file, or from a folder holding one (or a cine MR series of single-frame
    files), as (T, X, Y, Z, 1) float32 physical values; see the module docstring."""
    from medjax.data.dicom import _choose, _scan

    path = os.fspath(path)
    if os.path.isfile(path):
        return _multi_frame_cine(path)
    series, _ = _scan(path)
    files = series[_choose(path, series, series_uid)]
    if len(files) == 1 and int(files[0][1].get("NumberOfFrames", 1) or 1) > 1:
        return _multi_frame_cine(files[0][0])
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in files):
        raise MedjaxError(f"{path}: a series of {len(files)} files with multi-frame ones among them is not a "
                          f"supported cine (one multi-frame file, or single-frame files)")
    return _single_frame_cine(path, files)


def load_cine(path: str, *, hdf5: Hdf5Layout = DEFAULT_LAYOUT) -> Cine:
    """A cine image from a DICOM file (.dcm) or folder, or any 4D file ``formats`` reads (NIfTI, ITK, HDF5,
    TIFF)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MedjaxError(f"cine file not found: {path}")
    if format_of(path) == "dicom":
        return load_dicom_cine(path)
    return load_cine_file(path, hdf5=hdf5)


# ---------------------------------------------------------------------------------------------- a folder of cases

NORMALIZE = ("zscore", "minmax", "none")
LAYOUTS = ("folder", "acdc", "mnms")


@dataclasses.dataclass(frozen=True, eq=False)
class CineCase:
    """One case as read, before `harmonise` brings every case onto one grid and length."""

    name: str
    image: Cine  # (T, X, Y, Z, C)
    label: Cine | None  # (T, X, Y, Z) on the image's grid, 0 on unlabelled frames
    labelled: tuple[int, ...] | None = None  # the frames that have a reference; None = every frame
    ed_es: tuple[int, int] | None = None  # the end-diastolic and end-systolic frames, from 0


def _read_targets(path: str, cases: list[str]) -> np.ndarray:
    """(N, K) float32 from a CSV `case,<target>[,<target>...]` with one row per case."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise MedjaxError(f"cannot read targets file {path}: {reason(e)}") from e
    if len(rows) < 2 or len(rows[0]) < 2:
        raise MedjaxError(f"{path}: expected a header 'case,<target>...' and one row per case")
    values: dict[str, list[float]] = {}
    for line, row in enumerate(rows[1:], 2):
        if not row:
            continue
        try:
            values[row[0]] = [float(v) for v in row[1:]]
        except ValueError as e:
            raise MedjaxError(f"{path}, line {line}: targets must be numbers, got {row[1:]}") from e
        if len(values[row[0]]) != len(rows[0]) - 1:
            raise MedjaxError(f"{path}, line {line}: {len(row) - 1} targets, the header names {len(rows[0]) - 1}")
    missing = [c for c in cases if c not in values]
    if missing:
        raise MedjaxError(f"{path}: no targets for cases {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    out = np.asarray([values[c] for c in cases], np.float32)
    if not np.isfinite(out).all():
        raise MedjaxError(f"{path}: targets must be finite")
    return out


def _normalize(array: np.ndarray, how: str, path: str) -> np.ndarray:
    if how == "none":
        return array
    if how == "minmax":
        lo, hi = float(array.min()), float(array.max())
        return (array - lo) / (hi - lo) if hi > lo else array - lo
    std = float(array.std())
    return (array - array.mean()) / (std if std > 0 else 1.0)


def _frame_volume(cine: Cine, t: int) -> Volume:
    return Volume(cine.array[t], cine.affine, cine.spacing, cine.path)


def _check_label_grid(image: Cine, label: Cine | Volume) -> None:
    """A label frame or sequence must lie on its image's grid (`nifti.check_pair`, which names both files)."""
    from medjax.data.nifti import check_pair

    if isinstance(label, Cine):
        if label.num_frames != image.num_frames:
            raise MedjaxError(f"label {label.path} has {label.num_frames} frames but its image {image.path} has "
                              f"{image.num_frames}")
        label = _frame_volume(label, 0)
    check_pair(_frame_volume(image, 0), label)


def _check_frames(name: str, image: Cine, ed_es: Sequence[int], source: str, base: int) -> tuple[int, int]:
    """(ED, ES) from 0, checked to lie in the sequence; `source` named them counting from `base`."""
    for key, t in zip(("ED", "ES"), ed_es):
        if not 0 <= t < image.num_frames:
            raise MedjaxError(f"{source}: {key} frame {t + base} of case {name!r} is beyond the {image.num_frames} "
                              f"frames of {image.path} (frames count from {base})")
    return int(ed_es[0]), int(ed_es[1])


def _ed_es_case(name: str, image: Cine, label: Cine, ed_es: tuple[int, int]) -> CineCase:
    """A case labelled on its ED and ES frames only; a case with no foreground there has no labels at all."""
    labelled = tuple(sorted(set(ed_es)))
    if not label.array[list(labelled)].any():
        raise MedjaxError(f"{label.path}: case {name!r} has no labelled frame: its ED and ES frames "
                          f"{list(labelled)} (from 0) hold background only")
    return CineCase(name, image, label, labelled, ed_es)


def read_acdc_info(path: str) -> dict[str, str]:
    """The `key: value` lines of an ACDC `Info.cfg` (ED, ES, Group, Height, NbFrame, Weight) as strings."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise MedjaxError(f"cannot read {path}: {reason(e)}") from e
    return {key.strip(): value.strip() for key, sep, value in (line.partition(":") for line in lines) if sep}


def load_acdc_case(folder: str, num_classes: int | None = None) -> CineCase:
    """An ACDC case folder `<case>/`: `Info.cfg` (its `ED:` and `ES:` frames, counted from 1), `<case>_4d.nii.gz`
    (the whole sequence) and `<case>_frameNN_gt.nii.gz` (the labels of frames ED and ES; NN from 01). Voxel axes
    stay as stored (in-plane, in-plane, slice): RAS reorientation of an oblique short-axis stack would mix them."""
    folder = os.fspath(folder)
    name = os.path.basename(os.path.normpath(folder))
    cfg = os.path.join(folder, "Info.cfg")
    if not os.path.isfile(cfg):
        raise MedjaxError(f"{folder}: no Info.cfg (an ACDC case folder holds Info.cfg, {name}_4d.nii.gz and "
                          f"{name}_frameNN_gt.nii.gz)")
    from medjax.data.nifti import load_nifti_label

    info = read_acdc_info(cfg)
    frames = []
    for key in ("ED", "ES"):
        if key not in info:
            raise MedjaxError(f"{cfg}: no '{key}: <frame>' line (ACDC's Info.cfg names the end-diastolic and "
                              f"end-systolic frames, counted from 1)")
        try:
            frames.append(int(info[key]) - 1)
        except ValueError:
            raise MedjaxError(f"{cfg}: '{key}: {info[key]}' is not a frame number") from None
    image = load_cine_file(os.path.join(folder, f"{name}_4d.nii.gz"), canonical=False)
    ed_es = _check_frames(name, image, frames, cfg, base=1)
    label = np.zeros(image.array.shape[:-1], np.int32)
    for t in sorted(set(ed_es)):
        gt = load_nifti_label(os.path.join(folder, f"{name}_frame{t + 1:02d}_gt.nii.gz"), num_classes, canonical=False)
        _check_label_grid(image, gt)
        label[t] = gt.array
    return _ed_es_case(name, image, Cine(label, image.affine, image.spacing, None, folder), ed_es)


def read_ed_es_csv(path: str) -> dict[str, tuple[int, int]]:
    """Each case's (ED, ES) frames, as written, from a CSV with columns `ED` and `ES` and the case in the column
    `External code` (the M&Ms dataset information CSV, whose frames count from 0) or else the first column."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row]
    except OSError as e:
        raise MedjaxError(f"cannot read the ED/ES frames file {path}: {reason(e)}") from e
    header = [h.strip().lower() for h in (rows[0] if rows else [])]
    if "ed" not in header or "es" not in header:
        raise MedjaxError(f"{path}: expected a header with columns ED and ES (the case in 'External code' or the "
                          f"first column), got {rows[0] if rows else 'an empty file'}")
    case, ed, es = header.index("external code") if "external code" in header else 0, header.index("ed"), \
        header.index("es")
    frames = {}
    for line, row in enumerate(rows[1:], 2):
        try:
            frames[row[case].strip()] = (int(row[ed]), int(row[es]))
        except (ValueError, IndexError):
            raise MedjaxError(f"{path}, line {line}: ED and ES must be whole frame numbers, got {row}") from None
    return frames


def _csv_frames(name: str, image: Cine, frames: dict[str, tuple[int, int]], frames_csv: str) -> tuple[int, int]:
    if name not in frames:
        raise MedjaxError(f"{frames_csv}: no ED/ES row for case {name!r}")
    return _check_frames(name, image, frames[name], frames_csv, base=0)


def load_mnms_case(folder: str, frames: dict[str, tuple[int, int]], frames_csv: str,
                   num_classes: int | None = None) -> CineCase:
    """An M&Ms case folder `<code>/`: `<code>_sa.nii.gz` (the short-axis sequence) and `<code>_sa_gt.nii.gz`
    (its labels, empty on every frame but ED and ES); `frames` (`read_ed_es_csv` of `frames_csv`) gives its ED
    and ES frames, from 0. Voxel axes stay as stored, as in `load_acdc_case`."""
    folder = os.fspath(folder)
    name = os.path.basename(os.path.normpath(folder))
    image = load_cine_file(os.path.join(folder, f"{name}_sa.nii.gz"), canonical=False)
    label = load_cine_label(os.path.join(folder, f"{name}_sa_gt.nii.gz"), num_classes, canonical=False)
    _check_label_grid(image, label)
    return _ed_es_case(name, image, label, _csv_frames(name, image, frames, frames_csv))


def _folder_cases(root: str, images_dir: str, labels_dir: str, num_classes: int | None,
                  frames: dict[str, tuple[int, int]] | None, frames_csv: str, hdf5: Hdf5Layout) -> list[CineCase]:
    """The `folder` layout: `images/<case>` and optionally `labels/<case>.<ext>` (any ``formats`` type; an HDF5
    case may hold both under `hdf5`'s keys), every frame labelled unless `frames` names each case's ED and ES
    frames."""
    image_root = os.path.join(root, images_dir)
    if not os.path.isdir(image_root):
        raise MedjaxError(f"cine image folder not found: {image_root}")
    names = case_files(image_root)
    if not names:
        raise MedjaxError(f"{image_root} holds no cases")
    label_root = os.path.join(root, labels_dir)
    if frames is not None and not os.path.isdir(label_root):
        raise MedjaxError(f"config.data.frames_csv names labelled frames, but {label_root} does not exist")
    cases = []
    for n in names:
        case = case_name(n)
        image = load_cine(os.path.join(image_root, n), hdf5=hdf5)
        if not os.path.isdir(label_root):
            cases.append(CineCase(case, image, None))
            continue
        found = find_case(label_root, case)
        if found is None:
            raise MedjaxError(f"no label for case {case!r}: expected {os.path.join(label_root, case)}.nii.gz "
                              f"(or another supported extension)")
        label = load_cine_label(found, num_classes, hdf5=hdf5)
        if label.array.shape != image.array.shape[:-1]:
            raise MedjaxError(f"label {found} has shape (T, X, Y, Z) {label.array.shape} but its image "
                              f"{image.path} has {image.array.shape[:-1]}")
        cases.append(CineCase(case, image, label) if frames is None else
                     _ed_es_case(case, image, label, _csv_frames(case, image, frames, frames_csv)))
    return cases


def _case_folders(root: str, layout: str) -> list[str]:
    if not os.path.isdir(root):
        raise MedjaxError(f"cine case folder not found: {root}")
    folders = sorted(os.path.join(root, n) for n in os.listdir(root)
                     if not n.startswith(".") and os.path.isdir(os.path.join(root, n)))
    if not folders:
        example = "patientXXX/" if layout == "acdc" else "<code>/"
        raise MedjaxError(f"{root} holds no case folders (layout {layout!r} expects one folder per case, {example})")
    return folders


def _resample_cine(cine: Cine, spacing: Sequence[float], is_label: bool) -> Cine:
    """Every frame resampled by `volume.resample_to_spacing` at once (time rides along as channels)."""
    moved = np.moveaxis(cine.array, 0, 3)  # (X, Y, Z, T[, C])
    flat = moved.reshape(moved.shape[:3] + (-1,))
    out = resample_to_spacing(Volume(flat, cine.affine, cine.spacing, cine.path), spacing, is_label)
    array = np.moveaxis(out.array.reshape(out.array.shape[:3] + moved.shape[3:]), 3, 0)
    return dataclasses.replace(cine, array=np.ascontiguousarray(array), affine=out.affine, spacing=out.spacing)


def _resampled(case: CineCase, in_plane_mm: float) -> CineCase:
    spacing = (in_plane_mm, in_plane_mm, case.image.spacing[2])  # slices stay slices
    label = None if case.label is None else _resample_cine(case.label, spacing, is_label=True)
    return dataclasses.replace(case, image=_resample_cine(case.image, spacing, is_label=False), label=label)


def _check_in_plane_spacing(cases: list[CineCase]) -> None:
    first = cases[0]
    for case in cases[1:]:
        a, b = first.image.spacing[:2], case.image.spacing[:2]
        if not np.allclose(a, b, rtol=1e-3, atol=0):
            raise MedjaxError(f"cases differ in in-plane spacing ({first.name}: {a[0]:.4g} x {a[1]:.4g} mm, "
                              f"{case.name}: {b[0]:.4g} x {b[1]:.4g} mm): set config.data.in_plane_mm to resample "
                              f"them to one")


def _window_start(case: CineCase, num_frames: int) -> int:
    """The first frame kept of a case longer than `num_frames`: 0, or later if needed to keep every labelled
    frame (a fully labelled case keeps its first `num_frames`)."""
    if case.image.num_frames <= num_frames or case.labelled is None:
        return 0
    first, last = min(case.labelled), max(case.labelled)
    start = max(0, last - num_frames + 1)
    if start > first:
        raise MedjaxError(f"case {case.name!r}: its labelled frames {first}..{last} (from 0) span "
                          f"{last - first + 1} frames, more than config.data.num_frames={num_frames}")
    return start


def _centred(source: Sequence[int], target: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(source slices, target slices) of a centre crop (source larger) or centre zero pad (source smaller)."""
    src, dst = [], []
    for n, m in zip(source, target):
        a = abs(n - m) // 2
        src.append(slice(a, a + m) if n >= m else slice(0, n))
        dst.append(slice(0, m) if n >= m else slice(a, a + n))
    return tuple(src), tuple(dst)


def harmonise(cases: list[CineCase], *, normalize: str = "zscore", in_plane_mm: float = 0.0,
              grid: Sequence[int] = (), num_slices: int = 0, num_frames: int = 0) -> dict:
    """The cases on one grid and length: {"image" (N, T, X, Y, Z, C) float32, and with labels "label"
    (N, T, X, Y, Z) int32 and, unless every voxel counts, "mask" (N, T, X, Y, Z) float32; "ed_es" (N, 2) int32
    when every case knows its ED and ES frames}.

    Each case is resampled in-plane to `in_plane_mm` (0: the cases must share a spacing; slices are never
    resampled), normalised over its frames (`normalize`), centre-cropped or zero-padded to `grid` (X, Y) and
    `num_slices`, and cut or padded at the end to `num_frames` (a longer case keeps a window holding every
    labelled frame); () / 0 take the largest case. "mask" is 1 on the voxels that have a reference: the labelled
    frames, inside the case's own field of view (padded frames, slices and pixels are 0), so the segmentation
    loss and Dice count only those (`medjax.losses`, `medjax.metrics.dice_counts`)."""
    if not cases:
        raise MedjaxError("harmonise needs at least one case")
    if normalize not in NORMALIZE:
        raise MedjaxError(f"config.data.normalize={normalize!r} is not one of {list(NORMALIZE)}")
    if in_plane_mm:
        if not in_plane_mm > 0:
            raise MedjaxError(f"config.data.in_plane_mm must be > 0 (mm), or 0 to keep the cases' grids; got "
                              f"{in_plane_mm}")
        cases = [_resampled(c, float(in_plane_mm)) for c in cases]
    else:
        _check_in_plane_spacing(cases)
    channels = {c.name: c.image.array.shape[-1] for c in cases}
    if len(set(channels.values())) > 1:
        raise MedjaxError(f"cases differ in image channels ({dict(list(channels.items())[:6])})")
    grid = tuple(int(v) for v in grid)
    if grid and (len(grid) != 2 or min(grid) < 1):
        raise MedjaxError(f"config.data.grid must be two positive sizes (X, Y), got {grid}")
    if num_slices < 0 or num_frames < 0:
        raise MedjaxError(f"config.data.num_slices and num_frames must be >= 0, got {num_slices} and {num_frames}")
    shapes = np.array([c.image.array.shape[:4] for c in cases])  # (T, X, Y, Z) per case
    frames = int(num_frames) or int(shapes[:, 0].max())
    spatial = (*(grid or shapes[:, 1:3].max(0)), int(num_slices) or int(shapes[:, 3].max()))
    n = len(cases)
    image = np.zeros((n, frames, *spatial, cases[0].image.array.shape[-1]), np.float32)
    labelled = all(c.label is not None for c in cases)
    label = np.zeros((n, frames, *spatial), np.int32) if labelled else None
    mask = np.zeros((n, frames, *spatial), np.float32) if labelled else None
    starts = [_window_start(case, frames) for case in cases]
    for i, (case, start) in enumerate(zip(cases, starts)):
        length = min(frames, case.image.num_frames - start)
        src, dst = _centred(case.image.array.shape[1:4], spatial)
        source, target = (slice(start, start + length), *src), (i, slice(0, length), *dst)
        image[target] = _normalize(case.image.array, normalize, case.image.path)[source]
        if labelled:
            label[target] = case.label.array[source]
            inside = np.zeros(spatial, np.float32)
            inside[dst] = 1.0
            with_reference = range(length) if case.labelled is None else [t - start for t in case.labelled]
            mask[i, list(with_reference)] = inside
    out: dict = {"image": image}
    if labelled:
        out["label"] = label
        if not mask.all():
            out["mask"] = mask
    if all(c.ed_es is not None for c in cases):
        out["ed_es"] = np.asarray([[t - start for t in c.ed_es] for c, start in zip(cases, starts)], np.int32)
    return out


def _label_ef(cases: list[CineCase], ef_class: int) -> np.ndarray:
    """(N,) each case's EF from its labels (`temporal_metrics.ejection_fraction` of the `ef_class` voxel counts: at
    the ED and ES frames when known, else over every frame), on the grid as read."""
    from medjax.temporal_metrics import ejection_fraction

    efs = []
    for case in cases:
        if case.label is None:
            raise MedjaxError(f"config.data.ef_class={ef_class} measures EF on the labels, but case {case.name!r} "
                              f"has none")
        volumes = (case.label.array == ef_class).reshape(case.label.num_frames, -1).sum(1)[None]
        ef = ejection_fraction(volumes, ed_es=None if case.ed_es is None else np.asarray([case.ed_es]))[0]
        if not np.isfinite(ef):
            raise MedjaxError(f"case {case.name!r}: class {ef_class} is absent from its end-diastolic frame, so its "
                              f"labels give no ejection fraction (config.data.ef_class)")
        efs.append(ef)
    return np.asarray(efs, np.float32)


def load_cine_folder(root: str, *, layout: str = "folder", images_dir: str = "images", labels_dir: str = "labels",
                     targets_csv: str = "targets.csv", frames_csv: str = "", num_classes: int | None = None,
                     normalize: str = "zscore", in_plane_mm: float = 0.0, grid: Sequence[int] = (),
                     num_slices: int = 0, num_frames: int = 0, ef_class: int = 0,
                     hdf5: Hdf5Layout = DEFAULT_LAYOUT) -> dict:
    """Every case of `root` in one of three layouts, on one grid (`harmonise`).

    * `folder`: `images/<case>` (a 4D file of any ``formats`` type, a cine DICOM file or folder), optionally
      `labels/<case>.<ext>` (4D label sequences, every frame labelled unless `frames_csv` names each case's ED
      and ES frames; an HDF5 case may hold both under `hdf5`'s keys, with labels_dir = images_dir).
    * `acdc`: one folder per case as ACDC's `training/patientXXX/` (`load_acdc_case`).
    * `mnms`: one folder per case as M&Ms' `Training/Labeled/<code>/` (`load_mnms_case`), with `frames_csv`
      (relative to `root`, or absolute) the dataset's CSV of ED and ES frames.

    `targets.csv` (`case,<target>...`, e.g. EF) in `root` gives "target" (N, K); without it, `ef_class` > 0 gives
    each case's EF measured on its labels (N, 1). Returns {"cases" [names], "image", "label", "mask", "ed_es" as
    `harmonise` says, "target"}; Z is dropped when every case is one slice (2D cine).
    """
    if layout not in LAYOUTS:
        raise MedjaxError(f"config.data.layout={layout!r} is not one of {list(LAYOUTS)}")
    if normalize not in NORMALIZE:
        raise MedjaxError(f"config.data.normalize={normalize!r} is not one of {list(NORMALIZE)}")
    if layout != "folder" and (images_dir, labels_dir) != ("images", "labels"):
        raise MedjaxError(f"config.data.images_dir / labels_dir belong to layout 'folder'; layout {layout!r} keeps "
                          f"each case in its own folder under config.data.root")
    frames_path = os.path.join(root, frames_csv) if frames_csv else ""
    if layout == "acdc" and frames_csv:
        raise MedjaxError("config.data.frames_csv: ACDC cases name their ED and ES frames in Info.cfg; leave it empty")
    if layout == "mnms" and not frames_csv:
        raise MedjaxError("config.data.frames_csv must name the CSV of each case's ED and ES frames for layout "
                          "'mnms' (M&Ms: 211230_M&Ms_Dataset_information_diagnosis_opendataset.csv)")
    frames = read_ed_es_csv(frames_path) if frames_path else None
    if layout == "folder":
        cases = _folder_cases(root, images_dir, labels_dir, num_classes, frames, frames_path, hdf5)
    elif layout == "acdc":
        cases = [load_acdc_case(f, num_classes) for f in _case_folders(root, layout)]
    else:
        cases = [load_mnms_case(f, frames, frames_path, num_classes) for f in _case_folders(root, layout)]
    out: dict = {"cases": [c.name for c in cases]}
    targets = os.path.join(root, targets_csv)
    if os.path.isfile(targets):
        out["target"] = _read_targets(targets, out["cases"])
    elif ef_class:
        out["target"] = _label_ef(cases, int(ef_class))[:, None]
    if cases[0].label is None and "target" not in out:
        raise MedjaxError(f"{root}: neither a {labels_dir}/ folder nor {targets_csv}: nothing to learn")
    out.update(harmonise(cases, normalize=normalize, in_plane_mm=in_plane_mm, grid=grid, num_slices=num_slices,
                         num_frames=num_frames))
    if out["image"].shape[4] == 1:  # (N, T, X, Y, 1, C): one slice per frame, a 2D cine
        for key in ("image", "label", "mask"):
            if key in out:
                out[key] = out[key][:, :, :, :, 0]
    return out
