"""Lesion detection in the real ICBM152 brain with simulated lesions of known extent: a Retina U-Net, 3D or 2D.

    medjax train    --config detection_icbm152:3d --workdir runs/det3d
    medjax evaluate --config detection_icbm152:3d --workdir runs/det3d          # FROC / CPM and mAP on test

Data: `icbm152_lesions` (medjax/data/icbm152_lesions.py): nilearn's ICBM152 T1 template at 3 mm (64^3), with
1-4 white-matter lesions per case (ellipsoids, radius 4-10 mm, hyper- or hypointense by 1.0-2.5 brain standard
deviations, noise 0.1), 16 training / 4 validation / 8 test cases, every split its own lesions. `3d` trains 800
steps on batches of 8 32^3 patches (9 of 10 holding a lesion somewhere inside) with flips and quarter turns, and
evaluates whole volumes by sliding-window detection (32^3 windows, overlap 0.25, merged by NMS); `2d` trains 800
steps on batches of 16 64 x 64 axial slices (8 per case, half through lesions) and evaluates whole slices. The
model is a Retina U-Net (features (8, 16, 32, 64), heads on the levels of strides 2 and 4, anchors of 4 and 8
voxels at stride 2, doubled at stride 4), ATSS matching (9 candidates per level in 3D, 4 in 2D), focal +
smooth-L1 loss, and the auxiliary Dice + CE of its segmentation output.

`retinanet` swaps in MONAI's RetinaNet architecture (a ResNet stem 7/1 with max-pool, stages 1-2 of width 16,
an FPN of 32 channels plus its pooled level, four-conv heads): the model of the `medjax bench` RetinaNet rows.
`seg` is the baseline: the same U-Net trained as a segmenter (batch Dice + CE), whose connected components are the
detections (`medjax.detection.instances.segmentation_detections`, scored by their mean probability);
`python -m experiments.detection_icbm152` trains all four and writes the table in docs/detection.md. `tiny`
(tests): 8 mm volumes (32^3), 4 training cases, features (4, 8), 4 steps.
"""

import ml_collections

from medjax.configs import _base
from medjax.data import augment

FLAGS = ("3d", "2d", "seg", "retinanet", "tiny")
VARIANTS = tuple(f"{d}{m}{t}" for d in ("3d", "2d") for m in ("", ",seg", ",retinanet") for t in ("", ",tiny"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = set((arg or "3d").split(","))
    if flags - set(FLAGS) or len(flags & {"3d", "2d"}) > 1:
        raise ValueError(f"unknown detection_icbm152 variant {arg!r}; use 3d or 2d, optionally with ,seg or "
                         f",retinanet and ,tiny")
    dims = 2 if "2d" in flags else 3
    tiny, seg, retinanet = "tiny" in flags, "seg" in flags, "retinanet" in flags
    if seg and retinanet:
        raise ValueError("detection_icbm152: seg and retinanet are two different models; pick one")

    c = ml_collections.ConfigDict()
    c.seed = 0
    # 3D: 8 patches a step, 9 of 10 holding a lesion: with 4 (2 of 3 holding one) the detector saw 1-3 positive
    # anchors a step and its classifier settled on a constant score.
    c.batch_size = 8 if dims == 3 else 16
    c.eval_batch_size = 4 if dims == 3 else 16
    c.num_train_steps = 800
    c.log_every = 50
    c.eval_every = c.checkpoint_every = 100 if dims == 3 else 200
    c.progress = False

    c.data = ml_collections.ConfigDict()
    c.data.name = "icbm152_lesions"
    c.data.spatial_dims = dims
    c.data.voxel_mm = 3
    c.data.num_train = 16
    c.data.num_val = 4
    c.data.num_test = 8
    c.data.slices_per_case = 8
    c.data.max_boxes = 8
    c.data.fg_ratio = 0.9 if dims == 3 else 0.67
    c.data.contrast = (1.0, 2.5)  # brain standard deviations, either sign (the loader's default 0.5-1.5 is fainter)
    if dims == 3:
        c.data.patch_size = (32, 32, 32)

    features = (8, 16, 32, 64)
    if seg:
        c.task = ml_collections.ConfigDict(dict(name="segmentation", num_classes=2, loss="dice_ce",
                                                include_background=False, dice_batch=True, surface_metrics=False))
        c.model = ml_collections.ConfigDict(dict(name="unet", features=features, norm="batch"))
        best = "dice_mean"
    else:
        c.task = ml_collections.ConfigDict(dict(name="detection", num_classes=1, anchor_shapes=(4.0, 8.0),
                                                matcher="atss", atss_candidates=9 if dims == 3 else 4,
                                                nms_thresh=0.2, max_detections=32))
        c.model = ml_collections.ConfigDict(dict(name="retina_unet", features=features, norm="batch",
                                                 head_levels=(2, 3), head_channels=16, head_convs=2))
        if retinanet:  # MONAI's RetinaNet: ResNet stem 7/1 + max-pool, stages 1-2 (strides 2, 4), + the pooled level
            c.model = ml_collections.ConfigDict(dict(name="retinanet", stage_sizes=(1, 1, 1, 1), width=16,
                                                     stem_kernel=7, stem_stride=1, stem_pool=True,
                                                     returned_layers=(1, 2), fpn_channels=32))
        best = "cpm"

    c.augment = augment.default_config(("flip", "rot90") if dims == 3 else ("flip",))
    if dims == 3:
        c.inference = ml_collections.ConfigDict(dict(roi_size=c.data.patch_size, overlap=0.25))

    # Adam at 1e-2: at 2e-3 the last layers' biases move too slowly toward the lesion class's prior (about 0.2% of
    # voxels) and neither arm learned a lesion in 800 steps.
    c.optimizer = _base.optimizer(name="adam", learning_rate=1e-2, schedule="cosine", warmup_steps=20)
    c.parallel = _base.parallel(strategy="sharding")
    c.checkpoint = _base.checkpoint(best_metric=best, best_mode="max")

    if tiny:
        c.batch_size = c.eval_batch_size = 4
        c.num_train_steps = 4
        c.log_every = c.eval_every = c.checkpoint_every = 2
        c.data.voxel_mm = 8
        c.data.num_train, c.data.num_val, c.data.num_test = 4, 2, 2
        c.data.slices_per_case = 2
        c.optimizer.warmup_steps = 0
        if not retinanet:
            c.model.features = (4, 8)
        if retinanet:
            c.model.width, c.model.fpn_channels = 8, 8
            c.task.anchor_shapes = (3.0,)
        elif not seg:
            c.model.head_levels = (1, 2)
            c.model.head_channels = 8
            c.model.head_convs = 1
            c.task.anchor_shapes = (3.0,)
        if dims == 3:
            c.data.patch_size = (16, 16, 16)
            c.inference.roi_size = c.data.patch_size
    return c
