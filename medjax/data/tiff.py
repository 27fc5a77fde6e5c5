"""3D TIFF stacks (multi-page TIFF, ImageJ hyperstacks, OME-TIFF) as volumes, through tifffile.

Axes
    tifffile names the first series' axes; pages (Z, or I / Q for an unlabelled page sequence) become z, Y and X
    the rows and columns, channels (C) or RGB samples (S) or time points (T) the channel axis (as a 4D NIfTI's
    4th axis). Singleton axes are dropped; two non-singleton axes that would share a role (e.g. C and T) are an
    error naming the axes. The result is (X, Y, Z, C): x along a row, y down the rows, z in page order.
Spacing
    OME-XML ``PhysicalSizeX/Y/Z`` with their units (default micrometre), else ImageJ's ``XResolution`` /
    ``YResolution`` (pixels per unit) and ``spacing`` (z) with its ``unit``, converted to mm. Without either,
    or with a unit that is not a length ("pixel"), 1 mm is assumed and ``Volume.notes`` says so. A TIFF stack
    has no patient orientation: the affine is ``diag(spacing)`` on the array axes.
"""

from __future__ import annotations

import os

import numpy as np

from medjax.data.volume import reason
from medjax.errors import MedjaxError

UNIT_MM = {"m": 1e3, "cm": 10.0, "mm": 1.0, "um": 1e-3, "µm": 1e-3, "\u03bcm": 1e-3, "micron": 1e-3,
           "microns": 1e-3, "nm": 1e-6, "\\u00b5m": 1e-3}
ROLE = {"X": "x", "Y": "y", "Z": "z", "I": "z", "Q": "z", "C": "c", "S": "c", "T": "c"}


def _ome_spacing(tif) -> tuple[list[float | None], str] | None:
    import tifffile

    image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
    pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    sizes = [pixels.get(f"PhysicalSize{a}") for a in "XYZ"]
    if all(s is None for s in sizes):
        return None
    out = []
    for a, s in zip("XYZ", sizes):
        unit = str(pixels.get(f"PhysicalSize{a}Unit", "µm"))
        out.append(None if s is None or unit.lower() not in UNIT_MM else float(s) * UNIT_MM[unit.lower()])
    return out, "OME-XML"


def _imagej_spacing(tif) -> tuple[list[float | None], str] | None:
    meta = tif.imagej_metadata or {}
    unit = str(meta.get("unit", "")).lower()
    if unit not in UNIT_MM:
        return None
    page = tif.pages[0]
    out: list[float | None] = []
    for tag in ("XResolution", "YResolution"):
        value = page.tags.get(tag)
        num, den = value.value if value is not None else (0, 1)
        out.append(den / num * UNIT_MM[unit] if num > 0 else None)
    out.append(float(meta["spacing"]) * UNIT_MM[unit] if float(meta.get("spacing", 0) or 0) > 0 else None)
    return out, "ImageJ metadata"


def read_tiff(path: str, what: str, dtype=None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(data (X, Y, Z, C), affine diag(spacing), notes) of the first series of a TIFF file."""
    try:
        import tifffile
    except ImportError as e:
        raise MedjaxError(f"reading {path} needs tifffile: pip install 'medjax[pathology]'") from e
    if not os.path.isfile(path):
        raise MedjaxError(f"{what} file not found: {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, data = series.axes.upper(), series.asarray()
            found = _ome_spacing(tif) if tif.is_ome else _imagej_spacing(tif) if tif.is_imagej else None
    except MemoryError:
        raise
    except Exception as e:  # TiffFileError, ValueError, struct.error, zlib.error, IndexError ... for broken files
        raise MedjaxError(f"cannot read {what} file {path}: {reason(e)}") from e
    unknown = sorted({a for a, n in zip(axes, data.shape) if a not in ROLE and n > 1})
    if unknown:
        raise MedjaxError(f"{path}: TIFF axes {axes} {data.shape}: {unknown} are neither pages (Z), rows / columns "
                          f"(Y, X), channels / samples (C, S) nor time (T)")
    keep = [i for i, (a, n) in enumerate(zip(axes, data.shape)) if n > 1 or a in "XY"]
    roles = [ROLE[axes[i]] for i in keep]
    if len(set(roles)) < len(roles):
        raise MedjaxError(f"{path}: TIFF axes {axes} {data.shape} hold more than one axis of a kind (pages, "
                          f"channels); save one volume per file")
    data = data.reshape([data.shape[i] for i in keep])
    order = [roles.index(r) if r in roles else None for r in "xyzc"]
    data = np.transpose(data, [i for i in order if i is not None])
    for axis, i in enumerate(order):
        if i is None:
            data = np.expand_dims(data, axis)
    notes: tuple[str, ...] = ()
    mm = [None, None, None] if found is None else found[0]
    if None in mm:
        missing = "".join(a for a, s in zip("xyz", mm) if s is None)
        source = (f"no {missing} size in the {found[1]}" if found is not None
                  else "no ImageJ or OME spacing with a length unit")
        notes = (f"{os.path.basename(path)}: {source}: 1 mm assumed along {missing}",)
    spacing = [1.0 if s is None else s for s in mm]
    return (data if dtype is None else data.astype(dtype, copy=False)), np.diag([*spacing, 1.0]), notes
