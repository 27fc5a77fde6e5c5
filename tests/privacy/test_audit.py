"""The loss-threshold membership-inference attack: its AUC against scikit-learn, by hand, and on a trained run."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medjax.errors import MedjaxError
from medjax.privacy import audit


def test_attack_auc_is_sklearns_on_negated_losses():
    gen = np.random.default_rng(0)
    members, others = gen.exponential(0.5, 40), gen.exponential(1.0, 60)
    others[:5] = members[:5]  # ties count half
    labels = np.r_[np.ones(40), np.zeros(60)]
    expected = roc_auc_score(labels, -np.r_[members, others])
    assert audit.loss_threshold_auc(members, others) == pytest.approx(expected, abs=1e-12)


def test_attack_auc_by_hand():
    # member losses 0.1, 0.5; non-member 0.3, 0.5, 0.9: of the 6 pairs the member is lower in 0.1<0.3, 0.1<0.5,
    # 0.1<0.9, 0.5<0.9 (4) and tied in 0.5=0.5 (half): (4 + 0.5) / 6
    assert audit.loss_threshold_auc([0.1, 0.5], [0.3, 0.5, 0.9]) == pytest.approx(4.5 / 6)
    with pytest.raises(MedjaxError, match="needs members and non-members, got 2 and 0"):
        audit.loss_threshold_auc([0.1, 0.5], [])


def test_experiment_tiny_trains_evaluates_and_audits(tmp_path):
    """`python -m experiments.dp_icbm152 --tiny` on one DP arm: epsilon within the budget, the attack scored on the
    real per-example losses of train vs test, the table written."""
    from experiments import dp_icbm152
    from medjax.config import build_config
    from medjax.train import loop

    results = dp_icbm152.main(["--tiny", "--out", str(tmp_path), "--arms", "eps8", "--rounds", "1"])
    (row,) = results["rows"]
    assert row["epsilon"] <= 8.0 and row["epsilon"] == pytest.approx(8.0, rel=0.01)  # sigma solved for 4 steps
    assert row["padded_batch_size"] == 32  # the tiny variant's: never cut
    eval_json = json.loads((tmp_path / "eps8" / "eval.json").read_text())
    assert eval_json["epsilon"] == row["epsilon"] and eval_json["acc"] == row["acc"]
    # the attack's numbers are the per-example losses of the restored model, recomputed here by the eval step
    config = build_config("dp_icbm152:eps8,tiny", [f"--config.data.root={tmp_path / 'patches.npz'}"])
    s = loop.setup(config, str(tmp_path / "eps8"))
    state = s.strategy.from_canonical(loop.restore_checkpoint(s, str(tmp_path / "eps8"), "latest")[0])
    assert row["member_loss"] == pytest.approx(loop.evaluate_split(s, state, "train")["loss"], rel=1e-5)
    assert row["nonmember_loss"] == pytest.approx(loop.evaluate_split(s, state, "val")["loss"], rel=1e-5)
    assert (len(s.splits["train"]["image"]), len(s.splits["val"]["image"])) == (30, 30)
    assert f"| eps8 | {row['epsilon']:.2f} | {row['noise_multiplier']:.3f} |" in results["table"]
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert row["cpu_ms"] > 0 and "cpu_ratio" not in row  # timed, but no non-private arm to compare with
