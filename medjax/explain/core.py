"""What every explainer shares: the target score, reaching a named layer, and running as one batched program.

The model is an apply function `apply(variables, x) -> logits` over a channels-last batch (N, *spatial, C), e.g.
`functools.partial(model.apply, train=False)`: logits (N, K) for classification, (N, *spatial, K) for
segmentation. The explained quantity of one example is `target_score`: the target class's logit, or for
segmentation that class's logit summed over a region mask (the voxels a clinician asks about; by default the ones
predicted as that class).

Every explainer is written for ONE example and its own samples (integration steps, noise draws, occlusion
windows); `map_examples` / `map_samples` batch them with `jax.vmap`, and `plan` turns a budget of model
evaluations in flight (`batch_size`) into `jax.lax.map(..., batch_size=...)` chunks when everything at once would
not fit. `shard_over_data` compiles a batched explainer as one program over the data mesh of
`medjax.train.parallel` (`jax.shard_map`: variables replicated, examples split over devices).

Layers are reached by name with `flax.linen.intercept_methods` (no hooks, no second model): `layer_call` returns a
module's output and adds a perturbation to it, whose gradient is the gradient with respect to that output
(what `nn.Module.perturb` does, but for any module of an unmodified model). Names are module paths joined by
"/", e.g. ResNet's `stage4_block2` or `stage4_block2/conv2`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from medjax.errors import MedjaxError

Apply = Callable[[Any, jax.Array], jax.Array]  # (variables, x (N, *spatial, C)) -> logits


def target_score(logits: jax.Array, target: jax.Array, region: jax.Array | None = None) -> jax.Array:
    """The explained score of one example from its logits (1, K) or (1, *spatial, K): the `target` logit, or for
    segmentation the `target` logit summed over `region` (*spatial,) (all voxels when None)."""
    if logits.ndim == 2:
        return jnp.take(logits[0], target)
    per_voxel = jnp.take(logits[0], target, axis=-1)
    return jnp.sum(per_voxel if region is None else per_voxel * region)


def example_score(apply: Apply, variables: Any, x: jax.Array, target: jax.Array,
                  region: jax.Array | None) -> jax.Array:
    """`target_score` of one example x (*spatial, C)."""
    return target_score(apply(variables, x[None]), target, region)


def _path(module: nn.Module) -> str:
    return "/".join(module.path)


def layer_call(apply: Apply, variables: Any, x: jax.Array, layer: str,
               delta: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(logits, the output of module `layer`) for batch `x`, with `delta` added to that output downstream."""
    captured = []

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and _path(context.module) == layer:
            captured.append(out)
            if delta is not None:
                out = out + delta
        return out

    with nn.intercept_methods(intercept):
        logits = apply(variables, x)
    if len(captured) != 1:
        raise MedjaxError(f"layer {layer!r} is called {len(captured)} times in one forward pass; explain a layer "
                          f"that is called once (one of: {', '.join(spatial_layers(apply, variables, x))})")
    return logits, captured[0]


def layer_shapes(apply: Apply, variables: Any, x: jax.Array) -> dict[str, tuple[int, ...]]:
    """Every module call's output shape for batch `x`, by layer name, in call order (no computation: traced)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = _path(context.module)
        if context.method_name == "__call__" and name and isinstance(out, jax.Array):
            shapes.setdefault(name, tuple(out.shape))
        return out

    def trace(v, x):
        with nn.intercept_methods(intercept):
            return apply(v, x)

    jax.eval_shape(trace, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
    return shapes


def spatial_layers(apply: Apply, variables: Any, x: jax.Array) -> list[str]:
    """Names of the layers whose output is a feature map of x's rank (N, *spatial, C'), in call order."""
    return [name for name, shape in layer_shapes(apply, variables, x).items() if len(shape) == x.ndim]


def check_layer(apply: Apply, variables: Any, x: jax.Array, layer: str | None, method: str) -> str:
    """`layer`, or the default for a class activation map (the last top-level feature map that is not the model's
    output), checked to exist and to be spatial; a bad name raises MedjaxError listing the valid ones."""
    shapes = layer_shapes(apply, variables, x)
    spatial = [n for n, s in shapes.items() if len(s) == x.ndim]
    top = [n for n in spatial if "/" not in n]
    if not spatial:
        raise MedjaxError(f"{method} needs a layer with a spatial output and this model has none; use "
                          f"saliency, smoothgrad, ig or occlusion")
    if layer is None:
        out_shape = jax.eval_shape(apply, variables, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape
        candidates = [n for n in top if shapes[n] != tuple(out_shape)] or spatial
        return candidates[-1]
    if layer not in shapes:
        nested = next((n for n in reversed(spatial) if "/" in n), spatial[-1])
        raise MedjaxError(f"no layer named {layer!r}; layers with a spatial output: {', '.join(top)} (nested ones "
                          f"as NAME/CHILD, e.g. {nested})")
    if layer not in spatial:
        raise MedjaxError(f"{method} needs a spatial feature map but layer {layer!r} outputs shape {shapes[layer]}; "
                          f"layers with a spatial output: {', '.join(top)}")
    return layer


def plan(num_examples: int, num_samples: int, batch_size: int | None) -> tuple[int | None, int | None]:
    """(example chunk, sample chunk) for `jax.lax.map`, None meaning "all at once (vmap)", so that at most
    `batch_size` model evaluations are in flight (None: no limit)."""
    if batch_size is None or num_examples * num_samples <= batch_size:
        return None, None
    if num_samples <= batch_size:
        return max(1, batch_size // num_samples), None
    return 1, batch_size


def map_chunked(fn: Callable, xs: Any, chunk: int | None) -> Any:
    """`jax.vmap(fn)(xs)`, or `jax.lax.map` over chunks of `chunk` (same result, bounded memory)."""
    if chunk is None:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=chunk)


def map_examples(fn: Callable, batch: dict, num_samples: int, batch_size: int | None) -> Any:
    """`fn(example, sample_chunk)` over the examples of `batch` (a dict of arrays with a leading example axis,
    None values passed through), chunked by `plan`."""
    present = {k: v for k, v in batch.items() if v is not None}
    n = len(next(iter(present.values())))
    example_chunk, sample_chunk = plan(n, num_samples, batch_size)
    return map_chunked(lambda ex: fn({**dict.fromkeys(batch), **ex}, sample_chunk), present, example_chunk)


def shard_over_data(fn: Callable, mesh: Mesh | None = None) -> Callable:
    """`fn(variables, batch) -> per-example output` compiled as one program over the data mesh: variables
    replicated, every array of `batch` (and the output) split over the devices along the example axis. The
    example count must be divisible by the number of devices (`pad_to_devices`)."""
    from medjax.train.parallel import DATA_AXIS, make_mesh

    mesh = mesh or make_mesh()
    local = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS), check_vma=False)
    return jax.jit(local, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))),
                   out_shardings=NamedSharding(mesh, P(DATA_AXIS)))


def pad_to_devices(batch: dict, num_devices: int) -> tuple[dict, int]:
    """(batch with its example axis padded to a multiple of `num_devices` by repeating the last example, the real
    count)."""
    n = len(next(v for v in batch.values() if v is not None))
    extra = -n % num_devices

    def pad(v):
        if v is None or not extra:
            return v
        return jnp.concatenate([v, jnp.repeat(v[-1:], extra, axis=0)])

    return {k: pad(v) for k, v in batch.items()}, n


def resize_map(m: jax.Array, spatial: Sequence[int]) -> jax.Array:
    """Linear (bi/trilinear) resize of a map (*s) to `spatial`: torch's `interpolate(mode='(bi|tri)linear',
    align_corners=False)` when enlarging, which is how MONAI's CAMs reach the input size."""
    if tuple(m.shape) == tuple(spatial):
        return m
    return jax.image.resize(m, tuple(spatial), method="linear")
