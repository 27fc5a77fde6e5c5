"""Per-frame Dice, temporal consistency and EF from segmentations, against hand-computed values."""

import ml_collections
import numpy as np
import pytest

from medjax import metrics
from medjax.data.cine import beating_heart
from medjax.errors import MedjaxError
from medjax.tasks.segmentation import SegmentationTask
from medjax.temporal_metrics import ejection_fraction, frame_dice, sequence_summary, temporal_dice_change


def _counts(pred, label, num_classes=3):
    """(N, T, 3, C) from (N, T, *s) maps, with medjax's jitted counter per frame."""
    return np.stack([[np.stack(metrics.dice_counts(p[None], l[None], num_classes)) for p, l in zip(ps, ls)]
                     for ps, ls in zip(pred, label)])


def test_frame_dice_and_change_by_hand():
    label = np.zeros((1, 3, 4, 4), np.int32)
    label[:, :, :2, :2] = 1  # 4 pixels of class 1 in every frame
    pred = label.copy()
    pred[0, 1, 0, 0] = 0  # frame 1 misses one pixel: Dice 2*3/(3+4) = 6/7
    pred[0, 2, 3, 3] = 1  # frame 2 adds one: Dice 2*4/(5+4) = 8/9
    dice = frame_dice(_counts(pred, label))
    np.testing.assert_allclose(dice[0, :, 1], [1.0, 6 / 7, 8 / 9])
    assert np.isnan(dice[0, :, 2]).all()  # class 2 absent from the reference
    change = temporal_dice_change(dice)
    assert change[1] == pytest.approx((abs(6 / 7 - 1) + abs(8 / 9 - 6 / 7)) / 2)
    assert np.isnan(change[2])
    out = sequence_summary(_counts(pred, label), ["bg", "lv", "myo"])
    assert out["frame_dice/lv"] == pytest.approx((1 + 6 / 7 + 8 / 9) / 3)
    assert out["frame_dice_mean"] == pytest.approx(out["frame_dice/lv"])  # myo is NaN and left out
    assert out["temporal_dice_change"] == pytest.approx(change[1])


def test_ejection_fraction_of_curves():
    np.testing.assert_allclose(ejection_fraction(np.array([[100, 60, 40, 80.0]])), [0.6])
    np.testing.assert_allclose(ejection_fraction(np.array([[100, 25.0]]), exponent=1.5), [1 - 0.25**1.5])
    assert np.isnan(ejection_fraction(np.zeros((1, 4))))[0]
    with pytest.raises(MedjaxError, match="EF exponent must be > 0"):
        ejection_fraction(np.ones((1, 2)), exponent=0)


def test_ef_from_synthetic_masks_recovers_the_true_ef_and_missing_cavities_count():
    seqs = [beating_heart(s, num_frames=12, size=64) for s in (3, 4)]
    label = np.stack([q["label"] for q in seqs])
    counts = _counts(label, label)
    out = sequence_summary(counts, ["bg", "lv", "myo"], ef_class=1, ef_exponent=1.5)
    assert out["ef_mae"] == 0.0 and out["frame_dice_mean"] == 1.0 and out["temporal_dice_change"] == 0.0
    measured = ejection_fraction(counts[:, :, 2, 1], 1.5)
    np.testing.assert_allclose(measured, [q["ef"] for q in seqs], atol=0.02)  # areas^1.5 ~ volumes
    empty = _counts(np.zeros_like(label), label)  # a model that never finds the cavity measures EF 0
    miss = sequence_summary(empty, ["bg", "lv", "myo"], ef_class=1, ef_exponent=1.5)
    assert miss["ef_mae"] == pytest.approx(np.mean(measured))
    with pytest.raises(MedjaxError, match="ef_class=3 must name a foreground class"):
        sequence_summary(counts, ["bg", "lv", "myo"], ef_class=3)


def _seg_task(**task):
    cfg = ml_collections.ConfigDict(dict(name="segmentation", num_classes=3, loss="dice_ce", **task))
    model = ml_collections.ConfigDict(dict(name="convlstm_unet", features=(4, 8)))
    return SegmentationTask(cfg, model, ["bg", "lv", "myo"])


def test_segmentation_task_reports_per_frame_metrics_and_pools_frames_for_dice():
    seqs = [beating_heart(s, num_frames=6, size=32) for s in (1, 2, 5)]
    label = np.stack([q["label"] for q in seqs])
    pred = np.where(np.random.default_rng(0).random(label.shape) < 0.1, 0, label)
    counts = _counts(pred, label)
    weight = np.array([1, 1, 0], np.float32)  # the third is padding
    out = _seg_task(per_frame=True, ef_class=1, ef_exponent=1.5).summarize({"dice_counts": counts, "weight": weight})
    pooled = metrics.dice_from_counts(*counts[:2].sum(axis=(0, 1)))
    assert out["dice/lv"] == pytest.approx(pooled[1])
    assert out == pytest.approx({**out, **sequence_summary(counts[:2], ["bg", "lv", "myo"], 1, 1.5)})
    assert {"frame_dice_mean", "temporal_dice_change", "ef_mae", "ef_rmse"} <= set(out)
    with pytest.raises(MedjaxError, match="set config.task.per_frame=True"):
        _seg_task(ef_class=1)
    with pytest.raises(MedjaxError, match=r"ef_class=3 must name a foreground class \(1..2\)"):
        _seg_task(per_frame=True, ef_class=3)  # named when the task is built, not after training


def test_ef_at_named_ed_and_es_frames():
    volumes = np.array([[100, 80, 40, 60.0], [40, 80, 100, 60.0]])
    np.testing.assert_allclose(ejection_fraction(volumes, ed_es=np.array([[0, 2], [0, 2]])), [0.6, 1 - 100 / 40])
    np.testing.assert_allclose(ejection_fraction(volumes, ed_es=np.array([[1, 3], [2, 0]])), [0.25, 0.6])
    assert np.isnan(ejection_fraction(np.zeros((1, 3)), ed_es=np.array([[0, 1]])))[0]
    with pytest.raises(MedjaxError, match=r"ED/ES frames must be \(N, 2\) = \(2, 2\) indices below T = 4"):
        ejection_fraction(volumes, ed_es=np.array([[0, 4], [0, 1]]))


class _Logits:
    """A stand-in model whose logits are its input (one-hot predictions), so eval_outputs and loss see known maps."""

    def apply(self, variables, x, train=False, mutable=None):
        return (x, {"batch_stats": {}}) if mutable else x


def _labelled_frames_toy():
    """One 3-frame sequence of 2x3 maps: frames 0 (ED) and 2 (ES) labelled, frame 1 not (label 0, mask 0); the
    prediction fills frame 1 with LV, which must count nowhere."""
    label = np.array([[[1, 1, 0], [1, 2, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 0, 0], [0, 2, 2]]])
    pred = np.array([[[1, 1, 0], [0, 2, 0]], [[1, 1, 1], [1, 1, 1]], [[1, 0, 0], [0, 2, 0]]])
    mask = np.ones((3, 2, 3), np.float32)
    mask[1] = 0
    logits = np.eye(3, dtype=np.float32)[pred] * 4.0
    return {"image": logits[None], "label": label[None].astype(np.int32), "mask": mask[None],
            "ed_es": np.array([[0, 2]], np.int32), "weight": np.ones(1, np.float32)}


def test_dice_per_frame_and_ef_count_only_the_labelled_frames_by_hand():
    batch = _labelled_frames_toy()
    task = _seg_task(per_frame=True, ef_class=1)
    task.model = _Logits()
    out = task.summarize({k: np.asarray(v) for k, v in task.eval_outputs({}, {}, batch).items()})
    # LV: frame 0 I=2 P=2 R=3, frame 2 I=1 P=1 R=1; myocardium: frame 0 I=1 P=1 R=1, frame 2 I=1 P=1 R=2
    assert out["dice/lv"] == pytest.approx(2 * 3 / (3 + 4)) and out["dice/myo"] == pytest.approx(2 * 2 / (2 + 3))
    assert out["frame_dice/lv"] == pytest.approx((4 / 5 + 1) / 2)
    assert out["frame_dice/myo"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["frame_dice_mean"] == pytest.approx(((4 / 5 + 1) / 2 + (1 + 2 / 3) / 2) / 2)
    # EF at ED (frame 0) and ES (frame 2): reference 1 - 1/3, prediction 1 - 1/2
    assert out["ef_mae"] == pytest.approx(1 / 6) and out["ef_rmse"] == pytest.approx(1 / 6)
    assert np.isnan(out["temporal_dice_change"])  # no two consecutive frames are both labelled
    unmasked = task.summarize({k: np.asarray(v) for k, v in task.eval_outputs(
        {}, {}, {k: v for k, v in batch.items() if k != "mask"}).items()})
    assert unmasked["dice/lv"] == pytest.approx(2 * 3 / (9 + 4))  # without the mask frame 1's 6 LV pixels count


def test_the_loss_of_a_partly_labelled_sequence_is_the_loss_of_its_labelled_frames():
    batch = _labelled_frames_toy()
    task = _seg_task()
    task.model = _Logits()
    masked, _ = task.loss({}, {}, batch, None)
    labelled = {"image": batch["image"][:, [0, 2]], "label": batch["label"][:, [0, 2]], "weight": batch["weight"]}
    assert float(masked) == pytest.approx(float(task.loss({}, {}, labelled, None)[0]), rel=1e-6)
    unmasked = {k: v for k, v in batch.items() if k != "mask"}
    assert abs(float(task.loss({}, {}, unmasked, None)[0]) - float(masked)) > 0.1
