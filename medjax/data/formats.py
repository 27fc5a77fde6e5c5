"""One entry point for volumes on disk: ``load_volume`` / ``load_label`` pick the reader by file extension.

    NIfTI / Analyze / MGH (.nii, .nii.gz, .hdr, .img, .mgh, .mgz)   nibabel        ``nifti._open``
    ITK (.nrrd, .nhdr, .mha, .mhd, .gipl, .gipl.gz, .vtk, ...)        SimpleITK      ``itk.read_itk``      [itk]
    HDF5 (.h5, .hdf5, .hdf)                                         h5py           ``hdf5.read_hdf5``    [hdf5]
    TIFF stacks (.tif, .tiff, .ome.tif)                             tifffile       ``tiff.read_tiff``    [pathology]
    DICOM (a series folder, or one file: .dcm or 'DICM' at byte 128) pydicom       ``dicom.load_dicom_series``

Every reader hands (voxels, voxel -> RAS affine) to ``volume.image_volume`` / ``label_volume``, so every format
gives the same ``Volume``: (X, Y, Z, C) float32 or (X, Y, Z) int32, closest RAS+, spacing from the affine.
A missing optional package is a MedjaxError naming the extra to install (``pip install 'medjax[itk]'``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from medjax.data.hdf5 import DEFAULT_LAYOUT, Hdf5Layout
from medjax.data.volume import Volume, image_volume, label_volume
from medjax.errors import MedjaxError

SUFFIXES = {
    "nifti": (".nii", ".nii.gz", ".hdr", ".img", ".mgh", ".mgz"),
    "itk": (".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".vtk", ".mnc"),
    "hdf5": (".h5", ".hdf5", ".hdf"),
    "tiff": (".tif", ".tiff"),
    "dicom": (".dcm", ".dicom"),
}


def format_of(path: str) -> str | None:
    """'nifti' | 'itk' | 'hdf5' | 'tiff' | 'dicom' by extension; a folder is a DICOM series, and a file without a
    known extension is DICOM if it has the 'DICM' marker at byte 128 (PACS exports rarely name files .dcm)."""
    if os.path.isdir(path):
        return "dicom"
    name = os.path.basename(path).lower()
    for kind, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            return kind
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return "dicom" if f.read(4) == b"DICM" else None
    except OSError:
        return None


def _kind(path: str, what: str) -> str:
    kind = format_of(path)
    if kind is None:
        known = " ".join(s for suffixes in SUFFIXES.values() for s in suffixes)
        raise MedjaxError(f"{path}: unknown {what} file type; medjax reads {known} files and DICOM folders")
    return kind


def case_name(name: str) -> str:
    """A file name without its recognised extension ('case1.nii.gz' -> 'case1'); folders keep their name."""
    lower = name.lower()
    for suffixes in SUFFIXES.values():
        for suffix in suffixes:
            if lower.endswith(suffix):
                return name[: -len(suffix)]
    return name


def case_files(folder: str) -> list[str]:
    """Sorted names in ``folder`` that hold one case each: files of a known type and (DICOM) folders; hidden and
    AppleDouble (``._*``) entries and an Analyze ``.img`` beside its ``.hdr`` are left out."""
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or format_of(path) is None:
            continue
        if name.lower().endswith(".img") and os.path.isfile(path[:-4] + ".hdr"):
            continue
        out.append(name)
    return out


def find_case(folder: str, stem: str) -> str | None:
    """The file ``folder/stem.<ext>`` for the first recognised extension that exists, else None."""
    for suffixes in SUFFIXES.values():
        for suffix in suffixes:
            path = os.path.join(folder, stem + suffix)
            if os.path.isfile(path):
                return path
    return None


def data_files(path: str) -> list[str]:
    """``path`` and the file its header points to (MetaImage ElementDataFile, NRRD 'data file', Analyze .img),
    so a cache fingerprint notices when only the voxel data changes; a missing data file is an error naming it.
    Multi-file data (LIST, printf patterns) is not followed."""
    path = os.fspath(path)
    lower, target = path.lower(), None
    if lower.endswith((".mhd", ".nhdr")):
        mhd = lower.endswith(".mhd")
        try:
            with open(path, encoding="latin-1") as f:
                for line in f:
                    name, sep, value = line.partition("=" if mhd else ":")
                    if sep and name.strip().lower() == ("elementdatafile" if mhd else "data file"):
                        value = value.strip()
                        if value.upper() != "LOCAL" and not value.upper().startswith("LIST") and "%" not in value:
                            target = os.path.join(os.path.dirname(path), value)
                        break
        except OSError as e:
            raise MedjaxError(f"cannot read header {path}: {e}") from e
    elif lower.endswith(".hdr"):
        target = path[:-4] + ".img"
    if target is None:
        return [path]
    if not os.path.isfile(target):
        raise MedjaxError(f"{path}: its data file {target} is missing")
    return [path, target]


def read_array(path: str, what: str, dtype=None, *, hdf5: Hdf5Layout = DEFAULT_LAYOUT, key: str | None = None
               ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(voxels (X, Y, Z, ...) in file order, voxel -> RAS affine, notes) of one NIfTI / ITK / HDF5 / TIFF file;
    ``key`` is the HDF5 dataset (default ``hdf5.image_key``). The raw material of volumes and cines."""
    path = os.fspath(path)
    kind = _kind(path, what)
    if kind == "nifti":
        from medjax.data.nifti import _open

        return (*_open(path, what, dtype), ())
    if kind == "itk":
        from medjax.data.itk import read_itk

        return (*read_itk(path, what, dtype), ())
    if kind == "hdf5":
        from medjax.data.hdf5 import read_hdf5

        return read_hdf5(path, what, key or hdf5.image_key, axes=hdf5.axes, spacing_attr=hdf5.spacing_attr,
                         dtype=dtype)
    if kind == "tiff":
        from medjax.data.tiff import read_tiff

        return read_tiff(path, what, dtype)
    raise MedjaxError(f"{path}: a DICOM {what} holds no plain voxel array here; read it with load_volume")


def load_volume(path: str, *, canonical: bool = True, dtype=np.float32, hdf5: Hdf5Layout = DEFAULT_LAYOUT,
                series_uid: str | None = None) -> Volume:
    """An image as an (X, Y, Z, C) ``dtype`` Volume from any supported file or DICOM folder (module docstring),
    reoriented to RAS+ if ``canonical`` (DICOM always is); ``hdf5`` names an HDF5 file's keys, ``series_uid``
    picks a series in a DICOM folder."""
    path = os.fspath(path)
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise MedjaxError(f"load_volume dtype must be a floating type, got {np.dtype(dtype)} ({path})")
    if not os.path.exists(path):
        raise MedjaxError(f"image file not found: {path}")
    if _kind(path, "image") == "dicom":  # already RAS+ float32: DICOM slices are placed in world space on reading
        from medjax.data.dicom import load_dicom_series

        volume = load_dicom_series(path, series_uid)
        return dataclasses.replace(volume, array=volume.array.astype(dtype, copy=False))
    data, affine, notes = read_array(path, "image", np.dtype(dtype), hdf5=hdf5)
    return image_volume(data, affine, path, canonical=canonical, dtype=dtype, notes=notes)


def load_label(path: str, num_classes: int | None = None, *, canonical: bool = True,
               hdf5: Hdf5Layout = DEFAULT_LAYOUT) -> Volume:
    """A segmentation as an (X, Y, Z) int32 RAS+ Volume of class indices in 0..num_classes-1 from any supported
    file (an HDF5 file's ``hdf5.label_key``); DICOM SEG objects are not read (convert them to NIfTI)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MedjaxError(f"label file not found: {path}")
    if _kind(path, "label") == "dicom":
        raise MedjaxError(f"{path}: DICOM labels (SEG / RTSTRUCT) are not read; convert them to NIfTI or NRRD first")
    data, affine, notes = read_array(path, "label", hdf5=hdf5, key=hdf5.label_key)
    return label_volume(data, affine, path, num_classes, canonical=canonical, notes=notes)
