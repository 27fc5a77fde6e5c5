"""The training loop end to end in-process: outputs on disk, best/latest checkpoints, eval, divergence."""

import json

import jax
import numpy as np
import pytest

from medjax.train import loop
from medjax.train.logging import read_records
from tests.train.helpers import sklearn_classification_metrics, synthetic_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import REPO

    workdir = tmp_path_factory.mktemp("run")
    config = synthetic_config(REPO)
    val = loop.train(config, str(workdir))
    return config, workdir, val


def test_outputs_on_disk(trained):
    config, workdir, val = trained
    records = read_records(workdir / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [2, 4, 6, 8, 10, 12]  # log_every=2
    assert [r["step"] for r in records if r["split"] == "val"] == [4, 8, 12]
    assert all({"loss", "grad_norm", "img_per_s"} <= set(r) for r in records if r["split"] == "train")
    assert {"dice_mean", "dice/class0", "dice/class1", "dice/class2"} <= set(val)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "plots" / "training_curves.png").stat().st_size > 1000
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [8, 12]
    assert len([p for p in (workdir / "best").iterdir() if p.name.isdigit()]) == 1


def test_loss_decreases(trained):
    _, workdir, _ = trained
    losses = [r["loss"] for r in read_records(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0]


def test_evaluate_best_writes_flat_json(trained):
    config, workdir, val = trained
    best_step = max((r for r in read_records(workdir / "metrics.jsonl") if r["split"] == "val"),
                    key=lambda r: r["dice_mean"])["step"]
    result = loop.evaluate(config, str(workdir))
    on_disk = json.loads((workdir / "eval.json").read_text())
    assert on_disk == result
    assert result["step"] == best_step and result["checkpoint"] == "best" and result["split"] == "test"
    assert all(isinstance(v, (int, float, str)) for v in result.values())
    assert 0.0 <= result["dice_mean"] <= 1.0
    assert (workdir / "plots" / "test_predictions.png").exists()
    # The val split scored through evaluate equals what training logged at that step.
    again = loop.evaluate(config, str(workdir), split="val")
    logged = next(r for r in read_records(workdir / "metrics.jsonl") if r["split"] == "val" and r["step"] == best_step)
    assert again["dice_mean"] == pytest.approx(logged["dice_mean"], rel=1e-6)


def test_rerun_of_finished_run_is_a_no_op(trained):
    config, workdir, _ = trained
    before = (workdir / "metrics.jsonl").read_text()
    loop.train(config, str(workdir))
    assert (workdir / "metrics.jsonl").read_text() == before


def test_classification_run(repo, tmp_path):
    """evaluate()'s accuracy, AUC and loss equal scikit-learn's on the restored model's own test predictions."""
    config = synthetic_config(repo, "classification")
    val = loop.train(config, str(tmp_path))
    assert set(val) == {"acc", "auc", "loss"}
    result = loop.evaluate(config, str(tmp_path))
    reference = sklearn_classification_metrics(config, tmp_path)
    assert result["step"] == reference["step"] == config.num_train_steps
    assert result["acc"] == pytest.approx(reference["acc"], abs=1e-7)
    assert result["auc"] == pytest.approx(reference["auc"], abs=1e-6)
    assert result["loss"] == pytest.approx(reference["loss"], rel=1e-4)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(repo, tmp_path):
    config = synthetic_config(repo, "classification", "--config.optimizer.name=sgd",
                              "--config.optimizer.learning_rate=1e30", "--config.num_train_steps=40",
                              "--config.checkpoint_every=1", "--config.eval_every=1000")
    with pytest.raises(loop.TrainingDiverged, match=r"non-finite loss .* at step (\d+)") as info:
        loop.train(config, str(tmp_path))
    bad_step = int(info.value.args[0].split("at step ")[1].split(";")[0])
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] == bad_step - 1
    s = loop.setup(config, str(tmp_path))
    state, _, step, _ = s.checkpoints(read_only=True).restore(s.abstract_state())
    assert step == bad_step - 1
    leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]
    assert all(np.isfinite(x).all() for x in leaves)
    assert f"at step {bad_step}" in str(info.value) and f"step {bad_step - 1}" in str(info.value)


def test_timing_and_wall_clock_records(trained):
    """timing.json accounts for the run (its parts add up to at most the total) and every record has wall_s,
    increasing with the step; validation records also carry their own eval_s."""
    _, workdir, _ = trained
    timing = json.loads((workdir / "timing.json").read_text())
    parts = ("setup_s", "first_step_s", "train_s", "eval_s", "checkpoint_s", "finish_s")
    assert timing["steps"] == 12 and all(timing[k] >= 0 for k in parts)
    assert sum(timing[k] for k in parts) <= timing["total_s"] + 1e-6
    assert timing["first_step_s"] > 0 and timing["eval_s"] > 0
    records = read_records(workdir / "metrics.jsonl")
    walls = [r["wall_s"] for r in records]
    assert walls == sorted(walls) and walls[-1] <= timing["total_s"]
    assert all(0 < r["eval_s"] <= r["wall_s"] for r in records if r["split"] == "val")


def test_best_checkpoint_is_not_written_when_the_metric_got_worse(tmp_path):
    """Only improvements (or ties) reach Orbax: a worse value costs no write; the best step stays."""
    import jax.numpy as jnp

    from medjax.train.checkpoint import Checkpoints

    ck = Checkpoints(str(tmp_path), max_to_keep=1, best_metric="auc", best_mode="max")
    state = {"w": jnp.arange(3.0)}
    written = []
    original = ck.best.save
    ck.best.save = lambda step, **kw: written.append(step) or original(step, **kw)
    for step, auc in ((1, 0.5), (2, 0.7), (3, 0.6), (4, 0.7), (5, 0.65)):
        ck.save_best(step, state, {"position": step}, {"auc": auc})
    ck.wait()
    assert written == [1, 2, 4]
    assert ck.best.best_step() in (2, 4)
    ck.close()
