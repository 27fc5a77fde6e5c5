"""Optax optimizers and learning-rate schedules from `config.optimizer`."""

from __future__ import annotations

import ml_collections
import optax

from medjax import schema
from medjax.errors import MedjaxError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "piecewise")


def make_schedule(cfg: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """`constant`, `cosine` (to 0 at the last step) or `piecewise` (x`decay_factor` at each fraction of
    `decay_at`, e.g. (0.5, 0.75) as in the MedMNIST protocol); optional linear warm-up of `warmup_steps`."""
    cfg = schema.filled("optimizer", cfg)
    lr = cfg.learning_rate
    warmup = cfg.warmup_steps
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(1, num_train_steps - warmup))
    elif cfg.schedule == "piecewise":
        boundaries = {int(f * num_train_steps) - warmup: cfg.decay_factor for f in cfg.decay_at}
        main = optax.piecewise_constant_schedule(lr, boundaries)
    else:
        raise MedjaxError(f"unknown config.optimizer.schedule={cfg.schedule!r}; known: {list(SCHEDULES)}")
    if warmup > 0:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return main


def make_base_optimizer(cfg: ml_collections.ConfigDict, learning_rate: optax.ScalarOrSchedule
                        ) -> optax.GradientTransformation:
    """The optimizer named by `cfg.name` at `learning_rate` (a number or a schedule), without clipping."""
    cfg = schema.filled("optimizer", cfg)
    betas = dict(b1=cfg.b1, b2=cfg.b2)  # GANs usually want b1=0.5 (DCGAN) or 0
    if cfg.name == "adam":
        return optax.adam(learning_rate, **betas)
    if cfg.name == "adamw":
        return optax.adamw(learning_rate, weight_decay=cfg.weight_decay, **betas)
    if cfg.name == "sgd":
        return optax.sgd(learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise MedjaxError(f"unknown config.optimizer.name={cfg.name!r}; known: {list(OPTIMIZERS)}")


def make_optimizer(cfg: ml_collections.ConfigDict, num_train_steps: int) -> optax.GradientTransformation:
    """The optimizer named by `cfg.name`, with the schedule and optional global-norm gradient clipping.
    (`medjax.train.finetune.make_finetune_optimizer` builds the per-group variant from the same pieces.)"""
    cfg = schema.filled("optimizer", cfg)
    schedule = make_schedule(cfg, num_train_steps)
    tx = make_base_optimizer(cfg, schedule)
    if cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx
