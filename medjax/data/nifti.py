"""NIfTI images and labels as ``Volume``s (channels-last, RAS+), and the image/label pair check.

Anything nibabel opens as a spatial image is accepted (NIfTI-1/2 ``.nii``/``.nii.gz``, Analyze pairs, MGH);
the affine is nibabel's (sform, else qform, else the fallback from the zooms). Data on disk is only read.
Intensities come through nibabel's ``scl_slope``/``scl_inter`` scaling. Non-finite voxels are not rejected
here (see ``volume.check_finite``; ``msd.load_msd_case`` calls it).
"""

from __future__ import annotations

import os

import numpy as np

from medjax.data.volume import Volume, image_volume, label_volume, reason
from medjax.errors import MedjaxError

PAIR_ATOL_MM = 1e-3  # image and label grids may differ by float32 header rounding, not by real geometry


def _open(path: str, what: str, dtype=None):
    """(array, affine); ``dtype`` (floating) reads scaled values straight into it (no float64 copy of a big CT),
    None keeps the stored type (integers stay integers when the header has no scaling). Every failure becomes a
    MedjaxError naming the file."""
    import nibabel as nib

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MedjaxError(f"{what} file not found: {path}")
    if not os.path.isfile(path):
        raise MedjaxError(f"{what} path is not a file: {path}")
    try:
        img = nib.load(path)
        # Decompresses now: truncated/corrupt files fail here, not later in a training loop.
        data = np.asanyarray(img.dataobj) if dtype is None else img.get_fdata(dtype=dtype, caching="unchanged")
        affine = np.asarray(img.affine, np.float64)
    except MemoryError:
        raise
    except Exception as e:  # nibabel/gzip/zlib raise many types (ImageFileError, EOFError, zlib.error, ...)
        raise MedjaxError(f"cannot read {what} file {path}: {reason(e)}") from e
    return data, affine


def load_nifti(path: str, *, canonical: bool = True, dtype=np.float32) -> Volume:
    """An image as (X, Y, Z, C) ``dtype``: 3D files gain C = 1, 4D files keep their 4th axis as channels
    (MSD multi-modal images, or fMRI time points). ``canonical`` reorients to RAS+ (world coordinates kept)."""
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise MedjaxError(f"load_nifti dtype must be a floating type, got {np.dtype(dtype)} ({path})")
    data, affine = _open(path, "image", np.dtype(dtype))
    return image_volume(data, affine, os.fspath(path), canonical=canonical, dtype=dtype)


def load_nifti_label(path: str, num_classes: int | None = None, *, canonical: bool = True) -> Volume:
    """A segmentation as (X, Y, Z) int32 class indices; float-stored labels must hold whole numbers in
    0..num_classes-1 (``volume.check_label_values``)."""
    if num_classes is not None and int(num_classes) < 1:
        raise MedjaxError(f"num_classes must be >= 1, got {num_classes} (reading {path})")
    data, affine = _open(path, "label")
    return label_volume(data, affine, os.fspath(path), num_classes, canonical=canonical)


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    """(4, 8) homogeneous indices of the 8 corner voxel centres."""
    n = np.asarray(shape[:3]) - 1
    idx = np.array(np.meshgrid(*[[0, m] for m in n], indexing="ij")).reshape(3, -1)
    return np.vstack([idx, np.ones((1, idx.shape[1]))])


def check_pair(image: Volume, label: Volume, *, atol_mm: float = PAIR_ATOL_MM) -> None:
    """Raise unless the label lies voxel-for-voxel on the image's grid (same X, Y, Z and the same world position
    of every corner voxel within ``atol_mm``): a shifted or flipped label trains a model on wrong targets."""
    if image.array.shape[:3] != label.array.shape[:3]:
        raise MedjaxError(f"image {image.path} has shape {image.array.shape[:3]} but label {label.path} has "
                          f"{label.array.shape[:3]}")
    c = _corners(image.array.shape)
    dist = np.linalg.norm((np.asarray(image.affine) @ c - np.asarray(label.affine) @ c)[:3], axis=0).max()
    if not dist <= atol_mm:
        raise MedjaxError(f"image {image.path} and label {label.path} are on different grids: corner voxels "
                          f"differ by up to {dist:.4g} mm (tolerance {atol_mm} mm); affines "
                          f"{np.round(image.affine, 4).tolist()} vs {np.round(label.affine, 4).tolist()}")
