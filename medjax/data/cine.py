"""A synthetic beating heart: short-axis cine sequences (2D + time) or 3D + time volumes with known volumes and EF.

Each sequence models the left ventricle (LV) as an ellipsoid whose cavity volume follows a cardiac cycle:

    V(t) = V_ed - (V_ed - V_es) * s(t),   s(t) = (1 - cos(2 pi (t / T + phase))) / 2

with the cycle's ejection fraction ef = 1 - V_es / V_ed drawn uniformly from `ef_range` per sequence. The frames
sample the cycle at a random phase, so they may miss the exact extremes; the reported `ef` is the one the frames
show, 1 - min_t V(t) / max_t V(t) (the clinical definition, from the largest and smallest frame volumes), with
`ed_frame` / `es_frame` the frames of largest / smallest volume. The cavity contracts
isotropically: its radii scale by k(t) = (V(t) / V_ed)^(1/3). A 2D sequence is the mid-ventricular short-axis slice
of that ellipsoid (an ellipse with radii a k(t), b k(t)); a 3D sequence renders the whole ellipsoid (radii a k,
b k, c k). The myocardium is a shell around the cavity whose own area (2D) or volume (3D) stays constant over the
cycle (incompressible muscle), so it thickens in systole.

Images: blood pool bright (1.0), myocardium dark (0.35), surrounding tissue mid-grey (0.55) with a smooth random
texture, then multiplicative speckle (gamma-distributed, mean 1, as in ultrasound) and additive Gaussian noise.
Labels per frame: 0 background, 1 LV cavity, 2 myocardium. Everything is drawn from `np.random.default_rng(seed)`:
a seed is a patient, so held-out seeds are held-out patients.

`volume` is the analytic cavity volume in voxel units (3D: (4/3) pi a b c k^3; 2D: the same ellipsoid's volume,
with a long radius `c` = 1.6 x the mean short radius, which the 2D slice does not show; EF is scale-free anyway).
"""

from __future__ import annotations

import numpy as np

from medjax.errors import MedjaxError

CLASS_NAMES = ("background", "lv_cavity", "myocardium")
BLOOD, MUSCLE, TISSUE = 1.0, 0.35, 0.55


def volume_curve(num_frames: int, ef: float, phase: float) -> np.ndarray:
    """V(t) / V_ed for t = 0..T-1 (1 at end-diastole, 1 - ef at end-systole)."""
    t = np.arange(num_frames) / num_frames
    s = (1.0 - np.cos(2.0 * np.pi * (t + phase))) / 2.0
    return 1.0 - ef * s


def _smooth_texture(rng: np.random.Generator, shape: tuple[int, ...], scale: int = 4) -> np.ndarray:
    """Low-frequency texture in about [-1, 1]: coarse noise, upsampled by repetition and box-blurred."""
    coarse = rng.standard_normal(tuple(max(1, -(-s // scale)) for s in shape))
    fine = coarse
    for axis, s in enumerate(shape):
        fine = np.repeat(fine, scale, axis=axis).take(range(s), axis=axis)
    for axis in range(len(shape)):
        fine = (np.roll(fine, 1, axis) + fine + np.roll(fine, -1, axis)) / 3.0
    return fine / max(1e-6, np.abs(fine).max())


def beating_heart(seed: int, num_frames: int = 16, size: int = 64, spatial_dims: int = 2,
                  ef_range: tuple[float, float] = (0.3, 0.75), noise: float = 0.05, speckle: float = 0.15
                  ) -> dict:
    """One sequence: {"image": (T, *s, 1) float32, "label": (T, *s) int32, "ef": float, "volume": (T,) float32,
    "ed_frame": int, "es_frame": int}."""
    if spatial_dims not in (2, 3):
        raise MedjaxError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if num_frames < 2 or size < 16:
        raise MedjaxError(f"need num_frames >= 2 and size >= 16, got {num_frames} and {size}")
    lo, hi = ef_range
    if not 0.0 < lo <= hi < 1.0:
        raise MedjaxError(f"ef_range must satisfy 0 < lo <= hi < 1, got {ef_range}")
    rng = np.random.default_rng(seed)
    ef = float(rng.uniform(lo, hi))
    phase = float(rng.uniform(0.0, 1.0))
    radii = rng.uniform(0.16, 0.22, spatial_dims) * size  # end-diastolic cavity radii (voxels)
    if spatial_dims == 3:
        radii[0] *= 1.4  # the long axis
    centre = size / 2.0 + rng.uniform(-0.06, 0.06, spatial_dims) * size
    wall = rng.uniform(0.07, 0.1) * size  # end-diastolic myocardial thickness
    curve = volume_curve(num_frames, ef, phase)

    grid = np.stack(np.meshgrid(*[np.arange(size) + 0.5] * spatial_dims, indexing="ij"), -1) - centre
    ed_outer = radii + wall
    muscle = np.prod(ed_outer) - np.prod(radii)  # myocardium size in "product of radii" units, kept constant
    texture = _smooth_texture(rng, (size,) * spatial_dims)

    images, labels = [], []
    for frac in curve:
        cavity = radii * frac ** (1.0 / 3.0)
        outer = cavity * ((np.prod(cavity) + muscle) / np.prod(cavity)) ** (1.0 / spatial_dims)
        r_cav = np.sqrt(np.sum((grid / cavity) ** 2, -1))
        r_out = np.sqrt(np.sum((grid / outer) ** 2, -1))
        label = np.where(r_cav <= 1.0, 1, np.where(r_out <= 1.0, 2, 0)).astype(np.int32)
        image = np.select([label == 1, label == 2], [BLOOD, MUSCLE], TISSUE + 0.12 * texture)
        image = image * rng.gamma(1.0 / speckle**2, speckle**2, image.shape) if speckle else image
        image = image + noise * rng.standard_normal(image.shape)
        images.append(image.astype(np.float32)[..., None])
        labels.append(label)
    if spatial_dims == 3:
        ed_volume = 4.0 / 3.0 * np.pi * np.prod(radii)
    else:
        long_radius = 1.6 * radii.mean()
        ed_volume = 4.0 / 3.0 * np.pi * np.prod(radii) * long_radius
    sampled_ef = float(1.0 - curve.min() / curve.max())  # what the frames show: the clinical definition
    return {"image": np.stack(images), "label": np.stack(labels), "ef": sampled_ef,
            "volume": (ed_volume * curve).astype(np.float32), "ed_frame": int(np.argmax(curve)),
            "es_frame": int(np.argmin(curve))}


def cine_dataset(seeds: list[int] | range, **kwargs) -> dict[str, np.ndarray]:
    """Sequences for `seeds` stacked: image (N, T, *s, 1), label (N, T, *s), ef (N,), volume (N, T)."""
    seqs = [beating_heart(int(s), **kwargs) for s in seeds]
    if not seqs:
        raise MedjaxError("cine_dataset needs at least one seed")
    return {"image": np.stack([q["image"] for q in seqs]), "label": np.stack([q["label"] for q in seqs]),
            "ef": np.asarray([q["ef"] for q in seqs], np.float32),
            "volume": np.stack([q["volume"] for q in seqs])}
