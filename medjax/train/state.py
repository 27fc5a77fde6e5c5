"""The train state: a plain pytree, so checkpointing, sharding and donation need no special cases."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

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


def create_state(init_variables: Callable[[jax.Array], dict], tx: optax.GradientTransformation, seed: int,
                 pretrained: Mapping[str, Any] | None = None) -> TrainState:
    """Initialise model variables and optimizer state from `seed` (pure: use under jit with out_shardings).

    `pretrained` ({'/'-joined variable path: array}, e.g. "params/stem_conv/kernel", from
    `medjax.train.init_from`) replaces those leaves of the fresh initialisation (cast to their dtypes); the others
    keep their fresh values, and the optimizer state is initialised for the resulting params. Pass it as an
    argument of the jitted function, not a closure, so the weights are not baked into the program."""
    init_key, train_key = jax.random.split(rng.key(seed))
    variables = init_variables(init_key)
    if pretrained:
        flat = flatten_dict(dict(variables), keep_empty_nodes=True, sep="/")
        unknown = sorted(set(pretrained) - set(flat))
        if unknown:
            raise ValueError(f"pretrained values for leaves the model does not have: {unknown[:5]}")
        for path, value in pretrained.items():
            flat[path] = jnp.asarray(value, flat[path].dtype)
        variables = unflatten_dict(flat, sep="/")
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=rng.to_data(train_key),
    )
