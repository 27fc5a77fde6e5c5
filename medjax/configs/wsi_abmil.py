"""Slide-level classification of whole-slide images with attention-based multiple-instance learning (ABMIL).

Each slide is a bag of 224-pixel tissue tiles at 20x (0.5 µm/px); a ResNet-18 encodes the tiles, gated attention
pools them, a linear layer classifies the slide (`medjax.models.abmil`, task `mil`). Training draws 128 tiles per
slide per step; evaluation scores bags of at most 1024 tiles. Data: `data.name='wsi_folder'` (slides + a labels
CSV, `medjax.data.wsi_folder`); for Camelyon16 see docs/pathology.md (labels CSV from its published layout,
ImageNet weights for the encoder, frozen backbone).

Run:
    medjax train --config wsi_abmil --workdir runs/wsi --config.data.root=/data/CAMELYON16 \\
        --config.data.slides_dir=. --config.data.labels_csv=/data/camelyon16_labels.csv
    medjax evaluate --config wsi_abmil --workdir runs/wsi ...(same data overrides)
Results: not measured here (no slides ship offline); the tiny variant is what the tests run.

Tiny variant for tests: `--config wsi_abmil:tiny` (16-pixel tiles at level-0 pixels, a one-stage ResNet,
4 tiles per bag, 4 steps; set data.root to a folder of slides).
"""

import ml_collections

from medjax.configs import _base
from medjax.data import augment

VARIANTS = ("tiny",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4  # slides per step
    c.eval_batch_size = 4
    c.num_epochs = 40
    c.log_every = 10
    c.eval_every = 0  # once per epoch
    c.checkpoint_every = 0
    c.progress = True

    c.data = ml_collections.ConfigDict()
    c.data.name = "wsi_folder"
    c.data.root = ""
    c.data.slides_dir = "slides"
    c.data.labels_csv = "labels.csv"
    c.data.tile_size = 224
    c.data.magnification = 20.0
    c.data.min_tissue = 0.5
    c.data.bag_size = 128  # tiles drawn per slide per training step
    c.data.max_tiles = 1024  # tiles per slide when evaluating (evenly spaced over the tissue)

    c.task = ml_collections.ConfigDict()
    c.task.name = "mil"
    c.task.num_classes = 0  # from the labels

    c.model = ml_collections.ConfigDict()
    c.model.name = "abmil"
    c.model.encoder = "resnet18"
    c.model.embed_dim = 512
    c.model.attention_dim = 128
    c.model.gated = True

    c.augment = augment.default_config(("flip", "rot90", "hed"))

    c.optimizer = _base.optimizer(name="adamw", learning_rate=2e-4, schedule="cosine", warmup_steps=50,
                                  weight_decay=1e-4)
    c.parallel = _base.parallel(strategy="sharding")
    c.checkpoint = _base.checkpoint(best_metric="auc", best_mode="max")

    if arg == "tiny":
        c.batch_size = 4
        c.eval_batch_size = 4
        c.num_epochs = 0
        c.num_train_steps = 4
        c.log_every = 2
        c.eval_every = 2
        c.checkpoint_every = 2
        c.progress = False
        c.data.tile_size = 16
        c.data.magnification = 0.0  # level-0 pixels
        c.data.bag_size = 4
        c.data.max_tiles = 16
        c.model.encoder = "resnet"
        c.model.stage_sizes = (1,)
        c.model.stem = "small"
        c.model.width = 4
        c.model.embed_dim = 8
        c.model.attention_dim = 4
        c.augment.hed.p = 1.0
        c.optimizer.warmup_steps = 0
        c.optimizer.learning_rate = 1e-2
    elif arg is not None:
        raise ValueError(f"unknown wsi_abmil variant {arg!r}; use 'tiny'")
    return c
