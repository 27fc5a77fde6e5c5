"""GAN smoke runs on synthetic data (seconds on a CPU): `gan` (DCGAN), `pix2pix` or `super_resolution`.

    medjax train --config gan_synthetic:gan --workdir /tmp/gan
    medjax train --config gan_synthetic:pix2pix --workdir /tmp/p2p
    medjax train --config gan_synthetic:super_resolution --workdir /tmp/sr

16x16 noisy discs (`synthetic_segmentation`); pix2pix maps an image to its one-hot label map. The test suite uses
these for resume, parallel strategies, divergence handling and the CLI.
"""

import ml_collections

VARIANTS = ("gan", "pix2pix", "super_resolution")


def optimizer(learning_rate: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="adam", learning_rate=learning_rate, schedule="constant",
                                          warmup_steps=0))


def get_config(arg: str = "gan") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; use one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 8
    c.num_train_steps = 8
    c.num_epochs = 0
    c.log_every = 2
    c.eval_every = 4
    c.checkpoint_every = 4
    c.progress = False

    c.data = ml_collections.ConfigDict(dict(name="synthetic_segmentation", seed=0, num_train=24, num_eval=8,
                                            size=(16, 16), num_classes=3))
    c.task = ml_collections.ConfigDict()
    c.task.name = arg
    c.task.loss = "non_saturating" if arg == "gan" else "least_squares"
    c.task.latent_dim = 16
    c.task.conditional = False
    c.task.scale = 2
    c.task.l1_weight = {"gan": 0.0, "pix2pix": 100.0, "super_resolution": 1.0}[arg]
    c.task.adversarial_weight = {"gan": 1.0, "pix2pix": 1.0, "super_resolution": 0.01}[arg]
    c.task.feature_weight = 0.0  # > 0: pix2pixHD feature matching on D's convolutions
    c.task.r1_gamma = 0.0
    c.task.ema_decay = 0.9
    c.task.target = "label_onehot"
    c.task.intensity_range = ()
    c.task.pinned_d_loss = 1e-4
    c.task.pinned_patience = 5

    if arg == "gan":
        c.generator = ml_collections.ConfigDict(dict(name="dcgan", features=8, base=4))
        c.discriminator = ml_collections.ConfigDict(dict(name="dcgan", features=8, base=4, spectral_norm=False))
    else:
        c.generator = (ml_collections.ConfigDict(dict(name="pix2pix", features=(8, 16), norm="instance",
                                                      output_activation="tanh")) if arg == "pix2pix" else
                       ml_collections.ConfigDict(dict(name="sr", features=8, num_blocks=2)))
        c.discriminator = ml_collections.ConfigDict(dict(name="patchgan", features=8, num_layers=2, norm="instance",
                                                         spectral_norm=False))
    c.g_optimizer = optimizer(2e-3)
    c.d_optimizer = optimizer(2e-3)
    c.eval = ml_collections.ConfigDict(dict(num_examples=8))

    c.parallel = ml_collections.ConfigDict(dict(strategy="sharding"))
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2, best_metric="" if arg == "gan" else "psnr",
                                                  best_mode="max"))
    return c
