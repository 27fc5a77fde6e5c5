"""The explanation methods by name (what `medjax explain --method` takes), their options from `config.explain`,
and how each map becomes one value per voxel."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from medjax.explain import cam, gradients, occlusion


@dataclasses.dataclass(frozen=True)
class Method:
    """fn(apply, variables, x, target, region=None, ..., **options) -> maps (N, *spatial, C_map)."""

    fn: Callable[..., jax.Array]
    options: Callable[[ml_collections.ConfigDict], dict[str, Any]]  # config.explain -> keyword options
    voxel: str  # how channels become one value per voxel: "sum" (signed) | "absmax" (gradient magnitude)
    layer: bool = False  # explains a named layer (class activation maps)
    per_example_seed: bool = False  # takes `index`, the examples' global indices that seed their noise


def _none(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return {}


METHODS: dict[str, Method] = {
    "gradcam": Method(cam.gradcam, _none, "sum", layer=True),
    "gradcampp": Method(cam.gradcampp, _none, "sum", layer=True),
    "saliency": Method(gradients.saliency, _none, "absmax"),
    "guided": Method(gradients.guided_backprop, _none, "absmax"),
    "smoothgrad": Method(gradients.smoothgrad,
                         lambda c: {"num_samples": c.smoothgrad_samples, "stdev_spread": c.smoothgrad_stdev},
                         "absmax", per_example_seed=True),
    "ig": Method(gradients.integrated_gradients,
                 lambda c: {"steps": c.ig_steps, "method": c.ig_method, "baseline": c.baseline}, "sum"),
    "occlusion": Method(occlusion.occlusion,
                        lambda c: {"window": _axes(c.occlusion_window), "stride": _axes(c.occlusion_stride),
                                   "baseline": c.baseline}, "sum"),
}


def _axes(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def voxel_maps(maps: jax.Array, how: str) -> jax.Array:
    """(N, *spatial, C) -> (N, *spatial): channels summed ("sum") or their largest magnitude ("absmax",
    Simonyan et al.'s saliency)."""
    return jnp.sum(maps, axis=-1) if how == "sum" else jnp.max(jnp.abs(maps), axis=-1)


def bind(name: str, apply: Callable, cfg: ml_collections.ConfigDict, layer: str | None = None,
         seed: int = 0) -> Callable[[Any, dict], jax.Array]:
    """`(variables, batch) -> maps` for method `name` with `config.explain`'s options (`batch`: x, target and
    optionally region / index), ready for `medjax.explain.core.shard_over_data`."""
    method = METHODS[name]
    options = dict(method.options(cfg), batch_size=cfg.batch_size or None)
    if method.layer:
        options["layer"] = layer
    if method.per_example_seed:
        options["seed"] = seed
    fn = functools.partial(method.fn, apply, **options)
    return lambda variables, batch: fn(variables, **batch)
