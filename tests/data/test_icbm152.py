"""The ICBM152 quickstart data: real template slices, pinned shapes, class fractions and split gaps."""

import numpy as np
import pytest

from medjax.data.icbm152 import FILES, TINY, _split_z, default_root, load_icbm152_slices
from medjax.errors import MedjaxError

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def full():
    return load_icbm152_slices()


@pytest.fixture(scope="module")
def tiny():
    return load_icbm152_slices(**TINY)


def test_default_shapes_and_slices(full):
    sizes = {"train": 84, "val": 21, "test": 21}
    for split in SPLITS:
        image, label = full[split]["image"], full[split]["label"]
        assert image.shape == (sizes[split], 96, 80, 1) and image.dtype == np.float32
        assert label.shape == (sizes[split], 96, 80) and label.dtype == np.int32
        assert set(np.unique(label)) == {0, 1, 2, 3}
        assert np.isfinite(image).all()
    meta = full["meta"]
    assert meta["class_names"] == ["background", "csf", "grey_matter", "white_matter"]
    assert meta["spacing_mm"] == (2.0, 2.0, 1.0) and meta["image_size"] == (96, 80)
    assert meta["kept_z"] == (9, 150)
    assert meta["val_z"] == list(range(46, 67)) and meta["test_z"] == list(range(93, 114))
    assert meta["train_z"] == [*range(9, 42), *range(71, 89), *range(118, 151)]
    assert set(full) == {*SPLITS, "meta"} and set(full["train"]) == {"image", "label"}


def test_training_class_fractions_are_pinned(full):
    label = full["train"]["label"]
    frac = np.bincount(label.ravel(), minlength=4) / label.size
    np.testing.assert_allclose(frac, [0.67291, 0.02640, 0.19646, 0.10423], atol=0.005)
    # Within the brain: grey dominates, CSF is the rare class.
    brain = frac[1:] / frac[1:].sum()
    np.testing.assert_allclose(brain, [0.0807, 0.6006, 0.3187], atol=0.005)
    # Held-out slabs sit at different brain levels: val grey-rich, test white-rich.
    for split, expected in (("val", [0.41569, 0.04469, 0.41229, 0.12733]),
                            ("test", [0.42612, 0.02252, 0.26726, 0.28410])):
        lab = full[split]["label"]
        np.testing.assert_allclose(np.bincount(lab.ravel(), minlength=4) / lab.size, expected, atol=0.005)


def test_splits_are_disjoint_slabs_with_gaps(full, tiny):
    for out in (full, tiny):
        meta = out["meta"]
        gap = meta["gap_slices"]
        assert gap >= 3
        train = np.array(meta["train_z"])
        for held in ("val_z", "test_z"):
            z = np.array(meta[held])
            assert np.all(np.diff(z) > 0)
            assert np.abs(train[:, None] - z[None, :]).min() >= gap + 1
        assert not set(meta["val_z"]) & set(meta["test_z"])
        assert all(len(meta[f"{s}_z"]) == len(out[s]["image"]) for s in SPLITS)


def test_gap_is_respected_for_other_settings():
    for val, test, gap in ((0.1, 0.2, 7), (0.4, 0.05, 3), (0.01, 0.01, 0), (0.15, 0.15, 10)):
        zs = _split_z(9, 150, val, test, gap)
        train = np.array(zs["train"])
        for held in ("val", "test"):
            assert np.abs(train[:, None] - np.array(zs[held])[None, :]).min() >= gap + 1
        assert len(zs["val"]) == max(1, round(val * 142)) and len(zs["test"]) == max(1, round(test * 142))
        assert len(train) + len(zs["val"]) + len(zs["test"]) + 4 * gap == 142
    with pytest.raises(MedjaxError, match="overlap"):
        _split_z(9, 150, 0.3, 0.3, 10)


def test_images_are_z_scored_on_training_brain(full):
    image, label = full["train"]["image"][..., 0], full["train"]["label"]
    brain = image[label != 0]
    assert abs(brain.mean()) < 1e-4 and abs(brain.std() - 1) < 1e-4
    background = -full["meta"]["intensity_mean"] / full["meta"]["intensity_std"]
    assert background == pytest.approx(-5.10, abs=0.05)
    # Pure background pixels (outside the brain's bounding window) hold exactly that constant.
    np.testing.assert_allclose(image[:, 0, :], background, atol=1e-5)
    # Tissue contrast survives the downsampling: CSF < grey < white on T1.
    means = [image[label == c].mean() for c in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    # Held-out slices use the training statistics, so their brain mean is near (not exactly) 0.
    for split in ("val", "test"):
        b = full[split]["image"][..., 0][full[split]["label"] != 0]
        assert abs(b.mean()) < 0.5


def test_brain_never_touches_the_border(full, tiny):
    for out in (full, tiny):
        for split in SPLITS:
            label = out[split]["label"]
            assert not label[:, [0, -1], :].any() and not label[:, :, [0, -1]].any()
            assert (label != 0).mean(axis=(1, 2)).min() > 0.01  # every kept slice contains brain


def test_tiny_setting(tiny, full):
    for split in SPLITS:
        assert tiny[split]["image"].shape == (8, 48, 48, 1)
        assert tiny[split]["label"].shape == (8, 48, 48)
        assert set(tiny["meta"][f"{split}_z"]) <= set(full["meta"][f"{split}_z"])
    assert tiny["meta"]["train_z"][0] == 9 and tiny["meta"]["train_z"][-1] == 150


def test_deterministic_and_pure(tiny):
    again = load_icbm152_slices(**TINY)
    for split in SPLITS:
        for key in ("image", "label"):
            np.testing.assert_array_equal(tiny[split][key], again[split][key])
            assert tiny[split][key] is not again[split][key]
    assert tiny["meta"] == again["meta"]


def test_labels_follow_the_documented_rule():
    """An independent re-derivation from the files: nilearn's brain mask, CSF = mask * clip(1 - gm - wm), argmax."""
    import nibabel as nib

    root = default_root()
    vol = {k: np.asarray(nib.as_closest_canonical(nib.load(f"{root}/{name}")).dataobj) for k, name in FILES.items()}
    assert vol["t1"].shape == (197, 233, 189) and vol["t1"].dtype == np.uint8
    t1 = vol["t1"].astype(np.float32) / np.float32(vol["t1"].max())
    assert (t1 > 0.2).sum() == 1882989  # nilearn.datasets.load_mni152_brain_mask(): 1.883 L
    out = load_icbm152_slices(in_plane_mm=1, max_slices_per_split=2)
    z, w = out["meta"]["test_z"][0], out["meta"]["window"]
    mask = (t1[:, :, z] > 0.2).astype(np.float32)
    # float32 like the loader: a few pixels are exact three-way ties (e.g. 85/85/85 of 255) that rounding decides.
    gm, wm = vol["gm"][:, :, z] / np.float32(255), vol["wm"][:, :, z] / np.float32(255)
    probs = np.stack([1 - mask, mask * np.clip(1 - gm - wm, 0, 1), mask * gm, mask * wm])
    expected = probs[:, :, ::-1].argmax(axis=0).T  # rows anterior->posterior, cols left->right
    expected = expected[w["row_start"]:w["row_start"] + w["rows"], w["col_start"]:w["col_start"] + w["cols"]]
    np.testing.assert_array_equal(out["test"]["label"][0], expected)
    # 2 mm labels are the argmax of the 2 x 2 block-averaged probabilities of the same slice.
    two = load_icbm152_slices(in_plane_mm=2, max_slices_per_split=2)
    assert two["meta"]["test_z"][0] == z and two["meta"]["window"] == w
    p = probs[:, :, ::-1].transpose(0, 2, 1)[:, w["row_start"]:w["row_start"] + w["rows"],
                                             w["col_start"]:w["col_start"] + w["cols"]]
    p = p.reshape(4, w["rows"] // 2, 2, w["cols"] // 2, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(two["test"]["label"][0], p.argmax(axis=0))


def test_bad_inputs_raise_medjax_error(tmp_path):
    with pytest.raises(MedjaxError, match=FILES["t1"]):
        load_icbm152_slices(root=str(tmp_path))
    with pytest.raises(MedjaxError, match="in_plane_mm"):
        load_icbm152_slices(in_plane_mm=1.5)
    with pytest.raises(MedjaxError, match="val_fraction"):
        load_icbm152_slices(val_fraction=0.9)
    assert default_root().endswith("datasets/data")


def test_coronal_and_sagittal_planes_and_few_training_slices():
    coronal = load_icbm152_slices(in_plane_mm=4.0, plane="coronal")
    assert coronal["meta"]["plane"] == "coronal" and coronal["meta"]["kept_z"] == (30, 204)
    assert coronal["train"]["image"].shape == (107, 48, 48, 1) and coronal["test"]["label"].shape == (26, 48, 48)
    sagittal = load_icbm152_slices(in_plane_mm=4.0, plane="sagittal", max_train_slices=4)
    assert sagittal["meta"]["train_z"] == [28, 55, 141, 168] and sagittal["train"]["image"].shape == (4, 48, 48, 1)
    assert len(sagittal["meta"]["val_z"]) == 21  # held-out splits keep every slice
    with pytest.raises(MedjaxError, match="unknown icbm152 plane 'oblique'"):
        load_icbm152_slices(plane="oblique")


def test_site_b_is_every_second_example_of_its_classes():
    from medjax.data.icbm152_patches import site_b

    labels = np.array([0, 0, 1, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(site_b(labels, (0, 1)), [False, True, False, False, True, False, False, False])
    np.testing.assert_array_equal(site_b(labels, ()), np.zeros(8, bool))


def test_icbm152_patches_site_shift_moves_site_b_only():
    """The injected scanner shift: training patches of the named classes at site B, val/test of every class."""
    from medjax.config import build_config
    from medjax.data.icbm152_patches import site_b
    from medjax.data.sources import load_splits

    overrides = ["--config.data.train_per_class=4", "--config.data.val_per_class=2", "--config.data.test_per_class=2",
                 "--config.data.in_plane_mm=2", "--config.data.patch_size=8"]
    plain = load_splits(build_config("trust_icbm152:biased", [*overrides, "--config.data.site_shift=0"]).data)
    shifted = load_splits(build_config("trust_icbm152:biased", overrides).data)
    for split, classes in (("train", (0,)), ("test", (0, 1, 2))):
        labels = plain.splits[split]["label"]
        shift = np.where(site_b(labels, classes), 3.0, 0.0).astype(np.float32)[:, None, None, None]
        np.testing.assert_array_equal(shifted.splits[split]["image"], plain.splits[split]["image"] + shift)
    assert site_b(plain.splits["train"]["label"], (0,)).sum() == 2  # 2 of the 4 CSF patches; 3 of the 6 at test
    assert site_b(plain.splits["test"]["label"], (0, 1, 2)).sum() == 3
