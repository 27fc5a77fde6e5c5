"""The train state: a plain pytree, so checkpointing, sharding and donation need no special cases."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from medjax import rng


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue bit-for-bit: weights, BatchNorm statistics, optimizer, step, key.

    `rng` is raw key data (uint32, see medjax.rng) that never changes; the key of step `s` is
    `fold_in(rng, s)`, so randomness depends only on the seed and the step, not on how often a run restarted.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def create_state(init_variables: Callable[[jax.Array], dict], tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Initialise model variables and optimizer state from `seed` (pure: use under jit with out_shardings)."""
    init_key, train_key = jax.random.split(rng.key(seed))
    variables = init_variables(init_key)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=rng.to_data(train_key),
    )
