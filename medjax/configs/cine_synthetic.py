"""Temporal models on synthetic cine MRI (`medjax.data.cine`): ejection-fraction regression and per-frame LV
segmentation, each with a ConvLSTM and with baselines at matched parameter counts and steps.

    medjax train --config cine_synthetic:ef --workdir runs/cine_ef
    medjax train --config cine_synthetic:segmentation --workdir runs/cine_seg
    medjax evaluate --config cine_synthetic:ef --workdir runs/cine_ef    # mae, rmse, r2 on test
    python -m experiments.cine_report --out runs/cine                                   # every variant + table

12 frames of 48x48 per patient, 50 validation and 50 test patients, batch 4; segmentation trains 600 steps on 200
patients, EF regression 2000 steps on 1000 (a regressor predicts the mean for ~500 steps before it learns; one EF
per sequence is less signal than a mask per frame). About an hour for all five on a 2-core CPU. Variants (each split
is its own set of simulated
patients, i.e. held-out seeds):

    ef              CNN encoder per frame + ConvLSTM + pooled head (367,249 parameters)
    ef_3d           3D ResNet on (time, H, W), width 20 (351,061 parameters)
    segmentation    U-Net with a ConvLSTM at the bottleneck, features (16, 32, 64) (412,275 parameters)
    segmentation_2d the 2D U-Net frame by frame (`model.time_distributed`), features (30, 60, 120) (410,253)
    segmentation_3d a 3D U-Net on (time, H, W), features (18, 36, 72) (429,645 parameters)

The regressors learn a standardised EF ((EF - 0.525) * 10, `task.target_offset` / `target_scale`); metrics are in
EF units (0-1). Segmentation reports Dice
pooled over frames, per-frame Dice, the temporal Dice change and the EF measured from the predicted cavity
(`task.ef_exponent=1.5`: the slice's area^(3/2), the generator's isotropic contraction). Append `,tiny` (e.g.
`ef,tiny`) for a seconds-long run (tests). Results: the README's "Temporal imaging" section.
"""

import ml_collections

VARIANTS = ("ef", "ef_3d", "segmentation", "segmentation_2d", "segmentation_3d")


def _model(variant: str, tiny: bool) -> ml_collections.ConfigDict:
    small = (4, 8)
    models = {
        "ef": dict(name="convlstm_regressor", features=small if tiny else (16, 32, 64),
                   lstm_features=8 if tiny else 64),
        "ef_3d": dict(name="resnet", stage_sizes=(1, 1) if tiny else (1, 1, 1), block="basic", stem="small",
                      width=4 if tiny else 20),
        "segmentation": dict(name="convlstm_unet", features=small if tiny else (16, 32, 64),
                             skip_lstm=False),  # True: a ConvLSTM on every skip too (504,627 parameters)
        "segmentation_2d": dict(name="unet", features=small if tiny else (30, 60, 120), time_distributed=True),
        "segmentation_3d": dict(name="unet", features=small if tiny else (18, 36, 72)),
    }
    return ml_collections.ConfigDict(dict(models[variant], norm="batch"))


def get_config(arg: str = "ef") -> ml_collections.ConfigDict:
    variant, _, flag = arg.partition(",")
    if variant not in VARIANTS or flag not in ("", "tiny"):
        raise ValueError(f"unknown variant {arg!r}; use one of {VARIANTS}, optionally with ',tiny'")
    tiny = flag == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4
    c.eval_batch_size = 4
    ef = variant.startswith("ef")
    c.num_train_steps = 4 if tiny else (2000 if ef else 600)  # EF regression starts to learn after ~500 steps
    c.num_epochs = 0
    c.log_every = 2 if tiny else 50
    c.eval_every = 4 if tiny else (250 if ef else 100)
    c.checkpoint_every = c.eval_every
    c.progress = False

    c.data = ml_collections.ConfigDict(dict(name="synthetic_cine", seed=0,
                                            num_train=8 if tiny else (1000 if ef else 200),
                                            num_eval=4 if tiny else 50, num_frames=4 if tiny else 12,
                                            size=32 if tiny else 48, spatial_dims=2,
                                            noise=0.05, speckle=0.15))  # the generator's defaults: clean frames
    c.task = ml_collections.ConfigDict()
    if ef:
        c.task.name = "regression"
        c.task.num_outputs = 1
        c.task.loss = "mse"
        c.task.target_offset = 0.525  # the middle of the simulator's EF range (0.3, 0.75) ...
        c.task.target_scale = 10.0  # ... and about 1 / its std (0.13): the network learns a standardised EF
        best = ("mae", "min")
    else:
        c.task.name = "segmentation"
        c.task.num_classes = 3
        c.task.loss = "dice_ce"
        c.task.include_background = True
        c.task.per_frame = True  # per-frame Dice, temporal Dice change, EF from the segmented cavity
        c.task.ef_class = 1  # the LV cavity
        c.task.ef_exponent = 1.5  # a mid-ventricular slice's area^(3/2) ~ volume (the generator's isotropic model)
        best = ("dice_mean", "max")
    c.model = _model(variant, tiny)
    c.optimizer = ml_collections.ConfigDict(dict(name="adam", learning_rate=1e-3, schedule="constant",
                                                 warmup_steps=0))
    c.parallel = ml_collections.ConfigDict(dict(strategy="sharding"))
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2, best_metric=best[0], best_mode=best[1]))
    return c
