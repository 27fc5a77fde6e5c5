"""Simulated lesions with known ground truth in the real ICBM152 brain: a detection dataset that ships offline.

The anatomy is the MNI ICBM152 2009 T1 template that nilearn ships (`medjax.data.icbm152`, read by path, never
downloaded): the T1 / max(T1) volume block-averaged to `voxel_mm` isotropic voxels (an integer number of mm),
cropped to the brain's bounding box plus one voxel on each side and padded to a multiple of 16 voxels per axis
(icbm152's window rule; 3 mm -> 64 x 64 x 64, 4 mm -> 48^3, 8 mm -> 32^3), z-scored over the brain (T1 > 0.2,
nilearn's mask) so brain voxels have mean 0 and standard deviation 1. Axes are RAS (x left->right, y
posterior->anterior, z inferior->superior), as `nibabel.as_closest_canonical`.

Each case is that brain with `lesions_per_case` = (lo, hi) lesions (uniform count, inclusive), drawn by
`numpy.random.default_rng([seed, split, case])` (split 0 train, 1 val, 2 test), so every split and case has its
own lesions and the same arguments always give the same data:

- shape: an ellipsoid with semi-axes r * (u_x, u_y, u_z), r uniform in `radius_mm`, each u uniform in [0.7, 1.3],
  axis-aligned (at least one voxel of radius);
- place: centred on a voxel whose white-matter probability (nilearn's map, block-averaged) is > 0.5, at least
  r1 + r2 + 2 voxels from every other lesion of the case (up to 100 draws, then the lesion is skipped), so
  lesions never touch;
- contrast: intensity + s * c * profile, s = +1 or -1 with equal probability (hyper- and hypointense), c uniform
  in `contrast` (in brain standard deviations), profile = sigmoid(4 * (1 - rho)) with rho the ellipsoidal
  radius (about 1 inside, 1/2 on the surface, fading outside);
- label: the voxels with rho <= 1 (value 1, "lesion"); its boxes are the connected components' extents
  (`medjax.detection.instances.component_boxes`), i.e. each lesion's exact voxel box;
- noise: Gaussian with standard deviation `noise` over the whole volume.

2D (`spatial_dims=2`): `slices_per_case` axial (z) slices of each simulated case, half of them (rounded up)
drawn among the slices that cross a lesion and the rest among all brain slices; each slice's boxes come from
its own label's components. Images (x, y) with one channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.detection.instances import component_boxes, pad_boxes
from medjax.errors import MedjaxError

CLASS_NAMES = ("background", "lesion")  # the label map's values; detection classes: ("lesion",)
SPLITS = ("train", "val", "test")
SHAPE_JITTER = (0.7, 1.3)
PROFILE_SHARPNESS = 4.0
WM_THRESHOLD = 0.5
PLACEMENT_TRIES = 100


def load_template(root: str | None, voxel_mm: int) -> dict[str, np.ndarray]:
    """{"image": z-scored T1 (X, Y, Z) float32, "brain": mask, "wm": white-matter probability} at `voxel_mm`."""
    from medjax.data.icbm152 import _brain, _read_raw, _t1, _take, _window

    f = int(voxel_mm)
    if f < 1 or f != voxel_mm:
        raise MedjaxError(f"icbm152_lesions voxel_mm must be a whole number of mm >= 1, got {voxel_mm}")
    raw = _read_raw(root)
    mask = raw["mask"]
    t1 = _t1(raw["t1"], raw["scales"])
    wm = np.clip(raw["wm"].astype(np.float32) / np.float32(raw["scales"]["wm"]), 0.0, 1.0)
    brain = _brain(raw["t1"], raw["scales"]).astype(np.float32)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        start, size = _window(int(idx[0]), int(idx[-1]), f)
        t1, wm, brain = (_take(a, axis, start, size, 0.0) for a in (t1, wm, brain))

    def block_mean(a):
        x, y, z = (n // f for n in a.shape)
        return a.reshape(x, f, y, f, z, f).mean(axis=(1, 3, 5))

    t1, wm, brain = block_mean(t1), block_mean(wm), block_mean(brain) > 0.5
    values = t1[brain]
    image = ((t1 - values.mean()) / values.std()).astype(np.float32)
    return {"image": image, "brain": brain, "wm": wm.astype(np.float32)}


def _lesion_case(template: dict, rng: np.random.Generator, voxel_mm: int, lesions: Sequence[int],
                 radius_mm: Sequence[float], contrast: Sequence[float], noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z) float32, label (X, Y, Z) int32) of one simulated case (module docstring)."""
    image = template["image"].copy()
    shape = image.shape
    label = np.zeros(shape, np.int32)
    candidates = np.argwhere(template["wm"] > WM_THRESHOLD)
    count = int(rng.integers(int(lesions[0]), int(lesions[1]) + 1))
    placed: list[tuple[np.ndarray, float]] = []
    grid = np.indices(shape, dtype=np.float32)
    for _ in range(count):
        r = rng.uniform(*radius_mm) / voxel_mm
        radii = np.maximum(r * rng.uniform(*SHAPE_JITTER, size=3), 1.0)
        centre = None
        for _ in range(PLACEMENT_TRIES):
            c = candidates[rng.integers(len(candidates))].astype(np.float32)
            if all(np.linalg.norm(c - pc) > radii.max() + pr + 2 for pc, pr in placed):
                centre = c
                break
        sign = 1.0 if rng.random() < 0.5 else -1.0
        amplitude = sign * rng.uniform(*contrast)
        if centre is None:
            continue
        placed.append((centre, float(radii.max())))
        rho = np.sqrt(sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3)))
        image += (amplitude / (1.0 + np.exp(-PROFILE_SHARPNESS * (1.0 - rho)))).astype(np.float32)
        label[rho <= 1.0] = 1
    image += rng.normal(0.0, noise, size=shape).astype(np.float32)
    return image.astype(np.float32), label


def _slices(label: np.ndarray, brain: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """`k` axial slice indices: ceil(k / 2) among those crossing a lesion, the rest among brain slices."""
    with_lesion = np.flatnonzero(label.any(axis=(0, 1)))
    with_brain = np.flatnonzero(brain.any(axis=(0, 1)))
    n_lesion = min(-(-k // 2), len(with_lesion))
    picked = list(rng.choice(with_lesion, n_lesion, replace=False)) if n_lesion else []
    rest = np.setdiff1d(with_brain, picked)
    picked += list(rng.choice(rest, min(k - n_lesion, len(rest)), replace=False))
    return np.sort(np.asarray(picked, int))


def load_icbm152_lesions(spatial_dims: int = 3, voxel_mm: int = 3, num_train: int = 16, num_val: int = 4,
                         num_test: int = 8, lesions_per_case: Sequence[int] = (1, 4),
                         radius_mm: Sequence[float] = (4.0, 10.0), contrast: Sequence[float] = (0.5, 1.5),
                         noise: float = 0.1, seed: int = 0, max_boxes: int = 16, slices_per_case: int = 8,
                         root: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{split: {"image" (N, *s, 1), "label" (N, *s), "boxes" (N, G, 2d), "box_labels" (N, G), "box_valid"
    (N, G)}} for the train / val / test splits (module docstring), G = `max_boxes`."""
    if spatial_dims not in (2, 3):
        raise MedjaxError(f"icbm152_lesions spatial_dims must be 2 or 3, got {spatial_dims}")
    lo, hi = (int(v) for v in lesions_per_case)
    if not 0 <= lo <= hi:
        raise MedjaxError(f"icbm152_lesions lesions_per_case must be (lo, hi) with 0 <= lo <= hi, got "
                          f"{tuple(lesions_per_case)}")
    for what, (a, b) in (("radius_mm", radius_mm), ("contrast", contrast)):
        if not 0 < a <= b:
            raise MedjaxError(f"icbm152_lesions {what} must be a range 0 < lo <= hi, got {(a, b)}")
    template = load_template(root, voxel_mm)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    out = {}
    for code, split in enumerate(SPLITS):
        images, labels = [], []
        for case in range(int(counts[split])):
            rng = np.random.default_rng([int(seed), code, case])
            image, label = _lesion_case(template, rng, voxel_mm, (lo, hi), radius_mm, contrast, noise)
            if spatial_dims == 3:
                images.append(image), labels.append(label)
                continue
            for z in _slices(label, template["brain"], int(slices_per_case), rng):
                images.append(image[:, :, z]), labels.append(label[:, :, z])
        if not images:
            continue
        rows = [pad_boxes(*component_boxes(lab, 1), max_boxes, f"icbm152_lesions {split} example {i}")
                for i, lab in enumerate(labels)]
        out[split] = {"image": np.stack(images)[..., None], "label": np.stack(labels),
                      "boxes": np.stack([r[0] for r in rows]), "box_labels": np.stack([r[1] for r in rows]),
                      "box_valid": np.stack([r[2] for r in rows])}
    return out
