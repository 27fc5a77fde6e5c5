"""The `cine_acdc` config end to end on folders the beating-heart simulator writes in ACDC's and M&Ms' published
layouts (cases of different lengths, grids and spacings, labelled on ED and ES only). Each run's evaluation is
pinned by numpy on the restored model's own predictions: Dice over the labelled voxels only, EF at ED and ES."""

import jax
import numpy as np
import pytest

from medjax.config import build_config
from medjax.data.cine import beating_heart
from medjax.train import loop
from medjax.train.parallel import replicated_to_host
from tests.data.test_cine_io import write_acdc, write_mnms

# (seed, frames, size, in-plane mm): at 1.5 mm the grids are 16, 16, 16, 13 (padded) and 18 (cropped) px
SPECS = ((0, 8, 20, 1.2), (1, 6, 16, 1.5), (2, 7, 24, 1.0), (3, 7, 16, 1.2), (4, 6, 18, 1.5))
MNMS_SPECS = ((5, 6, 16, 1.5), (6, 8, 18, 1.2), (7, 7, 16, 1.5), (8, 6, 20, 1.2), (9, 7, 16, 1.5))  # 3D frames


def _check_against_numpy(config, workdir: str, result: dict) -> None:
    """`result` (loop.evaluate on test) equals Dice and EF computed here from the best checkpoint's predictions."""
    s = loop.setup(config, workdir)
    canonical, _, _ = loop.restore_checkpoint(s, workdir, "best")
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    test = s.splits["test"]
    pred = np.asarray(jax.jit(s.task.predict)(params, stats, test["image"]))
    inside = test["mask"] > 0
    assert inside.any() and not inside.all()
    for c, name in enumerate(config.data.class_names):
        p, r = (pred == c) & inside, (test["label"] == c) & inside
        dice = 2 * (p & r).sum() / (p.sum() + r.sum()) if r.any() else np.nan
        assert result[f"dice/{name}"] == pytest.approx(dice, nan_ok=True), name
    lv = config.task.ef_class
    n = np.arange(len(pred))
    ed, es = test["ed_es"][:, 0], test["ed_es"][:, 1]
    pred_lv = ((pred == lv) & inside).reshape(*pred.shape[:2], -1).sum(-1)
    ref_lv = ((test["label"] == lv) & inside).reshape(*pred.shape[:2], -1).sum(-1)
    pred_ef = np.where(pred_lv[n, ed] > 0, 1 - pred_lv[n, es] / np.maximum(pred_lv[n, ed], 1), 0.0)
    ref_ef = 1 - ref_lv[n, es] / ref_lv[n, ed]
    assert result["ef_mae"] == pytest.approx(np.abs(pred_ef - ref_ef).mean())


@pytest.mark.parametrize("variant", ["segmentation", "segmentation_frames"])
def test_convlstm_and_per_frame_unet_train_on_an_acdc_layout(repo, tmp_path, variant):
    root = write_acdc(tmp_path / "training", SPECS)
    config = build_config(f"cine_acdc:{variant},tiny", [f"--config.data.root={root}"])
    workdir = str(tmp_path / "run")
    loop.train(config, workdir)
    result = loop.evaluate(config, workdir, split="test")
    assert np.isnan(result["dice/rv"])  # the simulator has no right ventricle
    _check_against_numpy(config, workdir, result)


def test_per_frame_3d_unet_trains_on_an_mnms_layout_and_the_ef_variant_regresses_the_labels_ef(repo, tmp_path):
    root = write_mnms(tmp_path / "Training" / "Labeled", MNMS_SPECS, spatial_dims=3)
    overrides = [f"--config.data.root={root}", "--config.data.frames_csv=../info.csv"]
    config = build_config("cine_acdc:segmentation_frames,mnms,tiny", overrides)
    workdir = str(tmp_path / "run")
    loop.train(config, workdir)
    result = loop.evaluate(config, workdir, split="test")
    _check_against_numpy(config, workdir, result)

    config = build_config("cine_acdc:ef,mnms,tiny", overrides)
    target = loop.setup(config, str(tmp_path / "ef")).splits["train"]["target"][:, 0]
    ef = []  # (EDV - ESV) / EDV of each stored case's LV voxels
    for seed, frames, size, _ in MNMS_SPECS:
        q = beating_heart(seed, num_frames=frames, size=size, spatial_dims=3)
        ef.append(1 - (q["label"][q["es_frame"]] == 1).sum() / (q["label"][q["ed_frame"]] == 1).sum())
    assert len(target) == 3 and all(np.abs(np.array(ef) - t).min() < 1e-6 for t in target)
