"""Dense one-stage detectors, 2D and 3D: RetinaNet (ResNet + FPN) and the Retina U-Net (nnDetection).

Both return per-level head maps, channels-last and finest level first, in the layout the detection task and
`medjax.detection.postprocess` read: `{"cls": [(N, *feat_l, A * K)], "box": [(N, *feat_l, A * 2d)]}` (K
foreground classes, A anchors per location; channel a * K + k is anchor a's logit of class k, MONAI's order);
the Retina U-Net adds `"seg"`: (N, *spatial, K + 1) segmentation logits (background first).

`RetinaNet` is MONAI's `monai.apps.detection.networks.retinanet_network.RetinaNet` over
`resnet_fpn_feature_extractor` (itself torchvision's): a `medjax.models.resnet.ResNet` backbone returning the
stages `returned_layers`, an FPN (1x1 lateral convs, nearest top-down upsampling, 3x3 output convs, plus one level
made by taking every second pixel of the coarsest: MONAI's `LastLevelMaxPool`, a max-pool of kernel 1 and
stride 2), and classification / regression heads shared by every level (four 3x3 conv + GroupNorm(8) + ReLU,
then a 3x3 conv to the outputs). Layers, initialisation and the numbers of a MONAI state dict imported through
the `("retinanet", "monai")` layout are MONAI's (parity tested in 2D and 3D).

`RetinaUNet` puts the same heads on a `medjax.models.unet.UNet`'s decoder (nnDetection's Retina U-Net, Jaeger et
al. 2019): the U-Net's levels `head_levels` (level l at stride 2^(l-1)), each projected to `head_channels` by a
1x1 conv, feed the detection heads, and the U-Net's full-resolution logits are an auxiliary segmentation output
that the detection task trains with Dice + cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.errors import MedjaxError
from medjax.models import layers
from medjax.models.norm import GroupNorm
from medjax.models.resnet import BLOCKS, ResNet
from medjax.models.unet import UNet

# torch's kaiming_uniform_(a=1) (MONAI's FPN init): uniform with bound sqrt(3 / fan_in).
_fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
_head_init = nn.initializers.normal(0.01)  # MONAI's heads: N(0, 0.01^2) weights, zero biases


class FPN(nn.Module):
    """Feature pyramid over backbone maps (finest first): `inner{i}` 1x1 convs, top-down nearest upsampling
    (`layers.resize_nearest`, torch's `F.interpolate`), `layer{i}` 3x3 convs; with `extra_level`, one more level
    of every second pixel of the coarsest output (MONAI's `LastLevelMaxPool`)."""

    channels: int
    extra_level: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
        nd = layers.spatial_ndim(features[0])

        def conv(k: int, name: str) -> nn.Conv:
            return layers.conv(self.channels, k, nd, name=name, dtype=self.dtype, kernel_init=_fpn_init)

        n = len(features)
        last = conv(1, f"inner{n - 1}")(features[-1])
        results = [conv(3, f"layer{n - 1}")(last)]
        for i in range(n - 2, -1, -1):
            lateral = conv(1, f"inner{i}")(features[i])
            last = lateral + layers.resize_nearest(last, lateral.shape[1:-1])
            results.insert(0, conv(3, f"layer{i}")(last))
        if self.extra_level:
            results.append(results[-1][(slice(None), *(slice(None, None, 2),) * nd)])
        return results


class _Head(nn.Module):
    """`convs` x (3x3 conv + GroupNorm + ReLU), then a 3x3 conv to `outputs` channels (MONAI's RetinaNet heads:
    `conv{i}` / `norm{i}` are its `conv.{3i}` / `conv.{3i+1}`, `out` its `cls_logits` / `bbox_reg`)."""

    outputs: int
    convs: int
    groups: int
    bias: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd = layers.spatial_ndim(x)
        for i in range(self.convs):
            x = layers.conv(x.shape[-1], 3, nd, name=f"conv{i}", dtype=self.dtype, kernel_init=_head_init)(x)
            x = nn.relu(GroupNorm(num_groups=self.groups, epsilon=layers.NORM_EPSILON, dtype=self.dtype,
                                  name=f"norm{i}")(x))
        return layers.conv(self.outputs, 3, nd, name="out", dtype=self.dtype, kernel_init=_head_init,
                           bias_init=nn.initializers.constant(self.bias))(x)


class DetectionHeads(nn.Module):
    """Classification (`cls_head`) and box-regression (`box_head`) heads shared by every level: per level the
    maps (N, *feat, A * K) and (N, *feat, A * 2d), float32. The classification bias starts at
    -log((1 - prior) / prior), so every anchor first scores `prior_probability` (RetinaNet's focal-loss init)."""

    num_classes: int
    num_anchors: int
    convs: int = 4
    groups: int = 8
    prior_probability: float = 0.01
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, maps: Sequence[jax.Array]) -> dict[str, list[jax.Array]]:
        nd = layers.spatial_ndim(maps[0])
        prior = -math.log((1 - self.prior_probability) / self.prior_probability)
        cls_head = _Head(self.num_anchors * self.num_classes, self.convs, self.groups, prior, self.dtype,
                         name="cls_head")
        box_head = _Head(self.num_anchors * 2 * nd, self.convs, self.groups, 0.0, self.dtype, name="box_head")
        return {"cls": [jnp.asarray(cls_head(m), jnp.float32) for m in maps],
                "box": [jnp.asarray(box_head(m), jnp.float32) for m in maps]}


def _check_heads(num_classes: int, num_anchors: int, channels: int, groups: int) -> None:
    if num_classes < 1 or num_anchors < 1:
        raise MedjaxError(f"a detector needs num_classes >= 1 (foreground classes) and num_anchors >= 1, got "
                          f"{num_classes} and {num_anchors}")
    if channels % groups:
        raise MedjaxError(f"the heads' GroupNorm({groups}) needs a channel count divisible by {groups}, got "
                          f"{channels} (set fpn_channels / head_channels, or head_groups)")


class RetinaNet(nn.Module):
    """RetinaNet for NHWC / NDHWC input (see the module docstring): backbone `backbone` (a ResNet with
    `stage_sizes`, `block`, `width`, `stem*`, `norm`), FPN `fpn` of `fpn_channels`, heads `cls_head` / `box_head`.
    Levels: `returned_layers` (ResNet stages) plus the extra one; with the standard stem level 0 has stride 4
    (stage 1), each later level twice the previous. MONAI's defaults are `fpn_channels=256` and
    `returned_layers=(1, 2, 3)`; its 3D LUNA16 model uses a ResNet-50 with `stem_stride=(2, 2, 1)`."""

    num_classes: int
    num_anchors: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    width: int = 64
    stem: str = "standard"
    stem_kernel: int | Sequence[int] | None = None
    stem_stride: int | Sequence[int] | None = None
    stem_pool: bool | None = None
    norm: str = "batch"
    returned_layers: Sequence[int] = (1, 2, 3)
    fpn_channels: int = 256
    head_convs: int = 4
    head_groups: int = 8
    prior_probability: float = 0.01
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_choice("resnet block", self.block, BLOCKS)
        _check_heads(self.num_classes, self.num_anchors, self.fpn_channels, self.head_groups)
        if not self.returned_layers or list(self.returned_layers) != sorted(set(self.returned_layers)):
            raise MedjaxError(f"retinanet returned_layers must be increasing ResNet stages, got "
                              f"{tuple(self.returned_layers)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, list[jax.Array]]:
        backbone = ResNet(stage_sizes=self.stage_sizes, block=self.block, num_classes=1, stem=self.stem,
                          stem_kernel=self.stem_kernel, stem_stride=self.stem_stride, stem_pool=self.stem_pool,
                          width=self.width, norm=self.norm, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                          feature_stages=tuple(self.returned_layers), name="backbone")
        maps = FPN(self.fpn_channels, dtype=self.dtype, name="fpn")(backbone(x, train))
        return DetectionHeads(self.num_classes, self.num_anchors, self.head_convs, self.head_groups,
                              self.prior_probability, self.dtype, name="heads")(maps)


class RetinaUNet(nn.Module):
    """Retina U-Net (see the module docstring): `unet` (a `UNet` with `features`, `norm`, `upsample`, and K + 1
    segmentation classes), 1x1 projections `proj{l}` of the levels `head_levels` to `head_channels`, and the
    shared `heads`. Returns `{"cls", "box", "seg"}`."""

    num_classes: int
    num_anchors: int
    features: Sequence[int] = (32, 64, 128, 256)
    norm: str = "batch"
    upsample: str = "transpose"
    head_levels: Sequence[int] = (2, 3)
    head_channels: int = 64
    head_convs: int = 2
    head_groups: int = 8
    prior_probability: float = 0.01
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        _check_heads(self.num_classes, self.num_anchors, self.head_channels, self.head_groups)
        levels = tuple(self.head_levels)
        if not levels or list(levels) != sorted(set(levels)) or levels[0] < 1 or levels[-1] > len(self.features):
            raise MedjaxError(f"retina_unet head_levels must be increasing U-Net levels in 1..{len(self.features)} "
                              f"(level l at stride 2^(l-1)), got {levels}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, Any]:
        nd = layers.spatial_ndim(x)
        unet = UNet(self.num_classes + 1, self.features, self.norm, self.upsample, bn_axis_name=self.bn_axis_name,
                    dtype=self.dtype, decoder_outputs=True, name="unet")
        seg, levels = unet(x, train)
        maps = [layers.conv(self.head_channels, 1, nd, name=f"proj{lvl}", dtype=self.dtype)(levels[lvl - 1])
                for lvl in self.head_levels]
        out = DetectionHeads(self.num_classes, self.num_anchors, self.head_convs, self.head_groups,
                             self.prior_probability, self.dtype, name="heads")(maps)
        return {**out, "seg": seg}
