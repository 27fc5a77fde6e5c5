"""Semantic segmentation: Dice+CE (or CE, or Dice) loss, optional deep supervision, per-class Dice.

Sequences (N, T, *spatial) with `task.per_frame=True` also get per-frame Dice, temporal consistency and, with
`task.ef_class` (and `task.ef_exponent`), the ejection fraction measured from the segmentation
(`medjax.temporal_metrics`), at each sequence's end-diastolic and end-systolic frames when the batch names them
("ed_es" (N, 2), from the ACDC / M&Ms layouts of the `cine_folder` source).

A batch may carry a per-voxel "mask" (N, *spatial) next to its "label" (e.g. a field-of-view mask from the
`image_folder` source, or the labelled frames of a cine): voxels where it is 0 count in neither the loss nor the
Dice counts.

`medjax evaluate` also scores each case's surfaces (`task.surface_metrics`, `medjax.surface_metrics`): HD95, ASSD
and NSD at `task.nsd_tolerance_mm` per foreground class, in mm from the example's "spacing" (1 per voxel without
one), outside the "mask" nothing counted; validation during training does not (it stays a device-side count)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax import losses, metrics, schema
from medjax import surface_metrics as surface_lib
from medjax.errors import MedjaxError
from medjax.models.layers import resize_nearest
from medjax.tasks.base import apply_model, keep_valid, model_from_config

LOSSES = ("dice_ce", "ce", "dice")
DICE_AVERAGES = ("voxels", "cases")


# Nearest-neighbour downsampling of integer labels (or a per-voxel mask) to a coarser deep-supervision output
# (for a factor-2 output this is `labels[:, ::2, ::2]`, the pixel each strided level keeps).
resize_labels = resize_nearest


class SegmentationTask:
    """Owns the model, the loss and the metrics of a segmentation run (`config.task.name='segmentation'`)."""

    def __init__(self, cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                 class_names: Sequence[str], axis_name: str | None = None):
        cfg = schema.filled("task", cfg, name="segmentation")
        if cfg.loss not in LOSSES:
            raise MedjaxError(f"unknown config.task.loss={cfg.loss!r}; known: {list(LOSSES)}")
        self.num_classes = cfg.num_classes
        self.class_names = list(class_names) or [f"class{i}" for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise MedjaxError(f"config.task.num_classes={self.num_classes} but the data names "
                              f"{len(self.class_names)} classes: {self.class_names}")
        self.loss_name = cfg.loss
        self.include_background = cfg.include_background
        self.dice_batch = cfg.dice_batch
        self.dice_average = cfg.dice_average
        if self.dice_average not in DICE_AVERAGES:
            raise MedjaxError(f"unknown config.task.dice_average={self.dice_average!r}; known: {list(DICE_AVERAGES)}")
        self.per_frame = bool(cfg.per_frame)
        self.ef_class = cfg.ef_class
        self.ef_exponent = float(cfg.ef_exponent)
        if self.ef_class is not None and not self.per_frame:
            raise MedjaxError("config.task.ef_class measures EF over frames: set config.task.per_frame=True")
        if self.ef_class is not None and not 0 < self.ef_class < self.num_classes:  # before training, not after
            raise MedjaxError(f"config.task.ef_class={self.ef_class} must name a foreground class "
                              f"(1..{self.num_classes - 1})")
        self.surface_metrics = bool(cfg.surface_metrics) and not self.per_frame
        self.nsd_tolerance = surface_lib.tolerances(cfg.nsd_tolerance_mm, self.num_classes - 1,
                                                    "config.task.nsd_tolerance_mm")
        self.kind = "softmax"
        self.model = model_from_config(model_cfg, self.num_classes, axis_name)

    def init_variables(self, rng: jax.Array, image: jax.Array) -> dict:
        return self.model.init(rng, image, train=False)

    def _loss(self, logits: jax.Array, labels: jax.Array, weights: jax.Array,
              mask: jax.Array | None) -> jax.Array:
        kw = dict(weights=weights, mask=mask)
        if self.loss_name == "ce":
            return losses.softmax_cross_entropy(logits, labels, **kw)
        if self.loss_name == "dice":
            return losses.soft_dice_loss(logits, labels, self.num_classes, include_background=self.include_background,
                                         batch=self.dice_batch, **kw)
        return losses.dice_ce_loss(logits, labels, self.num_classes, include_background=self.include_background,
                                   batch=self.dice_batch, **kw)

    def loss(self, params: Any, batch_stats: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, tuple[Any, dict]]:
        """Training loss; with deep supervision, auxiliary outputs add with weights 1/2, 1/4, ... (normalised).
        A batch "mask" is downsampled with the labels, so every scale ignores the same region."""
        out, new_stats = apply_model(self.model, params, batch_stats, batch["image"], train=True, dropout_key=rng)
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        weights = np.array([0.5**i for i in range(len(outputs))])
        weights = weights / weights.sum()
        total = 0.0
        for w, logits in zip(weights, outputs):
            labels, mask = batch["label"], batch.get("mask")
            if logits.shape[1:-1] != labels.shape[1:]:
                labels = resize_labels(labels, logits.shape[1:-1])
                mask = None if mask is None else resize_labels(mask, logits.shape[1:-1])
            total = total + w * self._loss(logits.astype(jnp.float32), labels, batch["weight"], mask)
        return total, (new_stats, {"loss": total})

    def forward(self, params: Any, batch_stats: Any, image: jax.Array,
                dropout_key: jax.Array | None = None) -> jax.Array:
        """Eval-mode logits (N, *spatial, C) (the main output under deep supervision; dropout only with a key)."""
        return apply_model(self.model, params, batch_stats, image, train=False, dropout_key=dropout_key)[0]

    def eval_outputs(self, params: Any, batch_stats: Any, batch: dict, per_case: bool = False) -> dict:
        """`outputs_from_logits` of the model's logits."""
        return self.outputs_from_logits(self.forward(params, batch_stats, batch["image"]), batch, per_case)

    def outputs_from_logits(self, logits: jax.Array, batch: dict, per_case: bool = False) -> dict:
        """Per-example Dice counts (intersection, predicted, reference voxels per class) of the argmax of `logits`
        (one model's, or a predictive mean's), inside the batch "mask" if it has one; with `task.per_frame`, per
        example and frame (N, T, 3, C) of sequences. With `per_case` and surface metrics on, also the
        predictions and example indices `case_outputs` needs."""
        pred = jnp.argmax(logits, axis=-1)
        if "mask" in batch:
            count = lambda p, l, m: jnp.stack(  # noqa: E731
                metrics.dice_counts(p[None], l[None], self.num_classes, mask=m[None]))
            args = (pred, batch["label"], batch["mask"])
        else:
            count = lambda p, l: jnp.stack(metrics.dice_counts(p[None], l[None], self.num_classes))  # noqa: E731
            args = (pred, batch["label"])
        per_example = jax.vmap(jax.vmap(count) if self.per_frame else count)
        out = {"dice_counts": per_example(*args), "weight": batch["weight"]}
        if self.per_frame and "ed_es" in batch:  # the frames EF is measured at (see `summarize`)
            out["ed_es"] = batch["ed_es"]
        if per_case and self.surface_metrics:
            out.update(pred=pred.astype(jnp.int32), index=batch["index"])
        return out

    def case_surface(self, pred: np.ndarray, example: dict) -> np.ndarray:
        """HD95, ASSD and NSD (3, C-1) of one case's predicted label map against its example (host side)."""
        label = np.asarray(example["label"])
        spacing = example.get("spacing")
        return surface_lib.surface_metrics(pred, label, self.num_classes,
                                           None if spacing is None else np.asarray(spacing, np.float64),
                                           self.nsd_tolerance, example.get("mask"))

    def case_outputs(self, outputs: dict[str, np.ndarray], source: Any) -> dict[str, np.ndarray]:
        """Host outputs of a `per_case` batch with the predictions replaced by each case's surface metrics
        (`surface` (N, 3, C-1), NaN on padded rows), so only per-case numbers outlive the batch."""
        out = dict(outputs)
        pred, index = out.pop("pred", None), out.pop("index", None)
        if pred is not None:
            surface = np.full((len(pred), len(surface_lib.METRICS), self.num_classes - 1), np.nan)
            for r in np.flatnonzero(out["weight"] > 0):
                surface[r] = self.case_surface(pred[r], source[int(index[r])])
            out["surface"] = surface
        return out

    def case_records(self, outputs: dict[str, np.ndarray]) -> list[dict]:
        """eval_cases.json rows of the valid examples: Dice per class (null where neither has the class) and,
        when computed, the surface metrics per foreground class (null where undefined)."""
        out = keep_valid(outputs)
        counts = out["dice_counts"].sum(axis=1) if self.per_frame else out["dice_counts"]
        records = []
        for i, c in enumerate(counts):
            record = {f"dice/{n}": (None if np.isnan(d) else float(d))
                      for n, d in zip(self.class_names, metrics.dice_from_counts(*c))}
            if "surface" in out:
                record.update(surface_lib.case_record(out["surface"][i], self.class_names[1:]))
            records.append(record)
        return records

    def probabilities(self, params: Any, batch_stats: Any, image: jax.Array) -> jax.Array:
        """Softmax class probabilities (N, *spatial, C), float32: what sliding windows blend (as nnU-Net)."""
        logits, _ = apply_model(self.model, params, batch_stats, image, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    def predict(self, params: Any, batch_stats: Any, image: jax.Array) -> jax.Array:
        logits, _ = apply_model(self.model, params, batch_stats, image, train=False)
        return jnp.argmax(logits, axis=-1)

    def save_examples(self, path: str, images: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> None:
        """Overlay PNG: image, reference and prediction side by side (2D; the middle slice of 3D volumes)."""
        from medjax.viz import save_overlay_png

        while images.ndim >= 5:  # 3D: the middle slice; sequences: the middle frame (then its middle slice)
            mid = images.shape[1] // 2
            images, labels, preds = images[:, mid], labels[:, mid], preds[:, mid]
        save_overlay_png(path, images, labels, preds, self.class_names)

    def summarize(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Dice per class, then `dice_mean` over the foreground classes (1..C-1).

        `task.dice_average="voxels"` (default) pools every evaluated voxel (the split as one volume);
        `"cases"` averages each example's Dice over the examples whose reference has the class (the Decathlon
        convention for 3D cases: a small structure counts as much as a large one). Outputs with per-case
        `surface` metrics (from `case_outputs`) add `hd95/<class>`, `assd/<class>`, `nsd/<class>` for the
        foreground classes and their `*_mean` (`medjax.surface_metrics.summarize`)."""
        valid = keep_valid(outputs)
        per_example = valid["dice_counts"]
        per_frame = per_example if self.per_frame else None
        if self.per_frame:  # (N, T, 3, C): a sequence is one case
            per_example = per_example.sum(axis=1)
        if self.dice_average == "cases":
            dice = np.stack([metrics.dice_from_counts(*c) for c in per_example])
            present = ~np.isnan(dice)
            dice = np.where(present.any(0), np.nansum(dice, 0) / np.maximum(present.sum(0), 1), np.nan)
        else:
            counts = per_example.sum(axis=0)
            dice = metrics.dice_from_counts(counts[0], counts[1], counts[2])
        result = {f"dice/{name}": float(d) for name, d in zip(self.class_names, dice)}
        result["dice_mean"] = metrics.mean_foreground_dice(dice)
        if "surface" in outputs:
            result.update(surface_lib.summarize(valid["surface"], self.class_names[1:]))
        if per_frame is not None:
            from medjax.temporal_metrics import sequence_summary

            result.update(sequence_summary(per_frame, self.class_names, self.ef_class, self.ef_exponent,
                                           valid.get("ed_es")))
        return result
