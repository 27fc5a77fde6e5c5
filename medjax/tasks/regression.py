"""Regression of one or more continuous targets per example (e.g. ejection fraction from a cine sequence).

The dataset's split arrays hold the targets under `config.task.target_key` (default "target"), shape (N,) or
(N, K); the model's K outputs are its `num_classes` (medjax models name their output width so). Loss: "mse"
(default) or "l1". The model learns (target - `task.target_offset`) * `task.target_scale` and predictions are
mapped back: set them to about the targets' mean and 1 / std, so the network's outputs start near the right place
(Adam moves each parameter by about the learning rate per step, so an output bias needs about |target| / lr
steps to reach a raw target far from 0). Summary over the split: `mae`, `rmse`, `r2`
(1 - SS_res / SS_tot, scikit-learn's `r2_score`, averaged over outputs) and `loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax import losses, schema
from medjax.errors import MedjaxError
from medjax.tasks.base import apply_model, keep_valid, model_from_config

LOSSES = ("mse", "l1")


class RegressionTask:
    """Owns the model, loss and metrics of `config.task.name='regression'`."""

    def __init__(self, cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                 class_names: Sequence[str], axis_name: str | None = None):
        cfg = schema.filled("task", cfg, name="regression")
        self.num_outputs = int(cfg.num_outputs)
        self.target_key = cfg.target_key
        self.loss_name = cfg.loss
        self.scale = float(cfg.target_scale)
        self.offset = float(cfg.target_offset)
        if not (np.isfinite(self.scale) and self.scale != 0 and np.isfinite(self.offset)):
            raise MedjaxError(f"config.task.target_scale must be finite and non-zero and target_offset finite, got "
                              f"{self.scale} and {self.offset}")
        if self.loss_name not in LOSSES:
            raise MedjaxError(f"unknown config.task.loss={self.loss_name!r} for regression; known: {list(LOSSES)}")
        self.kind = "mean"  # samples' predictions average (ensembles)
        self.model = model_from_config(model_cfg, self.num_outputs, axis_name)

    def init_variables(self, rng: jax.Array, image: jax.Array) -> dict:
        return self.model.init(rng, image, train=False)

    def _targets(self, batch: dict) -> jax.Array:
        if self.target_key not in batch:
            raise MedjaxError(f"regression needs a {self.target_key!r} array in the data (config.task.target_key); "
                              f"the batch has {sorted(batch)}")
        return jnp.asarray(batch[self.target_key], jnp.float32).reshape(-1, self.num_outputs)

    def _per_example(self, pred: jax.Array, target: jax.Array) -> jax.Array:
        diff = pred.astype(jnp.float32) - (target - self.offset) * self.scale
        return jnp.mean(diff**2 if self.loss_name == "mse" else jnp.abs(diff), axis=-1)

    def loss(self, params: Any, batch_stats: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, tuple[Any, dict]]:
        pred, new_stats = apply_model(self.model, params, batch_stats, batch["image"], train=True, dropout_key=rng)
        loss = losses.weighted_mean(self._per_example(pred, self._targets(batch)), batch["weight"])
        return loss, (new_stats, {"loss": loss})

    def forward(self, params: Any, batch_stats: Any, image: jax.Array,
                dropout_key: jax.Array | None = None) -> jax.Array:
        """Eval-mode outputs in the model's scale (dropout on only with `dropout_key`)."""
        return apply_model(self.model, params, batch_stats, image, train=False, dropout_key=dropout_key)[0]

    def eval_outputs(self, params: Any, batch_stats: Any, batch: dict) -> dict:
        return self.outputs_from_logits(self.forward(params, batch_stats, batch["image"]), batch)

    def outputs_from_logits(self, pred: jax.Array, batch: dict) -> dict:
        """Per-example predictions (in the targets' units) and losses of the model-scale outputs `pred`."""
        target = self._targets(batch)
        return {"pred": pred.astype(jnp.float32) / self.scale + self.offset, "target": target,
                "loss": self._per_example(pred, target), "weight": batch["weight"]}

    def predict(self, params: Any, batch_stats: Any, image: jax.Array) -> jax.Array:
        pred, _ = apply_model(self.model, params, batch_stats, image, train=False)
        return pred.astype(jnp.float32) / self.scale + self.offset

    def summarize(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        out = keep_valid(outputs)
        err = out["pred"] - out["target"]
        ss_res = np.sum(err**2, axis=0)
        ss_tot = np.sum((out["target"] - out["target"].mean(axis=0)) ** 2, axis=0)
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
        return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))),
                "r2": float(np.mean(r2)), "loss": float(np.mean(out["loss"]))}
