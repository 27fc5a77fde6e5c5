"""Stain colour in H&E (and other two-stain) pathology images: colour deconvolution, Macenko and Reinhard
normalisation. Host side, numpy, RGB floats in [0, 1] channels-last (any leading shape).

Slides from different scanners and labs differ mostly in stain colour; a model trained on one centre's colours
degrades on another's. Two remedies: normalise every tile to one reference appearance before the model sees it
(this module), or train on randomly perturbed stains (`medjax.data.augment`'s `hed` transform, on the device).

* Colour deconvolution (Ruifrok & Johnston 2001): Beer-Lambert optical density OD = -log(I) is linear in the
  stain concentrations, OD = C @ M with M's rows the stains' OD colours. `RGB_FROM_HED` / `HED_FROM_RGB` are
  scikit-image's matrices (haematoxylin, eosin, DAB) and `rgb_to_hed` / `hed_to_rgb` its `rgb2hed` / `hed2rgb`
  formulas (the 1e-6 floor and the log(1e-6) scaling included), so numbers match scikit-image's exactly.
* Macenko et al. 2009: the two stain vectors of an image are estimated from its OD pixels (the plane of the two
  largest principal directions, the robust extreme angles in it), concentrations by least squares, and the
  image is rebuilt with a reference's stain vectors and 99th-percentile concentrations.
* Reinhard et al. 2001: each CIELAB channel is shifted and scaled to a target's mean and standard deviation
  (the LAB statistics of the result equal the target's exactly, before the gamut clip back to RGB).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from medjax.errors import MedjaxError

# scikit-image's skimage.color.rgb_from_hed (Ruifrok & Johnston's H, E, DAB optical densities, rows) and inverse.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
LOG_ADJUST = float(np.log(1e-6))  # scikit-image's scaling: OD / -log(1e-6), so a 1e-6 pixel has density 1

# The reference of the widely used Macenko implementation (Macenko et al. 2009 code ports): H and E columns of
# optical density, and the 99th-percentile concentrations of its reference image.
MACENKO_REFERENCE_STAINS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MACENKO_REFERENCE_MAX_CONC = np.array([1.9705, 1.0308])


def _rgb(image: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(image)
    if x.shape[-1:] != (3,):
        raise MedjaxError(f"{what}: expected RGB images (..., 3), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        x = x / 255.0
    return x.astype(np.float64)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and DAB densities (..., 3) of RGB in [0, 1] (uint8 is scaled): skimage's rgb2hed."""
    x = np.maximum(_rgb(rgb, "rgb_to_hed"), 1e-6)
    return np.maximum((np.log(x) / LOG_ADJUST) @ HED_FROM_RGB, 0.0)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of H, E, DAB densities (..., 3): skimage's hed2rgb."""
    return np.clip(np.exp((np.asarray(hed, np.float64) * LOG_ADJUST) @ RGB_FROM_HED), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------- Macenko


@dataclasses.dataclass(frozen=True)
class StainEstimate:
    """What Macenko's method finds in an image: stain OD vectors (3, 2), columns (H, E) of unit length, and the
    99th-percentile concentration of each stain."""

    stains: np.ndarray
    max_conc: np.ndarray


def optical_density(rgb: np.ndarray, background: float = 240.0) -> np.ndarray:
    """-log((I + 1) / background) per channel on the 0..255 scale (float input in [0, 1] is scaled by 255), as the
    published Macenko code computes it; `background` is the intensity of unstained glass."""
    x = np.asarray(rgb)
    if x.shape[-1:] != (3,):
        raise MedjaxError(f"optical_density: expected RGB images (..., 3), got shape {x.shape}")
    x = x.astype(np.float64) if np.issubdtype(x.dtype, np.integer) else np.asarray(x, np.float64) * 255.0
    return -np.log((x + 1.0) / background)


def macenko_stains(rgb: np.ndarray, *, background: float = 240.0, od_threshold: float = 0.15,
                   alpha: float = 1.0) -> StainEstimate:
    """The two stain vectors and concentration scale of an RGB image (..., 3) by Macenko et al. 2009, as the
    published code (github.com/mitkovetta/staining-normalization and its Python port) computes them.

    Pixels with OD below `od_threshold` in any channel are background and ignored. The OD pixels are projected
    on the plane of their two largest principal directions; the stains are the directions at the `alpha` and
    `100 - alpha` percentiles of the angle in that plane. The stain with the larger red-channel density comes
    first (haematoxylin absorbs red more than eosin does). Concentrations (least squares over every pixel) give
    `max_conc`, their 99th percentiles."""
    od = optical_density(rgb, background).reshape(-1, 3)
    stained = od[np.all(od >= od_threshold, axis=1)]
    if len(stained) < 2:
        raise MedjaxError(f"macenko_stains: fewer than 2 stained pixels (optical density >= {od_threshold} in every "
                          f"channel); is the image blank or the background setting ({background}) wrong?")
    _, vecs = np.linalg.eigh(np.cov(stained, rowvar=False))
    plane = vecs[:, 1:3]  # the two largest principal directions
    proj = stained @ plane
    angle = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angle, [alpha, 100 - alpha])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    return StainEstimate(stains, np.percentile(conc, 99, axis=1))


def macenko_normalize(rgb: np.ndarray, reference: StainEstimate | None = None, *, background: float = 240.0,
                      od_threshold: float = 0.15, alpha: float = 1.0) -> np.ndarray:
    """`rgb` (..., 3) with its stains replaced by `reference`'s (default: the published reference), as float RGB
    in [0, 1]. Concentrations are scaled so their 99th percentiles become the reference's."""
    ref = reference or StainEstimate(MACENKO_REFERENCE_STAINS, MACENKO_REFERENCE_MAX_CONC)
    est = macenko_stains(rgb, background=background, od_threshold=od_threshold, alpha=alpha)
    od = optical_density(rgb, background).reshape(-1, 3)
    conc = np.linalg.lstsq(est.stains, od.T, rcond=None)[0] * (ref.max_conc / est.max_conc)[:, None]
    out = background * np.exp(-(ref.stains @ conc).T) / 255.0
    return np.clip(out, 0.0, 1.0).reshape(np.shape(rgb))


# -------------------------------------------------------------------------------------------------- Reinhard


def _skimage_color():
    try:
        from skimage import color
    except ImportError as e:
        raise MedjaxError("Reinhard normalisation needs scikit-image: pip install 'medjax[pathology]'") from e
    return color


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of each CIELAB channel over all pixels of `rgb` (..., 3): a Reinhard target."""
    lab = _skimage_color().rgb2lab(_rgb(rgb, "lab_stats")).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard_lab(lab: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray) -> np.ndarray:
    """LAB pixels (..., 3) shifted and scaled per channel to `target_mean` / `target_std` (exactly, up to float
    rounding; a constant channel is only shifted)."""
    flat = np.asarray(lab, np.float64).reshape(-1, 3)
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    scale = np.where(std > 0, np.asarray(target_std) / np.where(std > 0, std, 1.0), 1.0)
    return ((flat - mean) * scale + np.asarray(target_mean)).reshape(np.shape(lab))


def reinhard_normalize(rgb: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray) -> np.ndarray:
    """`rgb` (..., 3) with the CIELAB mean and std of the target (`lab_stats` of a reference tile), as RGB in
    [0, 1] (colours the scaling pushes outside the sRGB gamut are clipped)."""
    import warnings

    color = _skimage_color()
    lab = reinhard_lab(color.rgb2lab(_rgb(rgb, "reinhard_normalize")), target_mean, target_std)
    with warnings.catch_warnings():  # lab2rgb warns when it clips out-of-gamut colours, which is the intent here
        warnings.simplefilter("ignore", UserWarning)
        return color.lab2rgb(lab)


# ------------------------------------------------------------------------------------------------ per tile

NORMALIZERS = ("macenko", "reinhard")


def make_normalizer(method: str, reference: np.ndarray | None = None):
    """`normalize(tiles uint8 (N, H, W, 3)) -> float32 (N, H, W, 3) in [0, 1]`, each tile by itself: "macenko"
    to `reference`'s stains (default: the published reference) or "reinhard" to `reference`'s LAB statistics (a
    reference image is required). A tile without 2 stained pixels has no stain to move and comes back as it is."""
    if method not in NORMALIZERS:
        raise MedjaxError(f"unknown stain normalisation {method!r} (config.data.stain_normalize); known: "
                          f"{list(NORMALIZERS)} or '' for none")
    if method == "reinhard":
        if reference is None:
            raise MedjaxError("config.data.stain_normalize='reinhard' needs a reference image whose LAB statistics "
                              "the tiles take: set config.data.stain_reference")
        mean, std = lab_stats(reference)

        def one(tile: np.ndarray) -> np.ndarray:
            return reinhard_normalize(tile, mean, std)
    else:
        target = None if reference is None else macenko_stains(reference)

        def one(tile: np.ndarray) -> np.ndarray:
            try:
                return macenko_normalize(tile, target)
            except MedjaxError:  # a blank tile: nothing stained to normalise
                return np.asarray(tile, np.float64) / 255.0

    def normalize(tiles: np.ndarray) -> np.ndarray:
        return np.stack([one(t) for t in np.asarray(tiles)]).astype(np.float32).reshape(np.shape(tiles))

    return normalize
