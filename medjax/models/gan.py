"""GAN networks, 2D and 3D (channels-last): DCGAN-style generator and discriminator, pix2pix, super-resolution.

* `DCGANGenerator`: latent vector (+ class label) -> image in [-1, 1]. A dense layer to a `base`^nd map, then 2x
  up-blocks: a kernel == stride transposed convolution (`ops.UpConv`, one matmul) followed by a 3x3 convolution,
  BatchNorm and ReLU (the "resize-convolution" form of DCGAN's 4x4 transposed convolutions: no checkerboard
  artefacts, and fast on XLA:CPU), then a 3x3 convolution to the image channels and tanh.
* `DCGANDiscriminator`: 4x4 stride-2 convolutions with LeakyReLU(0.2) down to `base`^nd, then one logit. Class
  conditioning is a projection discriminator (Miyato & Koyama 2018): logit + <embed(label), pooled features>.
* `PatchGANDiscriminator` (pix2pix): a map of logits, one per receptive-field patch, over (condition, image)
  concatenated along the channels.
* `Pix2PixGenerator`: medjax's `UNet` with image channels out and tanh (or no) output activation.
* `SRGenerator`: EDSR-style super-resolution: a 3x3 convolution, residual blocks (conv-ReLU-conv, scaled, no
  BatchNorm, which EDSR found to hurt SR), a global skip, then log2(scale) sub-pixel 2x up-samplers (convolution
  to 2^nd x channels and depth-to-space, generalised to 3D; no activation, as EDSR) and a 3x3 convolution out.
  Linear output; with `bicubic_skip` (default) the network adds its output to cubic interpolation of the input
  (VDSR's global residual); its last convolution starts at zero, so an untrained generator IS the
  interpolation baseline, and training learns the detail.

Discriminators take `spectral_norm=True` to wrap every convolution and dense layer in `nn.SpectralNorm` (its power
iteration state lives in `batch_stats`; pass `train=True` with `mutable=["batch_stats"]` to update it). Every
module has a `train` argument so the GAN trainer applies them alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.errors import MedjaxError
from medjax.models import layers, ops
from medjax.models.unet import UNet

OUTPUT_ACTIVATIONS = ("tanh", "none")
LEAKY_SLOPE = 0.2  # DCGAN / pix2pix discriminators


def _levels(size: int, base: int, what: str) -> int:
    """How many 2x steps take `base` to `size`; both must make it a power of two."""
    ratio = size / base
    n = int(round(math.log2(ratio))) if ratio >= 1 else -1
    if n < 0 or base * 2**n != size:
        raise MedjaxError(f"{what}: spatial size {size} must be {base} x a power of two")
    return n


def _sn(module: nn.Module, spectral_norm: bool, train: bool):
    """`module` as a callable, spectrally normalised when asked (updating its power iteration in training)."""
    if not spectral_norm:
        return module
    wrapped = nn.SpectralNorm(module)
    return lambda x: wrapped(x, update_stats=train)


def _output(kind: str, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return jnp.tanh(x) if kind == "tanh" else x


class DCGANGenerator(nn.Module):
    """z (N, latent) [+ labels (N,) int] -> images (N, *image_size, channels) in [-1, 1].

    `features` is the width of the last up-block; it doubles at each coarser level (capped at `max_features`).
    `num_classes` > 0 makes it class-conditional: a learned label embedding of size `latent` joins z.
    """

    image_size: Sequence[int]
    channels: int = 1
    features: int = 32
    max_features: int = 512
    base: int = 4
    num_classes: int = 0
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array | None = None, train: bool = True) -> jax.Array:
        nd = len(self.image_size)
        levels = [_levels(s, self.base, "DCGANGenerator") for s in self.image_size]
        if len(set(levels)) != 1:
            raise MedjaxError(f"DCGANGenerator: image_size {tuple(self.image_size)} must have equal sides")
        n_up = levels[0]
        width = lambda level: min(self.features * 2**level, self.max_features)  # noqa: E731
        if self.num_classes:
            if labels is None:
                raise MedjaxError("DCGANGenerator with num_classes > 0 needs labels")
            z = jnp.concatenate([z, nn.Embed(self.num_classes, z.shape[-1], name="label_embed")(labels)], -1)
        x = nn.Dense(self.base**nd * width(n_up), dtype=self.dtype, name="project")(jnp.asarray(z, self.dtype))
        x = x.reshape((x.shape[0],) + (self.base,) * nd + (width(n_up),))
        x = nn.relu(layers.norm("batch", train=train, name="project_norm", axis_name=self.bn_axis_name,
                                dtype=self.dtype)(x))
        for i in range(n_up):
            f = width(n_up - 1 - i)
            x = ops.UpConv(f, (2,) * nd, dtype=self.dtype, name=f"up{i}")(x)
            x = layers.conv(f, 3, nd, use_bias=False, name=f"conv{i}", dtype=self.dtype)(x)
            x = nn.relu(layers.norm("batch", train=train, name=f"norm{i}", axis_name=self.bn_axis_name,
                                    dtype=self.dtype)(x))
        x = layers.conv(self.channels, 3, nd, name="to_image", dtype=self.dtype)(x)
        return _output("tanh", x)


class DCGANDiscriminator(nn.Module):
    """images (N, *spatial, C) [+ labels] -> logits (N,). `features` is the first level's width, doubling after."""

    features: int = 32
    max_features: int = 512
    base: int = 4
    num_classes: int = 0
    spectral_norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True) -> jax.Array:
        nd = layers.spatial_ndim(x)
        n_down = _levels(x.shape[1], self.base, "DCGANDiscriminator")
        x = jnp.asarray(x, self.dtype)
        for i in range(n_down):
            f = min(self.features * 2**i, self.max_features)
            x = _sn(layers.conv(f, 4, nd, strides=2, padding=1, name=f"down{i}", dtype=self.dtype),
                    self.spectral_norm, train)(x)
            x = nn.leaky_relu(x, LEAKY_SLOPE)
        h = x.reshape((x.shape[0], -1))
        logit = _sn(nn.Dense(1, dtype=self.dtype, name="logit"), self.spectral_norm, train)(h)[:, 0]
        if self.num_classes:
            if labels is None:
                raise MedjaxError("DCGANDiscriminator with num_classes > 0 needs labels")
            pooled = jnp.mean(x, axis=tuple(range(1, nd + 1)))
            embed = nn.Embed(self.num_classes, pooled.shape[-1], name="label_projection")(labels)
            logit = logit + jnp.sum(embed * pooled, axis=-1)
        return jnp.asarray(logit, jnp.float32)


class PatchGANDiscriminator(nn.Module):
    """(condition, image) -> (N, *patches, 1) logits: pix2pix's 70x70 PatchGAN with `num_layers`=3.

    `num_layers` 4x4 stride-2 convolutions (norm and LeakyReLU after all but the first), a 4x4 stride-1
    convolution, then a 4x4 stride-1 convolution to one logit per patch. `norm` is "instance" (default) or
    "none"; with `spectral_norm` every convolution is spectrally normalised.
    """

    features: int = 64
    num_layers: int = 3
    norm: str = "instance"
    spectral_norm: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_choice("PatchGAN norm", self.norm, ("instance", "none"))
        super().__post_init__()

    @nn.compact
    def __call__(self, condition: jax.Array, image: jax.Array, train: bool = True) -> jax.Array:
        nd = layers.spatial_ndim(image)
        out = min(image.shape[1:-1])
        for _ in range(self.num_layers):
            out = (out - 2) // 2 + 1  # 4x4, stride 2, padding 1
        if out - 2 < 1:  # then two 4x4 stride-1 convolutions with padding 1, each one pixel smaller
            raise MedjaxError(f"PatchGANDiscriminator with num_layers={self.num_layers}: image "
                              f"{tuple(image.shape[1:-1])} is too small to leave one patch; use fewer layers")
        x = jnp.asarray(jnp.concatenate([condition, image], axis=-1), self.dtype)
        for i in range(self.num_layers + 1):
            f = self.features * 2 ** min(i, 3)
            stride = 2 if i < self.num_layers else 1
            x = _sn(layers.conv(f, 4, nd, strides=stride, padding=1, name=f"conv{i}", dtype=self.dtype),
                    self.spectral_norm, train)(x)
            if i > 0 and self.norm == "instance":
                x = layers.norm("instance", train=train, name=f"norm{i}", dtype=self.dtype)(x)
            x = nn.leaky_relu(x, LEAKY_SLOPE)
        x = _sn(layers.conv(1, 4, nd, padding=1, name="logits", dtype=self.dtype), self.spectral_norm, train)(x)
        return jnp.asarray(x, jnp.float32)


class Pix2PixGenerator(nn.Module):
    """Image-to-image U-Net: (N, *spatial, C_in) -> (N, *spatial, channels), tanh or linear output."""

    channels: int = 1
    features: Sequence[int] = (32, 64, 128, 256)
    norm: str = "instance"
    output_activation: str = "tanh"
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_choice("output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        y = UNet(self.channels, tuple(self.features), norm=self.norm, bn_axis_name=self.bn_axis_name,
                 dtype=self.dtype, name="unet")(x, train=train)
        return _output(self.output_activation, y)


def depth_to_space(x: jax.Array, factor: int) -> jax.Array:
    """(N, *s, C * factor^nd) -> (N, *(s * factor), C), channel index = (offsets..., c) as torch's pixel_shuffle
    ordering transposed to channels-last: channel `((o_1 * f + o_2) * f ...) * C + c` lands at offset (o_1, o_2..)."""
    nd = x.ndim - 2
    n, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1] // factor**nd
    if c * factor**nd != x.shape[-1]:
        raise MedjaxError(f"depth_to_space: {x.shape[-1]} channels are not a multiple of {factor}^{nd}")
    x = x.reshape((n, *spatial) + (factor,) * nd + (c,))
    order = [0] + [a for i in range(nd) for a in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
    return jnp.transpose(x, order).reshape((n,) + tuple(s * factor for s in spatial) + (c,))


class SRGenerator(nn.Module):
    """EDSR-style x`scale` super-resolution (scale a power of two): (N, *s, C) -> (N, *(s * scale), channels)."""

    scale: int = 2
    channels: int = 1
    features: int = 64
    num_blocks: int = 8
    residual_scale: float = 0.1
    bicubic_skip: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        nd = layers.spatial_ndim(x)
        steps = _levels(self.scale, 1, "SRGenerator scale")
        if steps < 1:
            raise MedjaxError(f"SRGenerator scale must be 2, 4, 8, ...; got {self.scale}")
        x = jnp.asarray(x, self.dtype)
        head = layers.conv(self.features, 3, nd, name="head", dtype=self.dtype)(x)
        h = head
        for i in range(self.num_blocks):
            r = layers.conv(self.features, 3, nd, name=f"block{i}_conv0", dtype=self.dtype)(h)
            r = layers.conv(self.features, 3, nd, name=f"block{i}_conv1", dtype=self.dtype)(nn.relu(r))
            h = h + self.residual_scale * r
        h = layers.conv(self.features, 3, nd, name="body_out", dtype=self.dtype)(h) + head
        for i in range(steps):
            h = layers.conv(self.features * 2**nd, 3, nd, name=f"upsample{i}", dtype=self.dtype)(h)
            h = depth_to_space(h, 2)
        tail_init = nn.initializers.zeros_init() if self.bicubic_skip else nn.initializers.lecun_normal()
        out = _output("none", layers.conv(self.channels, 3, nd, name="tail", dtype=self.dtype,
                                          kernel_init=tail_init)(h))
        if self.bicubic_skip:  # learn the residual over cubic interpolation (VDSR's global skip): faster to train
            out = out + jax.image.resize(jnp.asarray(x, jnp.float32), out.shape[:-1] + x.shape[-1:], "cubic")
        return out
