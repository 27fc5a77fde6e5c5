"""Multiple-instance learning: one label per bag of instances (a slide's tiles), from an attention-pooling model.

The batch holds "image" (N, K, *spatial, C) bags, "instance_mask" (N, K) (1 = a real tile, 0 = padding) and
"label" (N,) bag classes; the model (`abmil`, `medjax.models.abmil`) returns slide logits, attention over the
tiles and per-tile logits. Loss, accuracy and ROC AUC are classification's (softmax cross-entropy; binary AUC on
the positive class, else one-vs-rest macro); evaluation also returns each bag's "attention" (N, K) and
"tile_probs" (N, K, C) for tile-level heat maps (`medjax.inference.wsi_heatmaps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from medjax import losses, schema
from medjax.errors import MedjaxError
from medjax.tasks.base import apply_model, model_from_config
from medjax.tasks.classification import ClassificationTask


class MILTask(ClassificationTask):
    """Owns the model, loss and metrics of `config.task.name='mil'` (single-label classes per bag)."""

    bag_inputs = True  # the images are bags (N, K, ...): augmentation treats each instance as an image

    def __init__(self, cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                 class_names: Sequence[str], axis_name: str | None = None):
        cfg = schema.filled("task", cfg, name="mil")
        self.num_classes = cfg.num_classes
        self.multi_label = False
        self.class_names = list(class_names)
        self.model = model_from_config(model_cfg, self.num_classes, axis_name)

    def init_variables(self, rng: jax.Array, image: jax.Array) -> dict:
        return self.model.init(rng, image, jnp.ones(image.shape[:2], jnp.float32), train=False)

    def forward_bags(self, params: Any, batch_stats: Any, batch: dict, train: bool):
        """(slide logits, attention, tile logits, new batch_stats) of a batch of bags (with their instance masks;
        the plain `forward(image)` of the other tasks has no mask, so ensembles and --uncertainty refuse 'mil')."""
        image = batch["image"]
        if image.ndim < 4:
            raise MedjaxError(f"task 'mil' takes bags (N, K, *spatial, C); the batch image has shape {image.shape}")
        mask = batch.get("instance_mask")
        mask = jnp.ones(image.shape[:2], jnp.float32) if mask is None else mask
        (logits, attention, tile_logits), stats = apply_model(self.model, params, batch_stats, image, train, mask)
        return logits, attention, tile_logits, stats

    def loss(self, params: Any, batch_stats: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, tuple[Any, dict]]:
        logits, _, _, new_stats = self.forward_bags(params, batch_stats, batch, train=True)
        loss = losses.softmax_cross_entropy(logits, batch["label"], weights=batch["weight"])
        _, acc = self._per_example(logits, batch["label"])
        return loss, (new_stats, {"loss": loss, "acc": losses.weighted_mean(acc, batch["weight"])})

    def eval_outputs(self, params: Any, batch_stats: Any, batch: dict) -> dict:
        logits, attention, tile_logits, _ = self.forward_bags(params, batch_stats, batch, train=False)
        loss, acc = self._per_example(logits, batch["label"])
        return {"probs": jax.nn.softmax(logits), "label": batch["label"], "loss": loss, "acc": acc,
                "weight": batch["weight"], "attention": attention, "tile_probs": jax.nn.softmax(tile_logits)}

    def predict(self, params: Any, batch_stats: Any, image: jax.Array) -> jax.Array:
        logits, _, _, _ = self.forward_bags(params, batch_stats, {"image": image}, train=False)
        return jnp.argmax(logits, -1)
