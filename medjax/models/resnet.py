"""ResNet (He et al. 2016) as torchvision builds it (v1.5: the stride sits on the bottleneck's 3x3 conv), 2D or 3D.

Submodule names follow torchvision's (`conv1`/`bn1`, `downsample`) under explicit stage/block names, so a
torch -> flax import table is a fixed rename: `layer{i}.{j-1}.conv1` -> `stage{i}_block{j}/conv1`,
`layer{i}.{j-1}.downsample.0/1` -> `downsample_conv/downsample_bn`, `conv1`/`bn1` -> `stem_conv`/`stem_bn`,
`fc` -> `head`. With 3 input channels and 1000 classes the parameter counts equal torchvision's.

The model returns logits only: whether they go through a softmax (multi-class) or a sigmoid per label
(multi-label, e.g. ChestMNIST) is the task's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.errors import MedjaxError
from medjax.models import layers, ops

BLOCKS = ("basic", "bottleneck")
STEMS = ("standard", "small")

# torchvision initialises convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _Block(nn.Module):
    """A residual block; `bottleneck` selects 1x1-3x3-1x1 with expansion 4, else two 3x3 convs."""

    features: int
    strides: int
    bottleneck: bool
    norm: str
    train: bool
    bn_axis_name: str | None
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd = layers.spatial_ndim(x)

        def conv(f: int, k: int, s: int, name: str) -> nn.Conv:
            return layers.conv(f, k, nd, s, use_bias=False, name=name, dtype=self.dtype, kernel_init=_conv_init)

        def norm(name: str) -> nn.Module:
            return layers.norm(self.norm, train=self.train, name=name, axis_name=self.bn_axis_name, dtype=self.dtype)

        if self.bottleneck:
            out_features = self.features * 4
            y = layers.ReLU(name="relu1")(norm("bn1")(conv(self.features, 1, 1, "conv1")(x)))
            y = layers.ReLU(name="relu2")(norm("bn2")(conv(self.features, 3, self.strides, "conv2")(y)))
            y = norm("bn3")(conv(out_features, 1, 1, "conv3")(y))
        else:
            out_features = self.features
            y = layers.ReLU(name="relu1")(norm("bn1")(conv(self.features, 3, self.strides, "conv1")(x)))
            y = norm("bn2")(conv(self.features, 3, 1, "conv2")(y))

        shortcut = x
        if self.strides != 1 or x.shape[-1] != out_features:
            shortcut = norm("downsample_bn")(conv(out_features, 1, self.strides, "downsample_conv")(x))
        return layers.ReLU(name="relu_out")(y + shortcut)


class ResNet(nn.Module):
    """ResNet classifier for NHWC (2D) or NDHWC (3D) input; returns float32 logits of shape (N, num_classes).

    `stem="standard"` is torchvision's 7x7/2 conv + 3x3/2 max-pool (for >= 128 px inputs); `"small"` is a 3x3/1
    conv without pooling, as the 28 px MedMNIST baselines use. `stem_kernel`, `stem_stride` (an int, or one per
    spatial axis) and `stem_pool` override the stem's conv kernel, conv stride and whether the 3x3/2 max-pool
    follows; None keeps `stem`'s value. They reproduce `monai.networks.nets.ResNet`, whose `conv1_t_size`,
    `conv1_t_stride` and `no_max_pool` they mirror (`stem_pool = not no_max_pool`; MONAI's defaults are 7, 1 and
    a max-pool, i.e. `stem_stride=1`). The stem conv pads `kernel // 2` per axis, as both torchvision and MONAI do.
    `width` scales every stage (64 = torchvision).
    `bn_axis_name` is only for pmap/shard_map strategies that need cross-device BatchNorm statistics.
    `remat` recomputes each residual block's activations in the backward pass instead of storing them (`nn.remat`):
    less memory for a slower step, same numbers and parameter names.
    `feature_stages` (e.g. (1, 2, 3)) makes the network a backbone: it returns those stages' outputs (a list,
    finest first) instead of logits, builds no stage after the last one named and no head (torchvision's
    `IntermediateLayerGetter`, which MONAI's RetinaNet feature extractor uses); parameter names are unchanged.
    `dropout_rate` drops pooled features before the head (torchvision's place for a classifier's dropout, as in
    its VGG/DenseNet heads); 0 (the default) adds no operation, and it has no parameters, so any rate loads the
    same checkpoints. It enables MC-dropout (`medjax evaluate --uncertainty mc_dropout`).
    """

    stage_sizes: Sequence[int]
    block: str
    num_classes: int
    stem: str = "standard"
    stem_kernel: int | Sequence[int] | None = None
    stem_stride: int | Sequence[int] | None = None
    stem_pool: bool | None = None
    width: int = 64
    norm: str = "batch"
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    remat: bool = False
    feature_stages: Sequence[int] = ()
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        # Fail at construction (config time), not at the first trace.
        layers.check_choice("resnet block", self.block, BLOCKS)
        layers.check_dropout("resnet dropout_rate", self.dropout_rate)
        layers.check_choice("resnet stem", self.stem, STEMS)
        layers.check_choice("norm", self.norm, layers.NORM_KINDS)
        for what, value in (("stem_kernel", self.stem_kernel), ("stem_stride", self.stem_stride)):
            values = value if isinstance(value, Sequence) else (value,)
            if value is not None and (not values or not all(isinstance(v, int) and v >= 1 for v in values)):
                raise MedjaxError(f"resnet {what} must be a positive int or one per spatial axis, got {value!r}")
        if any(not 1 <= s <= len(self.stage_sizes) for s in self.feature_stages):
            raise MedjaxError(f"resnet feature_stages {tuple(self.feature_stages)} must name stages 1.."
                              f"{len(self.stage_sizes)}")
        super().__post_init__()

    def _stem_setting(self, value: int | Sequence[int] | None, default: int, what: str, nd: int) -> tuple[int, ...]:
        value = default if value is None else value
        if not isinstance(value, Sequence):
            return (value,) * nd
        if len(value) != nd:
            raise MedjaxError(f"resnet {what} {tuple(value)} has {len(value)} entries for {nd}D input")
        return tuple(value)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array | list[jax.Array]:
        nd = layers.spatial_ndim(x)
        x = jnp.asarray(x, self.dtype)
        standard = self.stem == "standard"
        kernel = self._stem_setting(self.stem_kernel, 7 if standard else 3, "stem_kernel", nd)
        stride = self._stem_setting(self.stem_stride, 2 if standard else 1, "stem_stride", nd)
        x = ops.Conv(self.width, kernel, strides=stride, padding=[(k // 2, k // 2) for k in kernel], use_bias=False,
                     dtype=self.dtype, kernel_init=_conv_init, name="stem_conv")(x)
        x = layers.norm(self.norm, train=train, name="stem_bn", axis_name=self.bn_axis_name, dtype=self.dtype)(x)
        x = layers.ReLU(name="stem_relu")(x)
        if (standard if self.stem_pool is None else self.stem_pool):
            x = nn.max_pool(x, (3,) * nd, strides=(2,) * nd, padding=[(1, 1)] * nd)

        block_cls = nn.remat(_Block) if self.remat else _Block
        last = max(self.feature_stages) if self.feature_stages else len(self.stage_sizes)
        features = []
        for i, n_blocks in enumerate(self.stage_sizes[:last], start=1):
            for j in range(1, n_blocks + 1):
                x = block_cls(
                    features=self.width * 2 ** (i - 1),
                    strides=2 if (i > 1 and j == 1) else 1,
                    bottleneck=self.block == "bottleneck",
                    norm=self.norm,
                    train=train,
                    bn_axis_name=self.bn_axis_name,
                    dtype=self.dtype,
                    name=f"stage{i}_block{j}",
                )(x)
            if i in self.feature_stages:
                features.append(x)
        if self.feature_stages:
            return features

        x = jnp.mean(x, axis=tuple(range(1, 1 + nd)))
        x = layers.Dropout(self.dropout_rate, self.bn_axis_name, name="head_dropout")(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return jnp.asarray(x, jnp.float32)  # losses want float32 even when computing in bfloat16


def resnet18(num_classes: int, **kw: Any) -> ResNet:
    """torchvision's resnet18 layout (basic blocks 2-2-2-2)."""
    return ResNet(stage_sizes=(2, 2, 2, 2), block="basic", num_classes=num_classes, **kw)


def resnet34(num_classes: int, **kw: Any) -> ResNet:
    """torchvision's resnet34 layout (basic blocks 3-4-6-3)."""
    return ResNet(stage_sizes=(3, 4, 6, 3), block="basic", num_classes=num_classes, **kw)


def resnet50(num_classes: int, **kw: Any) -> ResNet:
    """torchvision's resnet50 layout (bottleneck blocks 3-4-6-3, expansion 4)."""
    return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", num_classes=num_classes, **kw)
