"""DP-SGD on real MRI: a small GroupNorm ResNet classifies 16x16 ICBM152 tissue patches (CSF / grey / white matter),
non-private or at a privacy budget epsilon (delta 1e-5).

The runner `python -m experiments.dp_icbm152` writes the patches to `<out>/patches.npz` (train: 200 per class of
the training slabs; val: 200 other patches per class of the SAME slabs, never trained on, the membership audit's
non-members; test: 500 per class of the held-out test slabs) and trains every arm; by hand, after it wrote them:

    medjax train    --config dp_icbm152:eps4 --workdir runs/dp/eps4 --config.data.root=runs/dp/patches.npz
    medjax evaluate --config dp_icbm152:eps4 --workdir runs/dp/eps4 --config.data.root=runs/dp/patches.npz

Variants: `nonprivate`, `eps1`, `eps4`, `eps8` (the noise multiplier is solved so that the budget lasts exactly
`num_train_steps`); `,tiny` is the test size. Results (accuracy / AUC, step time against the non-private step,
membership-inference AUC): docs/privacy.md.
"""

from __future__ import annotations

import ml_collections

from medjax.configs import _base

CLASS_NAMES = ("csf", "grey_matter", "white_matter")
ARMS = {"nonprivate": 0.0, "eps1": 1.0, "eps4": 4.0, "eps8": 8.0}


def get_config(arg: str = "eps4") -> ml_collections.ConfigDict:
    flags = set((arg or "eps4").split(","))
    arms = flags & set(ARMS)
    if len(arms) != 1 or flags - set(ARMS) - {"tiny"}:
        raise ValueError(f"unknown dp_icbm152 variant {arg!r}; use one of {list(ARMS)}, optionally ',tiny'")
    arm = arms.pop()
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 64  # DP arms: the expected Poisson batch (q = 64 / 600)
    c.eval_batch_size = 200
    c.num_train_steps = 400
    c.log_every = 50
    c.eval_every = 100
    c.checkpoint_every = 400
    c.progress = False
    c.data = ml_collections.ConfigDict(dict(name="npz", root="", class_names=CLASS_NAMES))
    c.task = ml_collections.ConfigDict(dict(name="classification", num_classes=3, multi_label=False))
    # GroupNorm: BatchNorm mixes examples, so DP-SGD refuses it; the non-private arm keeps the same network.
    c.model = ml_collections.ConfigDict(dict(name="resnet", stage_sizes=(1, 1), block="basic", stem="small",
                                             width=16, norm="group"))
    c.optimizer = _base.optimizer(name="adam", learning_rate=2e-3, schedule="constant", warmup_steps=0,
                                  grad_clip_norm=0.0)
    c.checkpoint = _base.checkpoint(max_to_keep=1, best_metric="", best_mode="max")
    c.privacy = ml_collections.ConfigDict(dict(enabled=ARMS[arm] > 0, target_epsilon=ARMS[arm], delta=1e-5,
                                               clip_norm=1.0))
    if "tiny" in flags:
        c.batch_size = 8
        c.eval_batch_size = 24
        c.num_train_steps = 4
        c.log_every = c.eval_every = c.checkpoint_every = 2
        c.model.width = 8
        c.privacy.delta = 1e-3
        c.privacy.padded_batch_size = 32  # > the 30 examples: never cut, the plain Poisson accountant (fast)
    return c
