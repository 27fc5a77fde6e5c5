"""RetinaNet rows of `medjax bench`: one training step and one sliding-window detection pass, medjax against
MONAI's RetinaNet (`monai.apps.detection`) on the same weights.

The torch model is MONAI's `RetinaNet` over a ResNet-FPN feature extractor (`monai_retinanet`); its state dict
is imported into medjax's `retinanet` through the `("retinanet", "monai")` layout (strict). The training step is
MONAI's `RetinaNetDetector` in training mode (anchors from `AnchorGeneratorWithAnchorShape`, ATSS matching,
`FocalLoss(reduction="mean")` plus `SmoothL1Loss(beta=1/9)` on encoded boxes, the sum of the two) with Adam,
against `medjax train`'s step for the `detection` task with the same anchors, matcher and losses; the first
losses must agree within 1e-4 relative. The sliding-window pass detects every window of a volume (MONAI's
detector on each window's head outputs, boxes shifted by the window start, then one class-wise NMS; medjax:
`medjax.inference.detection.sliding_window_detect`, windows batched through one compiled program, merged by
`merge_windows`), and the numbers of kept detections must match.

`torchvision` does not install beside this torch; `resnet_fpn_feature_extractor` needs two of its helpers
(`IntermediateLayerGetter`, `_validate_trainable_layers`) and `RetinaNetDetector` tests instances against two of
its classes, which `torchvision_stubs` supplies (torchvision's code, trimmed) while MONAI's code runs. Note a MONAI quirk kept for parity: `IntermediateLayerGetter` runs every child
of the backbone up to the last returned stage, so the ResNet's max-pool runs even with `no_max_pool=True`; the
medjax model sets `stem_pool=True`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import types
from collections import OrderedDict
from collections.abc import Sequence


def _intermediate_layer_getter():
    import torch

    class IntermediateLayerGetter(torch.nn.ModuleDict):
        """torchvision.models._utils.IntermediateLayerGetter: the children of `model` up to the last of
        `return_layers`, returning those layers' outputs by their new names."""

        def __init__(self, model, return_layers: dict[str, str]):
            wanted, kept = dict(return_layers), OrderedDict()
            for name, module in model.named_children():
                kept[name] = module
                wanted.pop(name, None)
                if not wanted:
                    break
            super().__init__(kept)
            self.return_layers = dict(return_layers)

        def forward(self, x):
            out = OrderedDict()
            for name, module in self.items():
                x = module(x)
                if name in self.return_layers:
                    out[self.return_layers[name]] = x
            return out

    return IntermediateLayerGetter


def _validate_trainable_layers(is_trained: bool, trainable_backbone_layers, max_value: int, default_value: int):
    """torchvision.models.detection.backbone_utils._validate_trainable_layers (without its warning)."""
    if not is_trained:
        return max_value
    return default_value if trainable_backbone_layers is None else trainable_backbone_layers


class _Absent:
    """Stands for a torchvision class MONAI checks with isinstance (never an instance of it)."""


@contextlib.contextmanager
def torchvision_stubs():
    """MONAI's detection code with torchvision's helpers supplied when torchvision is not installed: the two the
    ResNet-FPN feature extractor calls, and stand-ins for the `Matcher` / `BalancedPositiveNegativeSampler`
    classes `RetinaNetDetector` only tests instances against (medjax compares with its ATSS matcher)."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    from monai.apps.detection.networks import retinanet_detector as rd
    from monai.apps.detection.networks import retinanet_network as rn
    from monai.networks.blocks import backbone_fpn_utils as bf

    saved = bf.torchvision_models, rn._validate_trainable_layers, rd.Matcher, rd.BalancedPositiveNegativeSampler
    bf.torchvision_models = types.SimpleNamespace(_utils=types.SimpleNamespace(
        IntermediateLayerGetter=_intermediate_layer_getter()))
    rn._validate_trainable_layers = _validate_trainable_layers
    rd.Matcher = rd.BalancedPositiveNegativeSampler = _Absent
    try:
        yield
    finally:
        bf.torchvision_models, rn._validate_trainable_layers, rd.Matcher, rd.BalancedPositiveNegativeSampler = saved


def monai_retinanet(spatial_dims: int, in_channels: int, num_classes: int, num_anchors: int, *,
                    stage_sizes: Sequence[int] = (2, 2, 2, 2), width: int = 64, block: str = "basic",
                    returned_layers: Sequence[int] = (1, 2, 3), fpn_channels: int = 256,
                    stem_kernel: int | Sequence[int] = 7, stem_stride: int | Sequence[int] = 2):
    """MONAI's RetinaNet on a MONAI ResNet (`block_inplanes` width * (1, 2, 4, 8)). With `fpn_channels=256` the
    feature extractor is `resnet_fpn_feature_extractor` itself; another width builds the same `BackboneWithFPN`
    directly (the function fixes 256 channels)."""
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
    from monai.networks.nets import resnet

    backbone = resnet.ResNet(block=block, layers=list(stage_sizes), block_inplanes=[width * 2 ** i for i in range(4)],
                             spatial_dims=spatial_dims, n_input_channels=in_channels, conv1_t_size=stem_kernel,
                             conv1_t_stride=stem_stride)
    with torchvision_stubs():
        if fpn_channels == 256:
            extractor = resnet_fpn_feature_extractor(backbone, spatial_dims, returned_layers=list(returned_layers))
        else:
            stage2 = backbone.in_planes // 8
            extractor = BackboneWithFPN(backbone, {f"layer{k}": str(v) for v, k in enumerate(returned_layers)},
                                        [stage2 * 2 ** (i - 1) for i in returned_layers], fpn_channels,
                                        spatial_dims=spatial_dims)
    return RetinaNet(spatial_dims, num_classes, num_anchors, extractor)


def medjax_kwargs(*, stage_sizes: Sequence[int] = (2, 2, 2, 2), width: int = 64, block: str = "basic",
                  returned_layers: Sequence[int] = (1, 2, 3), fpn_channels: int = 256,
                  stem_kernel: int | Sequence[int] = 7, stem_stride: int | Sequence[int] = 2) -> dict:
    """The `medjax.models.RetinaNet` fields of the network `monai_retinanet` builds with the same arguments."""
    return dict(stage_sizes=tuple(stage_sizes), width=width, block=block, returned_layers=tuple(returned_layers),
                fpn_channels=fpn_channels, stem_kernel=stem_kernel, stem_stride=stem_stride, stem_pool=True)
