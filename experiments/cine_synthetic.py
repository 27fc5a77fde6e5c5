"""ConvLSTM on synthetic cine MRI (`medjax.data.cine`): ejection-fraction regression or per-frame LV segmentation.

    medjax train --config experiments/cine_synthetic.py:ef --workdir runs/cine_ef
    medjax train --config experiments/cine_synthetic.py:segmentation --workdir runs/cine_seg
    medjax evaluate --config experiments/cine_synthetic.py:ef --workdir runs/cine_ef    # mae, rmse, r2 on test

Each split is its own set of simulated patients (seeds). `ef`: a frame-wise CNN encoder, a ConvLSTM and a
pooled head regress EF (in %, `task.target_scale=100`; metrics in EF units, 0-1). `segmentation`: a U-Net with a
ConvLSTM at the bottleneck labels every frame (background, LV cavity, myocardium); its Dice pools all frames.
Append `,tiny` (e.g. `ef,tiny`) for a seconds-long run (tests). No results are claimed here yet: the comparison
against a frame-by-frame 2D U-Net and a (2D + time) 3D CNN is the next step of the ConvLSTM issue.
"""

import ml_collections


def get_config(arg: str = "ef") -> ml_collections.ConfigDict:
    variant, _, flag = arg.partition(",")
    if variant not in ("ef", "segmentation") or flag not in ("", "tiny"):
        raise ValueError(f"unknown variant {arg!r}; use 'ef' or 'segmentation', optionally ',tiny'")
    tiny = flag == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4
    c.eval_batch_size = 4
    c.num_train_steps = 4 if tiny else 1500
    c.num_epochs = 0
    c.log_every = 2 if tiny else 50
    c.eval_every = 4 if tiny else 250
    c.checkpoint_every = 4 if tiny else 250
    c.progress = False

    c.data = ml_collections.ConfigDict(dict(name="synthetic_cine", seed=0, num_train=8 if tiny else 200,
                                            num_eval=4 if tiny else 50, num_frames=4 if tiny else 16,
                                            size=32 if tiny else 64, spatial_dims=2))
    c.task = ml_collections.ConfigDict()
    c.task.name = "regression" if variant == "ef" else "segmentation"
    if variant == "ef":
        c.task.num_outputs = 1
        c.task.loss = "mse"
        c.task.target_scale = 100.0
        c.model = ml_collections.ConfigDict(dict(name="convlstm_regressor", features=(4, 8) if tiny else (16, 32, 64),
                                                 lstm_features=8 if tiny else 64, norm="batch"))
        best = ("mae", "min")
    else:
        c.task.num_classes = 3
        c.task.loss = "dice_ce"
        c.task.include_background = True
        c.model = ml_collections.ConfigDict(dict(name="convlstm_unet", features=(4, 8) if tiny else (16, 32, 64),
                                                 norm="batch"))
        best = ("dice_mean", "max")
    c.optimizer = ml_collections.ConfigDict(dict(name="adam", learning_rate=1e-3, schedule="constant",
                                                 warmup_steps=0))
    c.parallel = ml_collections.ConfigDict(dict(strategy="sharding"))
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2, best_metric=best[0], best_mode=best[1]))
    return c
