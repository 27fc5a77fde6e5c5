"""medjax.image_metrics against MONAI (PSNR, SSIM 2D and 3D, Fréchet distance) and hand-computed values."""

import numpy as np
import pytest
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.fid import get_fid_score

from medjax import image_metrics as im
from medjax.errors import MedjaxError


def _pair(shape, seed):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 1, shape).astype(np.float32)
    pred = np.clip(target + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return pred, target


def _torch(x):  # channels-last -> channels-first
    return torch.from_numpy(np.moveaxis(x, -1, 1).copy())


def test_psnr_matches_monai_and_the_formula():
    pred, target = _pair((3, 20, 24, 2), 0)
    ours = np.asarray(im.psnr(pred, target, 1.0))
    ref = PSNRMetric(max_val=1.0)(_torch(pred), _torch(target)).numpy()[:, 0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    mse = ((pred[0] - target[0]) ** 2).mean()
    np.testing.assert_allclose(ours[0], 10 * np.log10(1.0 / mse), rtol=1e-5)


@pytest.mark.parametrize("shape,data_range", [((3, 24, 20, 1), 1.0), ((2, 16, 18, 20, 2), 2.0)])
def test_ssim_matches_monai_in_2d_and_3d(shape, data_range):
    pred, target = _pair(shape, 1)
    pred, target = pred * data_range, target * data_range
    ours = np.asarray(im.ssim(pred, target, data_range))
    metric = SSIMMetric(spatial_dims=len(shape) - 2, data_range=data_range)
    ref = metric(_torch(pred), _torch(target)).numpy().reshape(-1)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ours.shape == (shape[0],)


def test_ssim_of_an_image_with_itself_is_one_and_errors_are_named():
    _, target = _pair((2, 16, 16, 1), 2)
    np.testing.assert_allclose(im.ssim(target, target, 1.0), 1.0, atol=1e-6)
    with pytest.raises(MedjaxError, match="smaller than the 11-wide window"):
        im.ssim(target[:, :8, :8], target[:, :8, :8], 1.0)
    with pytest.raises(MedjaxError, match="differ in shape"):
        im.psnr(target, target[:1], 1.0)


def test_frechet_distance_matches_monai_fid_score():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((200, 6))
    b = rng.standard_normal((150, 6)) @ rng.standard_normal((6, 6)) * 0.7 + 0.4
    ours = im.frechet_distance(a, b)
    ref = float(get_fid_score(torch.from_numpy(a), torch.from_numpy(b)))
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert abs(im.frechet_distance(a, a)) < 1e-9


def test_frechet_distance_of_gaussians_with_known_moments():
    """Equal covariances cancel the trace term: FD = ||mu_a - mu_b||^2 (here with the samples' own moments)."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((500, 3))
    b = a + np.array([1.0, 2.0, -2.0])  # same covariance, mean shifted by a vector of norm 3
    np.testing.assert_allclose(im.frechet_distance(a, b), 9.0, rtol=1e-6)


def test_downsample_is_a_block_mean_and_bicubic_keeps_constants():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(np.asarray(im.downsample(x, 2))[0, ..., 0], [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_allclose(im.bicubic_upsample(np.full((1, 3, 3, 3, 1), 0.25, np.float32), 2), 0.25, atol=1e-6)
    with pytest.raises(MedjaxError, match="not divisible by scale 3"):
        im.downsample(x, 3)
