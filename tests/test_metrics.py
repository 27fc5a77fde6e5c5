"""Metrics: accuracy and Dice counts by hand, Dice vs MONAI's DiceMetric, ROC AUC vs sklearn (with ties), jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import metrics
from medjax.errors import MedjaxError

sklearn_metrics = pytest.importorskip("sklearn.metrics")

# jitted: one compile per shape, cheaper than op-by-op dispatch on CPU, and how the eval step runs them
ACCURACY = jax.jit(metrics.accuracy)
CORRECT = jax.jit(metrics.correct)
ML_ACCURACY = jax.jit(metrics.multilabel_accuracy, static_argnames="threshold")
ML_CORRECT = jax.jit(metrics.multilabel_correct, static_argnames="threshold")
DICE_COUNTS = jax.jit(metrics.dice_counts, static_argnames="num_classes")


# ------------------------------------------------------------------------------------------ accuracy

def test_accuracy_by_hand():
    logits = jnp.array([[2.0, 1.0, 0.0],   # argmax 0, label 0: right
                        [0.0, 3.0, 1.0],   # argmax 1, label 2: wrong
                        [0.0, 0.0, 5.0],   # argmax 2, label 2: right
                        [1.0, 0.5, 0.9]])  # argmax 0, label 0: right
    labels = jnp.array([0, 2, 2, 0])
    np.testing.assert_array_equal(CORRECT(logits, labels), [1.0, 0.0, 1.0, 1.0])
    assert float(ACCURACY(logits, labels)) == 0.75
    assert float(ACCURACY(logits, labels[:, None])) == 0.75  # MedMNIST (N, 1) labels
    assert float(ACCURACY(logits, labels, jnp.array([1, 1, 0, 0]))) == 0.5  # padded rows dropped
    assert float(ACCURACY(logits, labels, jnp.array([0, 1, 1, 1]))) == pytest.approx(2 / 3)


def test_multilabel_accuracy_by_hand():
    # sigmoid(logit) > 0.5  <=>  logit > 0:  predictions [[1, 0, 0], [0, 1, 1]]
    logits = jnp.array([[2.0, -1.0, -3.0], [-0.5, 0.1, 4.0]])
    targets = jnp.array([[1, 1, 0], [0, 1, 0]])
    # example 0: 2 of 3 right; example 1: 2 of 3 right; per label: 1/2, 1, 1/2 -> mean 2/3 either way
    np.testing.assert_allclose(ML_CORRECT(logits, targets), [2 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(ML_ACCURACY(logits, targets), 2 / 3, rtol=1e-6)
    targets2 = jnp.array([[1, 0, 0], [1, 0, 1]])  # example 0 all right, example 1 1/3 right
    np.testing.assert_allclose(ML_ACCURACY(logits, targets2), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(ML_ACCURACY(logits, targets2, jnp.array([1, 0])), 1.0)
    # a stricter threshold: sigmoid(0.1) = 0.525 < 0.6 flips label 1 of example 1 to 0
    np.testing.assert_allclose(ML_CORRECT(logits, targets2, threshold=0.6), [1.0, 2 / 3], rtol=1e-6)


# ------------------------------------------------------------------------------------------ Dice

LABELS_4X4 = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 0, 0],
                       [2, 2, 0, 0]])
PRED_4X4 = np.array([[0, 0, 1, 0],
                     [0, 0, 1, 1],
                     [2, 0, 0, 0],
                     [2, 2, 2, 3]])
# class 0: pred 8, label 8, overlap 6 -> 12/16 = 0.75
# class 1: pred 3, label 4, overlap 3 -> 6/7
# class 2: pred 4, label 4, overlap 3 -> 6/8 = 0.75
# class 3: pred 1, label 0 -> NaN (ignore_empty) or 0.0
# class 4: pred 0, label 0 -> NaN (ignore_empty) or 1.0
COUNTS_4X4 = ([6, 3, 3, 0, 0], [8, 3, 4, 1, 0], [8, 4, 4, 0, 0])


def test_dice_counts_by_hand():
    counts = DICE_COUNTS(PRED_4X4[None], LABELS_4X4[None], num_classes=5)
    for got, want in zip(counts, COUNTS_4X4):
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(got, want)
    dice = metrics.dice_from_counts(*counts)
    np.testing.assert_allclose(dice, [0.75, 6 / 7, 0.75, np.nan, np.nan])
    np.testing.assert_allclose(metrics.dice_from_counts(*counts, ignore_empty=False), [0.75, 6 / 7, 0.75, 0.0, 1.0])
    assert metrics.mean_foreground_dice(dice) == pytest.approx((6 / 7 + 0.75) / 2)  # = 45/56, NaN classes ignored
    assert metrics.mean_foreground_dice(dice, include_background=True) == pytest.approx((0.75 + 6 / 7 + 0.75) / 3)
    assert np.isnan(metrics.mean_foreground_dice(np.array([0.9, np.nan, np.nan])))


def test_dice_counts_sum_over_batch_and_respect_padding():
    pred = np.stack([PRED_4X4, LABELS_4X4, np.full((4, 4), 4)])  # example 1 perfect; example 2 padded garbage
    labels = np.stack([LABELS_4X4, LABELS_4X4, np.full((4, 4), 4)])
    counts = DICE_COUNTS(pred, labels[..., None], num_classes=5, weights=np.array([1.0, 1.0, 0.0]))  # (N,H,W,1) too
    np.testing.assert_array_equal(counts[0], [6 + 8, 3 + 4, 3 + 4, 0, 0])
    np.testing.assert_array_equal(counts[1], [8 + 8, 3 + 4, 4 + 4, 1, 0])
    np.testing.assert_array_equal(counts[2], [16, 8, 8, 0, 0])
    np.testing.assert_allclose(metrics.dice_from_counts(*counts), [28 / 32, 14 / 15, 14 / 16, np.nan, np.nan])
    # accumulated over batches (as the eval loop does) == one big batch
    parts = [DICE_COUNTS(pred[i:i + 1], labels[i:i + 1], num_classes=5) for i in range(2)]
    np.testing.assert_array_equal(np.sum([np.stack(p) for p in parts], axis=0), np.stack(counts))


def test_dice_counts_respect_a_voxel_mask():
    """Voxels outside the mask are not counted: a rectangle gives the counts of the cropped maps, whatever is
    predicted (or labelled) outside; an all-0 mask counts nothing; float weights count where non-zero."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (2, 6, 7))
    pred = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 3, labels.shape))
    mask = np.zeros(labels.shape, np.float32)
    mask[:, 1:5, 2:6] = 1.0
    crop = np.stack(DICE_COUNTS(pred[:, 1:5, 2:6], labels[:, 1:5, 2:6], num_classes=3))
    np.testing.assert_array_equal(np.stack(DICE_COUNTS(pred, labels, num_classes=3, mask=mask)), crop)
    wrong = np.where(mask == 0, (labels + 1) % 3, pred)  # every prediction outside is wrong
    np.testing.assert_array_equal(np.stack(DICE_COUNTS(wrong, labels, num_classes=3, mask=mask)), crop)
    np.testing.assert_array_equal(np.stack(DICE_COUNTS(wrong, labels, num_classes=3, mask=0.5 * mask[..., None])),
                                  crop)  # (N, H, W, 1) and non-0/1 weights
    assert not np.array_equal(np.stack(DICE_COUNTS(wrong, labels, num_classes=3)), crop)
    # by hand on the 4x4 maps: only the bottom-right 2x2 counts, pred [[0, 0], [2, 3]] vs label [[0, 0], [0, 0]]
    inside = np.zeros((1, 4, 4), bool)
    inside[:, 2:, 2:] = True
    counts = DICE_COUNTS(PRED_4X4[None], LABELS_4X4[None], num_classes=5, mask=inside)
    for got, want in zip(counts, ([2, 0, 0, 0, 0], [2, 0, 1, 1, 0], [4, 0, 0, 0, 0])):
        np.testing.assert_array_equal(got, want)
    empty = DICE_COUNTS(pred, labels, num_classes=3, mask=np.zeros_like(mask))
    np.testing.assert_array_equal(np.stack(empty), 0)
    with pytest.raises(MedjaxError, match=r"mask of shape \(2, 6\)"):
        metrics.dice_counts(pred, labels, 3, mask=np.ones((2, 6)))


def test_dice_matches_monai_dice_metric_per_image():
    """For one example, dice_from_counts is MONAI's DiceMetric(include_background=True, ignore_empty=...)."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (1, 5, 6, 4))
    pred = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 4, labels.shape))  # class 3: FP only
    counts = DICE_COUNTS(pred, labels, num_classes=5)  # class 4 absent from both

    def onehot(x):
        return torch.nn.functional.one_hot(torch.tensor(x), 5).permute(0, 4, 1, 2, 3)

    for ignore_empty in (True, False):
        ref = monai_metrics.DiceMetric(include_background=True, reduction="none", ignore_empty=ignore_empty)(
            onehot(pred), onehot(labels))
        np.testing.assert_allclose(metrics.dice_from_counts(*counts, ignore_empty=ignore_empty), ref.numpy()[0],
                                   rtol=1e-6)


# ------------------------------------------------------------------------------------------ ROC AUC

def test_roc_auc_by_hand():
    assert metrics.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: pairs (0.5|0.5)=1/2, the other three win -> 3.5/4
    assert metrics.roc_auc(np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1])) == pytest.approx(0.875)
    # (N, 2) probabilities: column 1 is the positive score; (N, 1) labels as MedMNIST stores them
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert metrics.roc_auc(probs, np.array([[0], [0], [1], [1]])) == pytest.approx(0.75)


def _tied_scores(rng, labels):
    """Informative scores on a coarse grid: many exact ties, positives tied with negatives included."""
    return (rng.integers(0, 4, labels.shape) + rng.integers(0, 2, labels.shape) * labels) / 4.0


def test_roc_auc_binary_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    for n in (7, 50, 301):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = _tied_scores(rng, labels)
        assert metrics.roc_auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores),
                                                                abs=1e-12)
        probs = np.stack([1 - scores / 2, scores / 2], axis=1)
        assert metrics.roc_auc(probs, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores),
                                                               abs=1e-12)


def test_roc_auc_multiclass_ovr_macro_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    labels = np.concatenate([np.arange(4), rng.integers(0, 4, 196)])
    logits = rng.integers(0, 3, (200, 4)).astype(np.float64)  # integer logits: tied probabilities per column
    logits[np.arange(200), labels] += rng.integers(0, 2, 200)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ref = sklearn_metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert metrics.roc_auc(probs, labels) == pytest.approx(ref, abs=1e-12)
    assert metrics.roc_auc(probs, labels[:, None], task="multiclass") == pytest.approx(ref, abs=1e-12)
    # 2 classes via task="multiclass": OvR over complementary columns (exact on a 1/4 grid) is the binary AUC
    y = rng.integers(0, 2, 200)
    s = _tied_scores(rng, y)
    assert metrics.roc_auc(np.stack([1 - s, s], axis=1), y, task="multiclass") == pytest.approx(
        sklearn_metrics.roc_auc_score(y, s), abs=1e-12)


def test_roc_auc_multilabel_macro_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (120, 5))
    labels[0], labels[1] = 0, 1
    scores = _tied_scores(rng, labels)
    ref = sklearn_metrics.roc_auc_score(labels, scores, average="macro")
    assert metrics.roc_auc(scores, labels) == pytest.approx(ref, abs=1e-12)
    assert metrics.roc_auc(jnp.asarray(scores, jnp.float32), jnp.asarray(labels)) == pytest.approx(ref, abs=1e-6)


def test_roc_auc_undefined_class_raises_naming_it():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(3), 10)
    with pytest.raises(MedjaxError, match="class 2 .*no positive"):
        metrics.roc_auc(probs, np.array([0, 1] * 5))
    labels = rng.integers(0, 2, (10, 3))
    labels[:, 1] = 1
    with pytest.raises(MedjaxError, match="label 1: .*no negative"):
        metrics.roc_auc(rng.random((10, 3)), labels)
    with pytest.raises(MedjaxError, match="binary task"):
        metrics.roc_auc(rng.random(10), np.zeros(10, int))
    with pytest.raises(MedjaxError, match="NaN"):
        metrics.roc_auc(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(MedjaxError, match="0/1 labels"):
        metrics.roc_auc(rng.random(4), np.array([0, 1, 2, 1]))
    with pytest.raises(MedjaxError, match=r"scores \(3,\) and labels \(4,\)"):
        metrics.roc_auc(rng.random(3), np.array([0, 1, 0, 1]))


def test_metrics_under_jit_with_sharded_batch():
    devices = jax.devices()[:4]
    if len(devices) < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets JAX_NUM_CPU_DEVICES=4)")
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    pred = np.stack([PRED_4X4, LABELS_4X4, PRED_4X4, np.zeros((4, 4), int)])
    labels = np.stack([LABELS_4X4] * 4)
    weights = np.array([1, 1, 1, 0])
    counts = DICE_COUNTS(*(jax.device_put(a, sharding) for a in (pred, labels)), num_classes=5,
                         weights=jax.device_put(weights, sharding))
    np.testing.assert_array_equal(counts[0], [20, 10, 10, 0, 0])
