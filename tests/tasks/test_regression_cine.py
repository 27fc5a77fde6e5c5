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
    centred = _task(target_offset=0.5, target_scale=10.0, loss="l1")  # learns (target - 0.5) * 10
    assert float(centred._per_example(np.array([[2.0, -1.0]]), np.array([[0.7, 0.4]]))[0]) == pytest.approx(0.0)
    assert float(centred._per_example(np.array([[0.0, 0.0]]), np.array([[0.7, 0.4]]))[0]) == pytest.approx(1.5)
    with pytest.raises(MedjaxError, match="target_scale must be finite and non-zero"):
        _task(target_scale=0.0)
    with pytest.raises(MedjaxError, match="unknown config.task.loss='huber'"):
        _task(loss="huber")
    with pytest.raises(MedjaxError, match="needs a 'target' array"):
        task._targets({"image": np.zeros(1)})


@pytest.mark.parametrize("variant,keys", [("ef", {"mae", "rmse", "r2"}), ("segmentation", {"dice_mean"})])
def test_convlstm_trains_on_synthetic_cine(repo, tmp_path, variant, keys):
    config = build_config(f"cine_synthetic:{variant},tiny", [])
    metrics = loop.train(config, str(tmp_path))
    assert keys <= set(metrics) and all(np.isfinite(metrics[k]) for k in keys)
    result = loop.evaluate(config, str(tmp_path), split="test")
    assert keys <= set(result) and result["split"] == "test"
    assert jax.device_count() == 4  # the sequences were sharded over 4 devices


def test_cine_folder_trains_on_clips_with_per_frame_metrics_and_targets_alone(repo, tmp_path):
    """4D NIfTI cases on disk -> training on 3-frame clips (stride 2), evaluation on whole 6-frame sequences
    with per-frame Dice, temporal change and EF from the masks; the same cases without labels regress EF."""
    import shutil

    from tests.data.test_cine_io import _cases

    root = _cases(tmp_path / "cines", n=6)
    config = build_config("cine_synthetic:segmentation,tiny", [])
    config.data = ml_collections.ConfigDict(dict(name="cine_folder", root=str(root), num_classes=3, clip_length=3,
                                                 clip_stride=2, val_fraction=0.2, test_fraction=0.2,
                                                 class_names=("background", "lv_cavity", "myocardium")))
    s = loop.setup(config, str(tmp_path / "setup"))
    assert loop._first_train_image(s.splits["train"], config).shape == (1, 3, 32, 32, 1)
    assert next(loop.make_train_stream(s))["label"].shape[1:] == (3, 32, 32)
    metrics = loop.train(config, str(tmp_path / "seg"))
    keys = {"dice_mean", "frame_dice_mean", "temporal_dice_change", "ef_mae", "ef_rmse"}
    assert keys <= set(metrics) and all(np.isfinite(metrics[k]) for k in keys)

    shutil.rmtree(root / "labels")
    with pytest.raises(MedjaxError, match="split 'train' of dataset 'cine_folder' has no labels"):
        loop.setup(config, str(tmp_path / "unlabelled"))
    config = build_config("cine_synthetic:ef,tiny", [])
    config.data = ml_collections.ConfigDict(dict(name="cine_folder", root=str(root), val_fraction=0.2,
                                                 test_fraction=0.2))
    metrics = loop.train(config, str(tmp_path / "ef"))
    assert {"mae", "rmse", "r2"} <= set(metrics) and np.isfinite(metrics["mae"])
