"""Synthetic smoke runs (seconds on a CPU): segmentation of noisy discs, or classification of bright squares.

    medjax train --config synthetic:segmentation --workdir /tmp/seg
    medjax train --config synthetic:classification --workdir /tmp/cls

The test suite uses these to exercise parallelism, resume and the CLI without real data.
"""

import ml_collections

from medjax.configs import _base
from medjax.data import augment


def get_config(arg: str = "segmentation") -> ml_collections.ConfigDict:
    if arg not in ("segmentation", "classification"):
        raise ValueError(f"unknown variant {arg!r}; use 'segmentation' or 'classification'")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 12
    c.log_every = 2
    c.eval_every = 4
    c.checkpoint_every = 4
    c.progress = False

    c.data = ml_collections.ConfigDict()
    c.data.name = f"synthetic_{arg}"
    c.data.seed = 0
    c.data.num_train = 24
    c.data.num_eval = 10
    c.data.size = (16, 16)
    c.data.num_classes = 3

    c.task = ml_collections.ConfigDict()
    c.task.name = arg
    c.task.num_classes = 3
    if arg == "segmentation":
        c.task.loss = "dice_ce"
        c.task.include_background = True
        c.model = ml_collections.ConfigDict(dict(name="unet", features=(4, 8), norm="batch", upsample="transpose"))
    else:
        c.task.multi_label = False
        c.model = ml_collections.ConfigDict(dict(name="resnet", stage_sizes=(1, 1), block="basic", stem="small",
                                                width=4, norm="batch"))

    c.augment = augment.default_config()  # off; e.g. --config.augment.transforms=flip,affine

    c.optimizer = _base.optimizer(name="adam", learning_rate=1e-2, schedule="constant", warmup_steps=0)

    c.parallel = _base.parallel(strategy="sharding")

    c.checkpoint = _base.checkpoint(max_to_keep=2,
                                    best_metric="dice_mean" if arg == "segmentation" else "auc",
                                    best_mode="max")
    return c
