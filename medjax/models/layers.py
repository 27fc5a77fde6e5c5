"""Shared building blocks: rank-agnostic convolutions and one switch for the normalisation layer.

The kernel rank follows the data (2 for NHWC, 3 for NDHWC), so every model has one implementation for 2D and 3D.
Padding is explicit and symmetric (PyTorch's `padding=k // 2`), never XLA's "SAME": with a stride of 2, "SAME"
pads asymmetrically and a torch checkpoint would then give different activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.errors import MedjaxError
from medjax.models import norm as norm_layers
from medjax.models import ops

NORM_KINDS = ("batch", "instance", "group")

# torch defaults, so imported statistics and epsilons mean the same thing on both sides.
BN_MOMENTUM = 0.9  # flax keeps `momentum` of the old value; torch's momentum=0.1 weighs the new one
NORM_EPSILON = 1e-5

Padding = str | int | Sequence[int | tuple[int, int]]


def spatial_ndim(x: jax.Array) -> int:
    """Number of spatial axes of a channels-last batch: 2 for NHWC, 3 for NDHWC."""
    if x.ndim not in (4, 5):
        raise MedjaxError(
            f"expected a channels-last batch of rank 4 (N,H,W,C) or 5 (N,D,H,W,C), got shape {tuple(x.shape)}"
        )
    return x.ndim - 2


def conv(
    features: int,
    kernel_size: int,
    ndim: int,
    strides: int = 1,
    *,
    use_bias: bool = True,
    name: str | None = None,
    padding: Padding | None = None,
    dtype: Any = jnp.float32,
    kernel_init: Any = nn.initializers.lecun_normal(),  # noqa: B008  (a pure, immutable initializer)
    bias_init: Any = nn.initializers.zeros_init(),  # noqa: B008
) -> nn.Conv:
    """An `nn.Conv` (with `ops.conv_general_dilated`: fast 3D on CPU) with a cubic kernel of rank `ndim`; default
    padding is torch's symmetric `kernel_size // 2`.

    `padding` may be an int (same on both sides of every axis) or anything `nn.Conv` accepts.
    """
    if padding is None:
        padding = kernel_size // 2
    if isinstance(padding, int):
        padding = [(padding, padding)] * ndim
    return ops.Conv(
        features,
        kernel_size=(kernel_size,) * ndim,
        strides=(strides,) * ndim,
        padding=padding,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=kernel_init,
        bias_init=bias_init,
        name=name,
    )


def norm(
    kind: str,
    *,
    train: bool,
    name: str,
    axis_name: str | None = None,
    num_groups: int = 8,
    dtype: Any = jnp.float32,
) -> nn.Module:
    """The normalisation layer named by `kind` ("batch" | "instance" | "group"), with torch's epsilon.

    BatchNorm uses batch statistics when `train` and running averages otherwise; `axis_name` makes it average
    statistics across devices (`jax.pmap(axis_name=...)` / shard_map); leave it None under plain jit, where a
    sharded global batch already gives global statistics. Instance and group norm have a per-channel affine
    `scale`/`bias` (torch's `affine=True`) and no running statistics, so they add no `batch_stats`.
    Flax's BatchNorm stores the *biased* batch variance in `var`; torch's running_var uses the unbiased one.
    """
    if kind == "batch":
        return norm_layers.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=NORM_EPSILON,
            axis_name=axis_name,
            dtype=dtype,
            name=name,
        )
    if kind == "instance":
        return norm_layers.InstanceNorm(epsilon=NORM_EPSILON, dtype=dtype, name=name)
    if kind == "group":
        return norm_layers.GroupNorm(num_groups=num_groups, epsilon=NORM_EPSILON, dtype=dtype, name=name)
    raise MedjaxError(f"unknown norm {kind!r}; expected one of {', '.join(NORM_KINDS)}")


class ReLU(nn.Module):
    """`nn.relu` as a parameterless module (it adds no variables, so checkpoints and weight tables are unchanged).

    Being a module makes each ReLU a point that `flax.linen.intercept_methods` reaches by type: guided
    backpropagation (`medjax.explain.guided_backprop`) swaps in its own backward pass there, on the very model
    that was trained, where a plain `nn.relu` call would need a second model definition or a model flag.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(x)


def check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    """Raise `MedjaxError` naming `what`, the bad value and the valid ones."""
    if value not in choices:
        raise MedjaxError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def pad_to(x: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
    """Pad spatial axes at their end by repeating the edge until they reach `spatial_shape`.

    After a 2x max-pool of an odd length, 2x upsampling comes back one short; MONAI pads the same way
    (`replicate`, at the end), so matching it keeps a ported BasicUNet exact on odd sizes too.
    """
    widths = [(0, 0)] + [(0, t - s) for s, t in zip(x.shape[1:-1], spatial_shape)] + [(0, 0)]
    if all(w == (0, 0) for w in widths):
        return x
    return jnp.pad(x, widths, mode="edge")


def resize_nearest(x: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
    """Nearest-neighbour resizing of the spatial axes 1..d of (N, *spatial, ...) arrays (feature maps, label
    maps): output index i reads input index floor(i * n / s), which is torch's `F.interpolate(mode="nearest")`
    (the FPN's top-down path) and, for a factor-2 reduction, the pixel each strided level keeps."""
    out = x
    for axis, s in enumerate(spatial_shape):
        out = jnp.take(out, jnp.arange(s) * x.shape[1 + axis] // s, axis=axis + 1)
    return out


def check_dropout(what: str, rate: float) -> None:
    """A dropout rate must be in [0, 1): `MedjaxError` naming the model's field otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise MedjaxError(f"{what} must be a number in [0, 1), got {rate!r}")


class Dropout(nn.Module):
    """Element-wise dropout that is on exactly when the caller passes a `dropout` rng (`model.apply(...,
    rngs={"dropout": key})`): `medjax.tasks.base.apply_model` does in training and for MC-dropout sampling, where
    BatchNorm keeps its running statistics while dropout stays on. Rate 0 (every model's default) is the identity
    and draws nothing.

    The mask is drawn for the whole (global) batch from one threefry key, which JAX partitions independently of
    the sharding, so jit over any number of devices draws the same mask; under pmap (`axis_name` set, the models
    pass their `bn_axis_name`) each device draws the global mask and keeps its own rows, so pmap draws it too."""

    rate: float
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.rate <= 0 or not self.has_rng("dropout"):
            return x
        key, keep = self.make_rng("dropout"), 1.0 - self.rate
        if self.axis_name is None:
            mask = jax.random.bernoulli(key, keep, x.shape)
        else:
            n, i = jax.lax.psum(1, self.axis_name), jax.lax.axis_index(self.axis_name)
            full = jax.random.bernoulli(key, keep, (n * x.shape[0], *x.shape[1:]))
            mask = jax.lax.dynamic_slice_in_dim(full, i * x.shape[0], x.shape[0])
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
