"""The GAN experiments on real ICBM152 data at tiny settings, the tissue-patch source and the encoder FD."""

import json

import jax
import numpy as np
import pytest

from medjax.data.icbm152_patches import load_icbm152_patches, patches_at
from medjax.errors import MedjaxError
from medjax.gan.frechet import penultimate_features
from medjax.models import build_model


def test_icbm152_patches_are_centred_on_their_tissue_and_splits_are_fixed():
    a = load_icbm152_patches(patch_size=8, train_per_class=5, val_per_class=4, test_per_class=3, seed=0,
                             in_plane_mm=2)
    b = load_icbm152_patches(patch_size=8, train_per_class=5, val_per_class=4, test_per_class=3, seed=0,
                             in_plane_mm=2)
    assert {k: v["image"].shape for k, v in a.items()} == {"train": (15, 8, 8, 1), "val": (12, 8, 8, 1),
                                                           "test": (9, 8, 8, 1)}
    np.testing.assert_array_equal(a["train"]["label"], np.repeat([0, 1, 2], 5))
    np.testing.assert_array_equal(a["train"]["image"], b["train"]["image"])
    # T1 contrast: CSF darkest, white matter brightest at the centre pixel (z-scored units)
    centre = a["train"]["image"][:, 4, 4, 0]
    means = [centre[a["train"]["label"] == k].mean() for k in range(3)]
    assert means[0] < means[1] < means[2]
    with pytest.raises(MedjaxError, match="fewer than test_per_class"):
        load_icbm152_patches(test_per_class=10**6, in_plane_mm=4)


def test_patches_at_pads_with_the_fill_value():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    p = patches_at(image, np.array([[0, 0, 0]]), 3, fill=-1.0)[0, ..., 0]
    np.testing.assert_array_equal(p, [[-1, -1, -1], [-1, 0, 1], [-1, 4, 5]])


def test_penultimate_features_are_the_head_input():
    model = build_model("resnet", num_classes=3, stage_sizes=(1,), block="basic", stem="small", width=4)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    variables = model.init(jax.random.key(1), x, train=False)
    features = penultimate_features(model, variables, x)
    head = variables["params"]["head"]
    logits = model.apply(variables, x, train=False)
    np.testing.assert_allclose(features @ head["kernel"] + head["bias"], logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(MedjaxError, match="no layer named 'classifier'"):
        penultimate_features(model, variables, x, head="classifier")


def test_gan_icbm152_report_tiny(tmp_path):
    from experiments import gan_icbm152_report

    assert gan_icbm152_report.main(["--out", str(tmp_path), "--variants", "sr4_tiny"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in rows] == ["sr4_tiny"] and rows[0]["split"] == "test"
    assert {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"} <= set(rows[0])
    assert "| sr4_tiny | 3 |" in (tmp_path / "results.md").read_text()


def test_gan_augmentation_tiny(tmp_path):
    from experiments import gan_augmentation

    assert gan_augmentation.main(["--out", str(tmp_path), "--seeds", "3", "--synthetic_per_class", "4",
                                  "--tiny"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["seed"] for r in result["per_seed"]["real+synthetic"]] == [3]
    augmented = np.load(tmp_path / "augmented.npz")
    assert augmented["train_images"].shape == (60 + 12, 16, 16, 1)
    np.testing.assert_array_equal(augmented["train_labels"][60:], np.repeat([0, 1, 2], 4))
    assert result["frechet_distance"]["synthetic_vs_test"] > 0
    (seed_auc,) = [r["auc"] for r in result["per_seed"]["real"]]
    assert result["summary"]["real"]["auc"] == [seed_auc] * 3  # one seed: the interval is the point


def test_t_interval_matches_the_textbook_formula():
    from experiments.gan_augmentation import t_interval

    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and np.isclose(hi - mean, 4.302652729911275 * 1.0 / np.sqrt(3))
    assert t_interval([0.5]) == (0.5, 0.5, 0.5)
