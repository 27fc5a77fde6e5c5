"""HD95, ASSD and NSD against MONAI on random blobs with anisotropic spacing, 2D and 3D, and MONAI's empty cases."""

import warnings

import numpy as np
import pytest

from medjax import surface_metrics as sm
from medjax.errors import MedjaxError


def _blobs(shape, num_classes, seed):
    """Label maps of smoothed noise cut into classes: irregular blobs, some touching the array's edge."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    edges = np.quantile(field, np.linspace(0.45, 0.9, num_classes)[:-1] if num_classes > 2 else [0.6])
    return np.digitize(field, edges).astype(np.int32)


def _monai(pred, label, num_classes, spacing, tolerance):
    """MONAI's HD95, ASSD and NSD of label maps (N, *spatial) as (N, 3, K-1)."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    def onehot(a):
        return torch.from_numpy(np.moveaxis(np.eye(num_classes, dtype=np.float32)[a], -1, 1))

    p, y = onehot(pred), onehot(label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty classes
        hd = compute_hausdorff_distance(p, y, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(p, y, symmetric=True, spacing=spacing)
        nsd = compute_surface_dice(p, y, class_thresholds=[tolerance] * (num_classes - 1), spacing=spacing)
    return np.stack([hd.numpy(), asd.numpy(), nsd.numpy()], 1)


@pytest.mark.parametrize("shape, spacing, tolerance", [((40, 48), (0.7, 1.3), 1.5),
                                                       ((18, 22, 16), (2.5, 0.8, 1.1), 2.0)])
def test_parity_with_monai_on_random_blobs(shape, spacing, tolerance):
    k = 3
    label = np.stack([_blobs(shape, k, s) for s in range(3)])
    pred = np.stack([_blobs(shape, k, s + 10) for s in range(2)] + [label[2]])  # the last one is exact
    pred[1][pred[1] == 2] = 0  # class 2 missing from this prediction: MONAI's one-side-empty case
    ours = np.stack([sm.surface_metrics(p, y, k, spacing, tolerance) for p, y in zip(pred, label)])
    theirs = _monai(pred, label, k, spacing, tolerance)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)  # NaN and inf at the same places
    assert np.isnan(ours[1, 0, 1]) and ours[1, 1, 1] == np.inf and ours[1, 2, 1] == 0  # the missed class
    np.testing.assert_array_equal(ours[2], [[0, 0], [0, 0], [1, 1]])  # a perfect prediction
    assert np.isfinite(ours[0]).all() and (ours[0, 0] > 0).all() and (0 < ours[0, 2]).all()


def test_spacing_is_physical_and_tolerance_inclusive():
    # one voxel each, 3 columns apart along an axis of 0.5 mm: every distance is 1.5 mm
    ref, pred = np.zeros((5, 8), int), np.zeros((5, 8), int)
    ref[2, 2], pred[2, 5] = 1, 1
    np.testing.assert_allclose(sm.surface_metrics(pred, ref, 2, (1.0, 0.5), 1.5), [[1.5], [1.5], [1.0]])
    np.testing.assert_allclose(sm.surface_metrics(pred, ref, 2, (1.0, 0.5), 1.4), [[1.5], [1.5], [0.0]])
    np.testing.assert_allclose(sm.surface_metrics(pred, ref, 2, None, 1.0), [[3.0], [3.0], [0.0]])  # voxels
    # a 3x3 square (surface: 8 voxels, all but the centre) against the same square grown by one column (surface:
    # 10 voxels, all but the two inner ones) at spacing (1, 2): 7 of the grown surface lie on the reference's and 3
    # (the new column) 2 mm from it; back, 7 lie on the prediction's and the one at (3, 4) is 1 mm (one row) away
    ref = np.zeros((7, 7), int)
    ref[2:5, 2:5] = 1
    pred = ref.copy()
    pred[2:5, 5] = 1
    to_ref, to_pred = sm.surface_distances(pred, ref, (1.0, 2.0))
    np.testing.assert_array_equal(np.sort(to_ref), [0] * 7 + [2] * 3)
    np.testing.assert_array_equal(np.sort(to_pred), [0] * 7 + [1])
    hd95, assd, nsd = sm.binary_metrics(pred, ref, (1.0, 2.0), 1.0)
    # HD95: max(95th percentile of to_ref = 2, of to_pred = 0 + 0.65 * 1); NSD: 7 + 8 of 18 within 1 mm
    assert hd95 == pytest.approx(2.0) and assd == pytest.approx(7 / 18) and nsd == pytest.approx(15 / 18)


def test_empty_cases_as_monai():
    empty, blob = np.zeros((1, 8, 9), np.int32), np.zeros((1, 8, 9), np.int32)
    blob[0, 2:5, 3:7] = 1
    expected = {"both empty": [np.nan, np.nan, np.nan], "prediction empty": [np.nan, np.inf, 0.0],
                "reference empty": [np.nan, np.inf, 0.0]}
    for name, (p, y) in {"both empty": (empty, empty), "prediction empty": (empty, blob),
                         "reference empty": (blob, empty)}.items():
        ours = sm.surface_metrics(p[0], y[0], 2, (1.0, 2.0), 1.0)[:, 0]
        np.testing.assert_array_equal(ours, expected[name], err_msg=name)
        np.testing.assert_array_equal(_monai(p, y, 2, (1.0, 2.0), 1.0)[0, :, 0], expected[name], err_msg=name)


def test_a_field_of_view_sets_both_maps_to_background_outside_it():
    label, pred = _blobs((30, 30), 2, 0), _blobs((30, 30), 2, 1)
    yy, xx = np.mgrid[:30, :30]
    fov = ((yy - 14.5) ** 2 + (xx - 14.5) ** 2 <= 13**2).astype(np.float32)
    ours = sm.surface_metrics(pred, label, 2, (0.5, 0.5), 1.0, mask=fov)
    masked = _monai((pred * fov)[None].astype(np.int32), (label * fov)[None].astype(np.int32), 2, (0.5, 0.5), 1.0)
    np.testing.assert_allclose(ours, masked[0], rtol=1e-5)
    assert not np.allclose(ours, sm.surface_metrics(pred, label, 2, (0.5, 0.5), 1.0))  # the FOV changed them


def test_summaries_skip_undefined_cases_and_keep_inf():
    per_case = np.array([[[1.0, np.nan], [2.0, np.nan], [0.5, np.nan]],
                         [[3.0, 4.0], [np.inf, 1.0], [0.0, 1.0]]])
    out = sm.summarize(per_case, ["a", "b"])
    assert out == {"hd95/a": 2.0, "hd95/b": 4.0, "hd95_mean": 3.0, "assd/a": np.inf, "assd/b": 1.0,
                   "assd_mean": np.inf, "nsd/a": 0.25, "nsd/b": 1.0, "nsd_mean": 0.625}
    assert sm.case_record(per_case[0], ["a", "b"]) == {"hd95/a": 1.0, "hd95/b": None, "assd/a": 2.0,
                                                       "assd/b": None, "nsd/a": 0.5, "nsd/b": None}
    assert np.isnan(sm.summarize(np.full((2, 3, 1), np.nan), ["a"])["nsd_mean"])


def test_bad_arguments_are_named():
    with pytest.raises(MedjaxError, match="spacing must be one positive number or 2"):
        sm.surface_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), 2, (1.0, 1.0, 1.0))
    with pytest.raises(MedjaxError, match="nsd_tolerance_mm must be one number >= 0 or one per foreground class"):
        sm.tolerances((1.0, 2.0), 3, "nsd_tolerance_mm")
    with pytest.raises(MedjaxError, match="same shape"):
        sm.surface_metrics(np.zeros((4, 4), int), np.zeros((4, 5), int), 2)
