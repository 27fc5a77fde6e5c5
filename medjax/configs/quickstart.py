"""Quickstart: a 2D U-Net segments background / CSF / grey / white matter on real ICBM152 T1 MRI slices.

The MNI ICBM152 2009 template and its tissue probability maps ship inside the nilearn package, so this runs
offline. Axial slices at 2 mm in-plane; the val and test slabs are held out with gaps to the training slices
(see medjax/data/icbm152.py for the labels and splits).

Run (what `make run` does):
    medjax train --config quickstart --workdir runs/quickstart
    medjax evaluate --config quickstart --workdir runs/quickstart

Tiny variant for tests and the notebook: `--config quickstart:tiny`.
Results: see README "Quickstart" (measured by `make run`).
"""

import ml_collections

from medjax.configs import _base
from medjax.data import augment


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_train_steps = 300
    c.log_every = 20
    c.eval_every = 100
    c.checkpoint_every = 100
    c.progress = True

    c.data = ml_collections.ConfigDict()
    c.data.name = "icbm152"
    c.data.root = ""  # folder with the three ICBM152 NIfTI files; empty = nilearn's bundled copy
    c.data.in_plane_mm = 2.0
    c.data.max_slices_per_split = 0  # 0 = all

    c.task = ml_collections.ConfigDict()
    c.task.name = "segmentation"
    c.task.num_classes = 4
    c.task.loss = "dice_ce"
    c.task.include_background = False

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"
    c.model.features = (16, 32, 64, 128)
    c.model.norm = "batch"
    c.model.upsample = "transpose"

    # Off, so the README numbers stay those of the plain run; turn on with e.g.
    # --config.augment.transforms=flip,affine,gamma (defaults of each in medjax/data/augment.py).
    c.augment = augment.default_config()

    c.optimizer = _base.optimizer(name="adam",
                                  learning_rate=3e-3,
                                  schedule="cosine",
                                  warmup_steps=20,
                                  grad_clip_norm=0.0)

    c.parallel = _base.parallel(strategy="sharding")

    c.checkpoint = _base.checkpoint(max_to_keep=2, best_metric="dice_mean", best_mode="max")

    if arg == "tiny":
        c.batch_size = 4
        c.eval_batch_size = 8
        c.num_train_steps = 6
        c.log_every = 2
        c.eval_every = 3
        c.checkpoint_every = 3
        c.data.in_plane_mm = 4.0
        c.data.max_slices_per_split = 8
        c.model.features = (4, 8)
        c.progress = False
    elif arg is not None:
        raise ValueError(f"unknown quickstart variant {arg!r}; use 'tiny'")
    return c
