"""The synthetic beating heart: EF and volume curve by construction, masks that agree with them, determinism."""

import numpy as np
import pytest

from medjax.data.cine import BLOOD, MUSCLE, beating_heart, cine_dataset, volume_curve
from medjax.errors import MedjaxError


def test_volume_curve_spans_end_diastole_to_end_systole():
    curve = volume_curve(100, 0.6, 0.0)
    assert curve[0] == 1.0 and curve.min() == pytest.approx(0.4) and np.argmin(curve) == 50


@pytest.mark.parametrize("spatial_dims,size,power,tol", [(2, 64, 1.5, 0.01), (3, 32, 1.0, 0.015)])
def test_masks_reproduce_the_ejection_fraction(spatial_dims, size, power, tol):
    """Cavity area (2D: scales as k^2, volume as k^3) or voxel count (3D) at ES over ED gives back 1 - EF."""
    q = beating_heart(3, num_frames=12, size=size, spatial_dims=spatial_dims)
    cavity = (q["label"] == 1).reshape(12, -1).sum(1)
    assert 1 - (cavity.min() / cavity.max()) ** power == pytest.approx(q["ef"], abs=tol)
    assert np.argmax(cavity) == q["ed_frame"] and np.argmin(cavity) == q["es_frame"]
    np.testing.assert_allclose(q["volume"][q["es_frame"]] / q["volume"][q["ed_frame"]], 1 - q["ef"], rtol=1e-5)
    muscle = (q["label"] == 2).reshape(12, -1).sum(1)
    assert muscle.max() / muscle.min() < 1.06  # incompressible myocardium, up to voxelisation


def test_intensities_follow_the_labels_and_seeds_are_patients():
    q = beating_heart(5, num_frames=4, size=48, noise=0.0, speckle=0.0)
    assert q["image"].shape == (4, 48, 48, 1) and q["label"].shape == (4, 48, 48)
    np.testing.assert_allclose(q["image"][..., 0][q["label"] == 1], BLOOD)
    np.testing.assert_allclose(q["image"][..., 0][q["label"] == 2], MUSCLE)
    a, b = beating_heart(7, num_frames=4, size=32), beating_heart(7, num_frames=4, size=32)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert beating_heart(8, num_frames=4, size=32)["ef"] != a["ef"]


def test_dataset_stacks_sequences_and_errors_are_named():
    d = cine_dataset(range(3), num_frames=5, size=32)
    assert d["image"].shape == (3, 5, 32, 32, 1) and d["ef"].shape == (3,) and d["volume"].shape == (3, 5)
    assert np.all((d["ef"] > 0.2) & (d["ef"] <= 0.75))  # the frames may miss the cycle's exact extremes
    with pytest.raises(MedjaxError, match="ef_range"):
        beating_heart(0, ef_range=(0.5, 1.2))
    with pytest.raises(MedjaxError, match="spatial_dims must be 2 or 3"):
        beating_heart(0, spatial_dims=4)


def test_source_passes_image_quality_and_keeps_patients_apart():
    import ml_collections

    from medjax.data.sources import load_splits

    cfg = ml_collections.ConfigDict(dict(name="synthetic_cine", seed=2, num_train=3, num_eval=2, num_frames=4,
                                         size=16, noise=0.0, speckle=0.0, ef_range=(0.5, 0.5)))
    splits = load_splits(cfg).splits
    clean = beating_heart(2_000_000 + 100_000 + 1, num_frames=4, size=16, noise=0.0, speckle=0.0,
                          ef_range=(0.5, 0.5))  # the 2nd validation patient of seed 2
    np.testing.assert_array_equal(splits["val"]["image"][1], clean["image"])
    assert splits["val"]["target"][1, 0] == pytest.approx(clean["ef"])
    assert np.all(splits["val"]["target"] <= 0.5 + 1e-6)  # the cycle's EF 0.5, as far as 4 frames show it
    assert splits["train"]["image"].shape == (3, 4, 16, 16, 1)
