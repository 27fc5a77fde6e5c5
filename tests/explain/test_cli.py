"""`medjax explain` in-process on the shared trained run: the files it writes, the numbers in explain.json, the
config overrides, and the one-line errors (exit 2)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from medjax import cli


def _explain(config_workdir, *args):
    _, workdir = config_workdir
    return cli.main(["explain", "--config", "synthetic:classification", "--workdir", workdir, *args])


def test_explain_writes_overlays_and_faithfulness(trained_classifier, capsys):
    _, workdir = trained_classifier
    assert _explain(trained_classifier, "--method", "gradcam", "--num", "4") == 0
    printed = json.loads(capsys.readouterr().out)
    out = os.path.join(workdir, "explain")
    with open(os.path.join(out, "explain.json")) as f:
        saved = json.load(f)
    assert saved["gradcam"] == printed
    assert (printed["method"], printed["split"], printed["step"], printed["checkpoint"]) == ("gradcam", "test", 36,
                                                                                            "best")
    rows = printed["examples"]
    assert [r["example"] for r in rows] == [0, 1, 2, 3] and [r["target"] for r in rows] == [2, 0, 0, 0]
    assert [r["class"] for r in rows] == ["class2", "class0", "class0", "class0"]  # the data's class names
    assert {r["layer"] for r in rows} == {"stage2_block1"}  # the default: the last top-level feature map
    assert printed["mean_deletion_auc"] == pytest.approx(np.mean([r["deletion_auc"] for r in rows]))
    assert (printed["mean_deletion_auc"], printed["mean_insertion_auc"]) == pytest.approx((0.7658, 0.9389), abs=1e-3)
    png = open(os.path.join(out, "gradcam.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (500, 1000)  # 2 x 4 panels

    # A second method joins the first in explain.json; --config.explain.* sets the options.
    assert _explain(trained_classifier, "--method", "saliency", "--num", "2", "--target", "1",
                    "--config.explain.faithfulness_steps=4") == 0
    sal = json.loads(capsys.readouterr().out)
    with open(os.path.join(out, "explain.json")) as f:
        assert set(json.load(f)) == {"gradcam", "saliency"}
    assert sal["options"]["faithfulness_steps"] == 4 and [r["target"] for r in sal["examples"]] == [1, 1]
    # class 1 is neither example's prediction: its probability is low throughout both curves
    assert (sal["mean_deletion_auc"], sal["mean_insertion_auc"]) == pytest.approx((0.0295, 0.0127), abs=1e-3)


@pytest.mark.parametrize("args, message", [
    (["--method", "gradcam", "--layer", "layer4"],
     "no layer named 'layer4'; layers with a spatial output: stem_conv, stem_bn, stem_relu, stage1_block1, "
     "stage2_block1 (nested ones as NAME/CHILD, e.g. stage2_block1/relu_out)"),
    (["--method", "gradcampp", "--layer", "head"],
     "gradcampp needs a spatial feature map but layer 'head' outputs shape (1, 3)"),
    (["--method", "ig", "--layer", "stem_conv"], "--layer applies to gradcam and gradcampp, not ig"),
    (["--method", "saliency", "--target", "3"], "--target 3 is out of range: the model has 3 classes (0..2)"),
    (["--method", "saliency", "--split", "holdout"], "has no 'holdout' split"),
    (["--method", "saliency", "--config.ensemble.size=2"],
     "medjax explain explains one model; this run is an ensemble (config.ensemble.size=2)"),
])
def test_explain_errors_are_one_line_exit_2(trained_classifier, capsys, args, message):
    assert _explain(trained_classifier, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("medjax: error: ") and err.count("\n") == 1 and message in err, err


def test_help_has_examples_and_the_override_syntax():
    text = cli._parser()._subparsers._group_actions[0].choices["explain"].format_help()
    assert "examples:\n  medjax explain" in text and "--config.KEY=VALUE" in text
    assert "{gradcam,gradcampp,saliency,guided,smoothgrad,ig,occlusion}" in text


def test_3d_maps_are_written_as_nifti_on_the_input_grid(tmp_path):
    """3D inputs: the heat map and the image as NIfTI with the example's voxel size, next to the PNG."""
    import nibabel as nib

    from medjax.explain.run import _write_figures

    image = np.random.default_rng(0).normal(size=(6, 5, 4, 1)).astype(np.float32)
    voxels = np.arange(120, dtype=np.float32).reshape(6, 5, 4)
    records = [{"target": 1, "class": "lesion", "deletion_auc": 0.25}]
    _write_figures(str(tmp_path), "occlusion", [(3, image, voxels, np.array([0.5, 0.5, 2.0]))], records)
    heat = nib.load(tmp_path / "occlusion_example3.nii.gz")
    np.testing.assert_array_equal(heat.get_fdata(), voxels)
    np.testing.assert_array_equal(np.diag(heat.affine), [0.5, 0.5, 2.0, 1.0])
    img = nib.load(tmp_path / "example3_image.nii.gz")
    assert img.shape == (6, 5, 4, 1) and np.allclose(img.get_fdata(), image)
    assert (tmp_path / "occlusion.png").stat().st_size > 1000
    assert sorted(os.listdir(tmp_path)) == ["example3_image.nii.gz", "occlusion.png", "occlusion_example3.nii.gz"]
