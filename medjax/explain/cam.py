"""Class activation maps at a named layer: Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhyay et al.
2018), 2D and 3D, for classifiers and (with a region) segmenters.

The layer's output A (*s, c) and the gradient G of the target score with respect to it come from ONE forward and
backward pass (`medjax.explain.core.layer_call`: the layer's output plus a zero perturbation, differentiated). The
map is relu(sum_c w_c A_c), linearly resized to the input's spatial size, returned as (N, *spatial, 1), not
normalised (`normalize` gives MONAI's display scaling). Weights as MONAI 1.6 computes them:

- Grad-CAM: w_c = mean over positions of G_c.
- Grad-CAM++: alpha = G^2 / (2 G^2 + sum_positions(A G^3)) (a zero denominator replaced by 1, plus 1e-7),
  w_c = sum over positions of alpha * relu(G). MONAI multiplies relu(G) by exp(score), the paper's exponential
  output; that is one positive factor per example (it scales the map, and normalisation removes it) and it
  overflows for segmentation scores summed over many voxels, so medjax leaves it out:
  MONAI's map = medjax's map * exp(score).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from medjax.explain.core import Apply, layer_call, map_examples, resize_map, target_score


def _activation_and_grad(apply: Apply, variables: Any, ex: dict, layer: str) -> tuple[jax.Array, jax.Array]:
    x = ex["x"][None]
    _, act = jax.eval_shape(lambda v, x: layer_call(apply, v, x, layer), variables, x)
    delta = jnp.zeros(act.shape, act.dtype)

    def score(d):
        logits, a = layer_call(apply, variables, x, layer, d)
        return target_score(logits, ex["target"], ex["region"]), a

    grad, a = jax.grad(score, has_aux=True)(delta)
    return a[0], grad[0]


def _finish(weights: jax.Array, act: jax.Array, spatial: tuple[int, ...]) -> jax.Array:
    cam = jax.nn.relu(jnp.sum(act * weights, axis=-1))
    return resize_map(cam, spatial)[..., None]


def gradcam(apply: Apply, variables: Any, x: jax.Array, target: jax.Array, region: jax.Array | None = None, *,
            layer: str, batch_size: int | None = None) -> jax.Array:
    """Grad-CAM at module `layer` (a name from `medjax.explain.core.spatial_layers`), shape (N, *spatial, 1)."""
    def one(ex, _):
        act, grad = _activation_and_grad(apply, variables, ex, layer)
        nd = act.ndim - 1
        return _finish(jnp.mean(grad, axis=tuple(range(nd))), act, ex["x"].shape[:-1])

    return map_examples(one, {"x": x, "target": target, "region": region}, 1, batch_size)


def gradcampp(apply: Apply, variables: Any, x: jax.Array, target: jax.Array, region: jax.Array | None = None, *,
              layer: str, batch_size: int | None = None) -> jax.Array:
    """Grad-CAM++ at module `layer`, shape (N, *spatial, 1) (MONAI's weights without its exp(score) factor)."""
    def one(ex, _):
        act, grad = _activation_and_grad(apply, variables, ex, layer)
        positions = tuple(range(act.ndim - 1))
        g2 = grad * grad
        denom = 2 * g2 + jnp.sum(act * g2 * grad, axis=positions)
        alpha = g2 / (jnp.where(denom != 0.0, denom, 1.0) + 1e-7)
        return _finish(jnp.sum(alpha * jax.nn.relu(grad), axis=positions), act, ex["x"].shape[:-1])

    return map_examples(one, {"x": x, "target": target, "region": region}, 1, batch_size)


def normalize(maps: jax.Array) -> jax.Array:
    """Each example's map scaled to [0, 1] by its min and max (a constant map becomes 0). MONAI's default
    `postprocessing` is 1 minus this (it maps max -> 0, min -> 1)."""
    axes = tuple(range(1, maps.ndim))
    lo, hi = jnp.min(maps, axis=axes, keepdims=True), jnp.max(maps, axis=axes, keepdims=True)
    return jnp.where(hi > lo, (maps - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0)
