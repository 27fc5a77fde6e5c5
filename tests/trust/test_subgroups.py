"""Subgroup analysis: the metadata join, fairlearn parity of the point values, bootstrap intervals against a numpy
reference (percentile, same resamples) and scipy.stats.bootstrap (BCa, same resamples)."""

import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.trust import calibration
from medjax.trust import subgroups as sg


def _csv(tmp_path, text):
    path = tmp_path / "meta.csv"
    path.write_text(text)
    return str(path)


def test_join_groups_and_its_errors(tmp_path):
    path = _csv(tmp_path, "case,sex,site\nc1,F,A\nc2,M,\nc3,F,B\nother,M,A\n")
    assert sg.join_groups(path, ["c3", "c1", "c2"], "test") == {"sex": ["F", "F", "M"], "site": ["B", "A", "(missing)"]}
    assert sg.join_groups(path, ["c1"], "test", [" site"]) == {"site": ["A"]}
    with pytest.raises(MedjaxError, match=r"lacks 2 of the 3 cases of the test split: c4, c5 \("):
        sg.join_groups(path, ["c1", "c4", "c5"], "test")
    with pytest.raises(MedjaxError, match="has no column 'age'; its group columns: sex, site"):
        sg.join_groups(path, ["c1"], "test", ["sex", "age"])
    with pytest.raises(MedjaxError, match=r"lists case 'c1' twice \(lines 2 and 3\)"):
        sg.join_groups(_csv(tmp_path, "case,sex\nc1,F\nc1,M\n"), ["c1"], "test")
    with pytest.raises(MedjaxError, match="header must be case,<group columns>"):
        sg.join_groups(_csv(tmp_path, "id,sex\nc1,F\n"), ["c1"], "test")
    with pytest.raises(MedjaxError, match="not found"):
        sg.join_groups(str(tmp_path / "absent.csv"), ["c1"], "test")


def _binary(n=240, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p1 = np.clip(0.35 * labels + rng.uniform(0, 0.65, n), 0, 1).astype(np.float32)
    groups = np.asarray(["a", "b", "c"])[rng.choice(3, n, p=[0.45, 0.4, 0.15])]
    return np.stack([1 - p1, p1], 1), labels, groups


def test_point_values_match_fairlearn():
    import fairlearn.metrics as fm
    from sklearn.metrics import accuracy_score, roc_auc_score

    probs, labels, groups = _binary()
    pred = probs.argmax(1)
    metrics, cases = sg.classification_metrics(probs, labels, n_bins=10)
    report = sg.analyze(metrics, cases, {"g": groups}, n_resamples=50)["g"]
    frame = fm.MetricFrame(metrics={"accuracy": accuracy_score, "tpr": fm.true_positive_rate,
                                    "fpr": fm.false_positive_rate, "selection_rate": fm.selection_rate},
                           y_true=labels, y_pred=pred, sensitive_features=groups)
    for g in "abc":
        got = {k: v["value"] for k, v in report["groups"][g]["metrics"].items()}
        for k in ("accuracy", "tpr", "fpr", "selection_rate"):
            assert got[k] == pytest.approx(frame.by_group.loc[g, k], abs=1e-6)
        m = groups == g
        assert got["auc"] == pytest.approx(roc_auc_score(labels[m], probs[m, 1]), abs=1e-6)
        conf, correct = calibration.top_label(probs[m], labels[m])
        assert got["ece"] == pytest.approx(float(calibration.calibration_error(conf, correct, 10)), abs=1e-6)
        assert report["groups"][g]["n"] == m.sum()
    gaps = {k: v["value"] for k, v in report["gaps"].items()}
    kw = dict(y_true=labels, y_pred=pred, sensitive_features=groups)
    for name in ("demographic_parity_difference", "demographic_parity_ratio", "equal_opportunity_difference",
                 "equal_opportunity_ratio", "equalized_odds_difference", "equalized_odds_ratio"):
        assert gaps[name] == pytest.approx(getattr(fm, name)(**kw), abs=1e-6), name
    assert gaps["accuracy_difference"] == pytest.approx(frame.difference()["accuracy"], abs=1e-6)
    assert gaps["fpr_ratio"] == pytest.approx(frame.ratio()["fpr"], abs=1e-6)
    accuracy = frame.by_group["accuracy"]
    assert report["worst"]["accuracy"] == {"group": accuracy.idxmin(), "value": pytest.approx(accuracy.min())}
    assert report["worst"]["fpr"]["group"] == frame.by_group["fpr"].idxmax()  # lower is better
    assert "selection_rate" not in report["worst"]


def test_multiclass_auc_and_undefined_groups():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = np.r_[rng.integers(0, 3, 60), [0, 0, 1]]
    probs = rng.dirichlet(np.ones(3), len(labels)).astype(np.float32)
    groups = ["x"] * 30 + ["y"] * 30 + ["z"] * 3  # z has no case of class 2: AUC undefined there
    metrics, cases = sg.classification_metrics(probs, labels)
    assert [m.name for m in metrics] == ["auc", "accuracy", "ece"]  # no TPR / FPR for three classes
    report = sg.analyze(metrics, cases, {"g": groups}, n_resamples=40, min_cases=5)["g"]
    for g, rows in (("x", slice(0, 30)), ("y", slice(30, 60))):
        assert report["groups"][g]["metrics"]["auc"]["value"] == pytest.approx(
            roc_auc_score(labels[rows], probs[rows], multi_class="ovr"), abs=1e-6)
    z = report["groups"]["z"]["metrics"]
    assert z["auc"] == {"value": None, "ci_percentile": None, "ci_bca": None,
                        "reason": "AUC needs a positive and a negative case of every class"}
    assert z["accuracy"]["value"] == pytest.approx(np.mean(probs[60:].argmax(1) == labels[60:]))
    assert z["accuracy"]["reason"] == "3 cases, fewer than min_group_cases=5: no bootstrap CI"
    # gaps span the groups where the metric is defined (fairlearn's skipna); a small group voids the interval
    aucs = [report["groups"][g]["metrics"]["auc"]["value"] for g in "xy"]
    assert report["gaps"]["auc_difference"]["value"] == pytest.approx(max(aucs) - min(aucs), abs=1e-6)
    assert report["gaps"]["auc_difference"]["ci_percentile"] is not None
    assert report["gaps"]["accuracy_ratio"]["reason"] == "group 'z': 3 cases, fewer than min_group_cases=5: no " \
                                                         "bootstrap CI"


def _dice_data():
    rng = np.random.default_rng(0)
    dice = rng.beta(5, 2, 40)
    dice[3] = np.nan  # a case without a defined Dice is left out of its group's mean
    return dice, ["a"] * 18 + ["b"] * 22


def _group_mean(dice, idx):
    return np.nanmean(dice.astype(np.float32).astype(np.float64)[idx], axis=-1)


def test_percentile_interval_matches_numpy_on_the_same_resamples():
    dice, groups = _dice_data()
    metrics, cases = sg.segmentation_metrics(dice)
    report = sg.analyze(metrics, cases, {"g": groups}, n_resamples=200, confidence_level=0.9, seed=3)["g"]
    rng = np.random.default_rng(3)  # the documented draws: per group in order, rng.integers(0, n_g, (B, n_g))
    a, b = rng.integers(0, 18, (200, 18)), 18 + rng.integers(0, 22, (200, 22))
    means = {"a": _group_mean(dice, a), "b": _group_mean(dice, b)}
    for g in "ab":
        entry = report["groups"][g]["metrics"]["dice_mean"]
        np.testing.assert_allclose(entry["ci_percentile"], np.percentile(means[g], [5, 95]), atol=1e-6)
    diff = np.abs(means["a"] - means["b"])
    np.testing.assert_allclose(report["gaps"]["dice_mean_difference"]["ci_percentile"], np.percentile(diff, [5, 95]),
                               atol=1e-6)


def test_bca_matches_scipy_on_the_same_resamples():
    from scipy import stats

    dice, groups = _dice_data()
    metrics, cases = sg.segmentation_metrics(dice)
    report = sg.analyze(metrics, cases, {"g": groups}, n_resamples=300, seed=4)["g"]
    mean = lambda i, axis=-1: _group_mean(dice, i)  # noqa: E731
    statistics = {  # scipy resamples the samples (group a, group b) in order from one rng: the same draws
        "a": (lambda a, b, axis=-1: mean(a), report["groups"]["a"]["metrics"]["dice_mean"]),
        "b": (lambda a, b, axis=-1: mean(b), report["groups"]["b"]["metrics"]["dice_mean"]),
        "difference": (lambda a, b, axis=-1: np.abs(mean(a) - mean(b)), report["gaps"]["dice_mean_difference"]),
        "ratio": (lambda a, b, axis=-1: np.minimum(mean(a), mean(b)) / np.maximum(mean(a), mean(b)),
                  report["gaps"]["dice_mean_ratio"]),
    }
    for name, (statistic, entry) in statistics.items():
        ref = stats.bootstrap((np.arange(18), np.arange(18, 40)), statistic, n_resamples=300, method="BCa",
                              rng=np.random.default_rng(4))
        # float32 statistics against scipy's float64: the same order statistics, interpolated
        np.testing.assert_allclose(entry["ci_bca"], ref.confidence_interval, atol=2e-6, err_msg=name)
        assert entry["value"] == pytest.approx(statistic(np.arange(18), np.arange(18, 40)), abs=1e-6)
