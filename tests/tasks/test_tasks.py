"""Task objects: losses and summaries against hand-computed values and scikit-learn."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medjax.errors import MedjaxError
from medjax.tasks import make_task
from medjax.tasks.classification import ClassificationTask
from medjax.tasks.segmentation import SegmentationTask, resize_labels


def _cfg(task, model):
    return ml_collections.ConfigDict({"task": task, "model": model})


def test_unknown_task_model_and_loss():
    with pytest.raises(MedjaxError, match="config.task.name"):
        make_task(_cfg({"name": "registration", "num_classes": 2}, {"name": "unet"}), [])
    with pytest.raises(MedjaxError, match="resnet7"):
        make_task(_cfg({"name": "classification", "num_classes": 2}, {"name": "resnet7"}), [])
    with pytest.raises(MedjaxError, match="config.task.loss"):
        make_task(_cfg({"name": "segmentation", "num_classes": 2, "loss": "focal"}, {"name": "unet"}), [])
    with pytest.raises(MedjaxError, match="num_classes=3 but the data names 2"):
        make_task(_cfg({"name": "segmentation", "num_classes": 3, "loss": "ce"}, {"name": "unet"}), ["a", "b"])


def test_segmentation_summary_by_hand():
    task = SegmentationTask(ml_collections.ConfigDict({"num_classes": 3, "loss": "ce"}),
                            ml_collections.ConfigDict({"name": "unet", "features": (4, 8)}), ["bg", "a", "b"])
    # per-example (intersection, predicted, reference) for classes bg, a, b; the 3rd row is padding
    counts = np.array([[[5, 2, 0], [6, 2, 0], [6, 3, 0]],
                       [[4, 1, 2], [4, 1, 3], [4, 1, 3]],
                       [[9, 9, 9], [9, 9, 9], [9, 9, 9]]])
    out = task.summarize({"dice_counts": counts, "weight": np.array([1.0, 1.0, 0.0])})
    assert out["dice/bg"] == pytest.approx(2 * 9 / (10 + 10))
    assert out["dice/a"] == pytest.approx(2 * 3 / (3 + 4))
    assert out["dice/b"] == pytest.approx(2 * 2 / (3 + 3))
    assert out["dice_mean"] == pytest.approx((6 / 7 + 4 / 6) / 2)


def test_segmentation_summary_per_case_by_hand():
    task = SegmentationTask(ml_collections.ConfigDict({"num_classes": 3, "loss": "ce", "dice_average": "cases"}),
                            ml_collections.ConfigDict({"name": "unet", "features": (4, 8)}), ["bg", "a", "b"])
    counts = np.array([[[5, 2, 0], [6, 2, 0], [6, 3, 0]],   # class b absent from case 0's reference: not averaged
                       [[4, 1, 2], [4, 1, 3], [4, 1, 3]],
                       [[9, 9, 9], [9, 9, 9], [9, 9, 9]]])  # padding
    out = task.summarize({"dice_counts": counts, "weight": np.array([1.0, 1.0, 0.0])})
    assert out["dice/bg"] == pytest.approx((10 / 12 + 8 / 8) / 2)
    assert out["dice/a"] == pytest.approx((4 / 5 + 2 / 2) / 2)
    assert out["dice/b"] == pytest.approx(4 / 6)
    assert out["dice_mean"] == pytest.approx((0.9 + 4 / 6) / 2)
    with pytest.raises(MedjaxError, match="config.task.dice_average"):
        SegmentationTask(ml_collections.ConfigDict({"num_classes": 3, "loss": "ce", "dice_average": "slices"}),
                         ml_collections.ConfigDict({"name": "unet"}), [])


def test_deep_supervision_labels_are_nearest_downsampled():
    labels = jnp.arange(16).reshape(1, 4, 4)
    np.testing.assert_array_equal(resize_labels(labels, (2, 2))[0], [[0, 2], [8, 10]])
    assert resize_labels(jnp.zeros((2, 8, 8, 8), jnp.int32), (4, 4, 4)).shape == (2, 4, 4, 4)


def test_deep_supervision_loss_combines_scales():
    task = SegmentationTask(ml_collections.ConfigDict({"num_classes": 2, "loss": "ce"}),
                            ml_collections.ConfigDict({"name": "unet", "features": (4, 8, 8),
                                                       "deep_supervision": True}), [])
    batch = {"image": jnp.ones((2, 16, 16, 1)), "label": jnp.zeros((2, 16, 16), jnp.int32),
             "weight": jnp.ones(2)}
    variables = task.init_variables(jax.random.key(0, impl="rbg"), batch["image"])
    loss, (_, metrics) = task.loss(variables["params"], variables["batch_stats"], batch, None)
    outs, _ = task.model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    assert [o.shape[1:3] for o in outs] == [(16, 16), (8, 8)]
    ce = [float(-jax.nn.log_softmax(o)[..., 0].mean()) for o in outs]
    assert float(loss) == pytest.approx((ce[0] * 1.0 + ce[1] * 0.5) / 1.5, rel=1e-5)


class _LogitsAreTheImage(nn.Module):
    """A parameter-free "model" whose logits are its input, so a test sets the predictions exactly."""

    @nn.compact
    def __call__(self, x, train):
        return x


def test_segmentation_mask_restricts_loss_and_dice():
    """With batch["mask"], predictions outside it change neither the Dice counts nor the loss, which equal
    those of the inside pixels alone (a rectangle: the cropped arrays)."""
    task = SegmentationTask(ml_collections.ConfigDict({"num_classes": 3, "loss": "dice_ce"}),
                            ml_collections.ConfigDict({"name": "unet", "features": (4, 8)}), [])
    task.model = _LogitsAreTheImage()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 6, 8))
    mask = np.zeros((2, 6, 8), np.float32)
    mask[:, 1:5, 2:7] = 1.0
    pred = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 3, labels.shape))
    pred = np.where(mask == 0, (labels + 1) % 3, pred)  # every prediction outside the mask is wrong
    logits = 4.0 * jax.nn.one_hot(pred, 3) + rng.normal(0, 0.5, (2, 6, 8, 3)).astype(np.float32)
    batch = {"image": logits, "label": labels, "weight": np.ones(2, np.float32), "mask": mask}
    crop = {"image": logits[:, 1:5, 2:7], "label": labels[:, 1:5, 2:7], "weight": np.ones(2, np.float32)}

    counts = task.eval_outputs({}, {}, batch)["dice_counts"]
    np.testing.assert_array_equal(counts, task.eval_outputs({}, {}, crop)["dice_counts"])
    unmasked = task.eval_outputs({}, {}, {k: v for k, v in batch.items() if k != "mask"})["dice_counts"]
    assert task.summarize({"dice_counts": counts, "weight": np.ones(2)})["dice_mean"] > (
        task.summarize({"dice_counts": unmasked, "weight": np.ones(2)})["dice_mean"])

    loss, _ = task.loss({}, {}, batch, None)
    np.testing.assert_allclose(float(loss), float(task.loss({}, {}, crop, None)[0]), rtol=1e-6)
    assert not np.isclose(float(loss), float(task.loss({}, {}, {k: v for k, v in batch.items() if k != "mask"},
                                                       None)[0]))


def test_segmentation_batch_dice_pools_the_batch():
    """task.dice_batch: one Dice per class over the batch (nnU-Net's batch Dice), so an example without the class
    is not a constant loss of 1. By hand: example 1 labels [1, 1, 0, 0], predicts [1, 0, 0, 0]; example 2 labels
    none, predicts [0, 0, 0, 1]. Per example: losses 1/3 and 1 (mean 2/3); pooled: 1 - 2*1 / (2 + 2) = 1/2."""
    labels = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    pred = np.array([[[1, 0, 0, 0]], [[0, 0, 0, 1]]])
    batch = {"image": 40.0 * jax.nn.one_hot(pred, 2) - 20.0, "label": labels, "weight": np.ones(2, np.float32)}
    for dice_batch, expected in ((False, 2 / 3), (True, 1 / 2)):
        task = SegmentationTask(ml_collections.ConfigDict({"num_classes": 2, "loss": "dice", "dice_batch": dice_batch,
                                                           "include_background": False}),
                                ml_collections.ConfigDict({"name": "unet", "features": (4, 8)}), [])
        task.model = _LogitsAreTheImage()
        assert float(task.loss({}, {}, batch, None)[0]) == pytest.approx(expected, abs=1e-5)


def test_deep_supervision_downsamples_the_mask():
    task = SegmentationTask(ml_collections.ConfigDict({"num_classes": 2, "loss": "ce"}),
                            ml_collections.ConfigDict({"name": "unet", "features": (4, 8, 8),
                                                       "deep_supervision": True}), [])
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 2, (2, 16, 16)), jnp.int32)
    mask = np.zeros((2, 16, 16), np.float32)
    mask[0, 2:11, 3:13] = 1.0
    mask[1, 5:, :7] = 1.0
    batch = {"image": jnp.ones((2, 16, 16, 1)), "label": labels, "weight": jnp.ones(2), "mask": mask}
    variables = task.init_variables(jax.random.key(0, impl="rbg"), batch["image"])
    loss, _ = task.loss(variables["params"], variables["batch_stats"], batch, None)
    outs, _ = task.model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    ce = []
    for o in outs:
        y, m = resize_labels(labels, o.shape[1:3]), np.asarray(resize_labels(mask, o.shape[1:3]))
        per_pixel = -np.take_along_axis(np.asarray(jax.nn.log_softmax(o)), np.asarray(y)[..., None], -1)[..., 0]
        ce.append(np.mean([per_pixel[i][m[i] > 0].mean() for i in range(2)]))
    assert float(loss) == pytest.approx((ce[0] * 1.0 + ce[1] * 0.5) / 1.5, rel=1e-5)


def test_classification_multilabel_summary_matches_sklearn():
    task = ClassificationTask(ml_collections.ConfigDict({"num_classes": 3, "multi_label": True}),
                              ml_collections.ConfigDict({"name": "resnet", "stage_sizes": (1,), "block": "basic",
                                                         "stem": "small", "width": 4}), [])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (20, 3))
    probs = rng.uniform(size=(20, 3))
    out = task.summarize({"probs": probs, "label": labels, "loss": np.ones(20), "acc": np.full(20, 0.5),
                          "weight": np.ones(20)})
    assert out["auc"] == pytest.approx(roc_auc_score(labels, probs, average="macro"))
    assert out["acc"] == 0.5 and out["loss"] == 1.0


def test_classification_losses_by_hand():
    task = ClassificationTask(ml_collections.ConfigDict({"num_classes": 2, "multi_label": False}),
                              ml_collections.ConfigDict({"name": "resnet", "stage_sizes": (1,), "block": "basic",
                                                         "stem": "small", "width": 4}), [])
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    loss, acc = task._per_example(logits, jnp.array([0, 0]))
    np.testing.assert_allclose(loss, [np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(1.0))], rtol=1e-6)
    np.testing.assert_array_equal(acc, [1.0, 0.0])
    task.multi_label = True
    loss, acc = task._per_example(jnp.array([[0.0, 3.0]]), jnp.array([[1, 0]]))
    np.testing.assert_allclose(loss, [(np.log(2.0) + np.log(1 + np.exp(3.0))) / 2], rtol=1e-6)
    np.testing.assert_array_equal(acc, [0.0])
