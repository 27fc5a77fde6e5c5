"""Image-quality metrics for synthesis and super-resolution: PSNR, SSIM (2D and 3D), Fréchet distance.

PSNR and SSIM are jittable JAX functions on channels-last batches and return one value per image, so a sharded
evaluation can average them over any subset; they follow MONAI 1.6's `PSNRMetric` and `SSIMMetric` (tests pin them
within 1e-5): SSIM uses a separable Gaussian window (11 wide, sigma 1.5 by default) with "valid" filtering, the
biased local variances, c1 = (k1 R)^2, c2 = (k2 R)^2, and the mean of the SSIM map over space and channels.

`frechet_distance` compares two sets of feature vectors (float64 numpy, on the host):
||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with unbiased covariances, as MONAI's `FIDMetric`. Which
encoder produces the features is the caller's choice; medjax uses its own trained encoders rather than
ImageNet's Inception-v3 (see the README's GAN section for why).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from medjax.errors import MedjaxError


def _check_pair(x: jax.Array, y: jax.Array, what: str) -> int:
    if x.shape != y.shape:
        raise MedjaxError(f"{what}: prediction {tuple(x.shape)} and target {tuple(y.shape)} differ in shape")
    if x.ndim not in (4, 5):
        raise MedjaxError(f"{what}: expected channels-last (N, H, W, C) or (N, D, H, W, C), got {tuple(x.shape)}")
    return x.ndim - 2


def psnr(pred: jax.Array, target: jax.Array, data_range: float) -> jax.Array:
    """Peak signal-to-noise ratio per image, in dB: 10 log10(R^2 / mean squared error). Identical images give inf."""
    _check_pair(pred, target, "psnr")
    mse = jnp.mean((jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)) ** 2,
                   axis=tuple(range(1, pred.ndim)))
    return 10.0 * jnp.log10(float(data_range) ** 2 / mse)


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """The normalised 1D Gaussian MONAI's SSIM uses (float32)."""
    dist = np.arange((1 - size) / 2, (1 + size) / 2, 1.0, dtype=np.float32)
    g = np.exp(-((dist / np.float32(sigma)) ** 2) / 2).astype(np.float32)
    return g / g.sum()


def _filter_valid(x: jax.Array, window: jax.Array) -> jax.Array:
    """Separable 'valid' filtering of every channel of a channels-last batch with `window` along each axis."""
    nd = x.ndim - 2
    n, c = x.shape[0], x.shape[-1]
    # Channels into the batch: (N*C, *spatial, 1).
    x = jnp.moveaxis(x, -1, 1).reshape((n * c,) + x.shape[1:-1] + (1,))
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = window.shape[0]
        kernel = window.reshape(tuple(shape) + (1, 1))
        spec = "DHW"[3 - nd:]
        x = lax.conv_general_dilated(x, kernel, (1,) * nd, "VALID", precision=lax.Precision.HIGHEST,
                                     dimension_numbers=(f"N{spec}C", f"{spec}IO", f"N{spec}C"))
    return jnp.moveaxis(x[..., 0].reshape((n, c) + x.shape[1:-1]), 1, -1)


def ssim(pred: jax.Array, target: jax.Array, data_range: float, *, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> jax.Array:
    """Structural similarity per image (2D or 3D, channels-last), MONAI's `SSIMMetric` with a Gaussian window."""
    nd = _check_pair(pred, target, "ssim")
    if min(pred.shape[1:-1]) < win_size:
        raise MedjaxError(f"ssim: image {tuple(pred.shape[1:-1])} is smaller than the {win_size}-wide window")
    x, y = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    w = jnp.asarray(gaussian_window(win_size, sigma))
    mu_x, mu_y = _filter_valid(x, w), _filter_valid(y, w)
    sigma_x = _filter_valid(x * x, w) - mu_x * mu_x
    sigma_y = _filter_valid(y * y, w) - mu_y * mu_y
    sigma_xy = _filter_valid(x * y, w) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    cs = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    value = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return jnp.mean(value, axis=tuple(range(1, nd + 2)))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, F) features, float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise MedjaxError(f"frechet_distance needs (N >= 2, F) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F).

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a
    symmetric positive semi-definite matrix, so no complex matrix square root is needed.
    """
    mu_a, cov_a = feature_statistics(features_a)
    mu_b, cov_b = feature_statistics(features_b)
    if mu_a.shape != mu_b.shape:
        raise MedjaxError(f"frechet_distance: {mu_a.shape[0]} against {mu_b.shape[0]} features")
    vals, vecs = np.linalg.eigh(cov_a)
    sqrt_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    inner = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(inner, 0, None))))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def bicubic_upsample(x: jax.Array, scale: int) -> jax.Array:
    """The baseline super-resolution: `jax.image.resize` with cubic interpolation to `scale` x each side."""
    shape = (x.shape[0],) + tuple(s * scale for s in x.shape[1:-1]) + (x.shape[-1],)
    return jax.image.resize(jnp.asarray(x, jnp.float32), shape, method="cubic")


def downsample(x: jax.Array, scale: int) -> jax.Array:
    """Block-mean downsampling by `scale` per spatial axis (sizes must divide): the low-resolution input of SR."""
    nd = x.ndim - 2
    if any(s % scale for s in x.shape[1:-1]):
        raise MedjaxError(f"downsample: spatial size {tuple(x.shape[1:-1])} is not divisible by scale {scale}")
    shape = [x.shape[0]] + [v for s in x.shape[1:-1] for v in (s // scale, scale)] + [x.shape[-1]]
    return jnp.mean(x.reshape(shape), axis=tuple(2 + 2 * i for i in range(nd)))


__all__: Sequence[str] = ("bicubic_upsample", "downsample", "feature_statistics", "frechet_distance",
                          "gaussian_window", "psnr", "ssim")
