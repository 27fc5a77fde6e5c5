"""ITK formats through SimpleITK: NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd), and the other volumes it reads.

Geometry
    ITK places index (i, j, k) at ``origin + direction @ (spacing * (i, j, k))`` in LPS patient millimetres
    (x to the patient's Left, y Posterior, z Superior), whatever the file stores (ITK's NRRD reader converts an
    RAS ``space``). medjax affines are RAS (NIfTI's convention), so the affine is ``diag(-1, -1, 1, 1)`` times
    ITK's, exactly as ``dicom.py`` turns DICOM's LPS into RAS, and ``volume.image_volume`` then reorients to the
    closest RAS+ like ``nifti.load_nifti``: the same data saved as NIfTI reads back identical (tested).
Arrays
    SimpleITK's numpy view is (k, j, i); it is transposed to (i, j, k). Vector pixels (several components) become
    channels; a 4D image keeps its 4th axis as channels (as a 4D NIfTI); a 2D image is one slice (Z = 1).
"""

from __future__ import annotations

import os
import re

import numpy as np

from medjax.data.volume import LPS_TO_RAS, reason
from medjax.errors import MedjaxError


def _itk_reason(e: BaseException) -> str:
    """ITK's own complaint without SimpleITK's source-file and object-address preamble."""
    text = reason(e)
    found = re.search(r"ITK ERROR: \w+\(0x[0-9a-fA-F]+\): (.*)", text)
    return found.group(1) if found else text


def read_itk(path: str, what: str, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """(data (X, Y, Z[, C]), affine voxel -> RAS mm) of one ITK file; ``dtype`` None keeps the stored type."""
    try:
        import SimpleITK as sitk
    except ImportError as e:
        raise MedjaxError(f"reading {path} needs SimpleITK: pip install 'medjax[itk]'") from e
    from medjax.data.formats import data_files

    if not os.path.isfile(path):
        raise MedjaxError(f"{what} file not found: {path}")
    data_files(path)  # a detached header's missing data file, named plainly
    try:
        image = sitk.ReadImage(path)
        array = sitk.GetArrayViewFromImage(image)  # (k, j, i[, component]); the data file is read by now
        dim, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
        spacing = np.asarray(image.GetSpacing(), np.float64)
        origin = np.asarray(image.GetOrigin(), np.float64)
        direction = np.asarray(image.GetDirection(), np.float64).reshape(dim, dim)
    except MemoryError:
        raise
    except Exception as e:  # SimpleITK raises RuntimeError for unreadable/truncated files and missing data files
        raise MedjaxError(f"cannot read {what} file {path}: {_itk_reason(e)}") from e
    if dim not in (2, 3, 4) or (dim == 4 and components > 1):
        raise MedjaxError(f"{path}: expected a 2D, 3D or 4D image, got {dim}D with {components} component(s)")
    spatial = min(dim, 3)
    data = np.transpose(array, (*range(dim - 1, -1, -1), *range(dim, array.ndim)))  # (i, j, k[, t][, comp])
    if dim == 2:
        data = data[:, :, None]
    lps = np.eye(4)
    lps[:spatial, :spatial] = direction[:spatial, :spatial] * spacing[:spatial]  # columns scaled by spacing
    lps[:spatial, 3] = origin[:spatial]
    data = np.array(data, dtype=dtype)  # a copy that owns its memory (the view lives only as long as `image`)
    return data, LPS_TO_RAS @ lps
