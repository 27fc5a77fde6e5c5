"""Blocks every shipped config spells the same way: the optimizer, parallel and checkpoint sections.

Only the keys a call passes are set; every key a config leaves out takes its one default from `medjax.schema`.
"""

from __future__ import annotations

from typing import Any

import ml_collections


def optimizer(name: str, learning_rate: float, schedule: str, warmup_steps: int, **extra: Any
              ) -> ml_collections.ConfigDict:
    """`config.optimizer`: an Optax optimizer by name with its schedule (`extra`: weight_decay, grad_clip_norm,
    b1, ...)."""
    return ml_collections.ConfigDict(dict(name=name, learning_rate=learning_rate, schedule=schedule,
                                          warmup_steps=warmup_steps, **extra))


def parallel(strategy: str = "sharding") -> ml_collections.ConfigDict:
    """`config.parallel`: jit + NamedSharding by default, or "pmap"."""
    return ml_collections.ConfigDict(dict(strategy=strategy))


def checkpoint(best_metric: str, best_mode: str = "max", max_to_keep: int = 2) -> ml_collections.ConfigDict:
    """`config.checkpoint`: the latest `max_to_keep` for resume, and the best by `best_metric` for evaluation."""
    return ml_collections.ConfigDict(dict(max_to_keep=max_to_keep, best_metric=best_metric, best_mode=best_mode))
