"""Sampled predictions as one compiled program: deep-ensemble members, MC-dropout passes, test-time augmentation
draws, stacked on a leading sample axis (S, N, ...) and combined into the predictive mean's logits
(`medjax.trust.uncertainty.mean_logits`), which the task then scores as it scores one model.

* Members: a state whose leaves carry a leading member axis (`config.ensemble.size` K > 1,
  `medjax.train.ensemble`) is applied member by member under `jax.vmap` -> (K, N, ...); a plain state -> (1, N, ...).
* MC-dropout (`mc_dropout`): T passes with dropout on and BatchNorm's running statistics, vmapped over the passes'
  dropout keys `fold_in(fold_in(key(seed), SAMPLE_STREAM), t)` (member k of an ensemble folds in k too) -> (T x M,
  N, ...).
* Test-time augmentation (`tta`): T draws of the augmentation (`medjax.inference.tta`), draw t keyed by the same
  `fold_in(..., t)`, segmentation maps mapped back to the input's voxels -> (T x M, N, ...).

Everything is a pure function of (state, batch) and the seed, traced inside the strategy's eval step, so the T
samples run as one XLA program on every device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from medjax import rng
from medjax.inference import tta as tta_lib
from medjax.trust.uncertainty import mean_logits

SAMPLE_STREAM = 3  # folded into key(seed) for the keys of MC-dropout passes and TTA draws
METHODS = ("mc_dropout", "tta")


def member_logits(task: Any, params: Any, batch_stats: Any, image: jax.Array, members: int,
                  dropout_key: jax.Array | None = None) -> jax.Array:
    """Eval-mode logits (M, N, ...) of every member (M = `members`, vmapped over the leading member axis of
    `params` and `batch_stats`; or 1 for a plain model), dropout on with `dropout_key` (member k's folds in k)."""
    if not members:
        return task.forward(params, batch_stats, image, dropout_key)[None]
    if dropout_key is None:
        return jax.vmap(lambda p, s: task.forward(p, s, image))(params, batch_stats)
    keys = jax.vmap(lambda k: jax.random.fold_in(dropout_key, k))(jnp.arange(members))
    return jax.vmap(lambda p, s, k: task.forward(p, s, image, k))(params, batch_stats, keys)


def predictive_logits(task: Any, params: Any, batch_stats: Any, image: jax.Array, members: int) -> jax.Array:
    """The logits a plain model gives, or for an ensemble the logits of its members' mean prediction."""
    if not members:
        return task.forward(params, batch_stats, image)
    return mean_logits(member_logits(task, params, batch_stats, image, members), task.kind)


def sampler(task: Any, members: int, method: str | None = None, samples: int = 1, seed: int = 0,
            tta: Callable | None = None) -> Callable[[Any, dict], jax.Array]:
    """`(state, batch) -> logits (S, N, ...)`: the members (method None), or `samples` MC-dropout passes
    (`mc_dropout`) or TTA draws (`tta`, with `tta` from `medjax.inference.tta.make_tta`) of every member."""
    if method is None:
        return lambda state, batch: member_logits(task, state.params, state.batch_stats, batch["image"], members)
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; known: {METHODS}")
    base = jax.random.fold_in(rng.key(seed), SAMPLE_STREAM)

    def one(state: Any, batch: dict, t: jax.Array) -> jax.Array:
        key = jax.random.fold_in(base, t)
        if method == "mc_dropout":
            return member_logits(task, state.params, state.batch_stats, batch["image"], members, key)
        image, voxels = tta(key, batch)
        logits = member_logits(task, state.params, state.batch_stats, image, members)
        return logits if voxels is None else jax.vmap(lambda lg: tta_lib.invert(lg, voxels))(logits)

    def sample(state: Any, batch: dict) -> jax.Array:
        stacked = jax.vmap(lambda t: one(state, batch, t))(jnp.arange(samples))  # (T, M, N, ...)
        return stacked.reshape((-1, *stacked.shape[2:]))

    return sample
