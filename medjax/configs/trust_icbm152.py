"""The trust report's configs (`python -m experiments.trust_report`): explanations, calibration, uncertainty and a
subgroup analysis with a known, injected bias, on real ICBM152 MRI that ships with nilearn.

Variants (each also `NAME,tiny` for the tests):
- `classifier`: the GAN-augmentation study's small ResNet on 16 x 16 tissue patches (CSF / grey / white matter,
  `icbm152_patches`), 100 training patches per class, with dropout (0.2) so MC-dropout applies;
- `biased`: the same with a scanner-like intensity shift (+`SITE_SHIFT` z-units) on every second CSF training
  patch and on every second val/test patch of every class ("site B"): in training the scanner only ever shows CSF;
- `control`: the same shift on every second training patch of EVERY class: the scanner carries no class;
- `segmenter`: the quickstart U-Net (ICBM152 slices, 4 tissue classes) on 4 mm slices, three levels at half the
  width, with dropout (0.1): small enough to train a 5-member ensemble on a 2-core CPU.

By hand, e.g. the biased classifier and its subgroup report (`site.csv`: case,site; see the experiment):

    medjax train    --config trust_icbm152:biased --workdir runs/biased
    medjax evaluate --config trust_icbm152:biased --workdir runs/biased --calibrate --subgroups site.csv

Results: docs/trust.md, docs/uncertainty.md and docs/explain.md (measured by the experiment).
"""

from __future__ import annotations

import ml_collections

from medjax.configs import gan_augmentation, quickstart
from medjax.data import augment

SITE_SHIFT = 3.0  # z-scored units: site B's patches are this much brighter
CLASSIFIERS = ("classifier", "biased", "control")


def get_config(arg: str = "classifier") -> ml_collections.ConfigDict:
    name, *mods = arg.split(",")
    if set(mods) - {"tiny"}:
        raise ValueError(f"unknown trust_icbm152 modifier(s) {sorted(set(mods) - {'tiny'})}; use 'tiny'")
    tiny = "tiny" in mods
    if name in CLASSIFIERS:
        c = gan_augmentation.get_config("classifier")
        c.data = ml_collections.ConfigDict(dict(name="icbm152_patches", train_per_class=100, val_per_class=100,
                                                test_per_class=200))
        if name != "classifier":
            c.data.site_shift = SITE_SHIFT
            c.data.site_b_classes = (0,) if name == "biased" else (0, 1, 2)
        c.model.dropout_rate = 0.2
        c.augment = augment.default_config()  # off in training; `--config.augment.transforms=flip,rot90` for TTA
        if tiny:
            c.data.update(train_per_class=4, val_per_class=4, test_per_class=8, patch_size=8, in_plane_mm=2.0)
            c.model.update(width=4, stage_sizes=(1,))
            c.batch_size, c.eval_batch_size = 8, 24
    elif name == "segmenter":
        c = quickstart.get_config("tiny" if tiny else None)
        c.progress = False
        c.model.dropout_rate = 0.1
        if not tiny:
            c.data.in_plane_mm = 4.0
            c.model.features = (8, 16, 32)
    else:
        raise ValueError(f"unknown trust_icbm152 variant {name!r}; use {', '.join(CLASSIFIERS)} or segmenter")
    if tiny:
        c.num_train_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 4, 4
    return c
