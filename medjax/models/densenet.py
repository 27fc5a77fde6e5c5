"""DenseNet-BC (Huang et al. 2017) as torchvision builds it, 2D or 3D.

Every layer is pre-activation: a dense layer is norm-relu-conv1x1 (bn_size * growth_rate features) then
norm-relu-conv3x3 (growth_rate features), and its output is concatenated after its input (channels grow by
growth_rate per layer); a transition between blocks is norm-relu-conv1x1 (halving the channels) then a 2x2/2
average pool. After the last block come `norm5`, a ReLU, a global average pool and the linear head.

Submodule names mirror torchvision's `features.*` so a torch -> flax import table is a fixed rename:
`features.conv0`/`norm0` -> `conv0`/`norm0`, `features.denseblock{b}.denselayer{l}.norm1|conv1|norm2|conv2` ->
`denseblock{b}_denselayer{l}/norm1|conv1|...`, `features.transition{b}.norm|conv` -> `transition{b}/norm|conv`,
`features.norm5` -> `norm5`, `classifier` -> `head`. MONAI's DenseNet121 is the same network (its dense layers
add a `.layers` level and its head is `class_layers.out`). With 3 input channels and 1000 classes densenet121
has torchvision's 7,978,856 parameters. `dropout_rate` (default 0: none, torchvision's and MONAI's default) drops
the pooled features before the head, for MC-dropout.

The model returns logits only (softmax or per-label sigmoid is the task's business).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.models import layers, ops

STEMS = ("standard", "small")

# torchvision (and MONAI) initialise convs with kaiming_normal_ (fan_in, relu gain), BatchNorm with 1/0 and the
# classifier's bias with 0; the classifier's weight keeps torch's Linear default, uniform(+-1/sqrt(fan_in)).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
_head_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class _Unit(nn.Module):
    """Shared constructor arguments of every norm and conv in the network."""

    norm: str
    train: bool
    bn_axis_name: str | None
    dtype: Any

    def make_norm(self, name: str) -> nn.Module:
        return layers.norm(self.norm, train=self.train, name=name, axis_name=self.bn_axis_name, dtype=self.dtype)

    def make_conv(self, features: int, kernel: int, nd: int, name: str, strides: int = 1) -> nn.Conv:
        return layers.conv(features, kernel, nd, strides, use_bias=False, name=name, dtype=self.dtype,
                           kernel_init=_conv_init)


class _DenseLayer(_Unit):
    """norm1-relu-conv1 (1x1, bn_size * growth_rate) - norm2-relu-conv2 (3x3, growth_rate); returns only the new
    growth_rate features (the caller concatenates, as torchvision's block does)."""

    growth_rate: int = 32
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd = layers.spatial_ndim(x)
        y = layers.ReLU(name="relu1")(self.make_norm("norm1")(x))
        y = self.make_conv(self.bn_size * self.growth_rate, 1, nd, "conv1")(y)
        y = layers.ReLU(name="relu2")(self.make_norm("norm2")(y))
        return self.make_conv(self.growth_rate, 3, nd, "conv2")(y)


class _Transition(_Unit):
    """norm-relu-conv (1x1, `features`) then a 2x2 stride-2 average pool (floor on odd sizes, like torch)."""

    features: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd = layers.spatial_ndim(x)
        x = self.make_conv(self.features, 1, nd, "conv")(layers.ReLU(name="relu")(self.make_norm("norm")(x)))
        return ops.pool_blocks(x, (2,) * nd, "avg")


class DenseNet(nn.Module):
    """DenseNet classifier for NHWC (2D) or NDHWC (3D) input; returns float32 logits of shape (N, num_classes).

    `stem="standard"` is torchvision's 7x7/2 conv + 3x3/2 max-pool (the standard network needs >= 29 px: five
    halvings); `"small"` is a 3x3/1 conv without pooling, for 28 px MedMNIST inputs. `bn_axis_name` is only for
    pmap/shard_map strategies that need cross-device BatchNorm statistics.
    `remat` recomputes each dense layer's activations in the backward pass instead of storing them (`nn.remat`):
    less memory for a slower step, same numbers and parameter names. `dropout_rate` drops the pooled features
    before the head (0: no operation; no parameters either way).
    """

    num_classes: int
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    stem: str = "standard"
    norm: str = "batch"
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    remat: bool = False
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        layers.check_choice("densenet stem", self.stem, STEMS)
        layers.check_dropout("densenet dropout_rate", self.dropout_rate)
        layers.check_choice("norm", self.norm, layers.NORM_KINDS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        nd = layers.spatial_ndim(x)
        x = jnp.asarray(x, self.dtype)
        shared = dict(norm=self.norm, train=train, bn_axis_name=self.bn_axis_name, dtype=self.dtype)

        def norm(name: str) -> nn.Module:
            return layers.norm(self.norm, train=train, name=name, axis_name=self.bn_axis_name, dtype=self.dtype)

        if self.stem == "standard":
            x = layers.conv(self.num_init_features, 7, nd, 2, use_bias=False, name="conv0", dtype=self.dtype,
                            kernel_init=_conv_init)(x)
        else:
            x = layers.conv(self.num_init_features, 3, nd, 1, use_bias=False, name="conv0", dtype=self.dtype,
                            kernel_init=_conv_init)(x)
        x = layers.ReLU(name="relu0")(norm("norm0")(x))
        if self.stem == "standard":
            x = nn.max_pool(x, (3,) * nd, strides=(2,) * nd, padding=[(1, 1)] * nd)

        features = self.num_init_features
        layer_cls = nn.remat(_DenseLayer) if self.remat else _DenseLayer
        for b, n_layers in enumerate(self.block_config, start=1):
            for i in range(1, n_layers + 1):
                new = layer_cls(growth_rate=self.growth_rate, bn_size=self.bn_size,
                                  name=f"denseblock{b}_denselayer{i}", **shared)(x)
                x = jnp.concatenate([x, new], axis=-1)
            features += n_layers * self.growth_rate
            if b != len(self.block_config):
                features //= 2
                x = _Transition(features=features, name=f"transition{b}", **shared)(x)

        x = layers.ReLU(name="relu5")(norm("norm5")(x))
        x = jnp.mean(x, axis=tuple(range(1, 1 + nd)))
        x = layers.Dropout(self.dropout_rate, self.bn_axis_name, name="head_dropout")(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_head_init, name="head")(x)
        return jnp.asarray(x, jnp.float32)  # losses want float32 even when computing in bfloat16


def densenet121(num_classes: int, **kw: Any) -> DenseNet:
    """torchvision's densenet121: growth rate 32, blocks 6-12-24-16, 64 initial features, bottleneck 4."""
    return DenseNet(num_classes=num_classes, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                    bn_size=4, **kw)
