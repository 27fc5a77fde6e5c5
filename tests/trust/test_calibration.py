"""Calibration metrics: hand-computed values, torchmetrics / scikit-learn parity, temperature scaling."""

import jax
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.trust import calibration

CONF = np.float32([0.1, 0.3, 0.35, 0.8, 0.95, 1.0])
CORRECT = np.float32([0, 1, 0, 1, 1, 0])


def test_ece_mce_by_hand():
    # 2 equal-width bins [0, .5) {.1 .3 .35}: acc 1/3, conf .25; [.5, 1) {.8 .95}: acc 1, conf .875; and 1.0
    # alone (torchmetrics' bucketize): acc 0, conf 1 -> ECE = 3/6 * 1/12 + 2/6 * 1/8 + 1/6 * 1 = 0.25, MCE = 1
    assert float(calibration.calibration_error(CONF, CORRECT, 2)) == pytest.approx(0.25, abs=1e-7)
    assert float(calibration.calibration_error(CONF, CORRECT, 2, norm="max")) == pytest.approx(1.0)
    bins = calibration.bin_statistics(CONF, CORRECT, 2)
    np.testing.assert_allclose(bins["count"], [3, 2, 1])
    np.testing.assert_allclose(bins["confidence"], [0.25, 0.875, 1.0], rtol=1e-6)
    # 3 equal-mass bins: inner edges at ranks 2 and 4 (.35, .95): {.1 .3} {.35 .8} {.95 1.0}, accuracy 1/2 each
    # -> (2/6) * (|.5 - .2| + |.5 - .575| + |.5 - .975|) = 0.85 / 3
    assert float(calibration.calibration_error(CONF, CORRECT, 3, "mass")) == pytest.approx(0.85 / 3, abs=1e-7)
    # 10 distinct confidences in 3 equal-mass bins: ranks [0, 3), [3, 6), [6, 10); ties stay in one (the upper) bin
    ten = np.linspace(0.05, 0.95, 10, dtype=np.float32)
    np.testing.assert_allclose(calibration.bin_statistics(ten, np.ones(10), 3, "mass")["count"], [3, 3, 4])
    tied = np.float32([0.2, 0.2, 0.2, 0.9])
    np.testing.assert_allclose(calibration.bin_statistics(tied, np.ones(4), 2, "mass")["count"], [0, 4])
    # weights count an example that many times
    w = np.float32([2, 1, 1, 1, 1, 0])
    np.testing.assert_allclose(calibration.calibration_error(CONF, CORRECT, 2, weights=w),
                               calibration.calibration_error(CONF[[0, 0, 1, 2, 3, 4]], CORRECT[[0, 0, 1, 2, 3, 4]], 2))
    with pytest.raises(MedjaxError, match="binning"):
        calibration.bin_index(CONF, 2, "quantile")


def test_brier_and_nll_by_hand():
    probs = np.float32([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert float(calibration.brier(probs, np.int32([0, 1]))) == pytest.approx((0.14 + 1.46) / 2)
    # two classes: the binary Brier score of class 1 (half the sum over classes)
    assert float(calibration.brier(np.float32([[0.8, 0.2], [0.4, 0.6]]), np.int32([0, 0]))) == pytest.approx(0.2)
    assert float(calibration.nll(np.float32([[0.0, np.log(3.0)]]), np.int32([1]))) == pytest.approx(-np.log(0.75))
    assert float(calibration.nll(np.float32([[0.0], [np.log(3.0)]]), np.float32([[1], [0]]))) == pytest.approx(
        (np.log(2.0) + np.log(4.0)) / 2)


def _logits(n, c, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, (n, c)).astype(np.float32), rng.integers(0, c, n)


def test_torchmetrics_parity_with_confidence_one():
    import torch
    from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

    logits, labels = _logits(400, 4, 0)
    probs = np.array(jax.nn.softmax(logits))
    eye = np.eye(4, dtype=np.float32)
    probs[:40] = eye[labels[:40]] * np.float32(0.95 - 0.05 / 3) + np.float32(0.05 / 3)  # 0.95, right: underconfident
    probs[40:55] = eye[labels[40:55]]  # confidence exactly 1.0, right
    probs[55:80] = eye[(labels[55:80] + 1) % 4]  # and wrong
    conf, correct = calibration.top_label(probs, labels)
    for n_bins in (10, 15):
        for norm in ("l1", "max"):
            expected = MulticlassCalibrationError(4, n_bins=n_bins, norm=norm)(torch.tensor(probs),
                                                                               torch.tensor(labels))
            got = calibration.calibration_error(conf, correct, n_bins, norm=norm)
            assert float(got) == pytest.approx(expected.item(), abs=1e-6)
    # 1.0 in a bin of its own matters: merged with the underconfident [0.9, 1) bin, ECE would be lower by far
    # more than the tolerance above
    merged = calibration.calibration_error(np.minimum(conf, np.float32(0.99)), correct, 10)
    assert float(calibration.calibration_error(conf, correct, 10)) - float(merged) > 5e-4

    rng = np.random.default_rng(1)
    p = rng.uniform(size=300).astype(np.float32)
    p[:12] = 1.0
    y = rng.integers(0, 2, 300)
    conf, correct = calibration.binary(p, y)
    for norm in ("l1", "max"):
        expected = BinaryCalibrationError(n_bins=15, norm=norm)(torch.tensor(p), torch.tensor(y))
        assert float(calibration.calibration_error(conf, correct, 15, norm=norm)) == pytest.approx(
            expected.item(), abs=1e-6)


def test_scores_match_scikit_learn():
    from sklearn.metrics import brier_score_loss, log_loss

    logits, labels = _logits(300, 5, 5)
    probs = np.asarray(jax.nn.softmax(logits), np.float64)
    probs /= probs.sum(-1, keepdims=True)
    s = calibration.scores(logits, labels, n_bins=15)
    assert s["brier"] == pytest.approx(brier_score_loss(labels, probs), abs=1e-6)
    assert s["nll"] == pytest.approx(log_loss(labels, probs), abs=1e-5)
    conf, correct = calibration.top_label(probs.astype(np.float32), labels)
    assert s["ece"] == pytest.approx(float(calibration.calibration_error(conf, correct, 15)), abs=1e-6)
    assert s["mce"] == pytest.approx(float(calibration.calibration_error(conf, correct, 15, norm="max")), abs=1e-6)
    assert s["ece_mass"] == pytest.approx(float(calibration.calibration_error(conf, correct, 15, "mass")), abs=1e-6)
    logits, _ = _logits(200, 3, 7)  # multi-label: every (example, label) pair is a binary prediction
    targets = (np.random.default_rng(7).uniform(size=(200, 3)) < 0.4).astype(np.float32)
    s = calibration.scores(logits, targets)
    p = np.asarray(jax.nn.sigmoid(logits), np.float64).reshape(-1)
    assert s["brier"] == pytest.approx(brier_score_loss(targets.reshape(-1), p), abs=1e-6)
    assert s["nll"] == pytest.approx(log_loss(targets.reshape(-1), p), abs=1e-5)


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_temperature_recovers_the_generating_temperature(t_true):
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, (20000, 5))
    p = np.exp(log_softmax(z, -1))
    labels = (p.cumsum(-1) < rng.uniform(size=(len(p), 1))).sum(-1)  # labels drawn from softmax(z)
    logits = (z * t_true).astype(np.float32)  # a model whose logits are the true ones times t_true
    t = calibration.fit_temperature(logits, labels)
    reference = minimize_scalar(lambda t: -log_softmax(logits / t, -1)[np.arange(len(labels)), labels].mean(),
                                bounds=(0.01, 100), method="bounded", options={"xatol": 1e-8}).x
    assert t == pytest.approx(reference, rel=1e-4)  # the NLL's minimiser
    assert t == pytest.approx(t_true, rel=0.03)  # maximum likelihood on 20000 draws: within its sampling error
    # all predictions right: the NLL falls as T -> 0, which stops at the lower bound
    assert calibration.fit_temperature(np.float32([[3.0, 0.0], [0.0, 2.0]]), np.int32([0, 1])) == pytest.approx(0.01)
