"""The detection task's loss against MONAI's `RetinaNetDetector.compute_loss` on the same head outputs, anchors and
boxes (ATSS matching, focal classification loss, smooth-L1 on encoded deltas or GIoU on decoded boxes), 2D and
3D; and the per-device normalisation that makes pmap equal to one device."""

import jax
import ml_collections
import numpy as np
import pytest

from medjax.tasks.detection import DetectionTask, _anchors
from tests.detection.helpers import random_boxes

torch = pytest.importorskip("torch")
pytest.importorskip("monai")


def _task(**task):
    cfg = ml_collections.ConfigDict(dict(name="detection", num_classes=2, anchor_shapes=(4.0, (6.0, 3.0) + (), 8.0),
                                         **task))
    model = ml_collections.ConfigDict(dict(name="retina_unet", features=(4, 8), head_channels=8, head_levels=(1, 2)))
    return DetectionTask(cfg, model, ["a", "b"])


def _case(dims: int, seed: int):
    """Random head outputs for 2 images and their boxes (3 in the first image, 1 in the second, G = 4)."""
    rng = np.random.default_rng(seed)
    image = (32,) * dims
    feats = ((8,) * dims, (4,) * dims)
    shapes = (4.0, (6.0, 3.0, 5.0)[:dims], 8.0)
    anchors, sizes = _anchors(shapes, image, feats)
    m = anchors.shape[0]
    logits = rng.normal(-2.0, 1.5, (2, m, 2)).astype(np.float32)
    deltas = rng.normal(0.0, 0.3, (2, m, 2 * dims)).astype(np.float32)
    boxes = np.zeros((2, 4, 2 * dims), np.float32)
    boxes[0, :3] = random_boxes(rng, 3, dims, extent=20.0, max_side=10.0) + 2
    boxes[1, :1] = random_boxes(rng, 1, dims, extent=20.0, max_side=10.0) + 2
    labels = np.array([[0, 1, 1, -1], [1, -1, -1, -1]], np.int32)
    valid = labels >= 0
    batch = {"boxes": boxes, "box_labels": labels, "box_valid": valid, "weight": np.ones(2, np.float32)}
    return shapes, anchors, sizes, feats, logits, deltas, batch


def _monai_loss(dims, anchors, feats, logits, deltas, batch, box_loss, alpha):
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.losses import FocalLoss
    from monai.losses.giou_loss import BoxGIoULoss

    from medjax.bench.detection_bench import torchvision_stubs

    class Net(torch.nn.Module):
        spatial_dims, num_classes, num_anchors, size_divisible = dims, 2, 3, 1
        cls_key, box_reg_key = "classification", "box_regression"

    generator = AnchorGeneratorWithAnchorShape(feature_map_scales=(1, 2), base_anchor_shapes=((4,) * dims,) * 3)
    detector = RetinaNetDetector(Net(), generator)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_cls_loss(FocalLoss(reduction="mean", gamma=2.0, alpha=alpha))
    if box_loss == "giou":
        detector.set_box_regression_loss(BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True)
    else:
        detector.set_box_regression_loss(torch.nn.SmoothL1Loss(beta=1.0 / 9, reduction="mean"), encode_gt=True,
                                         decode_pred=False)
    targets = [{"boxes": torch.from_numpy(b[v]), "labels": torch.from_numpy(lab[v]).long()}
               for b, lab, v in zip(batch["boxes"], batch["box_labels"], batch["box_valid"])]
    with torchvision_stubs():
        out = detector.compute_loss({"classification": torch.from_numpy(logits),
                                     "box_regression": torch.from_numpy(deltas)},
                                    targets, [torch.from_numpy(anchors)] * 2, [int(np.prod(f)) for f in feats])
    return float(out["classification"]), float(out["box_regression"])


@pytest.mark.parametrize("dims,box_loss,alpha", [(2, "smooth_l1", 0.25), (3, "giou", None), (3, "smooth_l1", None)])
def test_loss_equals_monai_retinanet_detector(dims, box_loss, alpha):
    shapes, anchors, sizes, feats, logits, deltas, batch = _case(dims, seed=dims)
    task = _task(box_loss=box_loss, focal_alpha=-1.0 if alpha is None else alpha, cls_loss_norm="elements")
    task.anchor_shapes = shapes
    cls, box, fg = jax.jit(lambda lg, dl, b: task.head_loss(lg, dl, anchors, sizes, b))(logits, deltas, batch)
    ref_cls, ref_box = _monai_loss(dims, anchors, feats, logits, deltas, batch, box_loss, alpha)
    assert float(fg) > 2  # the boxes have foreground anchors, so the box loss is really compared
    np.testing.assert_allclose(float(cls), ref_cls, rtol=1e-5)
    np.testing.assert_allclose(float(box), ref_box, rtol=1e-5)
    # the default divides the same sum by the foreground anchors (ATSS ignores none: N x M x K elements)
    task.cfg.cls_loss_norm = "foreground"
    cls_fg = jax.jit(lambda lg, dl, b: task.head_loss(lg, dl, anchors, sizes, b)[0])(logits, deltas, batch)
    n, m, k = logits.shape
    np.testing.assert_allclose(float(cls_fg), ref_cls * n * m * k / (float(fg) * n), rtol=1e-5)


def test_padded_examples_and_devices_do_not_change_the_loss():
    """A weight-0 padded row changes nothing; under pmap over 2 devices (one image each) the per-device losses,
    averaged as the step's pmean does, equal the one-device loss although the images have different counts."""
    _, anchors, sizes, _, logits, deltas, batch = _case(2, seed=5)
    task = _task()
    loss = jax.jit(lambda lg, dl, b: task.head_loss(lg, dl, anchors, sizes, b)[:2])
    one = [float(x) for x in loss(logits, deltas, batch)]
    padded = {k: np.concatenate([v, v[:1]]) for k, v in batch.items()}
    padded["weight"][-1] = 0.0
    padded_loss = loss(np.concatenate([logits, logits[:1] * 9]), np.concatenate([deltas, deltas[:1]]), padded)
    np.testing.assert_allclose([float(x) for x in padded_loss], one, rtol=1e-6)
    task.axis_name = "d"
    split = {k: v.reshape(2, 1, *v.shape[1:]) for k, v in batch.items()}
    per_device = jax.pmap(lambda lg, dl, b: jax.lax.pmean(task.head_loss(lg, dl, anchors, sizes, b)[:2], "d"),
                          axis_name="d", devices=jax.devices()[:2])(logits[:, None], deltas[:, None], split)
    np.testing.assert_allclose(np.asarray(per_device)[:, 0], one, rtol=1e-5)
