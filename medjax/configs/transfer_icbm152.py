"""Fine-tune vs from scratch on few coronal ICBM152 slices: the target task's config (the quickstart's U-Net).

    medjax train    --config transfer_icbm152:finetune --workdir runs/transfer/finetune_s0
    medjax evaluate --config transfer_icbm152:finetune --workdir runs/transfer/finetune_s0

`finetune` starts from `runs/quickstart` (its best checkpoint), `scratch` from random weights; `,tiny` is the
test size. The whole comparison (pretraining, both arms, seeds, the table) is `python -m
experiments.transfer_icbm152`; see its docstring and the README's "Transfer learning" section.
"""

from __future__ import annotations

import ml_collections

from medjax.configs import quickstart

ARMS = ("finetune", "scratch")
PRETRAINED = "runs/quickstart"


def get_config(arg: str = "finetune") -> ml_collections.ConfigDict:
    flags = set((arg or "finetune").split(","))
    arms = flags & set(ARMS)
    if len(arms) != 1 or flags - set(ARMS) - {"tiny"}:
        raise ValueError(f"unknown transfer_icbm152 variant {arg!r}; use finetune or scratch, optionally ',tiny'")
    tiny = "tiny" in flags
    c = quickstart.get_config("tiny" if tiny else None)
    c.num_train_steps = 150
    c.eval_every = 25
    c.checkpoint_every = 25
    c.log_every = 25
    c.data.plane = "coronal"
    c.data.max_train_slices = 4
    c.augment.transforms = ("flip", "affine")
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 10
    c.init = ml_collections.ConfigDict()
    c.init["from"] = PRETRAINED if "finetune" in arms else ""
    c.init.layout = "medjax"
    c.init.skip = ()
    c.init.strict = True
    if tiny:
        c.num_train_steps = 4
        c.eval_every = c.checkpoint_every = c.log_every = 2
        c.data.max_train_slices = 2
        c.optimizer.warmup_steps = 0
    return c
