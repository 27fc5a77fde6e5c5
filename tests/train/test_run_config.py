"""WORKDIR/config.json is the resolved config of every run; resuming with another model or data is refused,
naming the key, unless config.resume_mismatch_ok; num_epochs and num_train_steps cannot both be set."""

import json

import pytest

from medjax.config import build_config
from medjax.errors import MedjaxError
from medjax.train import loop, run_config
from tests.train.helpers import synthetic_config

STEPS = ("--config.num_train_steps=2", "--config.eval_every=2", "--config.checkpoint_every=2",
         "--config.log_every=2", "--config.progress=False")


def test_config_json_is_the_resolved_config(repo, tmp_path):
    config = synthetic_config(repo, "classification", *STEPS, "--config.task.num_classes=0")
    loop.train(config, str(tmp_path))
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["num_train_steps"] == 2 and stored["resume_mismatch_ok"] is False
    assert stored["task"]["num_classes"] == 3  # 0 (from the data): resolved
    assert stored["model"] == json.loads(json.dumps(config.model.to_dict()))
    assert not list(tmp_path.glob("config.json.tmp"))


def test_resume_with_another_model_is_refused_naming_the_key(repo, tmp_path):
    loop.train(synthetic_config(repo, "segmentation", *STEPS), str(tmp_path))
    longer = ("--config.num_train_steps=4",)  # steps, intervals, learning rate may change on resume
    with pytest.raises(MedjaxError, match=r"config\.model\.features is \[4, 16\] but the run in .* was trained "
                                          r"with \[4, 8\] .*config\.json.*--config\.resume_mismatch_ok=True"):
        loop.train(synthetic_config(repo, "segmentation", *STEPS, *longer, "--config.model.features=(4,16)"),
                   str(tmp_path))
    loop.train(synthetic_config(repo, "segmentation", *STEPS, *longer, "--config.optimizer.learning_rate=0.5"),
               str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 4
    with pytest.raises(MedjaxError, match=r"config\.seed is 7 but the run .* was trained with 0"):
        loop.train(synthetic_config(repo, "segmentation", *STEPS, "--config.seed=7"), str(tmp_path))
    more = ("--config.num_train_steps=6", "--config.task.loss=ce")
    with pytest.raises(MedjaxError, match=r"config\.task\.loss is 'ce' but the run .* was trained with 'dice_ce'"):
        loop.train(synthetic_config(repo, "segmentation", *STEPS, *more), str(tmp_path))
    loop.train(synthetic_config(repo, "segmentation", *STEPS, *more, "--config.resume_mismatch_ok=True"),
               str(tmp_path))
    stored = json.loads((tmp_path / "config.json").read_text())
    assert (stored["task"]["loss"], stored["num_train_steps"]) == ("ce", 6)


def test_a_key_added_since_the_run_counts_at_its_default(repo, tmp_path):
    """A config.json written before a schema key existed resumes; a key set away from its default does not."""
    loop.train(synthetic_config(repo, "segmentation", *STEPS), str(tmp_path))
    stored = json.loads((tmp_path / "config.json").read_text())
    num_eval = stored["data"].pop("num_eval")  # required: it has no default to count at
    del stored["task"]["surface_metrics"]  # as a medjax older than that key wrote it
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(MedjaxError, match=rf"config\.data\.num_eval is {num_eval} but the run .* trained with "
                                          r"'<absent>'"):
        loop.train(synthetic_config(repo, "segmentation", *STEPS, "--config.num_train_steps=4"), str(tmp_path))
    stored["data"]["num_eval"] = num_eval
    (tmp_path / "config.json").write_text(json.dumps(stored))
    loop.train(synthetic_config(repo, "segmentation", *STEPS, "--config.num_train_steps=4"), str(tmp_path))
    with pytest.raises(MedjaxError, match=r"config\.task\.surface_metrics is False but the run .* trained with True"):
        loop.train(synthetic_config(repo, "segmentation", *STEPS, "--config.num_train_steps=6",
                                    "--config.task.surface_metrics=False"), str(tmp_path))


def test_first_mismatch_is_the_first_run_defining_key():
    stored = {"model": {"a": 1, "b": [1, 2]}, "data": {"root": "x"}, "num_train_steps": 5, "optimizer": {"lr": 1}}
    assert run_config.first_mismatch(stored, dict(stored, num_train_steps=9, optimizer={"lr": 2})) is None
    assert run_config.first_mismatch(stored, dict(stored, model={"a": 1, "b": [1, 3]})) == ("model.b", [1, 2], [1, 3])
    assert run_config.first_mismatch(stored, dict(stored, data={"root": "x", "new": 1})) == (
        "data.new", "<absent>", 1)


def test_num_epochs_and_num_train_steps_both_set_is_an_error(repo):
    with pytest.raises(MedjaxError, match=r"config\.num_train_steps=60 and config\.num_epochs=100 both set"):
        build_config("medmnist_resnet18", ["--config.num_train_steps=60"])
    c = build_config("medmnist_resnet18",
                     ["--config.num_train_steps=60", "--config.num_epochs=0"])
    assert (c.num_train_steps, c.num_epochs) == (60, 0)
