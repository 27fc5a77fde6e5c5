"""U-Net segmentation models for NHWC (2D) or NDHWC (3D) input: a configurable `UNet` and MONAI's `BasicUNet`.

Both return per-voxel logits with the input's spatial size and `num_classes` channels; softmax vs sigmoid is
the task's business. Odd spatial sizes work: after upsampling, features are edge-padded at the end to the skip
connection's size, as MONAI does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.errors import MedjaxError
from medjax.models import layers, ops

UPSAMPLES = ("transpose", "resize")
ACTIVATIONS = ("relu", "leaky_relu")
LEAKY_SLOPE = 0.1  # MONAI's BasicUNet default


def _activation(kind: str, x: jax.Array, name: str) -> jax.Array:
    return layers.ReLU(name=name)(x) if kind == "relu" else nn.leaky_relu(x, LEAKY_SLOPE)


def _max_pool2(x: jax.Array) -> jax.Array:
    nd = x.ndim - 2
    return ops.pool_blocks(x, (2,) * nd, "max")  # floor on odd sizes, like torch


def _deconv(features: int, nd: int, dtype: Any, name: str) -> ops.UpConv:
    """2x transposed conv (kernel 2, stride 2): each input voxel writes one 2^nd output block, no overlap.

    Flax's kernel is (k.., in, out) and spatially flipped relative to torch's ConvTranspose (in, out, k..):
    a weight importer must flip the spatial axes.
    """
    return ops.UpConv(features, (2,) * nd, dtype=dtype, name=name)  # = nn.ConvTranspose(stride 2, VALID)


class ConvBlock(nn.Module):
    """Two (3x3 conv -> norm -> activation); convs have no bias, since the norm's shift makes it redundant."""

    features: int
    norm: str
    activation: str
    train: bool
    bn_axis_name: str | None = None
    num_groups: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd = layers.spatial_ndim(x)
        for k in (1, 2):
            x = layers.conv(self.features, 3, nd, use_bias=False, name=f"conv{k}", dtype=self.dtype)(x)
            x = layers.norm(self.norm, train=self.train, name=f"norm{k}", axis_name=self.bn_axis_name,
                            num_groups=self.num_groups, dtype=self.dtype)(x)
            x = _activation(self.activation, x, f"relu{k}")
        return x


class UNet(nn.Module):
    """U-Net with `len(features)` levels: `enc{i}` (i = 1..depth; max-pool 2 before each but the first),
    then for i = depth-1..1: `up{i}` (to `features[i-1]` channels), concat with `enc{i}`, `dec{i}`; `final_conv`.

    `upsample="transpose"` is a 2x transposed conv; `"resize"` is (bi/tri)linear resizing followed by a 1x1 conv
    (no checkerboard artefacts). With `deep_supervision`, train mode returns `(main, aux2, ..., aux{depth-1})`:
    1x1-conv logits `aux{i}` from decoder level `dec{i}`, each at its own (coarser) resolution, finest first;
    eval returns the main logits only. Group norm needs every feature count divisible by `num_groups`.
    `remat` recomputes each conv block's activations in the backward pass instead of storing them (`nn.remat`):
    less memory for a slower step, same numbers and parameter names.
    `decoder_outputs=True` returns `(logits, levels)` with `levels` the feature maps of every level, finest first:
    `dec1`, ..., `dec{depth-1}` and the bottom `enc{depth}` (level i at stride 2^(i-1)), for heads that read the
    decoder (the Retina U-Net's detection heads, `medjax.models.detection.RetinaUNet`).
    `dropout_rate` drops the bottleneck's features and every decoder block's output (`bottleneck_dropout`,
    `dec{i}_dropout`: the central and decoder placement of Kendall et al.'s Bayesian SegNet), for MC-dropout;
    0 (the default) adds no operation, and dropout has no parameters.
    """

    num_classes: int
    features: Sequence[int] = (32, 64, 128, 256)
    norm: str = "batch"
    upsample: str = "transpose"
    deep_supervision: bool = False
    activation: str = "relu"
    num_groups: int = 8
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    remat: bool = False
    decoder_outputs: bool = False
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        layers.check_choice("norm", self.norm, layers.NORM_KINDS)
        layers.check_choice("upsample", self.upsample, UPSAMPLES)
        layers.check_dropout("unet dropout_rate", self.dropout_rate)
        layers.check_choice("activation", self.activation, ACTIVATIONS)
        if len(self.features) < 2:
            raise MedjaxError(f"unet features needs at least 2 levels, got {tuple(self.features)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array | tuple[jax.Array, ...]:
        nd = layers.spatial_ndim(x)
        depth = len(self.features)
        x = jnp.asarray(x, self.dtype)

        block_cls = nn.remat(ConvBlock) if self.remat else ConvBlock

        def block(f: int, name: str) -> ConvBlock:
            return block_cls(f, self.norm, self.activation, train, self.bn_axis_name, self.num_groups,
                             self.dtype, name=name)

        skips = []
        for i in range(1, depth + 1):
            if i > 1:
                x = _max_pool2(x)
            x = block(self.features[i - 1], f"enc{i}")(x)
            skips.append(x)

        x = layers.Dropout(self.dropout_rate, self.bn_axis_name, name="bottleneck_dropout")(x)
        aux, levels = [], [x]
        for i in range(depth - 1, 0, -1):
            skip, f = skips[i - 1], self.features[i - 1]
            if self.upsample == "transpose":
                x = _deconv(f, nd, self.dtype, f"up{i}")(x)
                x = layers.pad_to(x, skip.shape[1:-1])
            else:
                x = jax.image.resize(x, x.shape[:1] + skip.shape[1:-1] + x.shape[-1:], method="linear")
                x = layers.conv(f, 1, nd, use_bias=False, name=f"up{i}", dtype=self.dtype)(x)
            x = block(f, f"dec{i}")(jnp.concatenate([skip, x], axis=-1))
            x = layers.Dropout(self.dropout_rate, self.bn_axis_name, name=f"dec{i}_dropout")(x)
            levels.insert(0, x)
            if self.deep_supervision and i > 1:
                # Always built (cheap, and dropped by XLA when unused) so init in either mode makes the params.
                aux.append(layers.conv(self.num_classes, 1, nd, name=f"aux{i}", dtype=self.dtype)(x))

        logits = layers.conv(self.num_classes, 1, nd, name="final_conv", dtype=self.dtype)(x)
        logits = jnp.asarray(logits, jnp.float32)
        if self.decoder_outputs:
            return logits, tuple(levels)
        if self.deep_supervision and train:
            return (logits, *(jnp.asarray(a, jnp.float32) for a in reversed(aux)))
        return logits


# --- MONAI BasicUNet ------------------------------------------------------------------------------------------
# Names mirror MONAI's module paths so a state_dict import is a rename:
#   `down_1.convs.conv_0.conv.weight` -> `down_1/convs/conv_0/conv/kernel`,
#   `....conv_0.adn.N.weight/bias`    -> `.../conv_0/norm/scale|bias`,
#   `upcat_4.upsample.deconv.weight`  -> `upcat_4/upsample/kernel` (spatially flipped, see `_deconv`).


class _ConvNormAct(nn.Module):
    """MONAI `Convolution` as BasicUNet uses it: 3x3 conv (bias) -> InstanceNorm (affine) -> dropout ->
    LeakyReLU(0.1) (MONAI's "NDA" order)."""

    features: int
    dtype: Any
    dropout_rate: float = 0.0
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.conv(self.features, 3, x.ndim - 2, use_bias=True, name="conv", dtype=self.dtype)(x)
        x = layers.norm("instance", train=False, name="norm", dtype=self.dtype)(x)
        x = layers.Dropout(self.dropout_rate, self.axis_name, name="dropout")(x)
        return nn.leaky_relu(x, LEAKY_SLOPE)


class _TwoConv(nn.Module):
    features: int
    dtype: Any
    dropout_rate: float = 0.0
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _ConvNormAct(self.features, self.dtype, self.dropout_rate, self.axis_name, name="conv_0")(x)
        return _ConvNormAct(self.features, self.dtype, self.dropout_rate, self.axis_name, name="conv_1")(x)


class _Down(nn.Module):
    features: int
    dtype: Any
    dropout_rate: float = 0.0
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _TwoConv(self.features, self.dtype, self.dropout_rate, self.axis_name, name="convs")(_max_pool2(x))


class _UpCat(nn.Module):
    """Deconv to `up_features`, edge-pad to the skip's size, concat [skip, up], TwoConv."""

    up_features: int
    features: int
    dtype: Any
    dropout_rate: float = 0.0
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        x = _deconv(self.up_features, x.ndim - 2, self.dtype, "upsample")(x)
        x = layers.pad_to(x, skip.shape[1:-1])
        return _TwoConv(self.features, self.dtype, self.dropout_rate, self.axis_name,
                        name="convs")(jnp.concatenate([skip, x], axis=-1))


class BasicUNet(nn.Module):
    """`monai.networks.nets.BasicUNet` with its defaults (deconv upsampling, InstanceNorm, LeakyReLU 0.1, no
    dropout), same layers, channel arithmetic and parameter count. `dropout_rate` is MONAI's `dropout`: after
    every convolution's norm (MONAI's "NDA" order), for MC-dropout; 0 (the default) adds no operation.

    `features` are six numbers: five encoder levels and the last decoder level. MONAI's quirks kept on purpose:
    convs carry a bias although InstanceNorm follows; each deconv halves the channels (`in // 2`, not the skip's
    count) except the last (`halves=False`), whose output width is `features[5]`, not `features[0]`.
    Input channels are taken from the data. `bn_axis_name` is for a uniform model interface (instance norm has no
    cross-example statistics; dropout under pmap uses it); `train` changes nothing (dropout follows the rng).
    `remat` recomputes each level (two convs)'s activations in the backward pass instead of storing them (`nn.remat`):
    less memory for a slower step, same numbers and parameter names.
    """

    num_classes: int
    features: Sequence[int] = (32, 32, 64, 128, 256, 32)
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    remat: bool = False
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        if len(self.features) != 6:
            raise MedjaxError(f"basic_unet features must be 6 numbers, got {tuple(self.features)}")
        layers.check_dropout("basic_unet dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        nd = layers.spatial_ndim(x)
        f = self.features
        x = jnp.asarray(x, self.dtype)
        two_conv, down, upcat = (nn.remat(m) if self.remat else m for m in (_TwoConv, _Down, _UpCat))
        d = dict(dropout_rate=self.dropout_rate, axis_name=self.bn_axis_name)
        x0 = two_conv(f[0], self.dtype, name="conv_0", **d)(x)
        x1 = down(f[1], self.dtype, name="down_1", **d)(x0)
        x2 = down(f[2], self.dtype, name="down_2", **d)(x1)
        x3 = down(f[3], self.dtype, name="down_3", **d)(x2)
        x4 = down(f[4], self.dtype, name="down_4", **d)(x3)
        u4 = upcat(f[4] // 2, f[3], self.dtype, name="upcat_4", **d)(x4, x3)
        u3 = upcat(f[3] // 2, f[2], self.dtype, name="upcat_3", **d)(u4, x2)
        u2 = upcat(f[2] // 2, f[1], self.dtype, name="upcat_2", **d)(u3, x1)
        u1 = upcat(f[1], f[5], self.dtype, name="upcat_1", **d)(u2, x0)  # halves=False
        logits = layers.conv(self.num_classes, 1, nd, name="final_conv", dtype=self.dtype)(u1)
        return jnp.asarray(logits, jnp.float32)


def basic_unet(num_classes: int, **kw: Any) -> BasicUNet:
    """MONAI's BasicUNet (default features (32, 32, 64, 128, 256, 32)); 2D or 3D by input rank."""
    return BasicUNet(num_classes=num_classes, **kw)
