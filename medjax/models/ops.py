"""Fast formulations of the convolution-network primitives XLA's CPU backend runs slowly.

Every function here computes exactly what the `lax` / `flax.linen` primitive it replaces computes (up to float
summation order, tested), with the same parameters, so checkpoints and imported weights are unaffected. They exist
because of measurements on XLA:CPU (jax 0.10, 2-core AMD EPYC; `experiments/benchmarks/ops.py`):

* **3D convolution** is a generic, poorly vectorised loop on XLA:CPU (about 22 GFLOP/s against 120 for a matmul on
  the same machine), while 2D convolutions go to XNNPACK (see `medjax.perf`). `conv_general_dilated` therefore
  computes a 3D convolution on CPU as a sum over the kernel's depth taps of 2D convolutions whose batch is
  (batch x output depth): 4-5x faster forward and backward. Other platforms keep `lax.conv_general_dilated`
  (cuDNN's 3D kernels are good), selected per platform at lowering time by `lax.platform_dependent`.
* **Transposed convolution with kernel == stride** (U-Net 2x up-sampling) writes disjoint output blocks, so it is a
  matmul followed by a depth-to-space reshape (`UpConv`); XLA lowers the general form to a convolution of the
  zero-dilated input, 40x slower forward in 3D.
* **Non-overlapping pooling** (window == stride, no padding) as a reshape and a reduction (`pool_blocks`): the
  gradient of `reduce_window` max is `select_and_scatter`, 13x slower on CPU than the reduction's gradient. On ties
  inside a window the gradient is split equally among the tied inputs (torch picks one); ties have measure zero
  for continuous activations, and ReLU zeros carry no gradient either way.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _channels_last_3d(dimension_numbers: Any, ndim: int) -> bool:
    """True when `dimension_numbers` is NDHWC / DHWIO / NDHWC (flax's channels-last convention)."""
    if ndim != 5:
        return False
    dn = lax.conv_dimension_numbers((1,) * 5, (1,) * 5, dimension_numbers)
    return dn == lax.ConvDimensionNumbers((0, 4, 1, 2, 3), (4, 3, 0, 1, 2), (0, 4, 1, 2, 3))


def _explicit_padding(padding: Any, lhs_spatial: Sequence[int], rhs_spatial: Sequence[int],
                      strides: Sequence[int], rhs_dilation: Sequence[int]) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(rhs_spatial, rhs_dilation)]
        return [tuple(p) for p in lax.padtype_to_pads(lhs_spatial, dilated, strides, padding)]
    return [tuple(int(v) for v in p) for p in padding]


def _conv3d_as_2d(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int], pads: list[tuple[int, int]],
                  rhs_dilation: Sequence[int], precision: Any, preferred_element_type: Any) -> jax.Array:
    """NDHWC x DHWIO convolution as sum_k conv2d(depth slice k of the input, rhs[k]), batch folded with depth."""
    (d_lo, d_hi), sd, rd = pads[0], strides[0], rhs_dilation[0]
    x = jnp.pad(lhs, [(0, 0), (max(d_lo, 0), max(d_hi, 0)), (0, 0), (0, 0), (0, 0)])
    x = x[:, max(-d_lo, 0): x.shape[1] - max(-d_hi, 0)]  # negative padding crops
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


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """Drop-in `lax.conv_general_dilated`; 3D channels-last convolutions run as 2D ones on CPU (module docstring).

    Anything else (other ranks or layouts, input dilation, grouped convolutions) is passed to `lax` unchanged.
    """
    nd = lhs.ndim - 2
    rhs_dilation = tuple(rhs_dilation or (1,) * nd)
    reference = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type)
    if (not _channels_last_3d(dimension_numbers, lhs.ndim) or feature_group_count != 1 or batch_group_count != 1
            or any(d != 1 for d in (lhs_dilation or ()))):
        return reference(lhs, rhs)
    strides = tuple(window_strides)
    pads = _explicit_padding(padding, lhs.shape[1:4], rhs.shape[:3], strides, rhs_dilation)
    on_cpu = functools.partial(_conv3d_as_2d, strides=strides, pads=pads, rhs_dilation=rhs_dilation,
                               precision=precision, preferred_element_type=preferred_element_type)
    return lax.platform_dependent(lhs, rhs, cpu=on_cpu, default=reference)


# A flax `nn.Conv` that uses the formulation above; same fields, parameters and auto-names ("Conv_0") as nn.Conv.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


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
        return y if bias is None else y + bias


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

