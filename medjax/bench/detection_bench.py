"""RetinaNet rows of `medjax bench`: one training step and one sliding-window detection pass, medjax against
MONAI's RetinaNet (`monai.apps.detection`) on the same weights and the same CPU.

Both rows run the config `detection_icbm152:3d,retinanet` (ICBM152 lesion detection: 32^3 training patches,
batch 8; a 64^3 volume for the sliding window). The torch model is MONAI's `RetinaNet` over its ResNet-FPN
feature extractor (`monai_retinanet`, built from the config's `model` fields); its state dict is imported into
medjax's `retinanet` through the `("retinanet", "monai")` layout (strict). The heads are redrawn from
N(0, 0.1^2) with a classification bias of -2 (on both sides: the same weights) because MONAI's initialisation
scores every anchor 0.01, below the score threshold, and the post-processing would then have nothing to do.

- Training (`kind="detection"`): MONAI's `RetinaNetDetector` in training mode, with the config's anchors
  (`AnchorGeneratorWithAnchorShape`), ATSS matcher, `FocalLoss(reduction="mean")` and `SmoothL1Loss` on encoded
  deltas (or `BoxGIoULoss`), the sum as the loss, the config's optimizer; against `medjax train`'s step for the
  `detection` task. The first losses must agree within 1e-4 relative. "infer" is the network's forward.
- Sliding window (`kind="sliding_window"`, `torch_model="monai_retinanet"`): medjax detects batches of
  `eval_batch_size` windows in one compiled program and merges them (`medjax.inference.sliding_window_detect`);
  MONAI runs its detector (network + `BoxSelector`) on the same windows and merges them the same way (boxes
  shifted by the window starts, `monai.data.box_utils.batched_nms`, the best `max_detections`). The merged
  detections must agree: same count, boxes within 1e-3 voxels.

`torchvision` does not install beside this torch; `resnet_fpn_feature_extractor` needs two of its helpers
(`IntermediateLayerGetter`, `_validate_trainable_layers`) and `RetinaNetDetector` tests instances against two
of its classes, which `torchvision_stubs` supplies (torchvision's code, trimmed) while MONAI's code runs. A
MONAI quirk kept for parity: `IntermediateLayerGetter` runs every child of the backbone up to the last returned
stage, so the ResNet's max-pool runs even with `no_max_pool=True`; the medjax model sets `stem_pool=True`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
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


# ------------------------------------------------------------------------------------------------ bench rows

BOX_ATOL = 1e-3


def _redraw_heads(net, seed: int = 0) -> None:
    """Heads from N(0, 0.1^2), classification bias -2: a detector with candidates to select (module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("classification_head", "regression_head")) and p.ndim > 1:
                p.normal_(0.0, 0.1, generator=gen)
        net.classification_head.cls_logits.bias.fill_(-2.0)


def _models(case, config, spatial: tuple[int, ...]):
    """(task, tx, imported medjax variables, MONAI network) for a row's config at `spatial`."""
    import jax
    import jax.numpy as jnp
    import torch

    from medjax.tasks import make_task
    from medjax.train.optim import make_optimizer
    from medjax.transfer import get_layout, import_weights

    m = config.model
    kw = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in m.items()
          if k in ("stage_sizes", "width", "block", "returned_layers", "fpn_channels", "stem_kernel", "stem_stride")}
    task = make_task(config, [f"class{i}" for i in range(case.num_classes)])
    tx = make_optimizer(config.optimizer, max(1, int(config.num_train_steps or 1000)))
    torch.manual_seed(config.seed)
    net = monai_retinanet(len(spatial), case.in_channels, case.num_classes, task.num_anchors, **kw)
    _redraw_heads(net, config.seed)
    state = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
    target = jax.eval_shape(lambda: task.init_variables(jax.random.key(0), jnp.zeros((1, *spatial, case.in_channels))))
    variables, _ = import_weights(state, get_layout("retinanet", "monai"), {k: v for k, v in target.items()
                                                                         if k in ("params", "batch_stats")},
                                  strict=True, source=f"MONAI RetinaNet ({case.name})")
    return task, tx, jax.tree.map(jnp.asarray, variables), net


def _detector(task, net, nd: int):
    """MONAI's RetinaNetDetector set up as the medjax task (anchors, matcher, losses, box selection)."""
    import torch
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.losses import FocalLoss
    from monai.losses.giou_loss import BoxGIoULoss

    from medjax.bench.bench import BenchError
    from medjax.tasks.detection import anchor_sides

    c = task.cfg
    if c.matcher != "atss":
        raise BenchError("the RetinaNet rows compare with MONAI's ATSS matcher (its IoU matcher is torchvision's)")
    levels = len(net.feature_extractor.fpn.inner_blocks) + 1
    shapes = tuple(tuple(float(v) for v in row) for row in anchor_sides(task.anchor_shapes, nd))
    generator = AnchorGeneratorWithAnchorShape(feature_map_scales=tuple(2 ** lvl for lvl in range(levels)),
                                               base_anchor_shapes=shapes)
    det = RetinaNetDetector(net, generator)
    det.set_atss_matcher(num_candidates=c.atss_candidates, center_in_gt=c.atss_center_in_gt)
    det.set_cls_loss(FocalLoss(reduction="mean", gamma=c.focal_gamma, alpha=task.focal_alpha))
    if c.box_loss == "giou":
        det.set_box_regression_loss(BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True)
    else:
        det.set_box_regression_loss(torch.nn.SmoothL1Loss(beta=c.smooth_l1_beta, reduction="mean"),
                                    encode_gt=True, decode_pred=False)
    det.set_box_selector_parameters(score_thresh=c.score_thresh, topk_candidates_per_level=c.topk_per_level,
                                    nms_thresh=c.nms_thresh, detections_per_img=c.max_detections)
    return det


def _batch(case, config, spatial: tuple[int, ...], seed: int = 0) -> dict:
    """Random images with two random boxes each (sides 3..8 voxels, class 0), padded to data.max_boxes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n, g, d = config.batch_size, int(config.data.max_boxes), len(spatial)
    boxes = np.zeros((n, g, 2 * d), np.float32)
    for i in range(n):
        for k in range(2):
            side = rng.uniform(3, 8, d)
            lo = rng.uniform(0, np.asarray(spatial) - side)
            boxes[i, k] = np.concatenate([lo, lo + side])
    valid = np.zeros((n, g), bool)
    valid[:, :2] = True
    return {"image": rng.standard_normal((n, *spatial, case.in_channels)).astype(np.float32), "boxes": boxes,
            "box_labels": np.where(valid, 0, -1).astype(np.int32), "box_valid": valid,
            "weight": np.ones(n, np.float32)}


def run_detection_case(case, mode: str, warmup: int, repeats: int, frameworks, log, budget, precision: str):
    """Records of the RetinaNet training row (module docstring)."""
    import numpy as np
    import torch

    from medjax.bench import bench

    budget = budget or bench.CompileBudget()
    config = bench.case_config(case, mode, precision)
    spatial = case.shape(mode)
    batch = _batch(case, config, spatial)
    task, tx, variables, net = _models(case, config, spatial)
    with torchvision_stubs():
        det = _detector(task, net, len(spatial))
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(batch["image"], -1, 1)))
    targets = [{"boxes": torch.from_numpy(b[v]), "labels": torch.from_numpy(lab[v]).long()}
               for b, lab, v in zip(batch["boxes"], batch["box_labels"], batch["box_valid"])]
    common = bench._common(case, config, mode, warmup, repeats, precision, batch)

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            return bench.time_medjax(task, tx, variables, batch, warmup, repeats)
        import copy

        copy_ = copy.deepcopy(det).to(bench.torch_device())
        device_targets = [{k: v.to(bench.torch_device()) for k, v in t.items()} for t in targets]

        def forward(images, train):
            copy_.train(train)
            with torchvision_stubs():
                return copy_(images, device_targets) if train else copy_.network(images)

        c = task.cfg

        def loss(out, _):
            return out["classification"] + c.box_loss_weight * out["box_regression"]

        return bench.time_torch(forward, list(copy_.parameters()), loss, {"image": x}, config.optimizer, backend,
                                warmup, repeats, precision)

    results = bench.run_frameworks(case.name, config.batch_size, common, frameworks, run, budget, log)
    bench.check_losses(results, bench.LOSS_RTOL_BF16 if precision == "bfloat16" else bench.LOSS_RTOL)
    return [results[fw] for fw in frameworks]


def run_detection_window_case(case, mode: str, warmup: int, repeats: int, frameworks, log, budget, precision: str):
    """Records of the RetinaNet sliding-window row (module docstring), float32."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from monai.data.box_utils import batched_nms

    from medjax.bench import bench
    from medjax.inference import sliding_window_detect, window_starts

    budget = budget or bench.CompileBudget()
    config = bench.case_config(case, mode, "float32")
    roi = case.shape(mode)
    volume_shape = tuple(2 * r for r in roi) if mode == "smoke" else case.volume
    volume = np.random.default_rng(1).standard_normal((*volume_shape, case.in_channels)).astype(np.float32)
    task, _, variables, net = _models(case, config, roi)
    with torchvision_stubs():
        det = _detector(task, net, len(roi)).eval()
    inf, c = config.inference, task.cfg
    overlap, sw = float(inf.overlap), int(config.eval_batch_size or config.batch_size)
    common = {"case": case.name, "kind": case.kind, "config": case.config, "data": case.data,
              "torch_model": case.torch_model, "model": config.model.to_dict(), "batch": 1,
              "input_shape_nc": [1, case.in_channels, *volume_shape],
              "input_shape_medjax": [1, *volume_shape, case.in_channels], "num_classes": case.num_classes,
              "roi": list(roi), "overlap": overlap, "merge": c.window_merge, "sw_batch_size": sw, "warmup": warmup,
              "repeats": repeats, "precision": "float32", "mode": mode}
    if c.window_merge != "nms":
        raise bench.BenchError("the sliding-window row compares NMS merging (MONAI has no weighted box fusion)")
    outputs = {}

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            detect = jax.jit(lambda v, w: task.detect(v["params"], v.get("batch_stats", {}), w)._asdict())

            def go():
                return sliding_window_detect(lambda w: jax.device_get(detect(variables, jnp.asarray(w))), volume, roi,
                                             overlap=overlap, sw_batch_size=sw, merge="nms",
                                             iou_threshold=c.window_merge_iou, max_detections=c.max_detections)
        else:
            import copy

            copy_ = copy.deepcopy(det).to(bench.torch_device()).eval()
            network = copy_.network
            if backend:
                copy_.network = torch.compile(network, backend=backend, dynamic=False)
            xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, -1, 0)))
            starts = window_starts(volume_shape, roi, overlap)

            def go():
                boxes, scores, labels = [], [], []
                with torch.no_grad(), torchvision_stubs():
                    for first in range(0, len(starts), sw):
                        chunk = starts[first:first + sw]
                        windows = torch.stack([xt[(slice(None), *(slice(s, s + r) for s, r in zip(st, roi)))]
                                               for st in chunk]).to(bench.torch_device())
                        for st, out in zip(chunk, copy_(windows)):
                            shift = torch.tensor(list(st) * 2, dtype=out["boxes"].dtype)
                            boxes.append(out["boxes"].cpu() + shift)
                            scores.append(out["labels_scores"].cpu())
                            labels.append(out["labels"].cpu())
                b, s_, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
                keep = batched_nms(b, s_, lab, c.window_merge_iou)[:c.max_detections]
                return b[keep].numpy(), s_[keep].numpy()

        rss0 = bench._maxrss_mb()
        t0 = time.perf_counter()
        outputs[fw] = go()
        first = time.perf_counter() - t0
        rec = {"compile_s": first, "infer_first_s": first, "infer_step_s": bench._median_time(go, warmup, repeats),
               "rss_increase_mb": bench._maxrss_mb() - rss0}
        if fw == "medjax":
            rec["device_peak_bytes"], rec["device_peak_note"] = bench._jax_peak_bytes()
            ours = outputs[fw]
            outputs[fw] = (ours.boxes[ours.valid], ours.scores[ours.valid])
        return rec

    results = bench.run_frameworks(case.name, 1, common, frameworks, run, budget, log)
    ref_boxes = outputs.get("medjax", (None,))[0]
    for fw, rec in results.items():
        if fw == "medjax" or fw not in outputs or ref_boxes is None:
            continue
        boxes = outputs[fw][0]
        same = boxes.shape == ref_boxes.shape
        diff = float(np.abs(boxes - ref_boxes).max()) if same and len(boxes) else 0.0
        passed = same and diff <= BOX_ATOL
        rec["output_check"] = {"against": "medjax", "detections": int(len(boxes)),
                               "medjax_detections": int(len(ref_boxes)), "max_abs_diff": diff, "atol": BOX_ATOL,
                               "passed": passed}
        if not passed:
            raise RuntimeError(f"{case.name}: {fw} kept {len(boxes)} detections, medjax {len(ref_boxes)} "
                               f"(max box difference {diff:.3g})")
    return [results[fw] for fw in frameworks]
