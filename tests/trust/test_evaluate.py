"""`medjax evaluate --calibrate --subgroups` end to end on a tiny trained run, checked against the same numbers
computed directly from the restored model; the segmentation path (sampled voxels, per-case Dice) on an untrained
U-Net; bad metadata as one line and exit status 2."""

import json

import jax
import numpy as np
import pytest

from medjax import cli, metrics
from medjax.config import build_config
from medjax.tasks.base import apply_model
from medjax.train import loop, trust_eval
from medjax.train.parallel import replicated_to_host
from medjax.trust import calibration

# synthetic:classification's own model and batch shapes (tests/train compile the same programs)
OVERRIDES = ["--config.num_train_steps=4", "--config.data.num_eval=30", "--config.trust.bootstrap_resamples=100"]
SITES = "AAAAAAAAAAAABBBBBBBBBBBBCCCCCC"  # 12, 12 and 6 cases: C is too small for an interval


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trust")
    loop.train(build_config("synthetic:classification", OVERRIDES), str(workdir))
    meta = workdir.parent / "meta.csv"
    meta.write_text("case,sex,site,scanner\n" + "".join(f"{i},{'FM'[i % 2]},{SITES[i]},s{i % 3}\n" for i in range(30))
                    + "999,F,A,s0\n")  # a case of no evaluated split: ignored
    return workdir, str(meta)


def _direct(workdir):
    """{split: (logits, labels)} of val and test from the best checkpoint, computed outside the evaluation loop."""
    s = loop.setup(build_config("synthetic:classification", OVERRIDES), str(workdir))
    canonical, _, _ = loop.restore_checkpoint(s, str(workdir))
    variables = replicated_to_host((canonical.params, canonical.batch_stats))
    forward = jax.jit(lambda v, x: apply_model(s.task.model, *v, x, train=False)[0])
    return {split: (np.asarray(forward(variables, s.splits[split]["image"]), np.float32),
                    np.asarray(s.splits[split]["label"]).reshape(-1)) for split in ("val", "test")}


def test_evaluate_calibrate_and_subgroups(run, capsys):
    from sklearn.metrics import roc_auc_score

    workdir, meta = run
    assert cli.main(["evaluate", "--config", "synthetic:classification", "--workdir", str(workdir), *OVERRIDES,
                     "--calibrate", "--subgroups", meta, "--group-columns", "site,sex"]) == 0
    result = json.loads((workdir / "eval.json").read_text())
    assert json.loads(capsys.readouterr().out) == result

    direct = _direct(workdir)
    (val_logits, val_labels), (logits, labels) = direct["val"], direct["test"]
    temperature = calibration.fit_temperature(val_logits, val_labels)
    assert result["temperature"] == pytest.approx(temperature, rel=1e-4)
    expected = calibration.scores(logits, labels)
    expected.update({f"{k}_calibrated": v for k, v in calibration.scores(logits / temperature, labels).items()})
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=2e-5), key
    assert result["calibration_samples"] == 30
    saved = json.loads((workdir / "calibration.json").read_text())
    assert saved["temperature"] == result["temperature"] and saved["fit_split"] == "val"
    assert saved["fit_samples"] == 30 and saved["step"] == result["step"]
    assert saved["nll_calibrated"] <= saved["nll"]  # the fit minimises the val NLL
    assert (workdir / "plots" / "reliability_test.png").stat().st_size > 5000
    assert (workdir / "plots" / "subgroups_test.png").stat().st_size > 5000

    sub = result["subgroups"]
    assert sub["metadata"] == meta and sub["n_resamples"] == 100 and sub["min_cases"] == 10
    assert set(sub["columns"]) == {"site", "sex"}  # --group-columns: scanner is not analysed
    probs = np.asarray(jax.nn.softmax(logits), np.float64)
    probs /= probs.sum(-1, keepdims=True)
    sites = np.asarray(list(SITES))
    site = sub["columns"]["site"]
    assert set(site["groups"]["A"]["metrics"]) == {"auc", "accuracy", "ece"}  # three classes: no TPR / FPR
    for g in "ABC":
        m = sites == g
        got = site["groups"][g]["metrics"]
        assert site["groups"][g]["n"] == m.sum()
        assert got["accuracy"]["value"] == pytest.approx(np.mean(probs[m].argmax(1) == labels[m]), abs=1e-6)
        conf, correct = calibration.top_label(probs[m].astype(np.float32), labels[m])
        assert got["ece"]["value"] == pytest.approx(float(calibration.calibration_error(conf, correct, 15)), abs=2e-5)
        if len(set(labels[m])) == 3:
            assert got["auc"]["value"] == pytest.approx(roc_auc_score(labels[m], probs[m], multi_class="ovr"),
                                                        abs=1e-5)
        else:
            assert got["auc"]["value"] is None and got["auc"]["reason"].startswith("AUC needs")
    assert site["groups"]["C"]["metrics"]["accuracy"]["ci_percentile"] is None
    assert site["groups"]["C"]["metrics"]["accuracy"]["reason"].startswith("6 cases, fewer than min_group_cases=10")
    assert site["groups"]["A"]["metrics"]["accuracy"]["ci_percentile"] is not None
    accuracy = [site["groups"][g]["metrics"]["accuracy"]["value"] for g in "ABC"]
    assert site["gaps"]["accuracy_difference"]["value"] == pytest.approx(max(accuracy) - min(accuracy), abs=1e-6)
    assert site["worst"]["accuracy"] == {"group": "ABC"[int(np.argmin(accuracy))], "value": min(accuracy)}


@pytest.mark.parametrize("csv, message", [
    ("case,site\n0,A\n1,B\n", "lacks 28 of the 30 cases of the test split: 2, 3, 4, 5, 6 ..."),
    ("case,site\n" + "".join(f"{i},A\n" for i in range(30)) + "4,B\n", "lists case '4' twice (lines 6 and 32)"),
])
def test_bad_metadata_is_one_line_and_exit_2(run, tmp_path, capsys, csv, message):
    workdir, _ = run
    path = tmp_path / "bad.csv"
    path.write_text(csv)
    argv = ["evaluate", "--config", "synthetic:classification", "--workdir", str(workdir), *OVERRIDES,
            "--subgroups", str(path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert cli.main([*argv[:-1], meta_path := str(run[1]), "--group-columns", "site,age"]) == 2
    assert f"{meta_path} has no column 'age'; its group columns: sex, site, scanner" in capsys.readouterr().err


def test_segmentation_samples_voxels_and_scores_cases(tmp_path):
    """Voxels drawn per case with the seed (config.seed, case index), the model's own logits there; per-case Dice
    as eval_cases.json has it; sliding windows over the whole image sample the same probabilities."""
    overrides = ["--config.data.num_eval=6", "--config.trust.voxels_per_case=50"]
    s = loop.setup(build_config("synthetic:segmentation", overrides), str(tmp_path))
    state = s.initial_state()
    found = trust_eval.predictions(s, state, {"test"})["test"]
    variables = replicated_to_host((state.params, state.batch_stats))
    test = s.splits["test"]
    logits = np.asarray(jax.jit(lambda v, x: apply_model(s.task.model, *v, x, train=False)[0])(variables,
                                                                                                test["image"]))
    picks = [np.sort(np.random.default_rng([0, i]).choice(256, 50, replace=False)) for i in range(6)]
    np.testing.assert_allclose(found["logits"], np.concatenate([lg.reshape(256, 3)[p] for lg, p in zip(logits, picks)]),
                               atol=1e-5)
    np.testing.assert_array_equal(found["labels"], np.concatenate([y.reshape(-1)[p] for y, p in zip(test["label"],
                                                                                                      picks)]))
    pred = logits.argmax(-1)
    dice = [metrics.mean_foreground_dice([2 * ((p == c) & (y == c)).sum() / ((p == c).sum() + (y == c).sum())
                                          if ((p == c).sum() + (y == c).sum()) else np.nan for c in range(3)])
            for p, y in zip(pred, test["label"])]
    np.testing.assert_allclose(found["dice"], dice, atol=1e-6)

    windows = loop.setup(build_config("synthetic:segmentation", [*overrides, "--config.inference.roi_size=(16,16)"]),
                         str(tmp_path))
    by_window = trust_eval.predictions(windows, state, {"test"})["test"]
    np.testing.assert_allclose(jax.nn.softmax(by_window["logits"]), jax.nn.softmax(found["logits"]), atol=1e-5)
    np.testing.assert_allclose(by_window["dice"], found["dice"], atol=1e-6)

    req = trust_eval.Request(False, str(tmp_path / "meta.csv"), {"site": ["A", "B"] * 3})
    out = trust_eval.report(s, s.strategy.to_canonical(state), 0, "latest", "test", req)
    group = out["subgroups"]["columns"]["site"]["groups"]["A"]["metrics"]["dice_mean"]
    assert group["value"] == pytest.approx(np.nanmean(np.asarray(dice)[::2]), abs=1e-6)
    assert group["reason"] == "3 cases, fewer than min_group_cases=10: no bootstrap CI"
