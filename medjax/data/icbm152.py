"""Axial 2D slices of the real MNI ICBM152 2009 T1 template with a 4-class tissue label: the quickstart's data.

Source (offline, never downloaded): nilearn ships three NIfTI files in ``<nilearn>/datasets/data/``:
``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`` -- the skull-stripped T1 template and the grey- and
white-matter probability maps, 197 x 233 x 189 voxels at 1 mm, RAS, uint8. They are read by path with nibabel
(``root`` points elsewhere if you keep a copy). No CSF map ships, so CSF is derived.

Labels (per 1 mm voxel, then per output pixel)
    t1  = T1 / max(T1)                          (nilearn's ``load_mni152_template`` scaling)
    gm, wm = the probability maps / 255         (uint8 0..255 in the files; maps already in [0, 1] are kept)
    mask = t1 > 0.2                             (exactly nilearn's ``load_mni152_brain_mask``: the template is
                                                 skull-stripped, everything outside the brain is 0; the mask is
                                                 1.883 L in one connected piece (6 enclosed voxels), and holds
                                                 extra-cerebral and ventricular CSF, cerebellum and brainstem)
    P(background) = 1 - mask
    P(csf)        = mask * clip(1 - gm - wm, 0, 1)
    P(grey)       = mask * gm
    P(white)      = mask * wm
    (gm + wm <= 1 everywhere, so the four sum to 1; the small gm/wm mass the maps put outside the T1 mask,
    0.7 % of it, is background.) At 1 mm the argmax splits the mask into CSF 8.3 %, grey 57.9 %, white 33.8 %
    (grey includes cerebellar cortex and the deep nuclei: thalamus, basal ganglia). The basal cisterns below the
    hypothalamus were cut away by the template's skull-stripping (T1 = 0), so they are background, not CSF.
    Downsampling by the integer factor f = in_plane_mm / 1 mm averages the four probabilities over each f x f
    block and takes the argmax (in float32; ties -> the lower class index), so the label is the block's majority
    tissue by area and agrees with the area-averaged image.

Slices
    Axial = the z axis of ``nibabel.as_closest_canonical`` (RAS), 1 mm apart (z is not resampled).
    Each slice is laid out in the neurological convention: rows run anterior -> posterior (row 0 = front), columns
    run subject left -> right (RAS +x). A slice is kept if its 1 mm brain-mask area is >= 1000 mm^2 (10 cm^2; the
    largest axial slice has ~20,400 mm^2): z = 9 .. 150 of 0 .. 188, 142 slices; the rule does not depend on
    ``in_plane_mm``, so the splits are the same at every resolution.
    In-plane window: the brain's bounding box over the kept slices (x 26..170, y 27..207 at 1 mm) plus at least one
    output pixel on each side, rounded up to a multiple of 16 output pixels (a 4-level U-Net divides by 16) and
    centred on the box; outside the volume is padded as background. 2 mm -> 96 x 80 (H x W), 4 mm -> 48 x 48,
    1 mm -> 192 x 160.

Intensity
    The image is the area average of t1 (in [0, 1]) over each block, then z-scored with the mean and standard
    deviation of the *training* slices' brain pixels (label != background), so no statistic comes from val/test.
    Training brain pixels thus have mean 0 and std 1; background is the constant -mean/std (about -5.1).
    ``meta["intensity_mean"]``, ``meta["intensity_std"]`` hold the two numbers.

Splits: contiguous z-slabs with gaps
    Over the kept range [z_lo, z_hi] (n slices): the val slab (``val_fraction`` * n slices) is centred at 1/3 of the
    range and the test slab (``test_fraction`` * n) at 2/3; ``gap_slices`` slices on each side of each held-out slab
    are dropped; every other kept slice is training (three slabs: inferior, middle, superior). So every train z is
    at least ``gap_slices + 1`` slices from every val/test z. At the defaults (0.15, 0.15, gap 4):
    kept z 9..150; val z 46..66 (21 slices), test z 93..113 (21), train z 9..41, 71..88, 118..150 (84). At 2 mm:
    train (84, 96, 80), val/test (21, 96, 80); pixel class fractions of train: background 0.673, CSF 0.026,
    grey 0.196, white 0.104 (pinned by tests/data/test_icbm152.py); val is grey-rich (temporal lobes, cerebellum),
    test white-rich (centrum semiovale). All slices come from one template (one "subject"): held-out numbers measure
    generalisation to other brain levels, not to other people.

``max_slices_per_split`` (0/None = all) keeps that many evenly spaced slices of each split, chosen after the
split (so the gaps hold); ``TINY`` = 4 mm and 8 slices per split -> (8, 48, 48) per split. Loading reads and
decompresses the three files every call (~0.7 s warm on one core; the function is pure, nothing is cached).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from medjax.errors import MedjaxError

CLASS_NAMES = ("background", "csf", "grey_matter", "white_matter")
FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
MASK_THRESHOLD = 0.2  # of max(T1), as nilearn.datasets.load_mni152_brain_mask
MIN_BRAIN_AREA_MM2 = 1000.0
TINY = {"in_plane_mm": 4.0, "max_slices_per_split": 8}  # the setting the tests and the tiny quickstart use


def default_root() -> str:
    """nilearn's bundled data folder, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise MedjaxError("the ICBM152 template ships with nilearn, which is not installed (pip install nilearn), "
                          "or pass data root= a folder holding " + ", ".join(FILES.values()))
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")


def _read(path: str):
    """(data in its stored dtype, affine, zooms) of the RAS-canonical image."""
    import nibabel as nib

    if not os.path.isfile(path):
        raise MedjaxError(f"ICBM152 file not found: {path}")
    try:
        img = nib.as_closest_canonical(nib.load(path))
        return np.asanyarray(img.dataobj), img.affine, img.header.get_zooms()[:3]
    except Exception as e:  # nibabel raises several types for corrupt files
        raise MedjaxError(f"cannot read ICBM152 file {path}: {e}") from e


def _read_raw(root: str | None) -> dict:
    """The three volumes as stored (uint8 for nilearn's copy) with the scale factors that map them to t1 in [0, 1]
    and probabilities in [0, 1], and the brain mask. Scaling is deferred so only the slices used get converted."""
    root = root or default_root()
    paths = {k: os.path.join(root, name) for k, name in FILES.items()}
    vols = {k: _read(p) for k, p in paths.items()}
    t1, affine, zooms = vols["t1"]
    for k in ("gm", "wm"):
        if vols[k][0].shape != t1.shape or not np.allclose(vols[k][1], affine, atol=1e-4):
            raise MedjaxError(f"{paths[k]} is not on the grid of {paths['t1']} "
                              f"(shape {vols[k][0].shape} vs {t1.shape})")
    if not np.allclose(zooms, 1.0, atol=1e-4):
        raise MedjaxError(f"{paths['t1']}: expected 1 mm voxels, got {tuple(float(z) for z in zooms)}")
    t1_max = float(t1.max())
    if not np.isfinite(t1_max) or t1_max <= 0:
        raise MedjaxError(f"{paths['t1']}: the T1 template is empty or not finite (max {t1_max})")
    scales = {"t1_max": t1_max}
    for k in ("gm", "wm"):
        lo, hi = float(vols[k][0].min()), float(vols[k][0].max())
        scales[k] = 255.0 if hi > 1.0 + 1e-6 else 1.0  # divisor
        if lo < -1e-6 or hi / scales[k] > 1.0 + 1e-6:
            raise MedjaxError(f"{paths[k]}: expected a probability map in [0, 1] (or 0..255), got {lo}..{hi}")
    return {"t1": t1, "gm": vols["gm"][0], "wm": vols["wm"][0], "scales": scales,
            "mask": _brain(t1, scales), "affine": affine, "root": root}


def _t1(t1: np.ndarray, scales: dict) -> np.ndarray:
    """T1 / max(T1) in float32, exactly as nilearn's load_mni152_template computes it."""
    return t1.astype(np.float32) / np.float32(scales["t1_max"])


def _brain(t1: np.ndarray, scales: dict) -> np.ndarray:
    """nilearn's load_mni152_brain_mask: (T1 / max) > 0.2."""
    return _t1(t1, scales) > MASK_THRESHOLD


def _probs(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, scales: dict) -> np.ndarray:
    """(4, ...) float32 class probabilities over CLASS_NAMES from raw arrays of any (equal) shape."""
    m = _brain(t1, scales).astype(np.float32)
    gm = np.clip(gm.astype(np.float32) / np.float32(scales["gm"]), 0.0, 1.0)
    wm = np.clip(wm.astype(np.float32) / np.float32(scales["wm"]), 0.0, 1.0)
    return np.stack([1.0 - m, m * np.clip(1.0 - gm - wm, 0.0, 1.0), m * gm, m * wm])


def _window(lo: int, hi: int, factor: int) -> tuple[int, int]:
    """(start, size) in 1 mm voxels of the output window along one axis for the bounding box lo..hi."""
    out = int(np.ceil((hi - lo + 1) / factor)) + 2
    out = 16 * int(np.ceil(out / 16))
    size = out * factor
    start = (lo + hi + 1) // 2 - size // 2
    return start, size


def _take(a: np.ndarray, axis: int, start: int, size: int, fill: float) -> np.ndarray:
    """a[start:start+size] along axis, padding with `fill` outside the array."""
    n = a.shape[axis]
    lo, hi = max(start, 0), min(start + size, n)
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(lo, hi)
    a = a[tuple(idx)]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (lo - start, start + size - hi)
    return np.pad(a, pad, constant_values=fill)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Area average over f x f blocks of the last two axes (sizes are multiples of f)."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))


def _split_z(z_lo: int, z_hi: int, val_fraction: float, test_fraction: float, gap: int) -> dict[str, list[int]]:
    n = z_hi - z_lo + 1
    slabs = {}
    for name, frac, centre in (("val", val_fraction, 1 / 3), ("test", test_fraction, 2 / 3)):
        if not 0 < frac <= 0.4:
            raise MedjaxError(f"icbm152 {name}_fraction must be in (0, 0.4], got {frac}")
        size = max(1, int(round(frac * n)))
        start = z_lo + int(round(centre * (n - 1) - (size - 1) / 2))
        slabs[name] = list(range(start, start + size))
    if gap < 0:
        raise MedjaxError(f"icbm152 gap_slices must be >= 0, got {gap}")
    excluded = set()
    for zs in slabs.values():
        excluded.update(range(zs[0] - gap, zs[-1] + gap + 1))
    if slabs["val"][-1] + gap >= slabs["test"][0] - gap:
        raise MedjaxError(f"icbm152 val/test slabs with gap {gap} overlap: reduce the fractions or the gap")
    train = [z for z in range(z_lo, z_hi + 1) if z not in excluded]
    if not train:
        raise MedjaxError("icbm152: no training slices left: reduce val/test fractions or gap_slices")
    return {"train": train, **slabs}


def _evenly(zs: list[int], k: int | None) -> list[int]:
    if not k or k >= len(zs):
        return list(zs)
    if k < 0:
        raise MedjaxError(f"max_slices_per_split must be >= 0, got {k}")
    idx = np.round(np.linspace(0, len(zs) - 1, k)).astype(int)
    return [zs[i] for i in idx]


PLANES = {  # (X, Y, Z) RAS -> (A, B, S): slices along S, rows = B reversed, cols = A
    "axial": (0, 1, 2),  # rows anterior -> posterior, cols left -> right
    "coronal": (0, 2, 1),  # rows superior -> inferior, cols left -> right
    "sagittal": (1, 2, 0),  # rows superior -> inferior, cols posterior -> anterior
}


def load_icbm152_slices(
    root: str | None = None,
    in_plane_mm: float = 2.0,
    max_slices_per_split: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    gap_slices: int = 4,
    plane: str = "axial",
    max_train_slices: int | None = None,
) -> dict:
    """Train/val/test slices of ICBM152 with 4-class tissue labels (see the module docstring).

    `plane` picks the slicing axis: "axial" (the default and everything the docstring pins), "coronal" or
    "sagittal" (the same rules along RAS y or x; rows then run superior -> inferior). `max_train_slices` keeps that
    many evenly spaced training slices (after `max_slices_per_split`), for few-label fine-tuning experiments.

    Returns ``{"train" | "val" | "test": {"image": (N, H, W, 1) float32, "label": (N, H, W) int32},
    "meta": {...}}``; ``meta`` holds ``train_z`` / ``val_z`` / ``test_z`` (z indices into the canonical 1 mm
    volume, in the order of the examples), ``class_names``, ``spacing_mm`` (row, col, slice), ``image_size``,
    ``gap_slices``, ``intensity_mean`` / ``intensity_std``, ``window`` (1 mm crop start/size in rows/cols),
    ``kept_z`` and the ``root`` read. ``root`` empty/None = nilearn's bundled copy.
    """
    factor = float(in_plane_mm)
    if not (factor >= 1 and abs(factor - round(factor)) < 1e-6):
        raise MedjaxError(f"in_plane_mm must be a whole number of millimetres >= 1 (the source is 1 mm), "
                          f"got {in_plane_mm}")
    f = int(round(factor))
    gap = int(gap_slices)
    if plane not in PLANES:
        raise MedjaxError(f"unknown icbm152 plane {plane!r}; use one of {sorted(PLANES)}")
    raw = _read_raw(root)
    for k in ("t1", "gm", "wm", "mask"):
        raw[k] = np.transpose(raw[k], PLANES[plane])
    mask = raw["mask"]

    area = mask.sum(axis=(0, 1)).astype(np.float64)  # mm^2 per axial slice (1 mm voxels)
    kept = np.flatnonzero(area >= MIN_BRAIN_AREA_MM2)
    if len(kept) == 0:
        raise MedjaxError(f"{raw['root']}: no {plane} slice has {MIN_BRAIN_AREA_MM2} mm^2 of brain")
    z_lo, z_hi = int(kept[0]), int(kept[-1])
    zs = _split_z(z_lo, z_hi, val_fraction, test_fraction, gap)
    zs = {k: _evenly(v, max_slices_per_split) for k, v in zs.items()}
    zs["train"] = _evenly(zs["train"], max_train_slices)

    # To slice layout (Z, rows = anterior->posterior, cols = left->right).
    def to_slices(a):  # (X, Y, Z) -> (Z, Y reversed, X)
        return np.transpose(a[:, ::-1, :], (2, 1, 0))

    m2 = to_slices(mask[..., z_lo : z_hi + 1]).any(axis=0)
    rows, cols = np.flatnonzero(m2.any(axis=1)), np.flatnonzero(m2.any(axis=0))
    r0, rs = _window(int(rows[0]), int(rows[-1]), f)
    c0, cs = _window(int(cols[0]), int(cols[-1]), f)

    def crop(a, z):  # (X, Y, Z) raw -> (N, rs, cs) raw at 1 mm, zero-padded outside the volume
        s = to_slices(a[..., z])
        return _take(_take(s, 1, r0, rs, 0), 2, c0, cs, 0)

    out: dict = {}
    for name in ("train", "val", "test"):
        z = np.asarray(zs[name], dtype=int)
        t1, gm, wm = crop(raw["t1"], z), crop(raw["gm"], z), crop(raw["wm"], z)
        image = _block_mean(_t1(t1, raw["scales"]), f)
        probs = _block_mean(_probs(t1, gm, wm, raw["scales"]), f)
        out[name] = {"image": image[..., None], "label": probs.argmax(axis=0).astype(np.int32)}

    brain = out["train"]["image"][..., 0][out["train"]["label"] != 0]
    mean, std = float(brain.mean()), float(brain.std())
    for name in ("train", "val", "test"):
        out[name]["image"] = ((out[name]["image"] - mean) / std).astype(np.float32)

    out["meta"] = {
        "class_names": list(CLASS_NAMES),
        "spacing_mm": (float(f), float(f), 1.0),
        "image_size": (rs // f, cs // f),
        "train_z": list(map(int, zs["train"])),
        "val_z": list(map(int, zs["val"])),
        "test_z": list(map(int, zs["test"])),
        "kept_z": (z_lo, z_hi),
        "gap_slices": gap,
        "intensity_mean": mean,
        "intensity_std": std,
        "window": {"row_start": r0, "rows": rs, "col_start": c0, "cols": cs},
        "plane": plane,
        "orientation": {"axial": "rows anterior->posterior, cols subject left->right (RAS +x); axial = RAS z",
                        "coronal": "rows superior->inferior, cols subject left->right; slices along RAS y",
                        "sagittal": "rows superior->inferior, cols posterior->anterior; slices along RAS x"}[plane],
        "root": raw["root"],
    }
    return out
