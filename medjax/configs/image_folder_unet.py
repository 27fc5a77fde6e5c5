"""A 2D U-Net on a folder of images and masks (PNG/TIFF/GIF/JPEG), with optional field-of-view masks.

    medjax train    --config image_folder_unet --workdir runs/fundus --config.data.root=/data/fundus
    medjax evaluate --config image_folder_unet --workdir runs/fundus --config.data.root=/data/fundus

`data.root` holds `images/`, `masks/` (same file stems, any supported format) and optionally `fov/`; the
`*_dir` / `*_suffix` / `case_pattern` keys (folders relative to the root) or `data.pairs_csv` (columns
image,mask[,fov][,split]) name other layouts. See medjax/data/image_folder.py for how masks become classes
(0/255 -> {0, 1}; `data.mask_values` maps other codes). Without an official split the examples are split by a
seeded permutation (`data.val_fraction` / `data.test_fraction` of all, by `data.split_seed`); an official one
comes from `data.train_root` / `test_root` (and `val_root`) folders, a `split` column of the CSV or
`data.split_file` (docs/data.md, "Official splits"). Pixels outside the FOV count in neither the loss nor the
Dice, so a fundus photo's black border does not inflate the scores; the FOV follows the geometric augmentations
with the image. `evaluate` also reports HD95, ASSD and NSD per class (`eval.json`, per image in
`eval_cases.json`; mm with `data.spacing`, else pixels), inside the FOV.

`:drive` reads DRIVE as it unpacks (training/ and test/, each with images/, 1st_manual/ and mask/) with its
official split: the 20 training images train (4 of them, drawn by `data.split_seed`, validate) and
`medjax evaluate` scores all 20 test images against the first observer's manual1 annotation:

    medjax train    --config image_folder_unet:drive --workdir runs/drive --config.data.root=/data/DRIVE
    medjax evaluate --config image_folder_unet:drive --workdir runs/drive --config.data.root=/data/DRIVE

Files pair by their leading number (`data.case_pattern="[0-9]+"`: 21_training.tif, 21_manual1.gif,
21_training_mask.gif are case 21), which is also how `data.split_file` names DRIVE's cases. The test annotations
come with the original DRIVE release (test/1st_manual); a download without them cannot be scored.

Every image is resized to `data.size` (U-Net levels halve it, so keep it divisible by 2**(levels - 1); `:drive`
uses 576x560 for DRIVE's 584x565). `:tiny` is the test-suite variant (`:drive,tiny` with the DRIVE layout).

`:basic_unet` is the retinal-vessel protocol of the PyTorch/MONAI baselines: MONAI's BasicUNet (features
32-32-64-128-256-32, instance norm) trained on random 128x128 patches of the images at their stored size, batch 8,
Dice+CE, Adam 1e-3 (cosine), and evaluated on whole images by Gaussian-blended 128x128 sliding windows. The
patches carry the `fov/` masks with the image, so the field of view counts in training and evaluation alike.
`medjax bench --cases fundus_basic_unet` times its training step against MONAI.
"""

import ml_collections

from medjax.configs import _base
from medjax.data import augment

VARIANTS = ("tiny", "basic_unet", "drive")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4
    c.eval_batch_size = 4
    c.num_train_steps = 2000
    c.log_every = 50
    c.eval_every = 250
    c.checkpoint_every = 250
    c.progress = True

    c.data = ml_collections.ConfigDict()
    c.data.name = "image_folder"
    c.data.root = ""  # folder with images/, masks/ and optionally fov/
    c.data.images_dir = ""  # relative to root; empty = images/
    c.data.masks_dir = ""  # empty = masks/
    c.data.fov_dir = ""  # empty = fov/ if the root has one, else no FOV
    c.data.pairs_csv = ""  # instead of folders: a CSV image,mask[,fov][,split]
    c.data.mask_suffix = ""  # masks named <image stem><mask_suffix>.<ext>
    c.data.fov_suffix = ""  # e.g. "_mask" for DRIVE's 21_training_mask.gif
    c.data.size = (512, 512)  # (H, W); () keeps the stored size (then all images must share it)
    c.data.color = "auto"  # "auto", "gray" or "rgb"
    c.data.mask_values = None  # e.g. {0: 0, 128: 1, 255: 2}; None: 0/255 -> {0, 1}, else stored class indices
    c.data.num_classes = 0  # 0: from class_names, else the largest class in the masks + 1
    c.data.class_names = ()  # e.g. ("background", "vessel")
    c.data.case_pattern = ""  # regex at the start of each file stem naming its case; "" = the stem
    c.data.val_fraction = 0.2  # without an official split: seeded shares of all cases
    c.data.test_fraction = 0.2
    c.data.split_seed = 0
    c.data.train_root = ""  # official split: training cases in their own folder (this layout), relative to root
    c.data.val_root = ""  # empty = validation drawn from the training cases (val_fraction of them)
    c.data.test_root = ""  # the official test cases
    c.data.split_file = ""  # or a JSON of case ids per split: nnU-Net splits_final.json or {train, val, test}
    c.data.fold = 0
    c.data.num_folds = 0  # k-fold cross-validation as nnU-Net makes it; 0 = off

    c.task = ml_collections.ConfigDict()
    c.task.name = "segmentation"
    c.task.num_classes = 0  # from the data
    c.task.loss = "dice_ce"
    c.task.include_background = False

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"
    c.model.features = (16, 32, 64, 128, 256)
    c.model.norm = "batch"
    c.model.upsample = "transpose"

    c.augment = augment.default_config(("flip", "affine", "gamma"))

    c.optimizer = _base.optimizer(name="adam",
                                  learning_rate=1e-3,
                                  schedule="cosine",
                                  warmup_steps=50,
                                  grad_clip_norm=0.0)

    c.parallel = _base.parallel(strategy="sharding")

    c.checkpoint = _base.checkpoint(max_to_keep=2, best_metric="dice_mean", best_mode="max")

    variants = [v for v in (arg or "").split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown image_folder_unet variant {unknown[0]!r}; use {', '.join(VARIANTS)} "
                         f"(drive,tiny combines two)")
    if "drive" in variants:
        c.data.train_root, c.data.test_root = "training", "test"
        c.data.masks_dir, c.data.fov_dir = "1st_manual", "mask"
        c.data.case_pattern = "[0-9]+"
        c.data.size = (576, 560)
        c.data.class_names = ("background", "vessel")
    if "tiny" in variants:
        c.batch_size = 4
        c.eval_batch_size = 4
        c.num_train_steps = 2
        c.log_every = 1
        c.eval_every = 2
        c.checkpoint_every = 2
        c.data.size = (16, 16)
        c.model.features = (4, 8)
        c.augment.transforms = ("flip", "affine")
        c.optimizer.warmup_steps = 0
        c.progress = False
    if "basic_unet" in variants:
        c.batch_size = 8
        c.eval_batch_size = 8  # windows per device step
        c.data.size = ()
        c.data.patch_size = (128, 128)
        c.data.fg_ratio = 0.33
        c.model = ml_collections.ConfigDict(dict(name="basic_unet", features=(32, 32, 64, 128, 256, 32)))
        c.inference = ml_collections.ConfigDict(dict(roi_size=(128, 128), overlap=0.5, mode="gaussian",
                                                     sigma_scale=0.125))
    return c
