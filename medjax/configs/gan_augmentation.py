"""The two configs of the GAN-augmentation study (`python -m experiments.gan_augmentation`): a class-conditional
DCGAN on 16x16 ICBM152 tissue patches (`gan`) and the small ResNet classifier trained on real (+ synthetic)
patches (`classifier`). Both read an npz of patches (`data.name="npz"`) whose path the runner fills in; by hand:

    medjax train --config gan_augmentation:gan --workdir runs/gan --config.data.root=patches.npz
"""

from __future__ import annotations

import ml_collections

CLASS_NAMES = ("csf", "grey_matter", "white_matter")


def _adam(learning_rate: float, b1: float = 0.9) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="adam", learning_rate=learning_rate, schedule="constant",
                                          warmup_steps=0, b1=b1))


def get_config(arg: str = "classifier") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_epochs = 0
    c.progress = False
    c.data = ml_collections.ConfigDict(dict(name="npz", root="", class_names=CLASS_NAMES))
    c.parallel = ml_collections.ConfigDict(dict(strategy="sharding"))
    if arg == "gan":
        c.batch_size = 32
        c.num_train_steps = 3000
        c.log_every = 50
        c.eval_every = 1000
        c.checkpoint_every = 1000
        c.task = ml_collections.ConfigDict(dict(
            name="gan", loss="hinge", latent_dim=32, conditional=True, scale=1, l1_weight=0.0,
            adversarial_weight=1.0, feature_weight=0.0, r1_gamma=0.0, ema_decay=0.999, target="label_onehot",
            intensity_range=(), pinned_d_loss=1e-4, pinned_patience=10))
        c.generator = ml_collections.ConfigDict(dict(name="dcgan", features=32, base=4))
        c.discriminator = ml_collections.ConfigDict(dict(name="dcgan", features=32, base=4, spectral_norm=True))
        # DCGAN's b1=0.5 and a faster discriminator (TTUR): with b1=0.9 and equal rates (2e-4) the generator
        # collapsed to one checkerboard pattern within 1500 steps on these 60 patches.
        c.g_optimizer = _adam(1e-4, b1=0.5)
        c.d_optimizer = _adam(4e-4, b1=0.5)
        c.eval = ml_collections.ConfigDict(dict(num_examples=16))
        c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=1, best_metric="", best_mode="max"))
    elif arg == "classifier":
        c.batch_size = 32
        c.eval_batch_size = 100
        c.num_train_steps = 300
        c.log_every = 50
        c.eval_every = 50
        c.checkpoint_every = 300
        c.task = ml_collections.ConfigDict(dict(name="classification", num_classes=3, multi_label=False))
        c.model = ml_collections.ConfigDict(dict(name="resnet", stage_sizes=(1, 1), block="basic", stem="small",
                                                 width=16))
        c.optimizer = _adam(1e-3)
        c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=1, best_metric="auc", best_mode="max"))
    else:
        raise ValueError(f"unknown variant {arg!r}; use 'gan' or 'classifier'")
    return c
