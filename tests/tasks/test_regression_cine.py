"""The regression task (metrics against scikit-learn) and ConvLSTM training on synthetic cine through the trainer."""

import jax
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from medjax.config import build_config
from medjax.errors import MedjaxError
from medjax.tasks.regression import RegressionTask
from medjax.train import loop


def _task(**kw):
    cfg = ml_collections.ConfigDict(dict(name="regression", num_outputs=2, **kw))
    model = ml_collections.ConfigDict(dict(name="resnet", stage_sizes=(1,), block="basic", stem="small", width=4))
    return RegressionTask(cfg, model, [])


def test_summary_matches_scikit_learn_and_skips_padding():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(20, 2))
    pred = target + rng.normal(scale=0.3, size=(20, 2))
    weight = np.ones(20, np.float32)
    weight[-3:] = 0  # padded rows
    out = _task().summarize({"pred": pred, "target": target, "loss": np.zeros(20), "weight": weight})
    t, p = target[:17], pred[:17]
    assert out["mae"] == pytest.approx(mean_absolute_error(t, p))
    assert out["rmse"] == pytest.approx(np.sqrt(mean_squared_error(t, p)))
    assert out["r2"] == pytest.approx(r2_score(t, p))


def test_loss_uses_the_target_scale_and_errors_are_named():
    task = _task(target_scale=100.0, loss="l1")
    assert float(task._per_example(np.array([[50.0, 20.0]]), np.array([[0.5, 0.1]]))[0]) == pytest.approx(5.0)
    with pytest.raises(MedjaxError, match="unknown config.task.loss='huber'"):
        _task(loss="huber")
    with pytest.raises(MedjaxError, match="needs a 'target' array"):
        task._targets({"image": np.zeros(1)})


@pytest.mark.parametrize("variant,keys", [("ef", {"mae", "rmse", "r2"}), ("segmentation", {"dice_mean"})])
def test_convlstm_trains_on_synthetic_cine(repo, tmp_path, variant, keys):
    config = build_config(f"{repo}/experiments/cine_synthetic.py:{variant},tiny", [])
    metrics = loop.train(config, str(tmp_path))
    assert keys <= set(metrics) and all(np.isfinite(metrics[k]) for k in keys)
    result = loop.evaluate(config, str(tmp_path), split="test")
    assert keys <= set(result) and result["split"] == "test"
    assert jax.device_count() == 4  # the sequences were sharded over 4 devices
