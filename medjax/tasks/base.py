"""What every task shares: building the model from config and applying it with or without BatchNorm state.

A task owns its loss, its training metrics and its evaluation summary; it does no I/O and knows nothing about
devices. Its functions are pure and are traced inside the strategy's jitted (or pmapped) step.

Evaluation is split in two so that any number of sampled predictions (ensemble members, MC-dropout passes,
test-time augmentation draws; `medjax.inference.predictive`) is scored exactly as one model is: `forward(params,
batch_stats, image, dropout_key=None)` gives the eval-mode logits, `outputs_from_logits(logits, batch)` the
per-example outputs `summarize` reads, and `kind` ("softmax", "sigmoid" or "mean", see
`medjax.trust.uncertainty.mean_logits`) says how samples' logits combine into the predictive mean's logits.
`eval_outputs` is the two in a row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from medjax import rng
from medjax.errors import MedjaxError
from medjax.models import build_model


def model_from_config(cfg: ml_collections.ConfigDict, num_classes: int, axis_name: str | None,
                      **task_fields: Any) -> nn.Module:
    """`config.model.name` plus its other keys as constructor arguments; an unknown argument is named.
    `remat=True` turns on the model's rematerialisation; `time_distributed=True` runs the model frame by frame
    on sequences (N, T, *spatial, C). `task_fields` are fields the task decides (a detector's `num_anchors`)."""
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k != "name"}
    for key in task_fields:
        if key in kwargs:
            raise MedjaxError(f"config.model.{key} is set by the task (from config.task); remove it")
    kwargs.update(task_fields)
    kwargs["num_classes"] = num_classes
    if axis_name:
        kwargs["bn_axis_name"] = axis_name
    remat = kwargs.pop("remat", False)
    time_distributed = kwargs.pop("time_distributed", False)
    try:
        model = build_model(cfg.name, **kwargs)
    except TypeError as e:  # a dataclass constructor rejecting a keyword: the config's key is wrong
        raise MedjaxError(f"config.model: {e} (model {cfg.name!r})") from e
    if remat:
        if "remat" not in {f.name for f in dataclasses.fields(model)}:
            raise MedjaxError(f"config.compute.remat: model {cfg.name!r} has no rematerialisation option")
        model = model.clone(remat=True)
    if time_distributed:  # a per-frame baseline for sequences (N, T, ...): time folded into the batch
        from medjax.models.convlstm import TimeDistributed

        model = TimeDistributed(model)
    return model


def apply_model(model: nn.Module, params: Any, batch_stats: Any, x: jax.Array, train: bool,
                *inputs: Any, dropout_key: jax.Array | None = None) -> tuple[Any, Any]:
    """Run the model on `x` (and further `inputs`, e.g. a bag's instance mask); returns (outputs, new
    batch_stats). BatchNorm statistics update only in training; dropout (`medjax.models.layers.Dropout`) is on
    exactly when `dropout_key` is given: the tasks' losses pass the step's key, MC-dropout passes one key per
    sample with `train=False` (BatchNorm's running statistics, dropout on). The key is made threefry
    (`medjax.rng.threefry`) so that vmapped samples draw their own masks."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    kwargs = {} if dropout_key is None else {"rngs": {"dropout": rng.threefry(dropout_key)}}
    if train and batch_stats:
        out, updates = model.apply(variables, x, *inputs, train=True, mutable=["batch_stats"], **kwargs)
        return out, updates["batch_stats"]
    return model.apply(variables, x, *inputs, train=train, **kwargs), batch_stats


def dropout_rate(model: nn.Module) -> float:
    """The model's dropout rate (`dropout_rate`, or MONAI UNet's `dropout`; through `TimeDistributed`), 0 without."""
    model = getattr(model, "module", model)
    return float(getattr(model, "dropout_rate", 0.0) or getattr(model, "dropout", 0.0) or 0.0)


def keep_valid(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop padded rows (weight 0) from host-side eval outputs."""
    valid = outputs["weight"] > 0
    return {k: v[valid] for k, v in outputs.items()}
