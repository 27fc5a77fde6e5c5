"""HDF5 volumes and labels through h5py: one dataset per array, named by configurable keys.

Preprocessed datasets ship as ``.h5`` files with arrays under fixed names (one file per case):

    fastMRI          ``reconstruction_rss`` (multi-coil) / ``reconstruction_esc`` (single-coil): (slices, H, W)
                     float32 magnitude images beside the complex ``kspace``; no spacing stored
    ACDC (SSL4MIS)   ``image`` / ``label``: (slices, H, W) volumes, or (H, W) slices under ``data/slices``
    Synapse (TransUNet)  ``image`` / ``label``: (slices, 512, 512) test volumes (``*.npy.h5``)

``Hdf5Layout`` names the image and label keys, the order of the stored axes and the spacing attribute.
Axes: a string of the letters x, y, z and optionally c (or t), one per stored axis in storage order, default
"zyx" (C-order arrays saved from SimpleITK / nibabel-after-transpose, slice first: all the sets above); "yx"
reads a 2D slice as one-slice volume; the c (or t) axis becomes channels (or frames for a cine).
Geometry: none is stored beyond the voxel size, so the affine is ``diag(spacing)`` (array axes taken as RAS).
The spacing comes from the attribute ``spacing_attr`` on the dataset, else on the file, as (x, y[, z]) mm; with
neither, 1 mm is assumed and ``Volume.notes`` says so.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from medjax.data.volume import reason
from medjax.errors import MedjaxError


@dataclasses.dataclass(frozen=True)
class Hdf5Layout:
    """Where an ``.h5`` file keeps its arrays (see the module docstring)."""

    image_key: str = "image"
    label_key: str = "label"
    axes: str = "zyx"
    spacing_attr: str = "spacing"


DEFAULT_LAYOUT = Hdf5Layout()


def _check_axes(axes: str, shape: tuple[int, ...], path: str, key: str) -> str:
    axes = axes.lower()
    extra = set(axes) - set("xyz")
    if (len(set(axes)) != len(axes) or not {"x", "y"} <= set(axes) or len(extra) > 1 or not extra <= {"c", "t"}):
        raise MedjaxError(f"HDF5 axes {axes!r} must name each stored axis once with x, y, optionally z and one of "
                          f"c / t (e.g. 'zyx', 'yx', 'czyx')")
    if len(axes) != len(shape):
        raise MedjaxError(f"{path}: dataset '{key}' has shape {shape} but the HDF5 axes {axes!r} name "
                          f"{len(axes)} axes; give one letter per stored axis")
    return axes


def _datasets(f) -> list[str]:
    import h5py

    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def read_hdf5(path: str, what: str, key: str, *, axes: str = "zyx", spacing_attr: str = "spacing",
              dtype=None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(data (X, Y, Z[, C]), affine diag(spacing), notes) of dataset ``key`` of one HDF5 file."""
    try:
        import h5py
    except ImportError as e:
        raise MedjaxError(f"reading {path} needs h5py: pip install 'medjax[hdf5]'") from e
    if not os.path.isfile(path):
        raise MedjaxError(f"{what} file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            node = f.get(key)
            if not isinstance(node, h5py.Dataset):
                names = _datasets(f)
                shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
                raise MedjaxError(f"{path} has no dataset '{key}' ({what}); its datasets: {shown or 'none'}")
            data = node[()]
            spacing = node.attrs.get(spacing_attr, f.attrs.get(spacing_attr))
    except MedjaxError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # OSError for truncated / non-HDF5 files, KeyError / ValueError for broken objects
        raise MedjaxError(f"cannot read {what} file {path}: {reason(e)}") from e
    data = np.asarray(data)
    if np.iscomplexobj(data) or data.dtype.kind not in "biuf":
        raise MedjaxError(f"{path}: dataset '{key}' holds {data.dtype} values, not real numbers (raw k-space? "
                          f"fastMRI keeps images under reconstruction_rss / reconstruction_esc)")
    axes = _check_axes(axes, data.shape, path, key)
    order = [axes.index(a) for a in "xyz" if a in axes] + [i for i, a in enumerate(axes) if a in "ct"]
    data = np.transpose(data, order)
    if "z" not in axes:
        data = np.expand_dims(data, 2)
    notes: tuple[str, ...] = ()
    spatial = 3 if "z" in axes else 2
    if spacing is None:
        mm = np.ones(3)
        notes = (f"no '{spacing_attr}' attribute in {os.path.basename(path)}: 1 mm voxels assumed",)
    else:
        given = np.atleast_1d(np.asarray(spacing, np.float64))
        if given.shape != (spatial,) or not np.all(np.isfinite(given)) or np.any(given <= 0):
            raise MedjaxError(f"{path}: attribute '{spacing_attr}' must hold {spatial} positive numbers (x, y"
                              f"{', z' if spatial == 3 else ''} mm), got {np.asarray(spacing).tolist()}")
        mm = np.concatenate([given, np.ones(3 - spatial)])
    return (data if dtype is None else data.astype(dtype, copy=False)), np.diag([*mm, 1.0]), notes
