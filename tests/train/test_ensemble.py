"""Deep ensembles as one vmapped program: member k is the run of seed + k (initialisation, data order, dropout),
under jit + sharding and pmap alike, with an exact resume; `medjax evaluate --uncertainty` on the trained run."""

import json
import math

import jax
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.train import loop
from medjax.train.parallel import replicated_to_host
from tests.train.helpers import assert_trees_close, synthetic_config, train_steps

STEPS = 3
# SGD (see test_parallel); dropout, so the members' dropout keys are checked too (augmentation keys come from the
# same per-member step key).
COMMON = ("--config.optimizer.name=sgd", "--config.optimizer.learning_rate=0.1", "--config.model.dropout_rate=0.2",
          "--config.seed=3", "--config.eval_every=100", "--config.checkpoint_every=2")


def _run(config, workdir, steps=STEPS):
    """`steps` steps of the setup's own stream and step (what train() runs); (host state, metrics, setup)."""
    s = loop.setup(config, str(workdir))
    state, history, _ = train_steps(s, s.train_stream(), steps)
    return state, history, s


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    config = synthetic_config(None, "segmentation", *COMMON, "--config.ensemble.size=2")
    return _run(config, tmp_path_factory.mktemp("ensemble"))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The same ensemble trained by `train` to step 2 (a checkpoint), then resumed to step 3."""
    workdir = str(tmp_path_factory.mktemp("resumed"))
    args = (*COMMON, "--config.ensemble.size=2")
    loop.train(synthetic_config(None, "segmentation", *args, "--config.num_train_steps=2"), workdir)
    loop.train(synthetic_config(None, "segmentation", *args, f"--config.num_train_steps={STEPS}"), workdir)
    return workdir, args


def test_two_members_equal_two_separate_runs(ensemble_run, tmp_path):
    """THE property: one vmapped program trains exactly what two runs of seeds 3 and 4 train."""
    state, history, s = ensemble_run
    assert s.members == 2 and state.params["final_conv"]["kernel"].shape[0] == 2
    losses = []
    for k, seed in enumerate((3, 4)):
        single, single_history, _ = _run(synthetic_config(None, "segmentation", *COMMON, f"--config.seed={seed}"),
                                         tmp_path / str(seed))  # the last --config.seed wins
        member = jax.tree.map(lambda x: x[k], state)  # noqa: B023
        assert_trees_close(member.params, single.params, rtol=1e-5, atol=1e-5)
        assert_trees_close(member.batch_stats, single.batch_stats, rtol=1e-5, atol=1e-5)
        assert int(member.step) == STEPS
        losses.append([h["loss"] for h in single_history])
    losses = np.array(losses)  # (members, steps)
    np.testing.assert_allclose([h["loss"] for h in history], losses.mean(0), rtol=1e-5)
    np.testing.assert_allclose([h["loss_member_std"] for h in history], losses.std(0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(losses[0], losses[1])  # the members differ: independent init and data order


def test_pmap_equals_sharding(ensemble_run, tmp_path):
    config = synthetic_config(None, "segmentation", *COMMON, "--config.ensemble.size=2",
                              "--config.parallel.strategy=pmap")
    pmapped, history, _ = _run(config, tmp_path)
    sharded, sharded_history, _ = ensemble_run
    assert_trees_close(pmapped.params, sharded.params, rtol=1e-5, atol=1e-5)
    assert_trees_close(pmapped.batch_stats, sharded.batch_stats, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in sharded_history], rtol=1e-5)


def test_stream_gives_each_member_its_seeds_order(ensemble_run):
    _, _, s = ensemble_run
    stream = s.train_stream()
    batch = stream.batch_at(8)
    assert batch["image"].shape == (8, 2, 16, 16, 1) and batch["index"].shape == (8, 2)
    for k, seed in enumerate((3, 4)):
        single = type(stream)(s.splits["train"], 8, slice(0, 8), seed).batch_at(8)
        np.testing.assert_array_equal(batch["image"][:, k], single["image"])
        np.testing.assert_array_equal(batch["label"][:, k], single["label"])
    stream.position = 16
    assert stream.get_state() == {"position": 16, "seed": 3, "num_examples": 24, "members": 2}
    with pytest.raises(MedjaxError, match="2 ensemble members"):
        stream.set_state({"position": 16, "seed": 3, "num_examples": 24})  # a plain run's checkpoint


def test_resume_is_exact(ensemble_run, resumed):
    workdir, args = resumed
    s = loop.setup(synthetic_config(None, "segmentation", *args), workdir)
    state, step, _ = loop.restore_checkpoint(s, workdir, "latest")
    assert step == STEPS
    jax.tree.map(np.testing.assert_array_equal, replicated_to_host(state), ensemble_run[0])


@pytest.mark.parametrize("method", ["ensemble", "tta"])  # mc_dropout: tests/inference/test_predictive.py
def test_evaluate_uncertainty(resumed, method):
    """`medjax evaluate --uncertainty METHOD` on the ensemble: eval.json's section, its referral curves, plots."""
    from medjax.cli import main
    from medjax.trust.uncertainty import REFERRAL_FRACTIONS

    workdir, args = resumed
    extra = {"ensemble": [], "mc_dropout": ["--samples", "2"],
             "tta": ["--samples", "3", "--config.augment.transforms=flip,rot90"]}[method]
    assert main(["evaluate", "--config", "synthetic:segmentation", "--workdir", workdir, "--split", "val",
                 "--uncertainty", method, *extra, *args]) == 0
    with open(f"{workdir}/eval.json") as f:
        result = json.load(f)
    section = result["uncertainty"]
    assert (section["method"], section["samples"], section["members"]) == (method, {"tta": 3}.get(method, 2), 2)
    assert set(section) == {"method", "samples", "members", "metrics", "mean_entropy", "mean_mutual_information",
                            "referral", "plots"}
    assert set(section["referral"]) == {"entropy", "mutual_information"}
    rows = section["referral"]["entropy"]
    assert [r["fraction"] for r in rows] == list(REFERRAL_FRACTIONS)
    assert [r["retained"] for r in rows] == [10, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5]  # of the 10 validation cases
    assert 0 < section["mean_mutual_information"] < section["mean_entropy"] < math.log(3)
    assert section["plots"] == ["plots/uncertainty_referral_val.png", "plots/uncertainty_val.png"]
    if method == "ensemble":  # the members' mean prediction is what plain evaluation scores too, case by case
        assert section["metrics"]["dice_mean"] == pytest.approx(result["dice_mean"], rel=1e-6)
        with open(f"{workdir}/eval_cases.json") as f:
            cases = json.load(f)["cases"]
        foreground = [[c[k] for k in c if k.startswith("dice/")][1:] for c in cases]
        case_dice = [np.mean([d for d in f if d is not None]) for f in foreground if any(d is not None for d in f)]
        assert rows[0]["dice"] == pytest.approx(np.mean(case_dice), rel=1e-6)


def test_refused_combinations():
    from medjax.config import build_config

    with pytest.raises(MedjaxError, match=r"config.ensemble.size=2: ensembles train supervised tasks .* not 'gan'"):
        loop.setup(build_config("gan_synthetic", ["--config.ensemble.size=2"]), "x")
    with pytest.raises(MedjaxError, match="config.ensemble.size must be an integer >= 1"):
        loop.setup(synthetic_config(None, "segmentation", "--config.ensemble.size=0"), "x")
