"""Is an explanation faithful to the model? Deletion / insertion curves and the parameter-randomisation check.

Deletion and insertion (Petsiuk et al. 2018, RISE): voxels are removed from the input (set to `baseline`) in order
of decreasing attribution, or revealed from an all-baseline input in that order, and the model's probability of
the target is read after each of `steps` equal fractions. A faithful map makes the deletion curve fall fast (low
area under it) and the insertion curve rise fast (high area). The probability is the target's softmax (or, for
multi-label heads, sigmoid) probability; for segmentation its mean over the region. Every curve point of every
example is one program: the removed set of step k is "rank < k V / steps" on the map's per-voxel ranks, so the
inputs of all steps are built inside a vmap.

Model-parameter randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps"), cascading: re-initialise
the top layer, then the top two, ... and compare each map with the trained model's by Spearman rank correlation
(average ranks for ties, as scipy.stats.spearmanr). A map that stays the same when the weights it should explain
are random is not explaining the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import MedjaxError
from medjax.explain.core import Apply, layer_shapes, map_chunked, map_examples

ACTIVATIONS = ("softmax", "sigmoid")


def target_probability(logits: jax.Array, target: jax.Array, region: jax.Array | None = None,
                       activation: str = "softmax") -> jax.Array:
    """The target's probability for one example's logits (1, K) or, for segmentation, (1, *spatial, K) averaged
    over `region` (every voxel when None or empty)."""
    probs = jax.nn.softmax(logits, axis=-1) if activation == "softmax" else jax.nn.sigmoid(logits)
    p = jnp.take(probs[0], target, axis=-1)
    if p.ndim == 0:
        return p
    if region is None:
        return jnp.mean(p)
    size = jnp.sum(region)
    return jnp.where(size > 0, jnp.sum(p * region) / jnp.where(size > 0, size, 1.0), jnp.mean(p))


def auc(curve: jax.Array) -> jax.Array:
    """Trapezoidal area under curves (..., steps + 1) sampled at equal fractions of [0, 1]."""
    steps = curve.shape[-1] - 1
    return (jnp.sum(curve, axis=-1) - (curve[..., 0] + curve[..., -1]) / 2) / steps


def deletion_insertion(apply: Apply, variables: Any, x: jax.Array, maps: jax.Array, target: jax.Array,
                       region: jax.Array | None = None, *, steps: int = 20, baseline: float = 0.0,
                       activation: str = "softmax", batch_size: int | None = None) -> dict[str, jax.Array]:
    """Deletion and insertion curves (N, steps + 1) and their AUCs (N,) for voxel maps (N, *spatial).

    Ties in a map keep voxel order (a stable sort), so the curves are deterministic.
    """
    if activation not in ACTIVATIONS:
        raise MedjaxError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    if steps < 1:
        raise MedjaxError(f"deletion/insertion needs steps >= 1, got {steps}")
    if maps.shape != x.shape[:-1]:
        raise MedjaxError(f"maps {maps.shape} must be the inputs' spatial shape {x.shape[:-1]} (one value per voxel)")
    voxels = int(np.prod(x.shape[1:-1]))
    counts = jnp.asarray(np.round(np.arange(steps + 1) * voxels / steps).astype(np.int32))

    def one(ex, chunk):
        x0 = ex["x"]
        order = jnp.argsort(-ex["map"].reshape(-1), stable=True)
        rank = jnp.zeros(voxels, jnp.int32).at[order].set(jnp.arange(voxels, dtype=jnp.int32)).reshape(x0.shape[:-1])
        fill = jnp.asarray(baseline, x0.dtype)

        def probability(xk):
            return target_probability(apply(variables, xk[None]), ex["target"], ex["region"], activation)

        def point(k):
            top = (rank < k)[..., None]
            return jnp.stack([probability(jnp.where(top, fill, x0)), probability(jnp.where(top, x0, fill))])

        curves = map_chunked(point, counts, chunk)  # (steps + 1, 2)
        return curves.T

    # each curve point is two evaluations (deleted, inserted)
    curves = map_examples(one, {"x": x, "map": maps, "target": target, "region": region}, steps + 1,
                          None if batch_size is None else max(1, batch_size // 2))
    deletion, insertion = curves[:, 0], curves[:, 1]
    return {"deletion": deletion, "insertion": insertion, "deletion_auc": auc(deletion),
            "insertion_auc": auc(insertion)}


def random_maps(seed: int, shape: Sequence[int]) -> jax.Array:
    """Uniform random voxel maps: the reference a faithful explanation must beat."""
    return jax.random.uniform(jax.random.key(seed, impl="threefry2x32"), tuple(shape))


def average_ranks(values: jax.Array) -> jax.Array:
    """1-based ranks of a flat array, ties sharing their average rank (scipy.stats.rankdata's default)."""
    ordered = jnp.sort(values)
    left = jnp.searchsorted(ordered, values, side="left")
    right = jnp.searchsorted(ordered, values, side="right")
    return (left + right + 1) / 2.0


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation of each example's maps a, b (N, ...) -> (N,); 0 where a map is constant."""
    def one(u, v):
        ru, rv = average_ranks(u.reshape(-1)), average_ranks(v.reshape(-1))
        ru, rv = ru - ru.mean(), rv - rv.mean()
        denom = jnp.sqrt(jnp.sum(ru * ru) * jnp.sum(rv * rv))
        return jnp.where(denom > 0, jnp.sum(ru * rv) / jnp.where(denom > 0, denom, 1.0), 0.0)

    return jax.vmap(one)(a, b)


def top_down_layers(apply: Apply, variables: Any, x: jax.Array) -> list[str]:
    """The top-level modules that hold parameters, in reverse call order (output side first): the cascade's order.
    (Call order comes from tracing the model: a restored checkpoint's dicts are sorted by name.)"""
    called = [name for name in layer_shapes(apply, variables, x) if "/" not in name]
    return [name for name in called if name in variables["params"]][::-1]


def randomization_check(explain: Callable[[Any], jax.Array], variables: Any, random_variables: Any,
                        layers: Sequence[str]) -> dict[str, Any]:
    """Cascading model-parameter randomisation: for i = 1..len(layers), the maps `explain(variables_i)` where
    variables_i takes the first i `layers` (e.g. `top_down_layers`: head first) from `random_variables` (a
    fresh initialisation: params and BatchNorm statistics), compared with `explain(variables)`.

    Returns {"layers": [...], "spearman": (len(layers), N), "spearman_abs": (len(layers), N)}: rank correlation of
    the signed maps and of their absolute values (Adebayo et al. report both). One program: the cascade is a
    `lax.map` over i, each step selecting every layer's leaves with a where, so no copy of the weights is stacked.
    """
    layers = list(layers)
    unknown = [name for name in layers if name not in variables["params"]]
    if unknown:
        raise MedjaxError(f"no parameters named {unknown[0]!r}; top-level layers: {', '.join(variables['params'])}")
    depth = {name: i for i, name in enumerate(layers)}

    @jax.jit
    def check(trained_variables, fresh_variables):
        def mixed(i):
            def pick(path, trained, fresh):
                name = getattr(path[1], "key", None) if len(path) > 1 else None
                return jnp.where(depth[name] < i, fresh, trained) if name in depth else trained

            return jax.tree_util.tree_map_with_path(pick, trained_variables, fresh_variables)

        reference = explain(trained_variables)
        cascade = jax.lax.map(lambda i: explain(mixed(i)), jnp.arange(1, len(layers) + 1))
        return (jax.vmap(lambda m: spearman(reference, m))(cascade),
                jax.vmap(lambda m: spearman(jnp.abs(reference), jnp.abs(m)))(cascade))

    signed, absolute = check(variables, random_variables)
    return {"layers": layers, "spearman": signed, "spearman_abs": absolute}
