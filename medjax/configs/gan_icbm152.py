"""GANs on real MRI: super-resolution and T1 -> tissue-map translation on ICBM152 slices (ships with nilearn).

    medjax train --config gan_icbm152:sr2 --workdir runs/sr2          # x2 SR, L1 + adversarial
    medjax train --config gan_icbm152:sr2_l1 --workdir runs/sr2_l1    # the same generator, L1 only
    medjax train --config gan_icbm152:sr4 --workdir runs/sr4          # x4 (and sr4_l1)
    medjax train --config gan_icbm152:pix2pix --workdir runs/p2p      # T1 -> tissue map (and pix2pix_l1)
    python -m experiments.gan_icbm152_report --out runs/gan_icbm152                  # all of them + the table

Data: axial 1 mm slices of the ICBM152 2009 T1 template (192 x 160), the loader's train/val/test split by slice
position with a gap (`medjax.data.icbm152`): one brain, so the test slices are unseen anatomy of the same
subject, not a new subject. SR inputs are block means of the 1 mm slice (2 or 4 mm in-plane); the generator
(EDSR-style, bicubic skip) is compared with bicubic interpolation and with itself trained with L1 only. pix2pix
maps T1 to the 4-class tissue map (background, CSF, GM, WM; one-hot in [-1, 1]); `pix2pix_l1` is the same U-Net
without the discriminator. `:tiny` suffixes (e.g. `sr2_tiny`) give a seconds-long run for the tests.
"""

import ml_collections

VARIANTS = ("sr2", "sr2_l1", "sr4", "sr4_l1", "pix2pix", "pix2pix_l1")


def _optimizer(learning_rate: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="adam", learning_rate=learning_rate, schedule="constant",
                                          warmup_steps=0))


def get_config(arg: str = "sr2") -> ml_collections.ConfigDict:
    tiny = arg.endswith("_tiny")
    variant = arg[: -len("_tiny")] if tiny else arg
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; use one of {VARIANTS} (optionally with _tiny)")
    l1_only = variant.endswith("_l1")
    sr = variant.startswith("sr")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4
    c.num_train_steps = 3 if tiny else 400
    c.num_epochs = 0
    c.log_every = 1 if tiny else 25
    c.eval_every = 3 if tiny else 100
    c.checkpoint_every = 3 if tiny else 100
    c.progress = False

    c.data = ml_collections.ConfigDict(dict(name="icbm152", in_plane_mm=2 if tiny else 1, plane="axial",
                                            max_slices_per_split=8 if tiny else 0))
    c.task = ml_collections.ConfigDict()
    c.task.name = "super_resolution" if sr else "pix2pix"
    c.task.loss = "least_squares"
    c.task.latent_dim = 0
    c.task.conditional = False
    c.task.scale = int(variant[2]) if sr else 1
    c.task.l1_weight = 1.0 if sr else 100.0
    c.task.adversarial_weight = 0.0 if l1_only else (0.01 if sr else 1.0)
    c.task.feature_weight = 0.0  # > 0: pix2pixHD feature matching on D's convolutions
    c.task.r1_gamma = 0.0
    c.task.ema_decay = 0.99
    c.task.target = "label_onehot"
    c.task.intensity_range = ()
    c.task.pinned_d_loss = 1e-4
    c.task.pinned_patience = 5

    if sr:
        c.generator = ml_collections.ConfigDict(dict(name="sr", features=8 if tiny else 32,
                                                     num_blocks=1 if tiny else 4))
    else:
        c.generator = ml_collections.ConfigDict(dict(name="pix2pix", features=(4, 8) if tiny else (16, 32, 64, 128),
                                                     norm="instance", output_activation="tanh"))
    c.discriminator = ml_collections.ConfigDict(dict(name="patchgan", features=4 if tiny else 32, num_layers=3,
                                                     norm="instance", spectral_norm=False))
    c.g_optimizer = _optimizer(1e-3)
    c.d_optimizer = _optimizer(1e-3)
    c.eval = ml_collections.ConfigDict(dict(num_examples=64))

    c.parallel = ml_collections.ConfigDict(dict(strategy="sharding"))
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=1, best_metric="psnr" if sr else "dice_mean",
                                                  best_mode="max"))
    return c
