"""A 2D U-Net on a folder of images and masks (PNG/TIFF/GIF/JPEG), with optional field-of-view masks.

    medjax train    --config image_folder_unet --workdir runs/fundus --config.data.root=/data/fundus
    medjax evaluate --config image_folder_unet --workdir runs/fundus --config.data.root=/data/fundus

`data.root` holds `images/`, `masks/` (same file stems, any supported format) and optionally `fov/`; the
`*_dir` / `*_suffix` keys (folders relative to the root) or `data.pairs_csv` (columns image,mask[,fov]) name
other layouts: DRIVE's manual annotations are not named after their images (21_manual1.gif for 21_training.tif),
so list its triples in a CSV (image,mask,fov: images/21_training.tif,1st_manual/21_manual1.gif,
mask/21_training_mask.gif) and set `data.pairs_csv`. See
medjax/data/image_folder.py for how masks become classes (0/255 -> {0, 1}; `data.mask_values` maps other codes).
The examples are split by a seeded permutation (`data.val_fraction` / `data.test_fraction` of all, by
`data.split_seed`). Pixels outside the FOV count in neither the loss nor the Dice, so a fundus photo's black
border does not inflate the scores; the FOV follows the geometric augmentations with the image. `evaluate` also
reports HD95, ASSD and NSD per class (`eval.json`, per image in `eval_cases.json`; mm with `data.spacing`, else
pixels), inside the FOV.

Every image is resized to `data.size` (U-Net levels halve it, so keep it divisible by 2**(levels - 1)).
`:tiny` is the test-suite variant.

`:basic_unet` is the retinal-vessel protocol of the PyTorch/MONAI baselines: MONAI's BasicUNet (features
32-32-64-128-256-32, instance norm) trained on random 128x128 patches of the images at their stored size, batch 8,
Dice+CE, Adam 1e-3 (cosine), and evaluated on whole images by Gaussian-blended 128x128 sliding windows. The
patches carry the `fov/` masks with the image, so the field of view counts in training and evaluation alike.
`medjax bench --cases fundus_basic_unet` times its training step against MONAI.
"""

import ml_collections

from medjax.configs import _base
from medjax.data import augment


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
    c.data.pairs_csv = ""  # instead of folders: a CSV image,mask[,fov]
    c.data.mask_suffix = ""  # masks named <image stem><mask_suffix>.<ext>
    c.data.fov_suffix = ""  # e.g. "_mask" for DRIVE's 21_training_mask.gif
    c.data.size = (512, 512)  # (H, W); () keeps the stored size (then all images must share it)
    c.data.color = "auto"  # "auto", "gray" or "rgb"
    c.data.mask_values = None  # e.g. {0: 0, 128: 1, 255: 2}; None: 0/255 -> {0, 1}, else stored class indices
    c.data.num_classes = 0  # 0: from class_names, else the largest class in the masks + 1
    c.data.class_names = ()  # e.g. ("background", "vessel")
    c.data.val_fraction = 0.2
    c.data.test_fraction = 0.2
    c.data.split_seed = 0

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

    if arg == "tiny":
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
    elif arg == "basic_unet":
        c.batch_size = 8
        c.eval_batch_size = 8  # windows per device step
        c.data.size = ()
        c.data.patch_size = (128, 128)
        c.data.fg_ratio = 0.33
        c.model = ml_collections.ConfigDict(dict(name="basic_unet", features=(32, 32, 64, 128, 256, 32)))
        c.inference = ml_collections.ConfigDict(dict(roi_size=(128, 128), overlap=0.5, mode="gaussian",
                                                     sigma_scale=0.125))
    elif arg is not None:
        raise ValueError(f"unknown image_folder_unet variant {arg!r}; use 'tiny' or 'basic_unet'")
    return c
