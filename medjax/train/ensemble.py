"""Deep ensembles trained as one program (`config.ensemble.size` K > 1; Lakshminarayanan et al. 2017).

Member k is exactly the run that `config.seed + k` is on its own: its initialisation (`create_state(seed + k)`),
its data order and host-side randomness (the stream's seed + k), its augmentation and dropout (its state's key).
The K states are stacked on a leading member axis (params, BatchNorm statistics, optimizer state, step, key) and
ONE jitted step vmaps the plain step over the members. The training batch carries the member axis second,
(B, K, ...), so the strategies shard and split its first axis as they do any batch (jit + sharding and pmap need
no change) while each member trains on its own examples. Logged metrics are the members' means, plus
`loss_member_std` (their spread). Validation and `medjax evaluate` score the members' mean prediction
(`medjax.inference.predictive`). Checkpoints hold the stacked state and the stream's one position (every member
is at the same step and reads its own order from it), so a resume is exact.

Randomness inside the vmapped step draws from threefry keys only (augmentation, dropout: `medjax.rng.threefry`):
vmapped rbg draws would not be each member's own. The initialisations are not vmapped but traced one after the
other in one jitted function, so each is bit for bit the one a separate run draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from medjax.errors import MedjaxError


def members(config: ml_collections.ConfigDict) -> int:
    """K for an ensemble of K > 1 members, 0 for a plain run (no member axis anywhere)."""
    size = config.ensemble.size
    return size if size > 1 else 0


def check(config: ml_collections.ConfigDict, family: str) -> None:
    """The one place that refuses ensembles medjax does not train (one line naming the key)."""
    size = config.ensemble.size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise MedjaxError(f"config.ensemble.size must be an integer >= 1 (1 = no ensemble), got {size!r}")
    if size > 1 and config.task.name == "mil":
        raise MedjaxError(f"config.ensemble.size={size}: multiple-instance bags (task 'mil') do not train as "
                          "ensembles yet")
    if size > 1 and config.task.name == "detection":
        raise MedjaxError(f"config.ensemble.size={size}: detectors (task 'detection') do not train as ensembles yet "
                          "(their members' boxes would need fusing, not averaged logits)")
    if size > 1 and family != "supervised":
        raise MedjaxError(f"config.ensemble.size={size}: ensembles train supervised tasks (classification, "
                          f"segmentation, regression), not {config.task.name!r}")


def creator(create_one: Callable[..., Any], seed: int, k: int) -> Callable[..., Any]:
    """`create(*args, **kwargs) -> state`: `create_one(seed, ...)` for a plain run (k = 0), else the states of
    seeds seed .. seed + k - 1 stacked on a leading member axis (pure: jit it with out_shardings)."""
    if not k:
        return lambda *args, **kwargs: create_one(seed, *args, **kwargs)

    def create(*args: Any, **kwargs: Any) -> Any:
        states = [create_one(seed + i, *args, **kwargs) for i in range(k)]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)

    return create


def member_shapes(abstract: Any, k: int) -> Any:
    """One member's shapes of a (possibly stacked) abstract state: what pretrained weights are matched against."""
    if not k:
        return abstract
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), abstract)


def train_step(step: Callable[[Any, dict], tuple[Any, dict]]) -> Callable[[Any, dict], tuple[Any, dict]]:
    """The plain step vmapped over the members: state (K, ...), batch (B, K, ...) -> state, metrics averaged over
    the members plus `loss_member_std`."""
    members_step = jax.vmap(step, in_axes=(0, 1))

    def ensemble_step(state: Any, batch: dict) -> tuple[Any, dict]:
        state, metrics = members_step(state, batch)
        summary = {k: jnp.mean(v) for k, v in metrics.items()}
        summary["loss_member_std"] = jnp.std(metrics["loss"])
        return state, summary

    return ensemble_step
