"""Flax Linen models. `build_model(name, **kwargs)` is the one place a config name becomes a module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from medjax.errors import MedjaxError
from medjax.models.abmil import ABMIL
from medjax.models.convlstm import ConvLSTMRegressor, ConvLSTMUNet
from medjax.models.densenet import DenseNet, densenet121
from medjax.models.detection import RetinaNet, RetinaUNet
from medjax.models.monai_unet import MonaiUNet, monai_unet
from medjax.models.resnet import ResNet, resnet18, resnet34, resnet50
from medjax.models.unet import BasicUNet, UNet, basic_unet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet": ResNet,  # any stage_sizes/block, e.g. a 2-stage net for smoke tests
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "unet": UNet,
    "basic_unet": basic_unet,
    "monai_unet": monai_unet,  # monai.networks.nets.UNet (residual units, PReLU)
    "densenet": DenseNet,  # any growth_rate/block_config/num_init_features/bn_size
    "densenet121": densenet121,
    "convlstm_unet": ConvLSTMUNet,  # (N, T, *spatial, C) sequences -> per-frame segmentation logits
    "convlstm_regressor": ConvLSTMRegressor,  # sequences -> num_classes outputs (e.g. ejection fraction)
    "abmil": ABMIL,  # bags of tiles (N, K, H, W, C) -> slide logits, attention, tile logits (task "mil")
    "retinanet": RetinaNet,  # ResNet + FPN + RetinaNet heads (task "detection"; MONAI's RetinaNet)
    "retina_unet": RetinaUNet,  # detection heads on a U-Net decoder + segmentation logits (nnDetection)
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """The model registered as `name`, constructed with `kwargs` (e.g. `num_classes`, `norm`, `dtype`)."""
    try:
        ctor = MODELS[name]
    except KeyError:
        raise MedjaxError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return ctor(**kwargs)


__all__ = [
    "ABMIL", "MODELS", "BasicUNet", "ConvLSTMRegressor", "ConvLSTMUNet", "DenseNet", "ResNet", "UNet", "basic_unet",
    "RetinaNet", "RetinaUNet", "build_model", "densenet121", "resnet18", "resnet34", "resnet50", "MonaiUNet",
    "monai_unet",
]
