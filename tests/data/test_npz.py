import numpy as np
import pytest

from medjax.data.npz import load_npz_splits
from medjax.errors import MedjaxError


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_medmnist_layout(tmp_path):
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = np.full((n, 28, 28), 255, np.uint8)
        arrays[f"{split}_labels"] = np.arange(n).reshape(n, 1)
    splits = load_npz_splits(_write(tmp_path / "x.npz", **arrays))
    assert splits["train"]["image"].shape == (5, 28, 28, 1) and splits["train"]["image"].max() == 1.0
    assert splits["test"]["label"].tolist() == [0, 1, 2]


def test_multilabel_labels_keep_their_shape(tmp_path):
    labels = np.eye(3, dtype=np.uint8)
    path = _write(tmp_path / "m.npz", train_images=np.zeros((3, 8, 8, 3), np.uint8), train_labels=labels)
    assert load_npz_splits(path, splits=("train",))["train"]["label"].shape == (3, 3)


def test_errors_name_the_file_and_array(tmp_path):
    with pytest.raises(MedjaxError, match="data file not found: .*nope.npz"):
        load_npz_splits(str(tmp_path / "nope.npz"))
    path = _write(tmp_path / "a.npz", train_images=np.zeros((2, 4, 4)), train_labels=np.zeros(2))
    with pytest.raises(MedjaxError, match="has no 'val_images'"):
        load_npz_splits(path)
    path = _write(tmp_path / "b.npz", train_images=np.zeros((2, 4, 4)), train_labels=np.zeros(3))
    with pytest.raises(MedjaxError, match="train_images has 2 rows but train_labels has 3"):
        load_npz_splits(path, splits=("train",))
    bad = tmp_path / "c.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(MedjaxError, match="cannot read .*c.npz"):
        load_npz_splits(str(bad))
