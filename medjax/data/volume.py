"""A 3D volume with its geometry, and the pure helpers every reader shares.

Conventions (all readers: NIfTI, DICOM, ITK, HDF5, TIFF, MSD; ``image_volume`` / ``label_volume`` finish them)
    image arrays are (X, Y, Z, C) float32, label arrays (X, Y, Z) int32, both in RAS+ voxel order after
    ``as_ras`` (the closest canonical orientation, as ``nibabel.as_closest_canonical``): index x grows towards
    the subject's Right, y towards Anterior, z towards Superior (the closest axes, for oblique data).
    ``affine`` maps a voxel index (i, j, k, 1) to RAS world millimetres (NIfTI's convention; DICOM's LPS is
    flipped on reading). ``spacing`` is the length of the affine's three columns (mm between voxel centres).

Resampling keeps the physical field of view: the outer corner of voxel 0 (index -0.5) stays at the same world
point and the new grid covers ``round(n * old / new)`` voxels of exactly the requested spacing, so the extent
changes by less than one new voxel. Images are interpolated linearly (order 1), labels by nearest neighbour
(order 0); samples beyond the last voxel centre repeat the edge voxel. No anti-aliasing is applied when
downsampling (as MONAI's ``Spacing``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from medjax.errors import MedjaxError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM / ITK patient coordinates (LPS) -> NIfTI's RAS


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise
class Volume:
    """A voxel array with the geometry needed to put it back in the world (and to check image/label pairs)."""

    array: np.ndarray  # (X, Y, Z, C) image or (X, Y, Z) label
    affine: np.ndarray  # (4, 4) voxel index -> RAS world mm
    spacing: tuple[float, float, float]  # mm between voxel centres along each array axis
    path: str  # the file or folder it was read from: every error message names it
    notes: tuple[str, ...] = ()  # what the reader had to assume (e.g. "no spacing stored: 1 mm")

    def __post_init__(self):
        if np.shape(self.affine) != (4, 4):
            raise MedjaxError(f"{self.path}: affine must be 4x4, got shape {np.shape(self.affine)}")
        if np.ndim(self.array) not in (3, 4):
            raise MedjaxError(f"{self.path}: expected an (X, Y, Z) or (X, Y, Z, C) array, got shape "
                              f"{np.shape(self.array)}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def reason(e: BaseException) -> str:
    """``Type: message`` on one line (library messages can span lines; the CLI prints errors as one line)."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Column norms of the 3x3 part: the spacing an affine really encodes (headers' zooms can disagree)."""
    return tuple(float(s) for s in np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0)))


def as_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute the first three axes to the closest RAS+ orientation, with the matching affine.

    Exactly ``nibabel.as_closest_canonical`` (same orientation rule), done on the array so any extra trailing
    axes (channels) ride along and the affine stays float64. World coordinates of every voxel are unchanged.
    """
    from nibabel import orientations as ornt_mod

    affine = np.asarray(affine, np.float64)
    ornt = ornt_mod.io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return array, affine
    out = ornt_mod.apply_orientation(array, ornt)
    return np.ascontiguousarray(out), affine @ ornt_mod.inv_ornt_aff(ornt, array.shape[:3])


def image_volume(data: np.ndarray, affine: np.ndarray, path: str, *, canonical: bool = True, dtype=np.float32,
                 notes: tuple[str, ...] = ()) -> Volume:
    """(X, Y, Z[, C]) voxels + their voxel -> RAS affine, from any reader, as an (X, Y, Z, C) ``dtype`` Volume:
    3D data gains C = 1, vector images (X, Y, Z, 1, C) lose their empty 4th axis; ``canonical`` -> RAS+."""
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise MedjaxError(f"an image's dtype must be a floating type, got {np.dtype(dtype)} ({path})")
    data = _spatial(data, path, "image")
    if data.ndim == 3:
        data = data[..., None]
    if canonical:
        data, affine = as_ras(data, affine)
    array = np.ascontiguousarray(data, dtype=dtype)
    return Volume(array, np.asarray(affine, np.float64), voxel_sizes(affine), path, notes)


def label_volume(data: np.ndarray, affine: np.ndarray, path: str, num_classes: int | None = None, *,
                 canonical: bool = True, notes: tuple[str, ...] = ()) -> Volume:
    """(X, Y, Z[, 1]) class values from any reader as an (X, Y, Z) int32 Volume, checked by
    ``check_label_values`` before anything else sees them; ``canonical`` -> RAS+."""
    if num_classes is not None and int(num_classes) < 1:
        raise MedjaxError(f"num_classes must be >= 1, got {num_classes} (reading {path})")
    data = _spatial(data, path, "label")
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise MedjaxError(f"{path}: a label must be 3D (X, Y, Z), got shape {data.shape}")
        data = data[..., 0]
    check_label_values(data, path, num_classes)
    if canonical:
        data, affine = as_ras(data, affine)
    array = np.ascontiguousarray(data, dtype=np.int32)
    return Volume(array, np.asarray(affine, np.float64), voxel_sizes(affine), path, notes)


def _spatial(data: np.ndarray, path: str, what: str) -> np.ndarray:
    """(X, Y, Z) or (X, Y, Z, C); NIfTI vector images (X, Y, Z, 1, C) lose their empty time axis."""
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim not in (3, 4):
        raise MedjaxError(f"{path}: expected a 3D or 4D (X, Y, Z, C) {what}, got shape {data.shape}")
    return data


def check_label_values(data: np.ndarray, path: str, num_classes: int | None) -> None:
    """Raise unless a label array holds whole numbers in 0..num_classes-1 (non-negative when None).

    Values outside the range are errors: a label map with an unexpected class is a dataset bug that would
    otherwise surface as a silent one-hot out-of-range.
    """
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.bool_)):
        finite = np.isfinite(data)
        if not finite.all():
            raise MedjaxError(f"{path}: label has {int((~finite).sum())} non-finite voxels (NaN/inf)")
        frac = data != np.round(data)
        if frac.any():
            bad = np.unique(data[frac])[:5]
            raise MedjaxError(f"{path}: label values must be whole numbers, found {int(frac.sum())} voxels with "
                              f"fractional values, e.g. {[float(v) for v in bad]}")
    hi = np.inf if num_classes is None else num_classes - 1
    if data.size and (data.min() < 0 or data.max() > hi):  # min/max first: np.unique sorts the whole volume
        outside = (data < 0) | (data > hi)
        bad = np.unique(data[outside])
        allowed = "non-negative" if num_classes is None else f"in 0..{num_classes - 1}"
        shown = [int(v) for v in bad[:10]]
        raise MedjaxError(f"{path}: label values must be {allowed}, found {shown}"
                          f"{' ...' if bad.size > 10 else ''} ({int(outside.sum())} voxels)")


def _spacing3(spacing: float | Sequence[float], what: str) -> np.ndarray:
    s = np.broadcast_to(np.asarray(spacing, np.float64), (3,)) if np.ndim(spacing) == 0 else np.asarray(
        spacing, np.float64)
    if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise MedjaxError(f"{what}: spacing must be a positive number or 3 positive numbers (mm), got {spacing!r}")
    return s


def resample_to_spacing(volume: Volume, spacing: float | Sequence[float], is_label: bool = False) -> Volume:
    """The volume on a grid of the given spacing (mm) with the same field of view (see the module docstring).

    Linear for images (float32 out), nearest for labels (dtype kept), so labels never get invented classes.
    """
    from scipy import ndimage

    new = _spacing3(spacing, volume.path)
    old = np.asarray(volume.spacing, np.float64)
    if np.allclose(old, new, rtol=1e-6, atol=0):
        return volume
    n_old = np.asarray(volume.array.shape[:3])
    n_new = np.maximum(1, np.round(n_old * old / new).astype(int))
    ratio = new / old  # input voxels per output voxel
    offset = 0.5 * ratio - 0.5  # output index j samples input index ratio * j + offset (corners aligned)
    array = volume.array
    extra = array.shape[3:]
    if is_label:
        if not np.issubdtype(array.dtype, np.integer):
            raise MedjaxError(f"{volume.path}: a label volume must hold integers, got {array.dtype}")
        order, out_dtype = 0, array.dtype
    else:
        order, out_dtype = 1, np.float32
        array = array.astype(np.float32, copy=False)
    matrix = np.concatenate([ratio, np.ones(len(extra))])
    shift = np.concatenate([offset, np.zeros(len(extra))])
    out = ndimage.affine_transform(array, matrix, offset=shift, output_shape=(*n_new, *extra), order=order,
                                   mode="nearest", output=out_dtype)
    scale = np.diag([*ratio, 1.0])
    scale[:3, 3] = offset
    affine = np.asarray(volume.affine, np.float64) @ scale
    return Volume(out, affine, voxel_sizes(affine), volume.path, volume.notes)


def ct_window(x: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    """HU -> [0, 1] through the display window [level - width/2, level + width/2] (clipped outside), float32.

    Default 40/400 is the soft-tissue abdomen window (liver, spleen, pancreas, kidneys); lung needs ~-600/1500.
    """
    if not (np.isfinite(width) and width > 0):
        raise MedjaxError(f"CT window width must be > 0, got {width}")
    lo = level - width / 2.0
    return np.clip((np.asarray(x, np.float32) - np.float32(lo)) / np.float32(width), 0.0, 1.0).astype(np.float32)


def zscore(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-channel (x - mean) / std over the mask's voxels (default: each channel's non-zero voxels), float32.

    The MR convention (nnU-Net, MONAI ``NormalizeIntensity(nonzero=True)``): the air/skull-stripped zero
    background says nothing about tissue contrast, so it is left out of the statistics. Voxels outside the mask
    become 0 (the foreground mean); a channel with std 0 is only centred. ``x`` is (X, Y, Z, C) or (X, Y, Z).
    """
    x = np.asarray(x)
    squeeze = x.ndim == 3
    x4 = x[..., None] if squeeze else x
    if x4.ndim != 4:
        raise MedjaxError(f"zscore expects an (X, Y, Z[, C]) array, got shape {x.shape}")
    if mask is not None and np.shape(mask) != x4.shape[:3]:
        raise MedjaxError(f"zscore mask shape {np.shape(mask)} does not match the volume {x4.shape[:3]}")
    out = np.zeros(x4.shape, np.float32)
    for c in range(x4.shape[3]):
        ch = x4[..., c]
        m = ch != 0 if mask is None else np.asarray(mask, bool)
        vals = ch[m].astype(np.float64)
        if vals.size == 0:
            continue
        mean, std = vals.mean(), vals.std()
        out[..., c][m] = ((vals - mean) / (std if std > 0 else 1.0)).astype(np.float32)
    return out[..., 0] if squeeze else out


def check_finite(volume: Volume) -> Volume:
    """The volume itself if every voxel is finite; NaN/inf would silently poison losses and statistics."""
    a = volume.array
    if np.issubdtype(a.dtype, np.floating):
        n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        if n_nan or n_inf:
            raise MedjaxError(f"{volume.path}: {n_nan + n_inf} non-finite voxels ({n_nan} NaN, {n_inf} inf) "
                              f"of {a.size}")
    return volume
