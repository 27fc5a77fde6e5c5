"""Fast formulations of the convolution-network primitives XLA's CPU backend runs slowly.

Every function here computes exactly what the `lax` / `flax.linen` primitive it replaces computes (up to float
summation order, tested), with the same parameters, so checkpoints and imported weights are unaffected. They exist
because of measurements on XLA:CPU (jax 0.10, 2-core AMD EPYC; `python -m medjax.bench.ops`, whose
table is in the README's Performance section):

* **3D convolution** is a generic, poorly vectorised loop on XLA:CPU (5x slower than torch's), while 2D
  convolutions go to XNNPACK (see `medjax.xla_flags`). `conv_general_dilated` therefore computes a 3D convolution
  on CPU as a sum over the kernel's depth taps of 2D convolutions whose batch is (batch x output depth): about 5x
  faster forward + backward, on par with torch.
* **3D convolutions with few input channels** (first layers, small networks: 1-32 channels) make per-tap 2D
  convolutions mostly overhead, so the depth taps are concatenated along the channels and the whole convolution is
  one 2D convolution (single-channel inputs fold the height taps too: one 1 x k convolution). Forward + backward,
  batch 4 of 32^3: 1 -> 8 channels 157 -> 16 ms, 8 -> 8 channels 340 -> 38 ms against XLA's form (torch 20 and 49).
* **3D convolutions on tiny planes** (ResNet's last stages: 2x2 or 4x4 pixels, 256-512 channels) are slow as 2D
  convolutions too, so they run as one matmul over gathered patches (im2col): more than 10x faster.
* Other platforms keep `lax.conv_general_dilated` (cuDNN's kernels are good), selected per platform at lowering
  time by `lax.platform_dependent`.
* **Transposed convolution with kernel == stride** (U-Net 2x up-sampling) writes disjoint output blocks, so it is a
  matmul followed by a depth-to-space reshape (`UpConv`); XLA lowers the general form to a convolution of the
  zero-dilated input, over 30x slower in 3D.
* **Non-overlapping pooling** (window == stride, no padding) as a reshape and a reduction (`pool_blocks`): the
  gradient of `reduce_window` max is `select_and_scatter`, several times slower on CPU. On ties
  inside a window the gradient is split equally among the tied inputs (torch picks one); ties have measure zero
  for continuous activations, and ReLU zeros carry no gradient either way.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# On CPU, a 3D convolution whose output planes (the last two spatial axes) have at most this many pixels runs as
# one matmul over gathered patches: as 2D convolutions on tiny planes with many channels it is slow (ResNet's last
# stage, 2x2^3 x 512 -> 512; see the benchmark's conv3d_small row). Not for 2D convolutions: a 2D ResNet-18 on
# 28 px trained about 10% slower with its 4x4 stage as matmuls (batch 16, two interleaved pairs of runs).
SMALL_PLANE = 16

# On CPU, a 3D convolution with at most this many input channels runs as one 2D convolution over the input's
# depth taps concatenated along the channels (`_conv3d_folded`), and single-channel inputs fold the height taps
# too. Forward + backward on batch 4 of 32^3, per-tap form -> folded (`python -m medjax.bench.ops
# --fold-channels 0` against the default, 2-core EPYC): 1 -> 8 channels 51 -> 16 ms, 8 -> 8 53 -> 38 ms. At 32
# channels the two were within noise (78 and 66 ms, separate runs), and at 64 the per-tap form was as fast (a
# one-off comparison) and needs a third of the memory.
FOLD_CHANNELS = 32


def _channels_last(dimension_numbers: Any, ndim: int) -> bool:
    """True when `dimension_numbers` is NHWC / HWIO / NHWC or NDHWC / DHWIO / NDHWC (flax's convention)."""
    if ndim not in (4, 5):
        return False
    nd = ndim - 2
    dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    spatial = tuple(range(1, 1 + nd))
    return dn == lax.ConvDimensionNumbers((0, nd + 1) + spatial, (nd + 1, nd) + tuple(range(nd)),
                                          (0, nd + 1) + spatial)


def _explicit_padding(padding: Any, lhs_spatial: Sequence[int], rhs_spatial: Sequence[int],
                      strides: Sequence[int], rhs_dilation: Sequence[int]) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(rhs_spatial, rhs_dilation)]
        return [tuple(p) for p in lax.padtype_to_pads(lhs_spatial, dilated, strides, padding)]
    return [tuple(int(v) for v in p) for p in padding]


def _pad_or_crop(x: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """Spatial padding of a channels-last batch; negative amounts crop, as in lax.conv_general_dilated."""
    x = jnp.pad(x, [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads] + [(0, 0)])
    return x[(slice(None),) + tuple(slice(max(-lo, 0), x.shape[1 + i] - max(-hi, 0))
                                    for i, (lo, hi) in enumerate(pads)) + (slice(None),)]


def _out_size(size: int, k: int, pad: tuple[int, int], stride: int, dilation: int) -> int:
    return (size + pad[0] + pad[1] - (k - 1) * dilation - 1) // stride + 1


def _tap_slices(lhs: jax.Array, k: Sequence[int], strides: Sequence[int], pads: list[tuple[int, int]],
                rhs_dilation: Sequence[int]) -> list[jax.Array]:
    """The input each kernel offset (tap) meets, in kernel order: one (N, *out, C) slice of the padded input per
    tap, so that the convolution is the sum over taps of slice @ kernel[tap]."""
    nd = lhs.ndim - 2
    x = _pad_or_crop(lhs, pads)
    out = [_out_size(x.shape[1 + i], k[i], (0, 0), strides[i], rhs_dilation[i]) for i in range(nd)]
    slices = []
    for offset in itertools.product(*(range(ki) for ki in k)):
        start = [0] + [o * d for o, d in zip(offset, rhs_dilation)] + [0]
        limit = [x.shape[0]] + [s + st * (o - 1) + 1 for s, st, o in zip(start[1:], strides, out)] + [x.shape[-1]]
        slices.append(lax.slice(x, start, limit, [1, *strides, 1]))
    return slices


def _conv_as_matmul(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int], pads: list[tuple[int, int]],
                    rhs_dilation: Sequence[int], precision: Any, preferred_element_type: Any) -> jax.Array:
    """Channels-last convolution as one matmul: the input patches of every kernel offset, concatenated along the
    channels (im2col), times the kernel reshaped to (k^nd * in, out). For small outputs only (memory: k^nd x)."""
    nd = lhs.ndim - 2
    cols = jnp.concatenate(_tap_slices(lhs, rhs.shape[:nd], strides, pads, rhs_dilation), axis=-1)
    y = lax.dot_general(cols, rhs.reshape(-1, rhs.shape[-1]), (((nd + 1,), (0,)), ((), ())), precision=precision,
                        preferred_element_type=preferred_element_type)
    return y


def _conv3d_as_2d(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int], pads: list[tuple[int, int]],
                  rhs_dilation: Sequence[int], precision: Any, preferred_element_type: Any) -> jax.Array:
    """NDHWC x DHWIO convolution as sum_k conv2d(depth slice k of the input, rhs[k]), batch folded with depth."""
    sd, rd = strides[0], rhs_dilation[0]
    x = _pad_or_crop(lhs, [pads[0], (0, 0), (0, 0)])
    n, depth, kd = x.shape[0], x.shape[1], rhs.shape[0]
    d_out = (depth - (kd - 1) * rd - 1) // sd + 1
    out = None
    for k in range(kd):
        start = k * rd
        xs = lax.slice_in_dim(x, start, start + sd * (d_out - 1) + 1, stride=sd, axis=1)
        xs = xs.reshape((n * d_out,) + xs.shape[2:])
        y = lax.conv_general_dilated(xs, rhs[k], strides[1:], pads[1:], rhs_dilation=rhs_dilation[1:],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
                                     preferred_element_type=preferred_element_type)
        out = y if out is None else out + y
    return out.reshape((n, d_out) + out.shape[1:])


def _conv3d_folded(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int], pads: list[tuple[int, int]],
                   rhs_dilation: Sequence[int], precision: Any, preferred_element_type: Any,
                   folded_axes: int = 1) -> jax.Array:
    """NDHWC x DHWIO convolution as ONE 2D convolution (1D for `folded_axes=2`) over few-channel inputs.

    The input slices of the kernel's taps along the first `folded_axes` spatial axes are concatenated along the
    channels (partial im2col), so the 2D convolution sees taps x channels input channels; with 1-16 input
    channels that keeps XNNPACK's kernels busy where per-tap convolutions of the `_conv3d_as_2d` form are mostly
    overhead. Costs taps x the input's memory, hence only for few channels.
    """
    nd = lhs.ndim - 2
    x = _pad_or_crop(lhs, list(pads[:folded_axes]) + [(0, 0)] * (nd - folded_axes))
    n, cin = x.shape[0], x.shape[-1]
    k = rhs.shape[:nd]
    out = [_out_size(x.shape[1 + i], k[i], (0, 0), strides[i], rhs_dilation[i]) for i in range(folded_axes)]
    slices = []
    for offset in itertools.product(*(range(ki) for ki in k[:folded_axes])):
        start = [0] + [o * d for o, d in zip(offset, rhs_dilation)] + [0] * (nd - folded_axes + 1)
        limit = ([n] + [s + st * (o - 1) + 1 for s, st, o in zip(start[1:], strides, out)]
                 + list(x.shape[1 + folded_axes:]))
        slices.append(lax.slice(x, start, limit, [1, *strides[:folded_axes]] + [1] * (nd - folded_axes + 1)))
    cols = jnp.concatenate(slices, axis=-1)  # (n, *out[:folded], *rest, taps * cin), tap-major channels
    batch = n * int(np.prod(out))
    cols = cols.reshape((batch,) + cols.shape[1 + folded_axes:])
    rest = k[folded_axes:]
    taps = int(np.prod(k[:folded_axes]))
    kernel = jnp.moveaxis(rhs.reshape((taps,) + rest + rhs.shape[nd:]), 0, len(rest))
    kernel = kernel.reshape(rest + (taps * cin, rhs.shape[-1]))
    if len(rest) == 1:  # a 1D convolution, run as 2D with a unit axis
        cols, kernel = cols[:, None], kernel[None]
    rest_strides = tuple(strides[folded_axes:]) if len(rest) == 2 else (1,) + tuple(strides[folded_axes:])
    rest_pads = list(pads[folded_axes:]) if len(rest) == 2 else [(0, 0)] + list(pads[folded_axes:])
    rest_dilation = (tuple(rhs_dilation[folded_axes:]) if len(rest) == 2
                     else (1,) + tuple(rhs_dilation[folded_axes:]))
    y = lax.conv_general_dilated(cols, kernel, rest_strides, rest_pads, rhs_dilation=rest_dilation,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
                                 preferred_element_type=preferred_element_type)
    return y.reshape((n, *out) + y.shape[1 + (2 - len(rest)):])


@contextlib.contextmanager
def per_example_kernel_grads() -> Iterator[None]:
    """While tracing inside this context, `conv_general_dilated` computes its kernel gradient as one contraction
    per kernel tap (`_kernel_grad_by_taps`), for per-example gradients (`vmap(grad)`, DP-SGD).

    Why: vmapped over examples, JAX's kernel gradient becomes a convolution grouped by example, which XLA:CPU runs
    about 5-10x slower than the batched matmuls of the per-tap form (3x3, 16 -> 16 channels, 32 examples of 16 x
    16: 5-15 ms against 1.7 ms; 128 examples of 28 x 28: 150 ms against 31 ms, 2-core AMD EPYC). The forward pass
    and the input gradient are unchanged; outside the context nothing is."""
    token = _PER_EXAMPLE_GRADS.set(True)
    try:
        yield
    finally:
        _PER_EXAMPLE_GRADS.reset(token)


_PER_EXAMPLE_GRADS: contextvars.ContextVar[bool] = contextvars.ContextVar("per_example_kernel_grads", default=False)


def _kernel_grad_by_taps(lhs: jax.Array, g: jax.Array, kernel_shape: Sequence[int], strides: Sequence[int],
                         pads: list[tuple[int, int]], rhs_dilation: Sequence[int], precision: Any) -> jax.Array:
    """d(sum(conv(lhs, kernel) * g)) / d kernel: for every tap, its input slice contracted with `g` over the batch
    and the output positions ((C_in, C_out) each), stacked in kernel order."""
    nd = lhs.ndim - 2
    axes = tuple(range(nd + 1))
    taps = [lax.dot_general(x, g, ((axes, axes), ((), ())), precision=precision,
                            preferred_element_type=jnp.float32)
            for x in _tap_slices(lhs, kernel_shape[:nd], strides, pads, rhs_dilation)]
    return jnp.stack(taps).reshape(kernel_shape)


def _with_kernel_grad_by_taps(conv: Callable, lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
                              pads: list[tuple[int, int]], rhs_dilation: Sequence[int], precision: Any) -> jax.Array:
    """`conv(lhs, rhs)` whose kernel gradient is `_kernel_grad_by_taps` (the input gradient is conv's own)."""

    @jax.custom_vjp
    def f(lhs, rhs):
        return conv(lhs, rhs)

    def fwd(lhs, rhs):
        return conv(lhs, rhs), (lhs, rhs)

    def bwd(res, g):
        lhs, rhs = res
        dx = jax.vjp(lambda x: conv(x, rhs), lhs)[1](g)[0]
        dw = _kernel_grad_by_taps(lhs, g, rhs.shape, strides, pads, rhs_dilation, precision)
        return dx, dw.astype(rhs.dtype)

    f.defvjp(fwd, bwd)
    return f(lhs, rhs)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """Drop-in `lax.conv_general_dilated`. On CPU, 3D channels-last convolutions run as one matmul when their
    output planes are small (<= `SMALL_PLANE` pixels), else as one 2D convolution over depth taps folded into the
    channels (<= `FOLD_CHANNELS` input channels), else as one 2D convolution per depth tap (module docstring).
    Inside `per_example_kernel_grads()`, channels-last convolutions take their kernel gradient per tap.

    Anything else (other platforms, 2D convolutions, other layouts, input dilation, grouped convolutions) is
    `lax.conv_general_dilated` unchanged.
    """
    nd = lhs.ndim - 2
    rhs_dilation = tuple(rhs_dilation or (1,) * nd)
    conv = functools.partial(
        _conv, window_strides=tuple(window_strides), padding=padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type)
    if _PER_EXAMPLE_GRADS.get() and _plain(lhs.ndim, dimension_numbers, lhs_dilation, feature_group_count,
                                           batch_group_count):
        pads = _explicit_padding(padding, lhs.shape[1:1 + nd], rhs.shape[:nd], window_strides, rhs_dilation)
        return _with_kernel_grad_by_taps(conv, lhs, rhs, tuple(window_strides), pads, rhs_dilation, precision)
    return conv(lhs, rhs)


def _plain(ndim: int, dimension_numbers: Any, lhs_dilation: Sequence[int] | None, feature_group_count: int,
           batch_group_count: int) -> bool:
    """A channels-last convolution without input dilation or groups (the kind medjax re-formulates)."""
    return (_channels_last(dimension_numbers, ndim) and feature_group_count == 1 and batch_group_count == 1
            and all(d == 1 for d in (lhs_dilation or ())))


def _conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
          lhs_dilation: Sequence[int] | None, rhs_dilation: Sequence[int], dimension_numbers: Any,
          feature_group_count: int, batch_group_count: int, precision: Any, preferred_element_type: Any) -> jax.Array:
    """`conv_general_dilated` with JAX's own gradients (3D on CPU as described there)."""
    nd = lhs.ndim - 2
    reference = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type)
    if nd != 3 or not _plain(lhs.ndim, dimension_numbers, lhs_dilation, feature_group_count, batch_group_count):
        return reference(lhs, rhs)
    strides = tuple(window_strides)
    pads = _explicit_padding(padding, lhs.shape[1:1 + nd], rhs.shape[:nd], strides, rhs_dilation)
    out = [_out_size(lhs.shape[1 + i], rhs.shape[i], pads[i], strides[i], rhs_dilation[i]) for i in range(nd)]
    kw = dict(strides=strides, pads=pads, rhs_dilation=rhs_dilation, precision=precision,
              preferred_element_type=preferred_element_type)
    cin = lhs.shape[-1]
    if out[-1] * out[-2] <= SMALL_PLANE:
        on_cpu = functools.partial(_conv_as_matmul, **kw)
    elif cin <= FOLD_CHANNELS:
        on_cpu = functools.partial(_conv3d_folded, folded_axes=2 if cin == 1 else 1, **kw)
    else:
        on_cpu = functools.partial(_conv3d_as_2d, **kw)
    return lax.platform_dependent(lhs, rhs, cpu=on_cpu, default=reference)


def _sums_by_dot(x3: jax.Array) -> jax.Array:
    """(N, S, C) -> (N, C) float32 as a batched matrix-vector product with ones."""
    ones = jnp.ones((x3.shape[0], 1, x3.shape[1]), x3.dtype)
    return lax.dot_general(ones, x3, (((2,), (1,)), ((0,), (0,))), precision=lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)[:, 0]


def example_sums(x: jax.Array) -> jax.Array:
    """Per-example channel sums of a channels-last batch in float32: (N, *spatial, C) -> (N, C).

    On CPU a batched dot with ones: XLA:CPU splits a reduction over several spatial axes into 32-wide
    `reduce-window` tiles that it emits as scalar loops striding over the channels, several times slower than its
    dot kernels (`medjax.models.norm` has the measurements). Elsewhere `jnp.sum`."""
    x3 = x.reshape(x.shape[0], -1, x.shape[-1])
    return lax.platform_dependent(x3, cpu=_sums_by_dot, default=lambda v: jnp.sum(v, axis=1, dtype=jnp.float32))


def channel_sums(x: jax.Array) -> jax.Array:
    """Sum over every axis but the last, in float32: (..., C) -> (C,); a dot with ones on CPU (`example_sums`)."""
    return example_sums(x.reshape(1, -1, x.shape[-1]))[0]


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias` over the last axis. Its bias gradient is `channel_sums`, where autodiff of a broadcast add
    gives XLA a reduction over every leading axis (slow on CPU, see `example_sums`)."""
    return y + bias


def _add_bias_fwd(y, bias):
    return y + bias, bias


def _add_bias_bwd(bias, g):
    return g, channel_sums(g).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv(nn.Module):
    """`flax.linen.Conv` for channels-last input (N, *spatial, C) computed by `conv_general_dilated` (fast 3D on
    CPU) with its bias added by `add_bias`. Same fields (the subset medjax uses), parameters ("kernel" (k..., in,
    out), "bias") and initialisation as nn.Conv, so checkpoints and weight-import tables are unaffected."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    kernel_dilation: int | Sequence[int] = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.linear.default_kernel_init
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        nd = len(k)
        if x.ndim != nd + 2:
            raise ValueError(f"Conv with a {nd}D kernel {k} wants input (N, *{nd} spatial, C), got shape {x.shape}")

        def per_axis(v: int | Sequence[int]) -> tuple[int, ...]:
            return (v,) * nd if isinstance(v, int) else tuple(v)

        kernel = self.param("kernel", self.kernel_init, k + (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        spatial = tuple(range(1, nd + 1))
        dn = lax.ConvDimensionNumbers((0, nd + 1) + spatial, (nd + 1, nd) + tuple(range(nd)), (0, nd + 1) + spatial)
        y = conv_general_dilated(x, kernel, per_axis(self.strides),
                                 nn.linear.canonicalize_padding(self.padding, nd),
                                 rhs_dilation=per_axis(self.kernel_dilation), dimension_numbers=dn,
                                 precision=self.precision)
        return y if bias is None else add_bias(y, bias)


def upconv_blocks(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`lax.conv_transpose(x, kernel, strides=kernel_size, padding="VALID")` (flax's layout) as one matmul.

    With kernel == stride every input voxel writes its own output block, `kernel` flipped: out[n, s*i + a, c] =
    sum_ci x[n, i, ci] * kernel[k-1-a, ci, c] per axis.
    """
    nd = x.ndim - 2
    k = kernel.shape[:nd]
    flipped = kernel[(slice(None, None, -1),) * nd]
    y = jnp.tensordot(x, flipped, axes=[[x.ndim - 1], [nd]])  # (n, s_1..s_nd, k_1..k_nd, out)
    order = [0] + [a for i in range(nd) for a in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
    y = jnp.transpose(y, order)
    return y.reshape((x.shape[0],) + tuple(s * ki for s, ki in zip(x.shape[1:-1], k)) + (kernel.shape[-1],))


class UpConv(nn.Module):
    """`nn.ConvTranspose(features, kernel_size, strides=kernel_size, padding="VALID")` with its exact parameters
    ("kernel" (k.., in, out) and "bias"), computed by `upconv_blocks`."""

    features: int
    kernel_size: Sequence[int]
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.linear.default_kernel_init
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = tuple(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, k + (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = upconv_blocks(x, kernel)
        return y if bias is None else add_bias(y, bias)


def pool_blocks(x: jax.Array, window: Sequence[int], kind: str = "max") -> jax.Array:
    """Non-overlapping pooling (stride == window, no padding) of a channels-last batch, flooring odd sizes like
    torch; `kind` is "max" or "avg". Equal to `nn.max_pool` / `nn.avg_pool` with strides=window, padding VALID."""
    window = tuple(window)
    nd = len(window)
    out = [s // w for s, w in zip(x.shape[1:1 + nd], window)]
    x = x[(slice(None),) + tuple(slice(0, o * w) for o, w in zip(out, window))]
    shape = [x.shape[0]] + [v for o, w in zip(out, window) for v in (o, w)] + [x.shape[-1]]
    axes = tuple(2 + 2 * i for i in range(nd))
    x = x.reshape(shape)
    if kind == "max":
        return jnp.max(x, axis=axes)
    if kind == "avg":
        return jnp.mean(x, axis=axes, dtype=x.dtype)
    raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")

