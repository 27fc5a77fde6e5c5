"""A 3D U-Net on any Medical Segmentation Decathlon task folder: patch training, sliding-window evaluation.

    medjax train    --config msd_unet3d --workdir runs/hippocampus \\
                    --config.data.root=/data/Task04_Hippocampus
    medjax evaluate --config msd_unet3d --workdir runs/hippocampus \\
                    --config.data.root=/data/Task04_Hippocampus

The labelled cases (imagesTr/labelsTr, as `dataset.json` lists them) are split by a seeded permutation into
train / val / test (20% / 20% of all cases for val / test; the official imagesTs have no labels); `dataset.json`
`test` entries that have labels are the test split instead, and nnU-Net's folds come from its split file
(`--config.data.split_file=splits_final.json --config.data.fold=0`, relative to the task folder) or are made
the way nnU-Net makes them (`--config.data.num_folds=5 --config.data.fold=0`, over the cases outside the test
split: add `--config.data.test_fraction=0` for nnU-Net's folds of every labelled case); see docs/data.md.
Each case is normalised (CT: a fixed HU window; MR: z-score over non-zero voxels; see medjax/data/msd.py),
optionally resampled to `data.spacing` mm, and cached as array_record the first time. Training draws one random
patch per case visit with nnU-Net-style foreground oversampling (`data.fg_ratio`) and augments on device.
Validation and `evaluate` predict each whole case with Gaussian-blended sliding windows of the patch size and
report Dice per class averaged over cases (`eval.json`), plus every case's Dice (`eval_cases.json`).

Defaults are sized for a GPU; `:tiny` is the test-suite variant. Larger tasks usually want
`--config.data.spacing=(1.5,1.5,1.5)` (or their median spacing) and a bigger `data.patch_size`.
"""

import ml_collections

from medjax.configs import _base
from medjax.data import augment


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 2
    c.eval_batch_size = 4  # windows per device step in sliding-window evaluation
    c.num_train_steps = 4000
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.progress = True

    c.data = ml_collections.ConfigDict()
    c.data.name = "msd"
    c.data.root = ""  # the task folder (dataset.json, imagesTr/, labelsTr/)
    c.data.spacing = ()  # mm, e.g. (1.5, 1.5, 1.5); () keeps each case's own grid
    c.data.normalize = "auto"  # CT window for CT channels, z-score otherwise
    c.data.ct_level = 40.0
    c.data.ct_width = 400.0
    c.data.val_fraction = 0.2
    c.data.test_fraction = 0.2
    c.data.split_seed = 0
    c.data.patch_size = (64, 64, 64)
    c.data.fg_ratio = 0.33  # nnU-Net's share of patches centred on foreground
    c.data.cache_dir = ""  # empty = $MEDJAX_CACHE_DIR or ~/.cache/medjax
    c.data.num_threads = 4
    c.data.prefetch = 4

    c.task = ml_collections.ConfigDict()
    c.task.name = "segmentation"
    c.task.num_classes = 0  # from dataset.json
    c.task.loss = "dice_ce"
    c.task.include_background = False
    c.task.dice_average = "cases"

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"
    c.model.features = (16, 32, 64, 128, 256)
    c.model.norm = "instance"
    c.model.upsample = "transpose"
    c.model.deep_supervision = True

    c.augment = augment.default_config(("flip", "affine", "gamma", "contrast_brightness", "noise"))

    c.inference = ml_collections.ConfigDict()
    c.inference.roi_size = c.data.patch_size
    c.inference.overlap = 0.5
    c.inference.mode = "gaussian"
    c.inference.sigma_scale = 0.125

    c.optimizer = _base.optimizer(name="adamw",
                                  learning_rate=1e-3,
                                  weight_decay=3e-5,
                                  schedule="cosine",
                                  warmup_steps=100,
                                  grad_clip_norm=12.0)

    c.parallel = _base.parallel(strategy="sharding")

    c.checkpoint = _base.checkpoint(max_to_keep=2, best_metric="dice_mean", best_mode="max")

    if arg == "tiny":
        c.batch_size = 4
        c.eval_batch_size = 4
        c.num_train_steps = 4
        c.log_every = 2
        c.eval_every = 2
        c.checkpoint_every = 2
        c.data.patch_size = (16, 16, 16)
        c.inference.roi_size = (16, 16, 16)
        c.data.num_threads = 2
        c.model.features = (4, 8)
        c.augment.transforms = ("flip", "affine")
        c.optimizer.warmup_steps = 0
        c.progress = False
    elif arg is not None:
        raise ValueError(f"unknown msd_unet3d variant {arg!r}; use 'tiny'")
    return c
