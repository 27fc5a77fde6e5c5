"""Convolutional LSTMs for image sequences (cine MRI, echocardiography, 4D volumes), 2D or 3D spatial.

Sequences are (N, T, *spatial, C), channels-last, time second.

* `ConvLSTMCell`: Shi et al. (2015) without peepholes: one convolution of [x, h] (concatenated along the
  channels) gives the four gates in Flax's order (i, g, f, o); c' = sigmoid(f + forget_bias) c + sigmoid(i)
  tanh(g), h' = sigmoid(o) tanh(c'). `forget_bias` defaults to 1.0, as Flax's `ConvLSTMCell` (which uses two
  convolutions, of x and of h, whose sum is this one convolution). PyTorch ConvLSTMs usually order the gates
  (i, f, o, g) with no forget bias: `medjax.transfer.convlstm` converts their weights.
* `ConvLSTM`: `num_layers` stacked layers over time (`nn.RNN`, i.e. `nn.scan`), optionally bidirectional (the two
  directions' outputs concatenated). `unroll=None` unrolls the whole sequence: XLA:CPU runs loop bodies that hold
  convolutions about 24x slower than straight-line code (see the README's Performance section), and cine
  sequences are short; set `unroll=1` for long sequences on accelerators (one compiled step, less compile time).
* `TimeDistributed`: any medjax model applied frame by frame (time folded into the batch).
* `ConvLSTMUNet`: per-frame segmentation. Frame-wise U-Net encoder, ConvLSTM at the bottleneck (and, with
  `skip_lstm`, at every skip), frame-wise decoder: (N, T, *s, C) -> (N, T, *s, num_classes) logits.
* `ConvLSTMRegressor`: sequence regression / classification (e.g. ejection fraction). A frame-wise CNN encoder,
  a ConvLSTM, mean pooling over space and time, a dense head: (N, T, *s, C) -> (N, num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.errors import MedjaxError
from medjax.models import layers
from medjax.models.unet import ConvBlock, _deconv, _max_pool2


def _check_sequence(x: jax.Array) -> int:
    """Number of spatial axes of a (N, T, *spatial, C) sequence."""
    if x.ndim not in (5, 6):
        raise MedjaxError(f"expected a sequence (N, T, H, W, C) or (N, T, D, H, W, C), got shape {tuple(x.shape)}")
    return x.ndim - 3


def fold_time(x: jax.Array) -> jax.Array:
    """(N, T, ...) -> (N * T, ...)."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def unfold_time(x: jax.Array, n: int) -> jax.Array:
    """(N * T, ...) -> (N, T, ...)."""
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])


class ConvLSTMCell(nn.RNNCellBase):
    """One ConvLSTM step: carry (c, h), input (N, *spatial, C) -> ((c', h'), h')."""

    features: int
    kernel_size: int = 3
    forget_bias: float = 1.0
    dtype: Any = jnp.float32
    spatial_dims: int = 2  # tells nn.RNN which axes are features (spatial + channels) and which is time

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, jax.Array], x: jax.Array) -> tuple[tuple, jax.Array]:
        c, h = carry
        nd = x.ndim - 2
        xh = jnp.concatenate([jnp.asarray(x, self.dtype), jnp.asarray(h, self.dtype)], axis=-1)
        gates = layers.conv(4 * self.features, self.kernel_size, nd, name="gates", dtype=self.dtype)(xh)
        i, g, f, o = jnp.split(jnp.asarray(gates, jnp.float32), 4, axis=-1)
        c = jax.nn.sigmoid(f + self.forget_bias) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """Zero (c, h) for one step's input shape (N, *spatial, C)."""
        shape = tuple(input_shape[:-1]) + (self.features,)
        return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)

    @property
    def num_feature_axes(self) -> int:
        return self.spatial_dims + 1


class ConvLSTM(nn.Module):
    """(N, T, *spatial, C) -> (N, T, *spatial, features x (2 if bidirectional)): stacked (bi)directional layers."""

    features: int
    kernel_size: int = 3
    num_layers: int = 1
    bidirectional: bool = False
    forget_bias: float = 1.0
    unroll: int | None = None  # None: the whole sequence
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd = _check_sequence(x)
        unroll = x.shape[1] if self.unroll is None else self.unroll

        def rnn(name: str, reverse: bool = False) -> nn.RNN:
            cell = ConvLSTMCell(self.features, self.kernel_size, self.forget_bias, self.dtype, nd, parent=None)
            return nn.RNN(cell, reverse=reverse, keep_order=True, unroll=unroll, name=name)

        for layer in range(self.num_layers):
            if self.bidirectional:
                x = nn.Bidirectional(rnn(f"forward{layer}"), rnn(f"backward{layer}", reverse=True),
                                     name=f"layer{layer}")(x)
            else:
                x = rnn(f"layer{layer}")(x)
        return x


class TimeDistributed(nn.Module):
    """Run `module(frames, train=...)` on every frame of (N, T, ...) at once (time folded into the batch)."""

    module: nn.Module

    def __call__(self, x: jax.Array, train: bool) -> Any:
        out = self.module(fold_time(x), train=train)
        return jax.tree.map(lambda y: unfold_time(y, x.shape[0]), out)


class ConvLSTMUNet(nn.Module):
    """Per-frame segmentation with temporal memory: (N, T, *s, C) -> (N, T, *s, num_classes) logits.

    The levels are medjax `UNet`'s (`enc{i}` / `up{i}` / `dec{i}` ConvBlocks, 2x max-pool, 2x up-convolution),
    applied to all frames at once; `bottleneck_lstm` is a ConvLSTM on the deepest features (with a residual
    connection, so an untrained LSTM does not block the signal), and `skip_lstm` adds one on every skip.
    `dropout_rate` drops the bottleneck's features and every decoder block's output, as `UNet` does (0: none).
    """

    num_classes: int
    features: Sequence[int] = (16, 32, 64)
    norm: str = "batch"
    skip_lstm: bool = False
    bidirectional: bool = False
    unroll: int | None = None
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        layers.check_choice("norm", self.norm, layers.NORM_KINDS)
        layers.check_dropout("convlstm_unet dropout_rate", self.dropout_rate)
        if len(self.features) < 2:
            raise MedjaxError(f"ConvLSTMUNet features needs at least 2 levels, got {tuple(self.features)}")
        super().__post_init__()

    def _lstm(self, features: int, name: str) -> ConvLSTM:
        return ConvLSTM(features // 2 if self.bidirectional else features, bidirectional=self.bidirectional,
                        unroll=self.unroll, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        nd = _check_sequence(x)
        n = x.shape[0]
        x = fold_time(jnp.asarray(x, self.dtype))
        depth = len(self.features)

        def block(f: int, name: str) -> ConvBlock:
            return ConvBlock(f, self.norm, "relu", train, self.bn_axis_name, 8, self.dtype, name=name)

        def temporal(y: jax.Array, name: str) -> jax.Array:  # residual ConvLSTM over the frames
            return y + fold_time(self._lstm(y.shape[-1], name)(unfold_time(y, n)))

        skips = []
        for i in range(1, depth + 1):
            if i > 1:
                x = _max_pool2(x)
            x = block(self.features[i - 1], f"enc{i}")(x)
            if i < depth:
                skips.append(temporal(x, f"skip_lstm{i}") if self.skip_lstm else x)
        x = temporal(x, "bottleneck_lstm")
        x = layers.Dropout(self.dropout_rate, self.bn_axis_name, name="bottleneck_dropout")(x)
        for i in range(depth - 1, 0, -1):
            skip = skips[i - 1]
            x = layers.pad_to(_deconv(self.features[i - 1], nd, self.dtype, f"up{i}")(x), skip.shape[1:-1])
            x = block(self.features[i - 1], f"dec{i}")(jnp.concatenate([skip, x], axis=-1))
            x = layers.Dropout(self.dropout_rate, self.bn_axis_name, name=f"dec{i}_dropout")(x)
        logits = layers.conv(self.num_classes, 1, nd, name="final_conv", dtype=self.dtype)(x)
        return unfold_time(jnp.asarray(logits, jnp.float32), n)


class ConvLSTMRegressor(nn.Module):
    """Sequence -> (N, num_classes) outputs (regression targets or class logits; the name is medjax models'
    common output-width field): frame-wise CNN encoder, ConvLSTM, mean over space and time, dense head.
    `dropout_rate` drops the pooled features before the head (0: none)."""

    num_classes: int = 1
    features: Sequence[int] = (16, 32, 64)
    lstm_features: int = 64
    norm: str = "batch"
    bidirectional: bool = False
    unroll: int | None = None
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        layers.check_dropout("convlstm_regressor dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        nd = _check_sequence(x)
        n = x.shape[0]
        x = fold_time(jnp.asarray(x, self.dtype))
        for i, f in enumerate(self.features):
            if i:
                x = _max_pool2(x)
            x = ConvBlock(f, self.norm, "relu", train, self.bn_axis_name, 8, self.dtype, name=f"enc{i + 1}")(x)
        h = ConvLSTM(self.lstm_features, bidirectional=self.bidirectional, unroll=self.unroll, dtype=self.dtype,
                     name="lstm")(unfold_time(x, n))
        pooled = jnp.mean(h, axis=tuple(range(1, nd + 2)))  # over time and space
        pooled = layers.Dropout(self.dropout_rate, self.bn_axis_name, name="head_dropout")(pooled)
        return jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled), jnp.float32)
