"""Stain colour: HED deconvolution equals scikit-image's; Macenko recovers a stain matrix an image was built from
and equals the published implementation (torchstain's numpy port) on the real ihc.png; Reinhard hits the target's
LAB statistics exactly."""

import numpy as np
import pytest
from skimage import color, data

from medjax.data import stain
from medjax.errors import MedjaxError


@pytest.fixture(scope="module")
def tiles():
    """scikit-image's immunohistochemistry image (512 x 512) as four 256 x 256 tiles."""
    ihc = data.immunohistochemistry()
    return ihc.reshape(2, 256, 2, 256, 3).transpose(0, 2, 1, 3, 4).reshape(4, 256, 256, 3)


def test_hed_conversions_equal_scikit_image(tiles):
    x = tiles[0]
    np.testing.assert_allclose(stain.RGB_FROM_HED, color.rgb_from_hed, rtol=0, atol=0)
    np.testing.assert_allclose(stain.rgb_to_hed(x), color.rgb2hed(x), rtol=0, atol=1e-12)
    hed = color.rgb2hed(x) * 1.3 + 0.01
    np.testing.assert_allclose(stain.hed_to_rgb(hed), color.hed2rgb(hed), rtol=0, atol=1e-12)


def test_macenko_recovers_the_stain_matrix_an_image_is_built_from():
    truth = np.array([[0.60, 0.25], [0.70, 0.80], [0.39, 0.55]])  # H (more red density) first, as returned
    truth /= np.linalg.norm(truth, axis=0)
    r = np.random.default_rng(0)
    conc = r.uniform(0.8, 2.0, (4000, 2))
    conc[:200, 1] = 0  # pure haematoxylin and pure eosin pixels: the extreme angles (5% > alpha = 1%)
    conc[200:400, 0] = 0
    rgb = (240.0 * np.exp(-conc @ truth.T) - 1.0) / 255.0  # Beer-Lambert, inverted exactly by optical_density
    est = stain.macenko_stains(rgb.reshape(40, 100, 3))
    np.testing.assert_allclose(est.stains, truth, atol=1e-12)
    np.testing.assert_allclose(est.max_conc, np.percentile(conc, 99, axis=0), atol=1e-12)


def test_macenko_equals_the_published_implementation_on_ihc_tiles(tiles):
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    ref = NumpyMacenkoNormalizer()
    for tile in tiles[:2]:
        stains, _, max_conc = ref._NumpyMacenkoNormalizer__compute_matrices(tile, 240, 1, 0.15)
        est = stain.macenko_stains(tile)
        np.testing.assert_allclose(est.stains, stains, rtol=0, atol=1e-12)
        np.testing.assert_allclose(est.max_conc, max_conc, rtol=0, atol=1e-12)
        expected, _, _ = ref.normalize(tile, stains=False)  # uint8, truncated
        ours = stain.macenko_normalize(tile)
        assert ours.dtype == np.float64 and ours.shape == tile.shape
        assert np.abs((ours * 255).astype(np.uint8).astype(int) - expected).max() <= 1


def test_macenko_names_a_blank_image():
    with pytest.raises(MedjaxError, match="fewer than 2 stained pixels"):
        stain.macenko_stains(np.full((8, 8, 3), 250, np.uint8))


def test_reinhard_matches_the_target_lab_statistics(tiles):
    mean, std = stain.lab_stats(tiles[3])
    lab = color.rgb2lab(tiles[0] / 255.0)
    out = stain.reinhard_lab(lab, mean, std)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), mean, atol=1e-10)
    np.testing.assert_allclose(out.reshape(-1, 3).std(0), std, atol=1e-10)
    rgb = stain.reinhard_normalize(tiles[0], mean, std)
    # back in RGB: every colour inside the sRGB gamut keeps its LAB value (only out-of-gamut ones are clipped)
    inside = np.all((rgb > 1e-6) & (rgb < 1 - 1e-6), axis=-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(color.rgb2lab(rgb)[inside], out[inside], atol=1e-6)
    # a constant channel is shifted only
    flat = np.zeros((4, 4, 3))
    np.testing.assert_allclose(stain.reinhard_lab(flat, [1.0, 2.0, 3.0], [5.0, 5.0, 5.0])[0, 0], [1.0, 2.0, 3.0])
