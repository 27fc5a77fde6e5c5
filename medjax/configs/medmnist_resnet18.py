"""MedMNIST v2 ResNet-18 protocol, for any of the 12 2D sets (or, with `:3d`, the 6 3D sets).

Adam (lr 1e-3), batch 128 (32 for the 3D sets: the defaults of MedMNIST/experiments' train_and_eval_pytorch.py
scripts), 100 epochs, learning rate x0.1 at 50% and 75% of training, cross-entropy (BCE for the multi-label
ChestMNIST), the checkpoint with the best validation AUC scored on the official test split (AUC and
ACC in eval.json). Files are read from `data.root` as the medmnist package saves them (`breastmnist.npz` at 28,
`breastmnist_64.npz` at 64, ...) and cached as array_record on the first run.

    medjax train    --config medmnist_resnet18 --workdir runs/breast \\
        --config.data.name=breastmnist --config.data.root=DIR [--config.data.size=64 --config.model.stem=standard]
    medjax evaluate --config medmnist_resnet18 --workdir runs/breast \\
        --config.data.name=breastmnist --config.data.root=DIR
    # 3D sets: --config medmnist_resnet18:3d --config.data.name=organmnist3d ...

The 28-pixel sets use the small stem (3x3 stride 1, no max-pool); for 64/128/224 pass
`--config.model.stem=standard`. `:tiny` (or `:3d,tiny`) is a seconds-long variant for tests.
Results: not measured yet here — the MedMNIST files are not available offline on this machine.
"""

import ml_collections

from medjax.configs import _base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = set((arg or "").split(",")) - {""}
    if flags - {"3d", "tiny"}:
        raise ValueError(f"unknown variant(s) {sorted(flags - {'3d', 'tiny'})}; use '3d' and/or 'tiny'")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 32 if "3d" in flags else 128  # the official scripts' defaults (MedMNIST/experiments)
    c.eval_batch_size = 256
    c.num_epochs = 100
    c.num_train_steps = 0  # from num_epochs and the training-set size
    c.log_every = 50
    c.eval_every = 0  # once per epoch
    c.checkpoint_every = 0  # once per epoch
    c.progress = True

    c.data = ml_collections.ConfigDict()
    c.data.name = "organmnist3d" if "3d" in flags else "breastmnist"
    c.data.root = ""  # folder with the .npz files; empty = ~/.medmnist (the medmnist package's default)
    c.data.size = 28
    c.data.cache_dir = ""  # empty = $MEDJAX_CACHE_DIR or ~/.cache/medjax
    c.data.num_threads = 2
    c.data.prefetch = 4

    c.task = ml_collections.ConfigDict()
    c.task.name = "classification"
    c.task.num_classes = 0  # from the dataset
    c.task.multi_label = "auto"  # ChestMNIST is multi-label

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.stem = "small"

    c.augment = ml_collections.ConfigDict()  # none: the MedMNIST v2 baselines train without augmentation

    c.optimizer = _base.optimizer(name="adam",
                                  learning_rate=1e-3,
                                  schedule="piecewise",
                                  decay_at=(0.5, 0.75),
                                  decay_factor=0.1,
                                  warmup_steps=0)

    c.parallel = _base.parallel(strategy="sharding")

    c.checkpoint = _base.checkpoint(max_to_keep=2, best_metric="auc", best_mode="max")

    if "tiny" in flags:
        c.batch_size = 8
        c.eval_batch_size = 8
        c.num_epochs = 2
        c.log_every = 2
        c.model = ml_collections.ConfigDict(dict(name="resnet", stage_sizes=(1, 1), block="basic", stem="small",
                                                 width=4))
        c.progress = False
    return c
