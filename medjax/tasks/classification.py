"""Image classification: multi-class (softmax cross-entropy) or multi-label (sigmoid BCE); accuracy and ROC AUC."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax import losses, metrics, schema
from medjax.tasks.base import apply_model, keep_valid, model_from_config


class ClassificationTask:
    """Owns the model, loss and metrics of `config.task.name='classification'` (`multi_label` picks the head)."""

    def __init__(self, cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                 class_names: Sequence[str], axis_name: str | None = None):
        cfg = schema.filled("task", cfg, name="classification")
        self.num_classes = cfg.num_classes
        self.multi_label = cfg.multi_label
        self.class_names = list(class_names)
        self.kind = "sigmoid" if self.multi_label else "softmax"
        self.model = model_from_config(model_cfg, self.num_classes, axis_name)

    def init_variables(self, rng: jax.Array, image: jax.Array) -> dict:
        return self.model.init(rng, image, train=False)

    def _per_example(self, logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(loss, accuracy) per example."""
        logits = logits.astype(jnp.float32)
        if self.multi_label:
            targets = labels.astype(jnp.float32)
            bce = jnp.mean(jnp.logaddexp(0.0, logits) - logits * targets, axis=-1)
            acc = jnp.mean((logits > 0) == (labels > 0), axis=-1)
            return bce, acc.astype(jnp.float32)
        log_probs = jax.nn.log_softmax(logits)
        ce = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        return ce, (jnp.argmax(logits, -1) == labels).astype(jnp.float32)

    def loss(self, params: Any, batch_stats: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, tuple[Any, dict]]:
        logits, new_stats = apply_model(self.model, params, batch_stats, batch["image"], train=True, dropout_key=rng)
        if self.multi_label:
            loss = losses.sigmoid_binary_cross_entropy(logits, batch["label"], weights=batch["weight"])
        else:
            loss = losses.softmax_cross_entropy(logits, batch["label"], weights=batch["weight"])
        _, acc = self._per_example(logits, batch["label"])
        return loss, (new_stats, {"loss": loss, "acc": losses.weighted_mean(acc, batch["weight"])})

    def forward(self, params: Any, batch_stats: Any, image: jax.Array,
                dropout_key: jax.Array | None = None) -> jax.Array:
        """Eval-mode logits (dropout on only with `dropout_key`)."""
        return apply_model(self.model, params, batch_stats, image, train=False, dropout_key=dropout_key)[0]

    def eval_outputs(self, params: Any, batch_stats: Any, batch: dict) -> dict:
        return self.outputs_from_logits(self.forward(params, batch_stats, batch["image"]), batch)

    def outputs_from_logits(self, logits: jax.Array, batch: dict) -> dict:
        """Per-example probabilities, loss and accuracy of `logits` (one model's, or a predictive mean's)."""
        loss, acc = self._per_example(logits, batch["label"])
        probs = jax.nn.sigmoid(logits) if self.multi_label else jax.nn.softmax(logits)
        return {"probs": probs, "label": batch["label"], "loss": loss, "acc": acc, "weight": batch["weight"]}

    def predict(self, params: Any, batch_stats: Any, image: jax.Array) -> jax.Array:
        logits, _ = apply_model(self.model, params, batch_stats, image, train=False)
        return (logits > 0).astype(jnp.int32) if self.multi_label else jnp.argmax(logits, -1)

    def summarize(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """`acc`, `auc` (binary: positive-class score; multi-class: one-vs-rest macro; multi-label: macro), `loss`."""
        out = keep_valid(outputs)
        probs = out["probs"]
        scores = probs[:, 1] if (not self.multi_label and self.num_classes == 2) else probs
        return {"acc": float(out["acc"].mean()), "auc": float(metrics.roc_auc(scores, out["label"])),
                "loss": float(out["loss"].mean())}
