"""MedMNIST npz reader: the table, fake files in the real layout (uint8 images, (N,1) labels), every error."""

import hashlib

import numpy as np
import pytest

from medjax.data import medmnist as mm
from medjax.data.medmnist import MEDMNIST, load_medmnist, medmnist_filename, medmnist_info, medmnist_path
from medjax.errors import MedjaxError

SIZES = {"train": 5, "val": 2, "test": 3}
COUNTS = {"pathmnist": 9, "chestmnist": 14, "dermamnist": 7, "octmnist": 4, "pneumoniamnist": 2, "retinamnist": 5,
          "breastmnist": 2, "bloodmnist": 8, "tissuemnist": 8, "organamnist": 11, "organcmnist": 11,
          "organsmnist": 11, "organmnist3d": 11, "nodulemnist3d": 2, "adrenalmnist3d": 2, "fracturemnist3d": 3,
          "vesselmnist3d": 2, "synapsemnist3d": 2}
RGB = {"pathmnist", "dermamnist", "retinamnist", "bloodmnist"}


def _arrays(name, size=28, seed=0, **override):
    """What the medmnist package saves: uint8 images, (N,1) uint8 labels ((N,14) 0/1 for chestmnist)."""
    info, rng, out = MEDMNIST[name], np.random.default_rng(seed), {}
    spatial = (size,) * (3 if info.is_3d else 2)
    for split, n in SIZES.items():
        shape = (n, *spatial) + ((3,) if info.n_channels == 3 else ())
        out[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if info.multi_label:
            out[f"{split}_labels"] = rng.integers(0, 2, (n, info.n_classes), dtype=np.uint8)
        else:
            out[f"{split}_labels"] = (np.arange(n) % info.n_classes).astype(np.uint8).reshape(n, 1)
    out.update(override)
    return {k: v for k, v in out.items() if v is not None}


def _write(root, name, size=28, **override):
    arrays = _arrays(name, size, **override)
    path = root / medmnist_filename(name, size)
    np.savez(path, **arrays)
    return path, arrays


def test_table_has_all_18_datasets_with_pinned_counts():
    assert len(MEDMNIST) == 18
    assert {n: info.n_classes for n, info in MEDMNIST.items()} == COUNTS
    assert [n for n, i in MEDMNIST.items() if i.is_3d] == ["organmnist3d", "nodulemnist3d", "adrenalmnist3d",
                                                          "fracturemnist3d", "vesselmnist3d", "synapsemnist3d"]
    for name, info in MEDMNIST.items():
        assert info.name == name and len(set(info.class_names)) == info.n_classes
        assert info.n_channels == (3 if name in RGB else 1)
        assert info.sizes == ((28, 64) if info.is_3d else (28, 64, 128, 224))
        assert info.python_class.lower() == name
        task = {"chestmnist": "multi-label, binary-class", "retinamnist": "ordinal-regression"}.get(
            name, "binary-class" if info.n_classes == 2 else "multi-class")
        assert info.task == task and info.multi_label == (name == "chestmnist")
    assert MEDMNIST["breastmnist"].class_names == ("malignant", "normal, benign")
    assert MEDMNIST["organamnist"].class_names[0] == "bladder" and MEDMNIST["organmnist3d"].class_names[0] == "liver"
    assert MEDMNIST["pathmnist"].n_samples == (89996, 10004, 7180)
    assert medmnist_info("PathMNIST") is MEDMNIST["pathmnist"]


def test_file_names_follow_the_medmnist_package(tmp_path):
    assert medmnist_filename("pathmnist") == "pathmnist.npz"
    assert medmnist_filename("pathmnist", 224) == "pathmnist_224.npz"
    assert medmnist_filename("vesselmnist3d", 64) == "vesselmnist3d_64.npz"
    assert medmnist_path(tmp_path, "chestmnist", 128) == str(tmp_path / "chestmnist_128.npz")


def test_breastmnist_28_grey_binary(tmp_path):
    path, raw = _write(tmp_path, "breastmnist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    splits, info = load_medmnist(tmp_path, "breastmnist")
    assert info is MEDMNIST["breastmnist"] and set(splits) == {"train", "val", "test"}
    for split, n in SIZES.items():
        image, label = splits[split]["image"], splits[split]["label"]
        assert image.shape == (n, 28, 28, 1) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        np.testing.assert_array_equal(image[..., 0], raw[f"{split}_images"] / np.float32(255))
        assert label.shape == (n,) and label.dtype == np.int32
        assert label.tolist() == (np.arange(n) % 2).tolist()
    assert float(splits["train"]["image"][1, 3, 4, 0]) == np.float32(raw["train_images"][1, 3, 4]) / np.float32(255)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the file is only read


def test_pathmnist_64_rgb(tmp_path):
    _, raw = _write(tmp_path, "pathmnist", 64)
    splits, info = load_medmnist(str(tmp_path), "pathmnist", size=64)
    image = splits["val"]["image"]
    assert image.shape == (2, 64, 64, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image, raw["val_images"] / np.float32(255))
    assert splits["test"]["label"].tolist() == [0, 1, 2] and info.n_classes == 9


def test_chestmnist_keeps_14_labels(tmp_path):
    _, raw = _write(tmp_path, "chestmnist")
    splits, info = load_medmnist(tmp_path, "chestmnist")
    label = splits["train"]["label"]
    assert label.shape == (5, 14) and label.dtype == np.int32 and info.multi_label
    np.testing.assert_array_equal(label, raw["train_labels"])
    assert splits["train"]["image"].shape == (5, 28, 28, 1)


def test_organmnist3d_gets_a_channel_axis(tmp_path):
    _, raw = _write(tmp_path, "organmnist3d")
    splits, info = load_medmnist(tmp_path, "organmnist3d")
    image = splits["test"]["image"]
    assert image.shape == (3, 28, 28, 28, 1) and image.dtype == np.float32 and info.is_3d
    np.testing.assert_array_equal(image[..., 0], raw["test_images"] / np.float32(255))
    assert splits["train"]["label"].tolist() == [0, 1, 2, 3, 4]


def test_flat_labels_subset_of_splits_and_default_root(tmp_path, monkeypatch):
    labels = {f"{s}_labels": np.arange(n, dtype=np.int64) % 5 for s, n in SIZES.items()}
    _write(tmp_path, "retinamnist", 128, **labels)
    splits, _ = load_medmnist(tmp_path, "retinamnist", 128, splits=("test",))
    assert set(splits) == {"test"} and splits["test"]["label"].tolist() == [0, 1, 2]
    assert splits["test"]["image"].shape == (3, 128, 128, 3)
    monkeypatch.setattr(mm, "DEFAULT_ROOT", str(tmp_path))
    assert load_medmnist(None, "retinamnist", 128)[0]["train"]["label"].shape == (5,)


def test_unknown_name_and_size(tmp_path):
    with pytest.raises(MedjaxError, match="unknown MedMNIST dataset 'mnist'; known: pathmnist, .*synapsemnist3d"):
        load_medmnist(tmp_path, "mnist")
    with pytest.raises(MedjaxError, match=r"organmnist3d \(3D\) has no size 128; available: \[28, 64\]"):
        load_medmnist(tmp_path, "organmnist3d", 128)
    with pytest.raises(MedjaxError, match=r"pathmnist \(2D\) has no size 32"):
        load_medmnist(tmp_path, "pathmnist", 32)
    with pytest.raises(MedjaxError, match="splits must be"):
        load_medmnist(tmp_path, "pathmnist", splits=("training",))


def test_missing_file_names_the_path_and_how_to_get_it(tmp_path):
    expected = str(tmp_path / "dermamnist_64.npz")
    with pytest.raises(MedjaxError) as e:
        load_medmnist(tmp_path, "dermamnist", 64)
    msg = str(e.value)
    assert f"MedMNIST file not found: {expected}" in msg
    assert "medmnist.DermaMNIST(split='train', download=True, size=64" in msg
    assert "python -m medmnist download --size=64" in msg and "copy the .npz file there" in msg


@pytest.mark.parametrize("override, match", [
    ({"val_labels": None}, r"dermamnist.npz has no 'val_labels' array"),
    ({"test_labels": np.zeros((4, 1), np.uint8)}, r"dermamnist.npz: test_images has 3 rows but test_labels has 4"),
    ({"train_images": np.zeros((5, 28, 28), np.uint8)},
     r"dermamnist.npz: train_images has shape \(5, 28, 28\); dermamnist at size 28 needs \(5, 28, 28, 3\)"),
    ({"train_images": np.zeros((5, 32, 32, 3), np.uint8)}, r"train_images has shape \(5, 32, 32, 3\)"),
    ({"train_images": np.zeros((5, 28, 28, 3), np.int16)}, r"train_images has dtype int16; MedMNIST stores uint8"),
    ({"train_images": np.full((5, 28, 28, 3), 2.0)}, r"train_images is float64 with values outside \[0, 1\]"),
    ({"val_labels": np.array([[0], [7]], np.uint8)}, r"val_labels has values \[7\] outside \[0, 7\)"),
    ({"val_labels": np.array([[-1], [0]], np.int64)}, r"val_labels has values \[-1\] outside \[0, 7\)"),
    ({"val_labels": np.zeros((2, 3), np.uint8)}, r"val_labels has shape \(2, 3\); dermamnist needs \(N,\)"),
    ({"val_labels": np.zeros((2, 1), np.float32)}, r"val_labels has dtype float32"),
    ({"val_images": np.zeros((0, 28, 28, 3), np.uint8), "val_labels": np.zeros((0, 1), np.uint8)},
     r"split 'val' is empty"),
])
def test_bad_contents_name_the_file_and_array(tmp_path, override, match):
    _write(tmp_path, "dermamnist", **override)
    with pytest.raises(MedjaxError, match=match):
        load_medmnist(tmp_path, "dermamnist")


def test_multilabel_labels_must_be_binary_with_14_columns(tmp_path):
    labels = np.zeros((5, 14), np.uint8)
    labels[2, 3] = 2
    _write(tmp_path, "chestmnist", train_labels=labels)
    with pytest.raises(MedjaxError, match=r"chestmnist.npz: train_labels of multi-label chestmnist must be 0/1; "
                                          r"found values \[2\]"):
        load_medmnist(tmp_path, "chestmnist")
    _write(tmp_path, "chestmnist", train_labels=np.zeros((5, 1), np.uint8))
    with pytest.raises(MedjaxError, match=r"train_labels has shape \(5, 1\); chestmnist is multi-label and needs "
                                          r"\(N, 14\)"):
        load_medmnist(tmp_path, "chestmnist")


def test_3d_shape_is_checked(tmp_path):
    _write(tmp_path, "nodulemnist3d", 64, train_images=np.zeros((5, 64, 64), np.uint8))
    with pytest.raises(MedjaxError, match=r"nodulemnist3d_64.npz: train_images has shape \(5, 64, 64\); "
                                          r"nodulemnist3d at size 64 needs \(5, 64, 64, 64, 1\) or \(5, 64, 64, 64\)"):
        load_medmnist(tmp_path, "nodulemnist3d", 64)


def test_truncated_or_corrupt_npz(tmp_path):
    path, _ = _write(tmp_path, "breastmnist")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # no zip directory: fails on open
    with pytest.raises(MedjaxError, match=r"cannot read .*breastmnist.npz \(truncated or corrupt .npz\?\)"):
        load_medmnist(tmp_path, "breastmnist")
    # Intact directory, damaged member: zip's CRC check fails when the array is read.
    damaged = bytearray(data)
    at = data.index(b"train_images.npy") + 400
    damaged[at: at + 8] = b"\xff" * 8
    path.write_bytes(bytes(damaged))
    with pytest.raises(MedjaxError, match=r"cannot read 'train_images' from .*breastmnist.npz"):
        load_medmnist(tmp_path, "breastmnist")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "breastmnist.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    with pytest.raises(MedjaxError, match="is a single .npy array"):
        load_medmnist(tmp_path, "breastmnist")
