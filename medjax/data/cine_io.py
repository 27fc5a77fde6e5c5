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
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from medjax.data.formats import case_files, case_name, find_case, format_of, read_array
from medjax.data.hdf5 import DEFAULT_LAYOUT, Hdf5Layout
from medjax.data.volume import LPS_TO_RAS, as_ras, check_label_values, reason, voxel_sizes
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


def load_cine_folder(root: str, *, images_dir: str = "images", labels_dir: str = "labels",
                     targets_csv: str = "targets.csv", num_classes: int | None = None,
                     normalize: str = "zscore", hdf5: Hdf5Layout = DEFAULT_LAYOUT) -> dict:
    """Every case of `root`: `images/<case>` (a 4D file of any ``formats`` type, a cine DICOM file or folder),
    optionally `labels/<case>.<ext>` (4D label sequences; an HDF5 case may hold both under `hdf5`'s keys, with
    labels_dir = images_dir) and `targets.csv` (`case,<target>...`, e.g. EF).

    Returns {"image" (N, T, X, Y[, Z], C) float32, "label" (N, T, X, Y[, Z]) int32 if labelled, "target" (N, K)
    if targets exist, "cases" [names]}; Z is dropped when every case is one slice (2D cine). Each image is
    normalised over all its frames (`normalize`: zscore, minmax or none). All cases must share frames and grid.
    """
    if normalize not in NORMALIZE:
        raise MedjaxError(f"config.data.normalize={normalize!r} is not one of {list(NORMALIZE)}")
    image_root = os.path.join(root, images_dir)
    if not os.path.isdir(image_root):
        raise MedjaxError(f"cine image folder not found: {image_root}")
    names = case_files(image_root)
    if not names:
        raise MedjaxError(f"{image_root} holds no cases")
    cases = [case_name(n) for n in names]
    images = [load_cine(os.path.join(image_root, n), hdf5=hdf5) for n in names]
    shapes = {c: im.array.shape for c, im in zip(cases, images)}
    if len(set(shapes.values())) > 1:
        shown = "; ".join(f"{c}: {s}" for c, s in list(shapes.items())[:6])
        raise MedjaxError(f"{image_root}: cases differ in (T, X, Y, Z, C) ({shown}); resample them to one grid "
                          f"and number of frames first")
    out: dict = {"cases": cases,
                 "image": np.stack([_normalize(im.array, normalize, im.path) for im in images]).astype(np.float32)}
    label_root = os.path.join(root, labels_dir)
    if os.path.isdir(label_root):
        labels = []
        for case, image in zip(cases, images):
            found = find_case(label_root, case)
            if found is None:
                raise MedjaxError(f"no label for case {case!r}: expected {os.path.join(label_root, case)}.nii.gz "
                                  f"(or another supported extension)")
            label = load_cine_label(found, num_classes, hdf5=hdf5)
            if label.array.shape != image.array.shape[:-1]:
                raise MedjaxError(f"label {found} has shape (T, X, Y, Z) {label.array.shape} but its image "
                                  f"{image.path} has {image.array.shape[:-1]}")
            labels.append(label.array)
        out["label"] = np.stack(labels)
    targets = os.path.join(root, targets_csv)
    if os.path.isfile(targets):
        out["target"] = _read_targets(targets, cases)
    if "label" not in out and "target" not in out:
        raise MedjaxError(f"{root}: neither a {labels_dir}/ folder nor {targets_csv}: nothing to learn")
    if out["image"].shape[4] == 1:  # (N, T, X, Y, 1, C): one slice per frame, a 2D cine
        out["image"] = out["image"][:, :, :, :, 0]
        if "label" in out:
            out["label"] = out["label"][:, :, :, :, 0]
    return out
