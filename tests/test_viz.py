"""PNG writers: decodable files of the documented pixel size, written atomically, robust to sparse logs."""

import os

import matplotlib.image as mpimg
import numpy as np
import pytest

from medjax.viz import class_colour, save_curves_png, save_overlay_png

CLASSES = ["background", "csf", "grey_matter", "white_matter"]


def _segmentation(n=5, h=32, w=24, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, h, w, 1)).astype(np.float32)
    labels = rng.integers(0, 4, size=(n, h, w)).astype(np.int32)
    preds = rng.integers(0, 4, size=(n, h, w)).astype(np.int32)
    return images, labels, preds


def _no_temp_files(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")] == []


def test_overlay_png_size_and_content(tmp_path):
    images, labels, preds = _segmentation()
    path = tmp_path / "sub" / "overlay.png"  # the folder is created
    save_overlay_png(str(path), images, labels, preds, CLASSES, max_rows=4)
    png = mpimg.imread(str(path))
    assert png.shape[:2] == (4 * 250 + 50, 750)  # rows x 2.5 in + 0.5 in legend, 3 panels x 2.5 in, at 100 dpi
    assert png[..., :3].std() > 0.05  # not blank
    assert _no_temp_files(path.parent)
    # Fewer examples than max_rows -> fewer rows; 3-D (N, H, W) images and grey background only are fine too.
    save_overlay_png(str(path), images[:2, ..., 0], labels[:2] * 0, preds[:2] * 0, CLASSES, max_rows=4)
    assert mpimg.imread(str(path)).shape[:2] == (2 * 250 + 50, 750)


def test_overlay_uses_the_fixed_class_colours(tmp_path):
    # A constant-grey image whose reference is all class 3 shows class 3's colour blended at the overlay alpha.
    images = np.zeros((1, 16, 16, 1), np.float32)
    labels = np.full((1, 16, 16), 3, np.int32)
    path = tmp_path / "o.png"
    save_overlay_png(str(path), images, labels, labels, CLASSES, max_rows=1, panel_inches=2.0)
    png = mpimg.imread(str(path))[..., :3]
    centre = png[png.shape[0] // 2 + 20, png.shape[1] // 2]  # middle of the reference panel
    from medjax.viz import OVERLAY_ALPHA

    expected = OVERLAY_ALPHA * np.array(class_colour(3))  # over black
    np.testing.assert_allclose(centre, expected, atol=0.02)
    assert class_colour(1) != class_colour(2) != class_colour(3)


def test_overlay_rejects_mismatched_inputs(tmp_path):
    images, labels, preds = _segmentation()
    with pytest.raises(ValueError):
        save_overlay_png(str(tmp_path / "x.png"), images, labels[:3], preds, CLASSES)
    assert not os.path.exists(tmp_path / "x.png")


def _records():
    recs = [{"step": s, "split": "train", "loss": 2.0 / s, "img_per_s": 100.0} for s in range(1, 41)]
    recs += [{"step": s, "split": "val", "dice_mean": s / 50, "dice/csf": s / 60, "dice/background": 0.99}
             for s in (10, 20, 30, 40)]
    recs.append({"step": 40, "split": "val", "dice_mean": "nan"})  # non-finite values are logged as strings
    return recs


@pytest.mark.parametrize("records", [_records(), _records()[:40], [], [{"step": 3, "split": "eval", "auc": 0.7}]],
                         ids=["train+val", "train-only", "empty", "eval-only"])
def test_curves_png(tmp_path, records):
    path = tmp_path / "plots" / "training_curves.png"
    save_curves_png(str(path), records)
    png = mpimg.imread(str(path))
    assert png.shape[:2] == (350, 900)
    assert png[..., :3].std() > 0.01
    assert _no_temp_files(path.parent)


def test_curves_png_overwrites_atomically(tmp_path):
    path = tmp_path / "c.png"
    save_curves_png(str(path), _records()[:10])
    first = path.read_bytes()
    save_curves_png(str(path), _records())
    assert path.read_bytes() != first and _no_temp_files(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["c.png"]
