import ml_collections
import numpy as np
import pytest

from medjax.data.patches import (
    extract_patch,
    pad_example,
    pad_to_patch,
    patch_starts,
    sample_example_patches,
    sample_patches,
    voxel_keys,
)
from medjax.errors import MedjaxError


def _label_with_interior_fg(shape, patch, fraction, seed=0):
    """Random foreground only where patch centres can reach without clipping; returns (label, fg fraction there)."""
    rng = np.random.default_rng(seed)
    region = tuple(slice(p // 2, n - p + p // 2 + 1) for n, p in zip(shape, patch))
    label = np.zeros(shape, np.int32)
    inner = label[region]
    inner[...] = (rng.random(inner.shape) < fraction) * rng.integers(1, 3, inner.shape)
    return label, float((label[region] > 0).mean())


@pytest.mark.parametrize("fg_ratio", [0.0, 0.33, 1.0])
def test_centre_foreground_fraction_matches_oversampling_rate(fg_ratio):
    shape, patch = (40, 36), (8, 7)
    label, f = _label_with_interior_fg(shape, patch, 0.1)
    rng = np.random.default_rng(1)
    draws = 4000
    hits = 0
    for _ in range(draws):
        start = patch_starts(rng, label, patch, fg_ratio)
        hits += label[tuple(s + p // 2 for s, p in zip(start, patch))] > 0
    expected = fg_ratio + (1 - fg_ratio) * f
    assert abs(hits / draws - expected) < 0.03, (hits / draws, expected)


def test_centre_foreground_fraction_3d():
    shape, patch = (14, 12, 10), (4, 5, 6)
    label, f = _label_with_interior_fg(shape, patch, 0.05, seed=3)
    rng = np.random.default_rng(2)
    centres = [
        tuple(s + p // 2 for s, p in zip(patch_starts(rng, label, patch, 0.5), patch)) for _ in range(3000)
    ]
    measured = np.mean([label[c] > 0 for c in centres])
    assert abs(measured - (0.5 + 0.5 * f)) < 0.035


def test_starts_stay_in_bounds_and_clip_border_foreground():
    label = np.zeros((20, 15, 9), np.uint8)
    label[0, 14, 4] = 1  # a corner voxel: the centred patch must be shifted inside
    rng = np.random.default_rng(0)
    patch = (6, 5, 9)
    for _ in range(300):
        start = patch_starts(rng, label, patch, 0.5)
        assert all(0 <= s <= n - p for s, n, p in zip(start, label.shape, patch))
    assert patch_starts(rng, label, patch, 1.0) == (0, 10, 0)
    assert extract_patch(label, (0, 10, 0), patch).sum() == 1


def test_no_foreground_falls_back_to_uniform():
    label = np.zeros((12, 10), np.int32)
    rng = np.random.default_rng(0)
    starts = np.array([patch_starts(rng, label, (4, 4), 1.0) for _ in range(2000)])
    assert starts.min(0).tolist() == [0, 0] and starts.max(0).tolist() == [8, 6]
    counts = np.bincount(starts[:, 0], minlength=9)
    assert counts.min() > 2000 / 9 * 0.7  # roughly uniform over the 9 positions


def test_sampling_is_deterministic_from_the_seed():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((16, 14, 12, 2)).astype(np.float32)
    label, _ = _label_with_interior_fg((16, 14, 12), (6, 6, 6), 0.05)
    a = sample_patches(image, label, (6, 6, 6), 5, 0.5, seed=7)
    b = sample_patches(image, label, (6, 6, 6), 5, 0.5, seed=7)
    c = sample_patches(image, label, (6, 6, 6), 5, 0.5, seed=(7, 1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (5, 6, 6, 6, 2) and a[0].dtype == np.float32
    assert a[1].shape == (5, 6, 6, 6) and a[1].dtype == label.dtype
    # each patch is the block at the start patch_starts draws from the same stream
    rng = np.random.default_rng(7)
    for i in range(5):
        start = patch_starts(rng, label, (6, 6, 6), 0.5)
        np.testing.assert_array_equal(a[0][i], extract_patch(image, start, (6, 6, 6)))
        np.testing.assert_array_equal(a[1][i], extract_patch(label, start, (6, 6, 6)))


def test_pad_to_patch_is_symmetric_with_image_minimum_and_zero_label():
    image = np.stack([np.arange(30.0).reshape(5, 6) + 3, -np.ones((5, 6))], -1).astype(np.float32)
    label = np.ones((5, 6), np.int64)
    pi, pl = pad_to_patch(image, label, (8, 4))
    assert pi.shape == (8, 6, 2) and pl.shape == (8, 6)
    np.testing.assert_array_equal(pi[1:6], image)  # diff 3: 1 before, 2 after
    assert (pi[[0, 6, 7], :, 0] == 3).all() and (pi[[0, 6, 7], :, 1] == -1).all()
    assert (pl[[0, 6, 7]] == 0).all() and (pl[1:6] == 1).all()
    zi, _ = pad_to_patch(image, label, (8, 4), image_pad_value=0.0)
    assert (zi[0] == 0).all()
    same_i, same_l = pad_to_patch(image, label, (5, 6))
    assert same_i is image and same_l is label


def test_sample_patches_pads_small_volumes():
    image = np.arange(12, dtype=np.float32).reshape(3, 4, 1) + 1
    label = (image[..., 0] > 6).astype(np.int32)
    imgs, labs = sample_patches(image, label, (6, 4), 4, 0.5, seed=0)
    assert imgs.shape == (4, 6, 4, 1) and labs.shape == (4, 6, 4)
    for img, lab in zip(imgs, labs):
        np.testing.assert_array_equal(img[1:4, :, 0], image[..., 0])
        assert (img[[0, 4, 5]] == 1).all() and (lab[[0, 4, 5]] == 0).all()


def test_errors_name_the_problem():
    label = np.zeros((4, 4))
    with pytest.raises(MedjaxError, match="smaller than patch_size"):
        patch_starts(np.random.default_rng(0), label, (5, 4), 0.5)
    with pytest.raises(MedjaxError, match="fg_ratio"):
        patch_starts(np.random.default_rng(0), label, (2, 2), 1.5)
    with pytest.raises(MedjaxError, match="does not fit"):
        extract_patch(label, (3, 0), (2, 2))
    with pytest.raises(MedjaxError, match="trailing channel"):
        sample_patches(np.zeros((4, 4)), label, (2, 2), 1, 0.5, seed=0)
    with pytest.raises(MedjaxError, match="patch_size"):
        sample_patches(np.zeros((4, 4, 1)), label, (2, 2, 2), 1, 0.5, seed=0)


@pytest.mark.parametrize("spatial, patch", [((7, 9), (4, 5)), ((5, 6, 7), (3, 4, 2))])
def test_every_per_voxel_array_is_cut_at_the_image_coordinates(spatial, patch):
    n = int(np.prod(spatial))
    coords = np.arange(n).reshape(spatial)  # every voxel's flat index, so a patch names where it was cut
    example = {"image": np.stack([coords, -coords], -1).astype(np.float32),
               "label": (coords % 3).astype(np.int32),
               "mask": (coords + 1000).astype(np.float32),
               "instances": np.stack([coords, 2 * coords], -1).astype(np.int64),  # (*spatial, K)
               "target": np.array([0.25], np.float32)}
    assert voxel_keys(example) == ["image", "label", "mask", "instances"]
    out = sample_example_patches(example, patch, 6, 0.5, seed=3)
    assert out["target"] is example["target"]  # per-example: passed through, not stacked
    rng = np.random.default_rng(3)
    for i in range(6):
        start = patch_starts(rng, example["label"], patch, 0.5)  # the same draws, from the label
        block = extract_patch(coords, start, patch)
        np.testing.assert_array_equal(out["image"][i, ..., 0], block)
        np.testing.assert_array_equal(out["image"][i, ..., 1], -block)
        np.testing.assert_array_equal(out["label"][i], block % 3)
        np.testing.assert_array_equal(out["mask"][i], block + 1000)
        np.testing.assert_array_equal(out["instances"][i], np.stack([block, 2 * block], -1))
    assert {k: (v.shape, v.dtype) for k, v in out.items() if k != "target"} == {
        "image": ((6, *patch, 2), np.float32), "label": ((6, *patch), np.int32),
        "mask": ((6, *patch), np.float32), "instances": ((6, *patch, 2), np.int64)}


@pytest.mark.parametrize("spatial, patch, before", [((3, 4), (6, 4), (1, 0)), ((2, 3, 4), (2, 5, 4), (0, 1, 0))])
def test_padding_value_per_key(spatial, patch, before):
    coords = np.arange(int(np.prod(spatial))).reshape(spatial)
    example = {"image": np.stack([coords + 5.0, coords - 7.0], -1), "label": coords % 2 + 1,
               "mask": np.ones(spatial, np.float32), "target": np.array([1.0])}
    padded = pad_example(example, patch)
    inside = tuple(slice(b, b + n) for b, n in zip(before, spatial))
    outside = np.ones(patch, bool)
    outside[inside] = False
    assert padded["image"].shape == (*patch, 2) and padded["mask"].shape == patch
    np.testing.assert_array_equal(padded["image"][inside], example["image"])
    np.testing.assert_array_equal(padded["image"][outside], np.broadcast_to([5.0, -7.0], (outside.sum(), 2)))
    assert (padded["label"][outside] == 0).all() and (padded["mask"][outside] == 0).all()  # background, not counted
    assert (padded["mask"][inside] == 1).all() and padded["target"] is example["target"]
    # a patch of the whole padded volume: the sampler pads the same way
    out = sample_example_patches(example, patch, 1, 0.0, seed=0)
    for k in ("image", "label", "mask"):
        np.testing.assert_array_equal(out[k][0], padded[k])


def test_patch_transform_carries_the_fov_mask_and_targets():
    from medjax.data.sources import train_transform

    coords = np.arange(64).reshape(8, 8)
    example = {"image": coords[..., None].astype(np.float32), "label": (coords > 40).astype(np.int32),
               "mask": (coords % 2).astype(np.float32), "target": np.array([3.0], np.float32)}
    transform = train_transform(ml_collections.ConfigDict(dict(patch_size=(4, 4), fg_ratio=1.0)))
    out = transform(example, np.random.default_rng(0))
    assert {k: v.shape for k, v in out.items()} == {"image": (4, 4, 1), "label": (4, 4), "mask": (4, 4),
                                                    "target": (1,)}
    np.testing.assert_array_equal(out["mask"], out["image"][..., 0] % 2)  # cut where the image was
    np.testing.assert_array_equal(out["label"], out["image"][..., 0] > 40)
    assert out["label"].any() and out["target"][0] == 3.0  # foreground-centred (fg_ratio 1) from the label


def test_train_input_shape_is_the_transforms_output_shape_without_building_it():
    from medjax.data.sources import train_input_shape, train_transform

    cfg = ml_collections.ConfigDict(dict(patch_size=(4, 6), fg_ratio=0.5))
    example = {"image": np.zeros((3, 9, 2), np.float32), "label": np.zeros((3, 9), np.int32)}
    assert train_input_shape(cfg, (3, 9, 2)) == (4, 6, 2)  # padded up, then cut
    assert train_transform(cfg)(example, np.random.default_rng(0))["image"].shape == (4, 6, 2)
    clips = ml_collections.ConfigDict(dict(clip_length=3, clip_stride=2, patch_size=(3, 2, 2)))
    assert train_input_shape(clips, (10, 5, 5, 1)) == (3, 2, 2, 1)
    assert train_input_shape(ml_collections.ConfigDict(dict(name="x")), (5, 5, 1)) == (5, 5, 1)
    with pytest.raises(MedjaxError, match="patch_size \\(4, 6\\) has 2 dimensions but the volume has 3"):
        train_input_shape(cfg, (8, 8, 8, 1))
    with pytest.raises(MedjaxError, match="spans 5 frames, but the sequence has 4"):
        train_input_shape(clips, (4, 5, 5, 1))
