"""Uncertainty measures and referral curves against hand-computed values, the maps on disk, and the end-to-end
`medjax evaluate --uncertainty ...` section."""

import math

import jax
import nibabel as nib
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.trust import uncertainty as unc


def _h(*p):
    return -sum(x * math.log(x) for x in p if x > 0)


def test_entropy_and_mutual_information_by_hand():
    # two samples of three examples, two classes: disagreeing certainties, agreeing coin flips, a mixture
    probs = np.array([[[1.0, 0.0], [0.5, 0.5], [0.8, 0.2]],
                      [[0.0, 1.0], [0.5, 0.5], [0.4, 0.6]]])
    total = [math.log(2), math.log(2), _h(0.6, 0.4)]
    aleatoric = [0.0, math.log(2), (_h(0.8, 0.2) + _h(0.4, 0.6)) / 2]
    np.testing.assert_allclose(unc.predictive_entropy(probs), total, rtol=1e-6)
    np.testing.assert_allclose(unc.expected_entropy(probs), aleatoric, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(unc.mutual_information(probs), [math.log(2), 0.0, _h(0.6, 0.4) - aleatoric[2]],
                               rtol=1e-5, atol=1e-7)
    assert float(unc.entropy(np.array([0.25, 0.25, 0.5]))) == pytest.approx(1.5 * math.log(2), rel=1e-6)


def test_uncertainty_of_logits_softmax_and_sigmoid():
    logits = np.log(np.array([[[0.8, 0.2]], [[0.4, 0.6]]]))  # (S=2, N=1, C=2)
    h, mi = unc.uncertainty(logits, "softmax")
    assert float(h[0]) == pytest.approx(_h(0.6, 0.4), rel=1e-6)
    assert float(mi[0]) == pytest.approx(_h(0.6, 0.4) - (_h(0.8, 0.2) + _h(0.4, 0.6)) / 2, rel=1e-4)
    # two independent labels: p = (0.8, 0.5) and (0.4, 0.5) -> binary entropies of the means add up
    p = np.array([[[0.8, 0.5]], [[0.4, 0.5]]])
    h, mi = unc.uncertainty(np.log(p / (1 - p)), "sigmoid")
    assert float(h[0]) == pytest.approx(_h(0.6, 0.4) + math.log(2), rel=1e-5)
    assert float(mi[0]) == pytest.approx(_h(0.6, 0.4) - (_h(0.8, 0.2) + _h(0.4, 0.6)) / 2, rel=1e-4)
    with pytest.raises(ValueError, match="regression"):
        unc.uncertainty(logits, "mean")


def test_mean_logits_give_the_mean_prediction():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(jax.nn.softmax(unc.mean_logits(logits, "softmax")),
                               jax.nn.softmax(logits).mean(0), rtol=1e-5)
    np.testing.assert_allclose(jax.nn.sigmoid(unc.mean_logits(logits, "sigmoid")),
                               jax.nn.sigmoid(logits).mean(0), rtol=1e-5)
    np.testing.assert_allclose(unc.mean_logits(logits, "mean"), logits.mean(0), rtol=1e-6)
    np.testing.assert_allclose(jax.nn.softmax(unc.mean_logits(logits[:1], "softmax")), jax.nn.softmax(logits[0]),
                               rtol=1e-6)  # one sample: the model's own prediction


def test_classification_referral_by_hand():
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.7])  # referred first: case 0, then 4, 2, 3, 1
    probs = np.array([[0.4, 0.6], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    labels = np.array([0, 0, 1, 1, 0])  # predicted 1, 0, 1, 0, 1: correct 0, 1, 1, 0, 0
    rows = unc.classification_referral(scores, probs, labels, fractions=(0.0, 0.2, 0.4))
    assert [r["retained"] for r in rows] == [5, 4, 3]
    assert [r["fraction"] for r in rows] == [0.0, 0.2, 0.4]
    assert [r["acc"] for r in rows] == pytest.approx([2 / 5, 2 / 4, 2 / 3])
    # AUC of the positive-class score: all 5 -> pairs (pos 0.7, 0.4) vs neg (0.6, 0.1, 0.8): 3 of 6 ordered
    # right; without case 0 -> neg (0.1, 0.8): 2 of 4; without cases 0 and 4 -> neg (0.1): 2 of 2
    assert [r["auc"] for r in rows] == pytest.approx([3 / 6, 2 / 4, 1.0])
    one_class = unc.classification_referral(np.array([0.9, 0.1]), probs[:2], np.array([1, 0]), fractions=(0.0, 0.5))
    assert one_class[1]["auc"] is None and one_class[1]["acc"] == 1.0  # one class left: AUC undefined
    assert len(unc.REFERRAL_FRACTIONS) == 11 and unc.REFERRAL_FRACTIONS[-1] == 0.5


def test_dice_referral_and_ties():
    rows = unc.dice_referral(np.array([0.2, 0.2, 0.9, 0.1]), np.array([0.5, np.nan, 0.1, 0.9]),
                             fractions=(0.0, 0.25, 0.5, 0.75))
    assert [r["dice"] for r in rows] == pytest.approx([0.5, 0.7, 0.7, 0.9])  # NaN cases are not averaged
    rows = unc.referral_curve(np.zeros(4), lambda keep: {"kept": keep.tolist()}, fractions=(0.5,))
    assert rows[0]["kept"] == [0, 1]  # ties: the lower indices are kept
    with pytest.raises(MedjaxError, match="one uncertainty per case"):
        unc.referral_curve(np.zeros((2, 2)), lambda keep: {})


def test_maps_png_2d_and_nifti_3d(tmp_path):
    maps = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5) / 10
    paths = unc.save_maps(str(tmp_path / "u2"), np.ones((2, 4, 5, 1)), np.zeros((2, 4, 5), int), maps, maps / 2,
                          ["bg", "fg"])
    assert paths == [str(tmp_path / "u2.png")] and (tmp_path / "u2.png").stat().st_size > 0
    vol = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    paths = unc.save_maps(str(tmp_path / "u3"), np.ones((2, 3, 4, 5, 1)), np.zeros((2, 3, 4, 5), int), vol, vol / 2,
                          ["bg", "fg"], spacings=[(1.0, 2.0, 3.0), None])
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "u3_case0_entropy.nii.gz", "u3_case0_mutual_information.nii.gz",
        "u3_case1_entropy.nii.gz", "u3_case1_mutual_information.nii.gz"]
    img = nib.load(paths[1])
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol[0] / 2)
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 2.0, 3.0))
    assert nib.load(paths[2]).header.get_zooms() == (1.0, 1.0, 1.0)


def test_evaluate_refuses_what_a_method_cannot_do(tmp_path):
    """Refused before any checkpoint is read (tests/train/test_ensemble.py evaluates a trained ensemble with every
    method, end to end)."""
    from types import SimpleNamespace

    from medjax.config import build_config
    from medjax.train import loop, uncertainty_eval

    def refused(method, samples, *args):
        with pytest.raises(MedjaxError) as e:
            loop.evaluate(build_config("synthetic:segmentation", list(args)), str(tmp_path), uncertainty=method,
                          samples=samples)
        return str(e.value)

    assert "--samples 3 with --uncertainty ensemble" in refused("ensemble", 3, "--config.ensemble.size=2")
    assert "undoes flip, rot90 exactly but not affine" in refused("tta", None, "--config.augment.transforms=affine")
    assert "needs a run trained with config.ensemble.size > 1" in refused("ensemble", None)
    assert "mc_dropout needs dropout" in refused("mc_dropout", None)
    assert "unknown --uncertainty 'bald'" in refused("bald", None)
    regression = SimpleNamespace(task=SimpleNamespace(kind="mean"), config=build_config("synthetic:segmentation", []))
    with pytest.raises(MedjaxError, match="needs a classification or segmentation task"):
        uncertainty_eval.check(regression, "tta", None)


def test_classification_section_scores_the_mean_prediction(tmp_path):
    """TTA on a (fresh) classifier: the section's metrics and referral rows are those of its mean prediction."""
    from medjax.config import build_config
    from medjax.train import loop, uncertainty_eval

    config = build_config("synthetic:classification", ["--config.augment.transforms=flip,gamma"])
    s = loop.setup(config, str(tmp_path))
    section = uncertainty_eval.evaluate(s, s.initial_state(), "val", "tta", 2)
    rows = section["referral"]["entropy"]
    assert (section["method"], section["samples"], section["members"]) == ("tta", 2, 1)
    assert set(rows[0]) == {"fraction", "retained", "acc", "auc"}
    assert rows[0]["acc"] == pytest.approx(section["metrics"]["acc"]) and rows[0]["retained"] == 10
    assert rows[0]["auc"] == pytest.approx(section["metrics"]["auc"])
    # calibration of the mean prediction: its NLL is the task's loss of the mean logits
    assert set(section["calibration"]) == {"ece", "ece_mass", "mce", "brier", "nll"}
    assert section["calibration"]["nll"] == pytest.approx(section["metrics"]["loss"], rel=1e-5)
    assert section["plots"] == ["plots/uncertainty_referral_val.png"]
    assert 0 <= section["mean_mutual_information"] <= section["mean_entropy"] <= math.log(3)
