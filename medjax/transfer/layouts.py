"""Name tables: which torch module becomes which medjax module, per (architecture family, layout).

A family is what `family(model_name)` returns for a medjax model name (resnet18/34/50 and resnet -> "resnet",
basic_unet -> "basic_unet", ...). Layouts: "torchvision" (torchvision.models), "monai" (monai.networks.nets).
Both ResNet layouts use the same names (MONAI copied torchvision's), 2D and 3D alike.
"""

from __future__ import annotations

import re

import numpy as np

from medjax.errors import MedjaxError
from medjax.transfer.convert import Layout, Rule

_STAGE_BLOCK = r"layer(\d+)\.(\d+)"


def _block(m) -> str:
    return f"stage{m.group(1)}_block{int(m.group(2)) + 1}"


RESNET_RULES = (
    Rule(r"conv1", "stem_conv", "conv"),
    Rule(r"bn1", "stem_bn", "batch_norm"),
    Rule(_STAGE_BLOCK + r"\.conv(\d)", lambda m: f"{_block(m)}/conv{m.group(3)}", "conv"),
    Rule(_STAGE_BLOCK + r"\.bn(\d)", lambda m: f"{_block(m)}/bn{m.group(3)}", "batch_norm"),
    Rule(_STAGE_BLOCK + r"\.downsample\.0", lambda m: f"{_block(m)}/downsample_conv", "conv"),
    Rule(_STAGE_BLOCK + r"\.downsample\.1", lambda m: f"{_block(m)}/downsample_bn", "batch_norm"),
    Rule(r"fc", "head", "linear"),
)
RESNET = Layout(RESNET_RULES)


def fold_downsample_bias(state: dict) -> tuple[dict, list[str]]:
    """MONAI's ResNet gives the 1x1 shortcut convolution a bias (`bias_downsample=True`, its default); medjax's,
    like torchvision's, has none, because a BatchNorm follows: BN(conv(x) + b) with running mean m is exactly
    BN(conv(x)) with running mean m - b, and in training BN subtracts the batch mean, so b never matters. The
    bias is folded into the running mean."""
    folded = []
    for key in [k for k in state if re.fullmatch(r".*\.downsample\.0\.bias", k)]:
        mean_key = key[: -len("0.bias")] + "1.running_mean"
        if mean_key not in state:
            continue
        state[mean_key] = np.asarray(state[mean_key]) - np.asarray(state.pop(key))
        folded.append(key)
    return state, folded


RESNET_MONAI = Layout(RESNET_RULES, prepare=fold_downsample_bias, zero_on_export=r".*\.downsample\.0\.bias")

BASIC_UNET_MONAI = Layout((
    # conv_0.conv_0.conv / down_1.convs.conv_0.conv / upcat_4.convs.conv_1.conv, and their adn.N norms
    Rule(r"(.+)\.conv", lambda m: m.group(1).replace(".", "/") + "/conv", "conv"),
    Rule(r"(.+)\.adn\.N", lambda m: m.group(1).replace(".", "/") + "/norm", "norm"),
    Rule(r"(upcat_\d)\.upsample\.deconv", r"\1/upsample", "conv_transpose"),
    Rule(r"final_conv", "final_conv", "conv"),
))


# MONAI UNet: level i's Sequential(down, SkipConnection(next level), up) is `model` + ".1.submodule" * i; the last
# SkipConnection wraps the bottom block. Each block is a Convolution (conv, adn.N, adn.A) or a ResidualUnit
# (conv.unit{k}.<Convolution>, residual); a residual-unit up layer is Sequential(Convolution, ResidualUnit).
_LEVEL = r"model(?P<lvl>(?:\.1\.submodule)*)"
_UNIT = r"(?:\.conv\.(?P<unit>unit\d+))?"
_MONAI_UNET_BLOCKS = (  # (torch block regex, medjax block path, kind of its `conv`)
    (_LEVEL + r"\.0" + _UNIT, "down{lvl}", "conv"),
    (r"model(?:\.1\.submodule)+" + _UNIT, "bottom", "conv"),
    (_LEVEL + r"\.2(?:\.0)?", "up{lvl}", "conv_transpose"),
    (_LEVEL + r"\.2\.1" + _UNIT, "up{lvl}/res", "conv"),
)


def _monai_unet_path(block: str, leaf: str):
    def target(m) -> str:
        lvl = m.groupdict().get("lvl")
        path = block.format(lvl=(lvl or "").count(".1.submodule"))
        unit = m.groupdict().get("unit")
        return "/".join([path, unit, leaf] if unit else [path, leaf])
    return target


MONAI_UNET = Layout(tuple(
    rule
    for block, path, conv_kind in _MONAI_UNET_BLOCKS
    for rule in (
        Rule(block + r"\.conv", _monai_unet_path(path, "conv"), conv_kind),
        Rule(block + r"\.adn\.N", _monai_unet_path(path, "norm"), "batch_norm"),  # batch norm (instance: no tensors)
        Rule(block + r"\.adn\.A", _monai_unet_path(path, "act"), "prelu"),
    )
) + tuple(  # the shortcut conv of a residual unit that changes shape (never the up layers' units, in MONAI)
    Rule(block + r"\.residual", _monai_unet_path(path, "residual"), "conv")
    for block, path in ((_LEVEL + r"\.0", "down{lvl}"), (r"model(?:\.1\.submodule)+", "bottom"))
))


def _densenet_rules(layers: str, head: str) -> tuple[Rule, ...]:
    """DenseNet tables: torchvision's `features.denseblock{b}.denselayer{l}.norm1` is MONAI's
    `features.denseblock{b}.denselayer{l}.layers.norm1` (`layers` is the regex of that extra level), and the head
    is `classifier` / `class_layers.out`; the stem, transitions and norm5 are named alike, 2D and 3D."""
    layer = r"features\.denseblock(\d+)\.denselayer(\d+)" + layers
    return (
        Rule(r"features\.conv0", "conv0", "conv"),
        Rule(r"features\.norm([05])", r"norm\1", "batch_norm"),
        Rule(layer + r"\.conv([12])", r"denseblock\1_denselayer\2/conv\3", "conv"),
        Rule(layer + r"\.norm([12])", r"denseblock\1_denselayer\2/norm\3", "batch_norm"),
        Rule(r"features\.transition(\d+)\.conv", r"transition\1/conv", "conv"),
        Rule(r"features\.transition(\d+)\.norm", r"transition\1/norm", "batch_norm"),
        Rule(head, "head", "linear"),
    )


DENSENET = Layout(_densenet_rules("", r"classifier"))
DENSENET_MONAI = Layout(_densenet_rules(r"\.layers", r"class_layers\.out"))

def nested(layout: Layout, prefix: str, torch_prefix: str = "") -> Layout:
    """`layout` for a model that holds the network under the submodule `prefix` (ABMIL's ResNet `encoder`, the
    RetinaNet's `backbone`): every rule's medjax path is prefixed; with `torch_prefix` (a regex) the torch names
    may carry that prefix too (MONAI's RetinaNet holds its ResNet under `feature_extractor.body.`), so one table
    reads the detector's file and a plain ResNet file. The folds and exports stay those of the plain network."""
    def rule(r: Rule) -> Rule:
        def target(m: re.Match, t=r.target) -> str:
            return f"{prefix}/{t(m) if callable(t) else m.expand(t)}"
        return Rule(f"(?:{torch_prefix})?{r.pattern}" if torch_prefix else r.pattern, target, r.kind)

    return Layout(tuple(rule(r) for r in layout), prepare=layout.prepare, zero_on_export=layout.zero_on_export)


# MONAI's RetinaNet (monai.apps.detection.networks.retinanet_network.RetinaNet over resnet_fpn_feature_extractor):
# FPN convs `feature_extractor.fpn.{inner,layer}_blocks.i`; each head a Sequential of (conv, GroupNorm, ReLU) x n
# (`conv.3i` / `conv.3i+1`) and its output conv. Up to 8 head convs are named.
_MONAI_HEADS = tuple(
    rule
    for torch_head, head, out in (("classification_head", "cls_head", "cls_logits"),
                                  ("regression_head", "box_head", "bbox_reg"))
    for rule in (
        *(Rule(rf"{torch_head}\.conv\.{3 * i}", f"heads/{head}/conv{i}", "conv") for i in range(8)),
        *(Rule(rf"{torch_head}\.conv\.{3 * i + 1}", f"heads/{head}/norm{i}", "norm") for i in range(8)),
        Rule(rf"{torch_head}\.{out}", f"heads/{head}/out", "conv"),
    )
)
_MONAI_BACKBONE = nested(RESNET_MONAI, "backbone", r"feature_extractor\.body\.")
RETINANET_MONAI = Layout(tuple(_MONAI_BACKBONE) + (
    Rule(r"feature_extractor\.fpn\.inner_blocks\.(\d+)", r"fpn/inner\1", "conv"),
    Rule(r"feature_extractor\.fpn\.layer_blocks\.(\d+)", r"fpn/layer\1", "conv"),
) + _MONAI_HEADS, prepare=_MONAI_BACKBONE.prepare, zero_on_export=_MONAI_BACKBONE.zero_on_export)


LAYOUTS: dict[tuple[str, str], Layout] = {
    ("resnet", "torchvision"): RESNET,
    ("resnet", "monai"): RESNET_MONAI,
    ("abmil", "torchvision"): nested(RESNET, "encoder"),  # ImageNet ResNets as the tile encoder
    ("abmil", "monai"): nested(RESNET_MONAI, "encoder"),
    ("basic_unet", "monai"): BASIC_UNET_MONAI,
    ("densenet", "torchvision"): DENSENET,
    ("densenet", "monai"): DENSENET_MONAI,
    ("monai_unet", "monai"): MONAI_UNET,
    ("retinanet", "monai"): RETINANET_MONAI,  # a MONAI RetinaNet file, or a MONAI ResNet file for the backbone
    ("retinanet", "torchvision"): nested(RESNET, "backbone", r"backbone\.body\."),  # ImageNet ResNet backbone
}

FAMILIES = {"resnet": "resnet", "resnet18": "resnet", "resnet34": "resnet", "resnet50": "resnet",
            "basic_unet": "basic_unet", "densenet": "densenet", "densenet121": "densenet",
            "monai_unet": "monai_unet", "abmil": "abmil", "retinanet": "retinanet"}


def family(model_name: str) -> str:
    if model_name not in FAMILIES:
        raise MedjaxError(f"no weight-import tables for model {model_name!r}; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_name]


def get_layout(model_name: str, layout: str) -> Layout:
    """The name table for importing `layout` weights into medjax model `model_name`."""
    key = (family(model_name), layout)
    if key not in LAYOUTS:
        known = sorted(lay for fam, lay in LAYOUTS if fam == key[0])
        raise MedjaxError(f"unknown weight layout {layout!r} for model {model_name!r}; known: {known}")
    return LAYOUTS[key]
