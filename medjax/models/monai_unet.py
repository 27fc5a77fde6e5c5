"""MONAI's residual-unit U-Net (`monai.networks.nets.UNet`) for NHWC (2D) or NDHWC (3D) input.

The network MONAI builds recursively, level i = 0 .. L-2 for L = len(channels):

    down_i  (strided conv, or a ResidualUnit whose first conv is strided) to channels[i]
    skip:   concat [down_i output, what the next level returns]           (`SkipConnection`, cat on channels)
    up_i    transposed conv (stride strides[i], padding (k-1)/2, output_padding stride-1) to channels[i-1]
            (to out_channels at the top), then, with residual units, a one-subunit ResidualUnit
    bottom  a stride-1 down block from channels[L-2] to channels[L-1]

Every convolution is MONAI's `Convolution`: conv (with bias) -> norm -> dropout -> PReLU (`adn_ordering` "NDA",
the default). The top up block has no norm/act ("conv_only") without residual units; with them, the top up block's
residual unit ends in a plain conv instead. Residual units add a shortcut: a conv with the unit's kernel and stride
when it strides, a 1x1 conv when only the channel count changes, identity otherwise.

Names mirror MONAI's nesting with flat level indices, so a state dict import is a short regex table:

    torch module                                     medjax module
    model.0.conv / .adn.A / .adn.N                   down0/conv, down0/act, down0/norm
    model.1.submodule.0.conv.unit1.conv              down1/unit1/conv
    model.1.submodule.0.residual                     down1/residual
    model.1.submodule.1.submodule.conv.unit0.conv    bottom/unit0/conv        (L = 3; the last level's SkipConnection)
    model.1.submodule.2.0.conv / .2.conv             up1/conv                 (transposed; .2.0 with residual units)
    model.1.submodule.2.1.conv.unit0.adn.A           up1/res/unit0/act

MONAI's defaults kept: PReLU with one shared slope (init 0.25); InstanceNorm with affine=False, so instance norm
has no parameters at all; BatchNorm with torch's momentum and epsilon (running statistics in `batch_stats`).
Spatial sizes behave exactly as MONAI's: a level whose input size is not divisible by its stride fails at the
concatenation (a MedjaxError here, a torch error in MONAI), except at the top level, where the output is then
larger than the input (MONAI's up-convolution rounds the size up to a multiple of the stride).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import MedjaxError
from medjax.models import layers, ops
from medjax.models import norm as norm_layers

NORMS = ("instance", "batch")
PRELU_INIT = 0.25  # torch.nn.PReLU default


def _tuple(v: int | Sequence[int], nd: int, what: str) -> tuple[int, ...]:
    t = (int(v),) * nd if isinstance(v, (int, np.integer)) else tuple(int(a) for a in v)
    if len(t) != nd:
        raise MedjaxError(f"monai_unet {what} {v!r} needs {nd} values for {nd}D input")
    return t


def _convolution(x: jax.Array, features: int, kernel_size: int | Sequence[int], strides: int | Sequence[int], *,
                 transposed: bool, conv_only: bool, cfg: _Cfg) -> jax.Array:
    """MONAI `Convolution`: conv or transposed conv, then the ADN ops in `adn_ordering` unless `conv_only`.

    A function, not a module: called inside a module's compact method it creates that module's `conv`, `norm`
    and `act` children, so MONAI's up layer (a Convolution followed by a ResidualUnit) needs no extra name level.
    """
    nd = x.ndim - 2
    k = _tuple(kernel_size, nd, "kernel_size")
    s = _tuple(strides, nd, "strides")
    if transposed:
        # torch ConvTranspose(k, s, padding p=(k-1)/2, output_padding s-1) is a conv of the s-dilated input padded
        # by (k-1-p, k-1-p+s-1) with the spatially flipped kernel (the weight importer flips it).
        pad = [(ki - 1 - (ki - 1) // 2, ki - 1 - (ki - 1) // 2 + si - 1) for ki, si in zip(k, s)]
        x = nn.ConvTranspose(features, k, strides=s, padding=pad, use_bias=cfg.bias, dtype=cfg.dtype, name="conv")(x)
    else:
        x = ops.Conv(features, k, strides=s, padding=[((ki - 1) // 2,) * 2 for ki in k], use_bias=cfg.bias,
                     dtype=cfg.dtype, name="conv")(x)
    if conv_only:
        return x
    for op in cfg.adn_ordering.upper():
        if op == "N":
            if cfg.norm == "instance":  # MONAI's Norm.INSTANCE: affine=False, no running statistics
                x = norm_layers.InstanceNorm(epsilon=layers.NORM_EPSILON, use_scale=False, use_bias=False,
                                    use_fast_variance=False, dtype=cfg.dtype, name="norm")(x)
            else:
                x = layers.norm("batch", train=cfg.train, name="norm", axis_name=cfg.bn_axis_name, dtype=cfg.dtype)(x)
        elif op == "A":
            x = nn.PReLU(negative_slope_init=PRELU_INIT, name="act")(x)
        else:  # "D": MONAI's element-wise dropout (on only when the caller passes a dropout rng)
            x = layers.Dropout(cfg.dropout, cfg.bn_axis_name, name="dropout")(x)
    return x


class _Cfg(NamedTuple):
    """What every MONAI block of one network shares."""

    norm: str
    bias: bool
    adn_ordering: str
    train: bool
    bn_axis_name: str | None
    dtype: Any
    dropout: float = 0.0


class _Convolution(nn.Module):
    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int]
    conv_only: bool
    cfg: _Cfg

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _convolution(x, self.features, self.kernel_size, self.strides, transposed=False,
                            conv_only=self.conv_only, cfg=self.cfg)


class _ResidualUnit(nn.Module):
    """MONAI `ResidualUnit`: `unit0..unit{n-1}` (the first strided) plus, where the shape changes, the `residual`
    shortcut conv (the unit's kernel and stride if it strides, else 1x1)."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int]
    subunits: int
    last_conv_only: bool
    cfg: _Cfg

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd = x.ndim - 2
        s = _tuple(self.strides, nd, "strides")
        res = x
        if int(np.prod(s)) != 1 or x.shape[-1] != self.features:
            k = _tuple(self.kernel_size, nd, "kernel_size") if int(np.prod(s)) != 1 else (1,) * nd
            res = ops.Conv(self.features, k, strides=s, padding=[((ki - 1) // 2,) * 2 for ki in k],
                           use_bias=self.cfg.bias, dtype=self.cfg.dtype, name="residual")(x)
        n = max(1, self.subunits)
        for i in range(n):
            x = _Convolution(self.features, self.kernel_size, s if i == 0 else 1, self.last_conv_only and i == n - 1,
                             self.cfg, name=f"unit{i}")(x)
        return x + res


class _Up(nn.Module):
    """MONAI's up layer: the transposed Convolution (`conv`, `norm`, `act` right here) and, with residual units,
    a one-subunit ResidualUnit `res`. At the top the last conv has no norm/act (MONAI's conv_only/last_conv_only)."""

    features: int
    kernel_size: int | Sequence[int]
    up_kernel_size: int | Sequence[int]
    strides: int | Sequence[int]
    is_top: bool
    num_res_units: int
    cfg: _Cfg

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _convolution(x, self.features, self.up_kernel_size, self.strides, transposed=True,
                         conv_only=self.is_top and self.num_res_units == 0, cfg=self.cfg)
        if self.num_res_units > 0:
            x = _ResidualUnit(self.features, self.kernel_size, 1, 1, self.is_top, self.cfg, name="res")(x)
        return x


class MonaiUNet(nn.Module):
    """`monai.networks.nets.UNet(spatial_dims, in_channels, out_channels=num_classes, channels, strides,
    kernel_size, up_kernel_size, num_res_units, act=PRELU, norm, dropout, bias, adn_ordering)`: same layers,
    parameter count and outputs (see the module docstring). `dropout` (MONAI's name; default 0, the identity) is
    element-wise dropout at the "D" of every Convolution's `adn_ordering`, as MONAI places it, for MC-dropout.
    Input channels come from the data, 2D/3D from its rank.

    Submodules: `down0..down{L-2}`, `bottom`, `up0..up{L-2}` (L = len(channels)); each down/bottom is a MONAI
    Convolution (`conv`, `norm`, `act`) or, with `num_res_units > 0`, a ResidualUnit (`unit0..`, `residual`).
    `norm="instance"` (MONAI's default, affine=False: no parameters) or `"batch"` (running statistics in
    `batch_stats`; `bn_axis_name` as in `layers.norm`). `train` only matters for batch norm. Kernel sizes must be
    odd (MONAI's same_padding); `strides` entries may be ints or per-axis tuples; extra strides are ignored.
    """

    num_classes: int
    channels: Sequence[int] = (16, 32, 64, 128, 256)
    strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2)
    kernel_size: int | Sequence[int] = 3
    up_kernel_size: int | Sequence[int] = 3
    num_res_units: int = 0
    norm: str = "instance"
    dropout: float = 0.0
    bias: bool = True
    adn_ordering: str = "NDA"
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_choice("norm", self.norm, NORMS)
        if len(self.channels) < 2:
            raise MedjaxError(f"monai_unet channels needs at least 2 levels, got {tuple(self.channels)}")
        if len(self.strides) < len(self.channels) - 1:
            raise MedjaxError(f"monai_unet needs len(channels) - 1 = {len(self.channels) - 1} strides, got "
                              f"{tuple(self.strides)}")
        layers.check_dropout("monai_unet dropout", self.dropout)
        if set(self.adn_ordering.upper()) - set("NDA"):
            raise MedjaxError(f"monai_unet adn_ordering must use the letters N, D, A; got {self.adn_ordering!r}")
        for what in ("kernel_size", "up_kernel_size"):
            v = getattr(self, what)
            if any(k % 2 == 0 for k in ((v,) if isinstance(v, (int, np.integer)) else v)):
                raise MedjaxError(f"monai_unet {what} must be odd (MONAI's same padding), got {v!r}")
        super().__post_init__()

    def _down(self, x: jax.Array, features: int, strides: Any, cfg: _Cfg, name: str) -> jax.Array:
        if self.num_res_units > 0:
            return _ResidualUnit(features, self.kernel_size, strides, self.num_res_units, False, cfg, name=name)(x)
        return _Convolution(features, self.kernel_size, strides, False, cfg, name=name)(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        layers.spatial_ndim(x)
        x = jnp.asarray(x, self.dtype)
        cfg = _Cfg(self.norm, self.bias, self.adn_ordering, train, self.bn_axis_name, self.dtype, self.dropout)
        ch, depth = tuple(self.channels), len(self.channels) - 1
        skips = []
        for i in range(depth):
            x = self._down(x, ch[i], self.strides[i], cfg, f"down{i}")
            skips.append(x)
        x = self._down(x, ch[depth], 1, cfg, "bottom")
        for i in reversed(range(depth)):
            skip = skips[i]
            if x.shape[1:-1] != skip.shape[1:-1]:
                raise MedjaxError(
                    f"monai_unet: up{i + 1} gives spatial size {tuple(x.shape[1:-1])} but its skip connection "
                    f"(down{i}) is {tuple(skip.shape[1:-1])}: below the top, each level's input size must be "
                    "divisible by its stride (MONAI fails here too; pad or crop the input)")
            x = jnp.concatenate([skip, x], axis=-1)
            x = _Up(self.num_classes if i == 0 else ch[i - 1], self.kernel_size, self.up_kernel_size,
                    self.strides[i], i == 0, self.num_res_units, cfg, name=f"up{i}")(x)
        return jnp.asarray(x, jnp.float32)


def monai_unet(num_classes: int, **kw: Any) -> MonaiUNet:
    """MONAI's residual-unit UNet (default channels (16, 32, 64, 128, 256), strides 2); 2D or 3D by input rank."""
    return MonaiUNet(num_classes=num_classes, **kw)
