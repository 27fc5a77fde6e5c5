"""Gradient attributions: vanilla gradients, SmoothGrad, Integrated Gradients and guided backpropagation.

Each returns a map of the input's shape (N, *spatial, C) and runs as one program: examples and their samples
(noise draws, integration steps) are vmapped, and chunked with `jax.lax.map` when `batch_size` (model evaluations
in flight) asks. Conventions follow the PyTorch references so numbers can be compared on the same weights:
`saliency` and `guided_backprop` are MONAI's `VanillaGrad` / `GuidedBackpropGrad` (the raw gradient of the target
score), `smoothgrad` is MONAI's `SmoothGrad` (noise std = `stdev_spread` * (max - min) of the example; with
`magnitude`, sqrt(sum of squared gradients) / n as MONAI computes it), `integrated_gradients` is Captum's
`IntegratedGradients` (its step rules, Gauss-Legendre by default, multiplied by input - baseline).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import MedjaxError
from medjax.explain.core import Apply, example_score, map_chunked, map_examples
from medjax.models.layers import ReLU

IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def _grad(apply: Apply, variables: Any, ex: dict) -> jax.Array:
    return jax.grad(lambda x: example_score(apply, variables, x, ex["target"], ex["region"]))(ex["x"])


def saliency(apply: Apply, variables: Any, x: jax.Array, target: jax.Array, region: jax.Array | None = None, *,
             batch_size: int | None = None) -> jax.Array:
    """d score / d input per example (Simonyan et al. 2014), signed, shape of `x`."""
    return map_examples(lambda ex, _: _grad(apply, variables, ex), {"x": x, "target": target, "region": region},
                        1, batch_size)


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass lets through only positive gradients at positive inputs (Springenberg et al.)."""
    return jnp.maximum(x, 0)


def _guided_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, 0.0).astype(g.dtype),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


def _guided(next_fun, args, kwargs, context):
    if isinstance(context.module, ReLU) and context.method_name == "__call__":
        return guided_relu(*args, **kwargs)
    return next_fun(*args, **kwargs)


def guided_backprop(apply: Apply, variables: Any, x: jax.Array, target: jax.Array, region: jax.Array | None = None,
                    *, batch_size: int | None = None) -> jax.Array:
    """Guided backpropagation: the input gradient with every ReLU's backward pass replaced by `guided_relu`.

    The swap is a Flax method interceptor on `medjax.models.layers.ReLU` modules (the models' ReLUs are such
    modules), active only while this function traces: the trained model and its variables are used as they
    are, and no other call of the model is affected. This is what MONAI's `GuidedBackpropGrad` does by
    replacing the `nn.ReLU` modules of a torch model for the duration of a call. A model without such ReLUs
    (e.g. leaky-ReLU networks) is refused rather than silently explained by plain gradients.
    """
    count_relus(apply, variables, x)

    def one(ex, _):
        with nn.intercept_methods(_guided):
            return _grad(apply, variables, ex)

    return map_examples(one, {"x": x, "target": target, "region": region}, 1, batch_size)


def count_relus(apply: Apply, variables: Any, x: jax.Array) -> int:
    """How many `ReLU` modules one forward pass calls; MedjaxError when none (guided backprop does not apply)."""
    calls = []

    def count(next_fun, args, kwargs, context):
        if isinstance(context.module, ReLU) and context.method_name == "__call__":
            calls.append(context.module.name)
        return next_fun(*args, **kwargs)

    def trace(v, x):
        with nn.intercept_methods(count):
            return apply(v, x)

    jax.eval_shape(trace, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if not calls:
        raise MedjaxError("guided backprop replaces the backward pass of ReLU layers and this model has none "
                          "(e.g. leaky ReLU); use saliency, smoothgrad, ig, gradcam or occlusion")
    return len(calls)


def smoothgrad_noise(seed: int, index: jax.Array, num_samples: int, shape: tuple[int, ...]) -> jax.Array:
    """Standard-normal draws (num_samples, *shape) of the example with global index `index`: a threefry key
    folded with the index, so an example's noise does not depend on its batch or on the number of devices."""
    key = jax.random.fold_in(jax.random.key(seed, impl="threefry2x32"), index)
    return jax.random.normal(key, (num_samples, *shape), jnp.float32)


def smoothgrad(apply: Apply, variables: Any, x: jax.Array, target: jax.Array, region: jax.Array | None = None,
               index: jax.Array | None = None, *, seed: int = 0, num_samples: int = 25, stdev_spread: float = 0.15,
               magnitude: bool = True, batch_size: int | None = None) -> jax.Array:
    """SmoothGrad (Smilkov et al. 2017) as MONAI computes it: gradients at x + noise with noise std
    `stdev_spread` * (max(x) - min(x)) per example, averaged (`magnitude`: sqrt(sum g^2) / num_samples).
    `index` (N,): the examples' global indices, which seed their noise (default 0..N-1)."""
    if index is None:
        index = jnp.arange(x.shape[0])

    def one(ex, chunk):
        x0 = ex["x"]
        std = stdev_spread * (jnp.max(x0) - jnp.min(x0))
        noise = smoothgrad_noise(seed, ex["index"], num_samples, x0.shape) * std
        grads = map_chunked(lambda n: _grad(apply, variables, {**ex, "x": x0 + n}), noise, chunk)
        if magnitude:
            return jnp.sqrt(jnp.sum(grads * grads, axis=0)) / num_samples
        return jnp.sum(grads, axis=0) / num_samples

    return map_examples(one, {"x": x, "target": target, "region": region, "index": index}, num_samples, batch_size)


@functools.cache
def ig_rule(steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of Captum's integral approximation `method` with `steps` points on [0, 1]."""
    if method not in IG_METHODS:
        raise MedjaxError(f"unknown integrated-gradients method {method!r}; known: {', '.join(IG_METHODS)}")
    if steps < (1 if method == "gausslegendre" else 2):
        raise MedjaxError(f"integrated gradients needs steps >= {1 if method == 'gausslegendre' else 2}, "
                          f"got {steps}")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (0.5 * (1 + nodes)).astype(np.float32), (0.5 * weights).astype(np.float32)
    weights = np.full(steps, 1.0 / steps)
    if method == "riemann_trapezoid":
        weights[[0, -1]] /= 2
        alphas = np.linspace(0, 1, steps)
    else:
        lo, hi = {"riemann_left": (0, 1 - 1 / steps), "riemann_right": (1 / steps, 1),
                  "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps))}[method]
        alphas = np.linspace(lo, hi, steps)
    return alphas.astype(np.float32), weights.astype(np.float32)


def integrated_gradients(apply: Apply, variables: Any, x: jax.Array, target: jax.Array,
                         region: jax.Array | None = None, *, baseline: float | jax.Array = 0.0, steps: int = 50,
                         method: str = "gausslegendre", batch_size: int | None = None) -> jax.Array:
    """Integrated Gradients (Sundararajan et al. 2017): (x - baseline) * sum_i w_i grad(baseline + a_i (x -
    baseline)), with Captum's (a_i, w_i) for `method`. `baseline`: a number or an array of one example's shape
    (or of x's shape, one per example). Attributions sum to about score(x) - score(baseline) (completeness)."""
    alphas, weights = ig_rule(steps, method)
    base = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)

    def one(ex, chunk):
        x0, b = ex["x"], ex["baseline"]
        grads = map_chunked(lambda a: _grad(apply, variables, {**ex, "x": b + a * (x0 - b)}), jnp.asarray(alphas),
                            chunk)
        return jnp.tensordot(jnp.asarray(weights), grads, axes=1) * (x0 - b)

    return map_examples(one, {"x": x, "target": target, "region": region, "baseline": base}, steps, batch_size)
