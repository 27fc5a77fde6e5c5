"""A DICOM series (one folder of single-slice files, or one multi-frame file) as a ``Volume``: (X, Y, Z, 1)
float32, RAS+, like NIfTI.

Reading
    A path to one file reads that file alone. For a folder, every file directly in it is tried (no recursion;
    macOS ``._*`` files skipped); files pydicom cannot parse or that hold no image (DICOMDIR, reports) are
    skipped, and it is an error only if no image is left.
    Images are grouped by SeriesInstanceUID; with several series, ``series_uid`` must pick one.
Geometry (DICOM PS3.3 C.7.6.2, patient coordinates are LPS)
    ImageOrientationPatient gives the row direction r (along which the column index grows) and the column
    direction c; the slice normal is n = r x c. Slices are ordered by ImagePositionPatient . n (not by
    InstanceNumber or file name, which scanners do not keep consistent). Pixel (row, col) of a slice sits at
    IPP + col * PixelSpacing[1] * r + row * PixelSpacing[0] * c; the third affine column is the mean step between
    consecutive IPPs (so a gantry tilt becomes a shear). Slice gaps must agree within 1% (else an error: a
    missing slice or a mixed stack would silently stretch anatomy); the affine is flipped LPS -> RAS
    (x, y negated) and the volume reoriented to the closest RAS+ like ``nifti.load_nifti``.
Values
    stored * RescaleSlope + RescaleIntercept per slice (Hounsfield units for CT), times DoseGridScaling for
    RT dose (Gy). Modality LUT sequences and vendor-private scalings are not applied.
Multi-frame
    Enhanced CT/MR (PS3.3 C.7.6.16): each frame's PlanePositionSequence, PlaneOrientationSequence,
    PixelMeasuresSequence and PixelValueTransformationSequence are taken from its per-frame functional groups,
    else the shared ones, and the frames are then stacked by exactly the rules above (ordered along the normal,
    even gaps, one orientation; per-frame rescale). Frames placed by GridFrameOffsetVector (RT dose, some NM)
    are read too.
Compressed pixel data
    Decoded by pydicom's plugins: RLE needs nothing, JPEG Lossless / JPEG-LS / JPEG 2000 need the ``dicom``
    extra (``pip install 'medjax[dicom]'``: pylibjpeg-openjpeg, pyjpegls, python-gdcm); a file whose transfer
    syntax has no installed decoder is an error naming both.
"""

from __future__ import annotations

import os

import numpy as np

from medjax.data.volume import LPS_TO_RAS, Volume, as_ras, reason, voxel_sizes
from medjax.errors import MedjaxError

SPACING_RTOL = 0.01  # slice gaps may differ by 1% (scanner rounding of positions), not more
ORIENTATION_ATOL = 1e-4


def _scan(folder: str) -> tuple[dict[str, list], list[tuple[str, str]]]:
    """{series uid: [(path, header without pixels)]} of the image files, and [(path, why skipped)]."""
    import pydicom

    if os.path.isfile(folder):
        return _scan_file(folder)
    if not os.path.isdir(folder):
        raise MedjaxError(f"DICOM folder not found: {folder}")
    names = sorted(n for n in os.listdir(folder) if not n.startswith("._") and os.path.isfile(os.path.join(folder, n)))
    if not names:
        subdirs = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
        hint = f"; it has subfolders {subdirs[:5]}: pass one series folder" if subdirs else ""
        raise MedjaxError(f"DICOM folder {folder} is empty (no files directly inside it){hint}")
    series: dict[str, list] = {}
    skipped: list[tuple[str, str]] = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except MemoryError:
            raise
        except Exception as e:  # InvalidDicomError, EOFError, OSError, ValueError ... for non-DICOM/corrupt files
            skipped.append((path, f"{reason(e)}"))
            continue
        if "Rows" not in ds or "Columns" not in ds:
            skipped.append((path, "not an image (no Rows/Columns)"))
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if not series:
        why = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in skipped[:3])
        raise MedjaxError(f"no readable DICOM image in {folder} ({len(skipped)} file(s) skipped, e.g. {why})")
    return series, skipped


def _scan_file(path: str) -> tuple[dict[str, list], list[tuple[str, str]]]:
    """`_scan` of one file: it must be a DICOM image."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except MemoryError:
        raise
    except Exception as e:
        raise MedjaxError(f"cannot read DICOM file {path}: {reason(e)}") from e
    if "Rows" not in ds or "Columns" not in ds:
        raise MedjaxError(f"{path} is not a DICOM image (no Rows/Columns; {ds.get('Modality', '?')} object)")
    return {str(ds.get("SeriesInstanceUID", "")): [(path, ds)]}, []


def _choose(folder: str, series: dict[str, list], series_uid: str | None) -> str:
    def describe(uid):
        ds = series[uid][0][1]
        return f"{uid or '<no SeriesInstanceUID>'} ({len(series[uid])} files, {ds.get('Modality', '?')}, " \
               f"'{ds.get('SeriesDescription', '')}')"

    if series_uid is None:
        if len(series) > 1:
            raise MedjaxError(f"{folder} holds {len(series)} DICOM series; pass series_uid= one of: "
                              + "; ".join(describe(u) for u in sorted(series)))
        return next(iter(series))
    if series_uid not in series:
        raise MedjaxError(f"series {series_uid} is not in {folder}; it holds: "
                          + "; ".join(describe(u) for u in sorted(series)))
    return series_uid


def _floats(ds, keyword: str, n: int, path: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or value == "":
        raise MedjaxError(f"{path}: DICOM tag {keyword} is missing; it is needed to place the slice in space")
    try:
        out = np.asarray([float(v) for v in (value if n > 1 else [value])], np.float64)
    except (TypeError, ValueError) as e:
        raise MedjaxError(f"{path}: DICOM tag {keyword} is not numeric: {value!r}") from e
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise MedjaxError(f"{path}: DICOM tag {keyword} must hold {n} finite numbers, got {value!r}")
    return out


def _plane(ds, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, PixelSpacing [between rows, between columns]) of one file."""
    iop = _floats(ds, "ImageOrientationPatient", 6, path)
    row, col = iop[:3], iop[3:]
    if not (abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(col) - 1) < 1e-3 and abs(row @ col) < 1e-3):
        raise MedjaxError(f"{path}: ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors")
    spacing = _floats(ds, "PixelSpacing", 2, path)
    if np.any(spacing <= 0):
        raise MedjaxError(f"{path}: PixelSpacing must be positive, got {list(spacing)}")
    return row / np.linalg.norm(row), col / np.linalg.norm(col), spacing


def decode_pixels(ds, path: str) -> np.ndarray:
    """``ds.pixel_array``; a compressed transfer syntax without an installed decoder is named with the extra
    that brings one, and every other failure (truncated or corrupt pixel data) names the file."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(ts).is_available
        except NotImplementedError as e:  # pydicom has no decoder for it at all: no package helps
            raise MedjaxError(f"{path}: pixel data compressed as {ts.name} ({ts}), which pydicom cannot decode; "
                              f"convert the file to an uncompressed transfer syntax") from e
        if not available:
            raise MedjaxError(f"{path}: pixel data compressed as {ts.name} ({ts}) and no decoder for it is "
                              f"installed: pip install 'medjax[dicom]'")
    try:
        return np.asarray(ds.pixel_array)
    except MemoryError:
        raise
    except Exception as e:  # truncated or corrupt pixel data, a codec error
        raise MedjaxError(f"{path}: cannot decode pixel data (transfer syntax {ts}): {reason(e)}") from e


def _pixels(ds, path: str) -> np.ndarray:
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise MedjaxError(f"{path}: colour DICOM ({ds.get('PhotometricInterpretation')}) is not supported yet")
    return decode_pixels(ds, path)


def _scale(ds) -> tuple[float, float]:
    """(slope, intercept) to physical units: RescaleSlope/Intercept, and RT dose's DoseGridScaling."""
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if "DoseGridScaling" in ds:
        slope *= float(ds.DoseGridScaling)
    return slope, intercept


def _affine(row, col, pixel_spacing, first, step) -> np.ndarray:
    """Voxel (i = column, j = row, k = slice) -> RAS mm."""
    lps = np.eye(4)
    lps[:3, 0] = row * pixel_spacing[1]
    lps[:3, 1] = col * pixel_spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = first
    return LPS_TO_RAS @ lps


def _slice_step(folder: str, positions: np.ndarray, normal: np.ndarray, fallback: float) -> np.ndarray:
    """Mean IPP step between consecutive (sorted) slices, after checking the gaps are even."""
    if len(positions) == 1:
        return normal * fallback
    gaps = np.diff(positions @ normal)
    if np.any(gaps < 1e-3):
        k = int(np.sum(gaps < 1e-3))
        raise MedjaxError(f"{folder}: {k + 1} slices share a position along the slice normal (several echoes, "
                          f"phases or time points in one series?); split them into separate series")
    median = float(np.median(gaps))
    if np.max(np.abs(gaps - median)) > SPACING_RTOL * median:
        uniq = sorted({round(float(g), 4) for g in gaps})
        raise MedjaxError(f"{folder}: inconsistent slice spacing (mm between consecutive slices: {uniq[:10]}"
                          f"{' ...' if len(uniq) > 10 else ''}); a slice is missing or stacks are mixed")
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def _fallback_thickness(ds) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            value = 0.0
        if value > 0:
            return value
    return 1.0


def _finish(folder: str, slices: np.ndarray, affine: np.ndarray) -> Volume:
    """(n, Rows, Columns) physical values -> RAS (X, Y, Z, 1) Volume."""
    array = np.transpose(slices, (2, 1, 0))[..., None]  # (Columns, Rows, n, 1): i along the row direction
    array, affine = as_ras(array, affine)
    return Volume(np.ascontiguousarray(array, np.float32), affine, voxel_sizes(affine), folder)


def _read_full(path: str):
    import pydicom

    try:
        return pydicom.dcmread(path)
    except MemoryError:
        raise
    except Exception as e:  # the file changed or was cut since the header scan
        raise MedjaxError(f"cannot read DICOM file {path}: {reason(e)}") from e


def _stack(where: str, frames: list) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(order of the frames along the slice normal, voxel -> RAS affine, (Rows, Columns)) of [(name, header)]
    (files of a series, or the flattened frames of an enhanced file), after checking they form one even stack."""
    planes = [_plane(ds, name) for name, ds in frames]
    row, col, pixel_spacing = planes[0]
    for (name, _), (r, c, s) in zip(frames, planes):
        if np.abs(r - row).max() > ORIENTATION_ATOL or np.abs(c - col).max() > ORIENTATION_ATOL:
            raise MedjaxError(f"{where}: slices have different ImageOrientationPatient (e.g. {frames[0][0]} and "
                              f"{name}); a series must be one stack of parallel slices")
        if np.abs(s - pixel_spacing).max() > 1e-4 * pixel_spacing.max():
            raise MedjaxError(f"{where}: PixelSpacing differs between {frames[0][0]} ({list(pixel_spacing)}) and "
                              f"{name} ({list(s)})")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in frames}
    if len(sizes) > 1:
        raise MedjaxError(f"{where}: slices have different sizes (Rows, Columns) {sorted(sizes)}")
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3, name) for name, ds in frames])
    normal = np.cross(row, col)
    order = np.argsort(positions @ normal, kind="stable")
    step = _slice_step(where, positions[order], normal, _fallback_thickness(frames[order[0]][1]))
    return order, _affine(row, col, pixel_spacing, positions[order[0]], step), sizes.pop()


def _single_frames(folder: str, files: list) -> Volume:
    order, affine, (rows, cols) = _stack(folder, files)
    slices = np.empty((len(files), rows, cols), np.float32)  # float32 from the start: HU need no more
    for k, i in enumerate(order):
        path = files[i][0]
        ds = _read_full(path)
        slope, intercept = _scale(ds)
        pixels = _pixels(ds, path)
        if pixels.shape != (rows, cols):
            raise MedjaxError(f"{path}: expected one {rows}x{cols} frame, got pixel data of shape {pixels.shape}")
        slices[k] = pixels * np.float32(slope) + np.float32(intercept)
    return _finish(folder, slices, affine)


# Functional group -> the attributes read from it (PS3.3 C.7.6.16), looked up per frame, then shared, then top level.
FUNCTIONAL_GROUPS = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
}


def _frame_headers(ds, path: str) -> list:
    """One flat header per frame of an enhanced multi-frame file, holding what a single-frame file would."""
    from pydicom.dataset import Dataset

    n = int(ds.NumberOfFrames)
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != n:
        raise MedjaxError(f"{path}: PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {n} frames")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    frames = []
    for item in per_frame:
        flat = Dataset()
        flat.Rows, flat.Columns = ds.Rows, ds.Columns
        for group, keywords in FUNCTIONAL_GROUPS.items():
            sources = [g[group][0] for g in (item, shared) if group in g and len(g[group].value)] + [ds]
            for keyword in keywords:
                found = next((src[keyword] for src in sources if keyword in src), None)
                if found is not None:
                    flat.add(found)
        frames.append(flat)
    return frames


def _enhanced(folder: str, path: str, header) -> Volume:
    frames = _frame_headers(header, path)
    order, affine, (rows, cols) = _stack(folder, [(f"{path} frame {k + 1}", f) for k, f in enumerate(frames)])
    pixels = _pixels(_read_full(path), path)
    if pixels.size != len(frames) * rows * cols:
        raise MedjaxError(f"{path}: pixel data of shape {pixels.shape} is not {len(frames)} frames of {rows}x{cols}")
    scale = np.asarray([_scale(frames[i]) for i in order], np.float32)  # (n, 2): slope, intercept per frame
    values = pixels.reshape(len(frames), rows, cols)[order].astype(np.float32)
    return _finish(folder, values * scale[:, :1, None] + scale[:, 1:, None], affine)


def _multi_frame(folder: str, files: list) -> Volume:
    if len(files) > 1:
        raise MedjaxError(f"{folder}: a series of {len(files)} files with multi-frame ones among them is not supported "
                          f"yet (only one multi-frame file, or single-frame slices)")
    path, header = files[0]
    if "PerFrameFunctionalGroupsSequence" in header:
        return _enhanced(folder, path, header)
    if "GridFrameOffsetVector" not in header:
        raise MedjaxError(f"{path}: multi-frame DICOM with neither per-frame functional groups (enhanced CT/MR) "
                          f"nor GridFrameOffsetVector: its frames have no positions (a cine? see cine_io)")
    row, col, pixel_spacing = _plane(header, path)
    normal = np.cross(row, col)
    ipp = _floats(header, "ImagePositionPatient", 3, path)
    n = int(header.NumberOfFrames)
    offsets = _floats(header, "GridFrameOffsetVector", n, path) if n > 1 else np.zeros(1)
    if offsets[0] != 0:  # PS3.3 C.8.8.3.2: absolute z values, only defined for axial (normal = +z) grids
        if not (np.allclose(normal, [0, 0, 1], atol=ORIENTATION_ATOL) and abs(offsets[0] - ipp[2]) < 1e-3):
            raise MedjaxError(f"{path}: GridFrameOffsetVector starting at {offsets[0]} (not 0) is only supported "
                              f"for axial grids starting at the ImagePositionPatient z")
        offsets = offsets - offsets[0]
    positions = ipp + offsets[:, None] * normal
    order = np.argsort(offsets, kind="stable")
    step = _slice_step(folder, positions[order], normal, _fallback_thickness(header))
    ds = _read_full(path)
    pixels = _pixels(ds, path)
    pixels = pixels.reshape(n, *pixels.shape[-2:])[order]
    slope, intercept = _scale(ds)
    return _finish(folder, pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept),
                   _affine(row, col, pixel_spacing, positions[order][0], step))


def load_dicom_series(folder: str, series_uid: str | None = None) -> Volume:
    """The series in ``folder`` (or the one named ``series_uid``), or the one file ``folder`` names, as
    (X, Y, Z, 1) float32 physical values (HU for CT) in RAS+; ``spacing`` in mm from PixelSpacing and the slice
    positions (see the module docstring)."""
    folder = os.fspath(folder)
    series, _ = _scan(folder)
    files = series[_choose(folder, series, series_uid)]
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds for _, ds in files):
        return _multi_frame(folder, files)
    return _single_frames(folder, files)
