"""Object detection (lesions, nodules): RetinaNet / Retina U-Net heads trained on padded ground-truth boxes, 2D and
3D with the same code; evaluation by COCO mAP and LUNA16 FROC / CPM.

A batch holds "image" (N, *spatial, C), the padded boxes "boxes" (N, G, 2d), their classes "box_labels" (N, G)
(0-based foreground classes) and validity "box_valid" (N, G) (`medjax.data.detection`), and for the Retina
U-Net a "label" map (N, *spatial) with values 0..K (the auxiliary segmentation target).

Training (`loss`), traced once per input shape: the model's per-level maps are flattened in the anchors' order
(`medjax.detection.postprocess.flatten_levels`); the anchors are numpy constants made from the static shapes
(`anchor_shapes` at the finest level, doubled per coarser level: MONAI's `AnchorGeneratorWithAnchorShape`); each
image's anchors are matched to its boxes by ATSS or IoU thresholds (`medjax.detection.matching`). The loss is the
focal loss summed over every (non-ignored anchor, class) element of the batch and divided by the batch's
foreground anchors (`cls_loss_norm="foreground"`: the RetinaNet paper's and torchvision's normalisation; with
`"elements"` it is averaged over the elements, which is MONAI's `RetinaNetDetector.compute_loss` without a
sampler, tested against it, and leaves the classification gradient ~1/(anchors x classes) too small to learn
from), plus `box_loss_weight` times the smooth-L1 loss of the
encoded deltas averaged over the foreground anchors' coordinates (or 1 - GIoU of the decoded boxes averaged over
the foreground anchors), plus for the Retina U-Net `seg_loss_weight` times Dice + CE of its segmentation output.
The averages are over the global batch under either strategy: under pmap the element counts are summed across
devices (`psum`) before dividing, so pmap and sharding give the same numbers.

Evaluation (`eval_outputs`), inside the jitted eval step: `postprocess.detect` (sigmoid, score threshold, top-k
per level, decode, clip, class-wise NMS) gives `max_detections` fixed-size detections per image, returned with the
padded ground truth. `summarize` (host) unpads them and reports COCO `map`, `ap50`, `ap75`, `ar<max_detections>`
and `ap/<class>` (`medjax.detection.metrics.coco_metrics`) and LUNA16's `cpm` and `froc/<r>`, the sensitivity at
r = 1/8 ... 8 false positives per case (`froc`, class-agnostic, hits by `froc_match`); `case_records` lists each
case's reference boxes and detections. Large volumes are evaluated by sliding windows (`config.inference.roi_size`;
`medjax.train.volume_eval`), the windows' detections merged per case.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax import losses, schema
from medjax.detection import anchors as anchor_lib
from medjax.detection import boxes as box_lib
from medjax.detection import coder, matching, metrics
from medjax.detection import postprocess as pp
from medjax.errors import MedjaxError
from medjax.tasks.base import apply_model, keep_valid, model_from_config

MATCHERS = ("atss", "iou")
BOX_LOSSES = ("smooth_l1", "giou")
CLS_NORMS = ("foreground", "elements")


def anchor_sides(anchor_shapes: Sequence, spatial_dims: int) -> np.ndarray:
    """`task.anchor_shapes` as an (A, d) array of sides: a number is a square / cube, a tuple one side per axis."""
    rows = []
    for shape in anchor_shapes:
        sides = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,) * spatial_dims
        if len(sides) != spatial_dims or not all(isinstance(v, (int, float)) and v > 0 for v in sides):
            raise MedjaxError(f"config.task.anchor_shapes: {shape!r} is neither a positive side nor {spatial_dims} "
                              f"positive sides (w, h{', d' if spatial_dims == 3 else ''})")
        rows.append(sides)
    if not rows:
        raise MedjaxError("config.task.anchor_shapes must name at least one anchor")
    return np.asarray(rows, np.float32)


@functools.lru_cache(maxsize=32)
def _anchors(shapes: tuple, image_size: tuple[int, ...], feature_sizes: tuple[tuple[int, ...], ...]):
    sides = anchor_sides(shapes, len(image_size))
    cells = [anchor_lib.cell_anchors_from_shapes(sides, 2.0 ** level) for level in range(len(feature_sizes))]
    return anchor_lib.generate_anchors(image_size, feature_sizes, cells)


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


class DetectionTask:
    """Owns the detector, its loss and its metrics (`config.task.name='detection'`; keys in `medjax.schema`)."""

    def __init__(self, cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                 class_names: Sequence[str], axis_name: str | None = None):
        cfg = schema.filled("task", cfg, name="detection")
        self.num_classes = int(cfg.num_classes)
        self.class_names = list(class_names) or [f"class{i}" for i in range(self.num_classes)]
        if self.num_classes < 1 or len(self.class_names) != self.num_classes:
            raise MedjaxError(f"config.task.num_classes={self.num_classes} but the data names "
                              f"{len(self.class_names)} foreground classes: {self.class_names}")
        for key, value, known in (("matcher", cfg.matcher, MATCHERS), ("box_loss", cfg.box_loss, BOX_LOSSES),
                                  ("cls_loss_norm", cfg.cls_loss_norm, CLS_NORMS),
                                  ("window_merge", cfg.window_merge, pp.MERGE_METHODS),
                                  ("froc_match", cfg.froc_match, ("distance", "iou"))):
            if value not in known:
                raise MedjaxError(f"unknown config.task.{key}={value!r}; known: {list(known)}")
        self.cfg = cfg
        self.anchor_shapes = _hashable(cfg.anchor_shapes)
        self.num_anchors = len(self.anchor_shapes)
        self.axis_name = axis_name
        self.focal_alpha = None if cfg.focal_alpha < 0 else float(cfg.focal_alpha)
        self.model = model_from_config(model_cfg, self.num_classes, axis_name, num_anchors=self.num_anchors)

    # ------------------------------------------------------------------------------------------- the network

    def init_variables(self, rng: jax.Array, image: jax.Array) -> dict:
        return self.model.init(rng, image, train=False)

    def _forward(self, params: Any, batch_stats: Any, image: jax.Array, train: bool,
                 dropout_key: jax.Array | None = None):
        """(head outputs, new batch stats, logits (N, M, K), deltas (N, M, 2d), anchors (M, 2d), level sizes)."""
        out, stats = apply_model(self.model, params, batch_stats, image, train, dropout_key=dropout_key)
        spatial = tuple(int(n) for n in image.shape[1:-1])
        feats = tuple(tuple(int(n) for n in m.shape[1:-1]) for m in out["cls"])
        anchors, sizes = _anchors(self.anchor_shapes, spatial, feats)
        logits = pp.flatten_levels(out["cls"], self.num_anchors)
        deltas = pp.flatten_levels(out["box"], self.num_anchors)
        return out, stats, logits, deltas, anchors, sizes

    def _match(self, gt_boxes, gt_valid, anchors, sizes):
        c = self.cfg
        if c.matcher == "atss":
            return matching.match_atss(gt_boxes, gt_valid, anchors, sizes, self.num_anchors, c.atss_candidates,
                                       c.atss_center_in_gt)
        return matching.match_iou(gt_boxes, gt_valid, anchors, c.fg_iou, c.bg_iou)

    # -------------------------------------------------------------------------------------------------- loss

    def _image_terms(self, logits, deltas, gt_boxes, gt_labels, gt_valid, anchors, sizes):
        """One image's (classification loss sum, its element count, box loss sum, its element count, fg)."""
        matches = self._match(gt_boxes, gt_valid, anchors, sizes)
        classes, targets = matching.anchor_targets(matches, gt_boxes, gt_labels, anchors)
        fg = matches >= 0
        onehot = (classes[:, None] == jnp.arange(self.num_classes)[None, :]) & fg[:, None]
        focal = losses.sigmoid_focal_loss(logits, onehot, self.cfg.focal_gamma, self.focal_alpha)
        counted = matches != matching.IGNORE
        cls_sum = jnp.sum(jnp.where(counted[:, None], focal, 0.0))
        if self.cfg.box_loss == "smooth_l1":
            elems = losses.smooth_l1_loss(deltas - targets, self.cfg.smooth_l1_beta)
            box_sum, per_anchor = jnp.sum(jnp.where(fg[:, None], elems, 0.0)), deltas.shape[-1]
        else:
            matched = gt_boxes[jnp.maximum(matches, 0)]
            pred = coder.decode_boxes(deltas.astype(jnp.float32), anchors)
            giou = box_lib.box_giou(pred[:, None, :], jnp.where(fg[:, None], matched, pred)[:, None, :])[:, 0, 0]
            box_sum, per_anchor = jnp.sum(jnp.where(fg, 1.0 - giou, 0.0)), 1
        n_fg = jnp.sum(fg)
        return cls_sum, jnp.sum(counted) * self.num_classes, box_sum, n_fg * per_anchor, n_fg

    def _global_mean(self, sums: jax.Array, counts: jax.Array, weights: jax.Array) -> jax.Array:
        """sum(w * sums) / sum(w * counts) over the global batch (under pmap: this device's share of it)."""
        total = jnp.sum(jnp.where(weights != 0, weights * sums, 0.0))
        count = jnp.sum(weights * counts)
        if self.axis_name is not None:
            count = jax.lax.psum(count, self.axis_name)
            total = total * jax.lax.psum(1, self.axis_name)  # the step's pmean divides by the devices again
        return total / jnp.maximum(count, 1.0)

    def head_loss(self, logits: jax.Array, deltas: jax.Array, anchors: np.ndarray, level_sizes: Sequence[int],
                  batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(classification loss, box loss, foreground anchors per image) of flattened head outputs (N, M, K) and
        (N, M, 2d) against the batch's padded boxes (see the module docstring)."""
        terms = jax.vmap(lambda lg, dl, b, lab, v: self._image_terms(lg, dl, b, lab, v, anchors, level_sizes))(
            logits.astype(jnp.float32), deltas.astype(jnp.float32), jnp.asarray(batch["boxes"], jnp.float32),
            batch["box_labels"], batch["box_valid"])
        w = jnp.asarray(batch["weight"], jnp.float32)
        cls_count = terms[4] if self.cfg.cls_loss_norm == "foreground" else terms[1]
        cls_loss = self._global_mean(terms[0], cls_count.astype(jnp.float32), w)
        box_loss = self._global_mean(terms[2], terms[3].astype(jnp.float32), w)
        return cls_loss, box_loss, losses.weighted_mean(terms[4].astype(jnp.float32), w)

    def loss(self, params: Any, batch_stats: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, tuple[Any, dict]]:
        out, stats, logits, deltas, anchors, sizes = self._forward(params, batch_stats, batch["image"], True, rng)
        cls_loss, box_loss, fg = self.head_loss(logits, deltas, anchors, sizes, batch)
        total = cls_loss + self.cfg.box_loss_weight * box_loss
        metrics_out = {"cls_loss": cls_loss, "box_loss": box_loss, "fg_anchors": fg}
        if "seg" in out:
            seg = losses.dice_ce_loss(out["seg"].astype(jnp.float32), batch["label"], self.num_classes + 1,
                                      weights=jnp.asarray(batch["weight"], jnp.float32))
            total = total + self.cfg.seg_loss_weight * seg
            metrics_out["seg_loss"] = seg
        return total, (stats, {"loss": total, **metrics_out})

    # ------------------------------------------------------------------------------------------- evaluation

    def detect(self, params: Any, batch_stats: Any, image: jax.Array) -> pp.Detections:
        """Fixed-size detections (N, max_detections, ...) of a batch of images (or windows), in the compiled step."""
        _, _, logits, deltas, anchors, sizes = self._forward(params, batch_stats, image, False)
        c = self.cfg
        return pp.detect(logits, deltas, anchors, sizes, tuple(image.shape[1:-1]), score_thresh=c.score_thresh,
                         topk_per_level=c.topk_per_level, nms_thresh=c.nms_thresh, max_detections=c.max_detections)

    def eval_outputs(self, params: Any, batch_stats: Any, batch: dict) -> dict:
        dets = self.detect(params, batch_stats, batch["image"])
        return {"boxes": dets.boxes, "scores": dets.scores, "labels": dets.labels, "det_valid": dets.valid,
                "gt_boxes": batch["boxes"], "gt_labels": batch["box_labels"], "gt_valid": batch["box_valid"],
                "weight": batch["weight"]}

    def predict(self, params: Any, batch_stats: Any, image: jax.Array) -> dict:
        return self.detect(params, batch_stats, image)._asdict()

    def case_records(self, outputs: dict[str, np.ndarray]) -> list[dict]:
        """Per example (host): its reference boxes and its kept detections, best first, as lists (voxel corners,
        class names, boxes rounded to 1e-4 voxels and scores to 1e-6)."""
        records = []
        for i in range(len(outputs["boxes"])):
            det, ref = np.asarray(outputs["det_valid"][i], bool), np.asarray(outputs["gt_valid"][i], bool)
            records.append({
                "num_boxes": int(ref.sum()), "num_detections": int(det.sum()),
                "reference": {"box": np.round(np.asarray(outputs["gt_boxes"][i])[ref], 4).tolist(),
                              "label": [self.class_names[c] for c in np.asarray(outputs["gt_labels"][i])[ref]]},
                "detections": {"box": np.round(np.asarray(outputs["boxes"][i])[det], 4).tolist(),
                               "score": np.round(np.asarray(outputs["scores"][i])[det], 6).tolist(),
                               "label": [self.class_names[c] for c in np.asarray(outputs["labels"][i])[det]]}})
        return records

    def summarize(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """COCO and FROC numbers over the valid examples (see the module docstring)."""
        out = keep_valid(outputs)
        pb, ps, pl = metrics.unpad((out["boxes"], out["scores"], out["labels"], out["det_valid"]))
        gb = [b[v] for b, v in zip(out["gt_boxes"], out["gt_valid"])]
        gl = [lab[v] for lab, v in zip(out["gt_labels"], out["gt_valid"])]
        coco = metrics.coco_metrics(pb, ps, pl, gb, gl, self.num_classes,
                                    max_dets=(1, 10, self.cfg.max_detections))
        result = {k.lower(): float(coco[k]) for k in ("mAP", "AP50", "AP75", f"AR{self.cfg.max_detections}")}
        result.update({f"ap/{name}": float(ap) for name, ap in zip(self.class_names, coco["AP_per_class"])})
        froc = metrics.froc(pb, ps, gb, match=self.cfg.froc_match, iou_threshold=self.cfg.froc_iou)
        result["cpm"] = float(froc["cpm"])
        result.update({f"froc/{r:g}": float(s) for r, s in zip(froc["fp_rates"], froc["sensitivity"])})
        result["num_lesions"] = float(froc["num_lesions"])
        return result

    # ------------------------------------------------------------------------------------------------- data

    @staticmethod
    def prepare_data(data: Any, config: ml_collections.ConfigDict) -> Any:
        """The dataset with boxes on every example: a boxes source's as they are, a segmentation source's made
        from the connected components of its label maps (`medjax.data.detection.component_boxes_dataset`)."""
        from medjax.data.detection import with_boxes

        return with_boxes(data, config.data)
