"""Cine MRI labelled on the end-diastolic (ED) and end-systolic (ES) frames only: ACDC, or M&Ms with `,mnms`.

    medjax train --config cine_acdc --config.data.root=/path/to/ACDC/database/training --workdir runs/acdc
    medjax evaluate --config cine_acdc --config.data.root=/path/to/ACDC/database/training --workdir runs/acdc
    medjax train --config cine_acdc:segmentation,mnms --config.data.root=/path/to/OpenDataset/Training/Labeled \
        "--config.data.frames_csv=../../211230_M&Ms_Dataset_information_diagnosis_opendataset.csv" \
        --workdir runs/mnms

The `cine_folder` source reads every case folder under `data.root` (`data.layout`: ACDC's `patientXXX/` with
Info.cfg, the 4D sequence and the ED/ES `_gt` frames; M&Ms' `<code>/` with `<code>_sa.nii.gz`,
`<code>_sa_gt.nii.gz` and the dataset's CSV of ED/ES frames), resamples each case in-plane to 1.5 mm, crops or
pads it to 128 x 128 and pads every sequence to the longest one. Only the labelled voxels (ED and ES frames,
inside each case's field of view) count in the loss and the Dice (the "mask" the source writes); EF is
(EDV - ESV) / EDV of the LV cavity at the labelled ED and ES frames, on the prediction and the reference
(`ef_mae`, `ef_rmse`). Stacks keep their slices (3D + time: slices are never resampled or cropped); cases are
split into 60 / 20 / 20 % by patient (`data.val_fraction`, `test_fraction`, `split_seed`).

Variants (append `,mnms` for M&Ms' layout and label order, `,tiny` for a seconds-long run in tests):

    segmentation         ConvLSTM U-Net (3D frames, ConvLSTM at the bottleneck), features (16, 32, 64)
    segmentation_frames  the 3D U-Net frame by frame (`model.time_distributed`), features (16, 32, 64)
    ef                   ConvLSTM regressor of the EF the labels give (`data.ef_class`, or targets.csv in root)

Labels: ACDC 0 background, 1 RV, 2 myocardium, 3 LV cavity; M&Ms 1 LV, 2 myocardium, 3 RV. Not run on the real
datasets here (neither ships in an installable package); the tests run the tiny variants on ACDC- and M&Ms-layout
folders the beating-heart simulator writes.
"""

import ml_collections

VARIANTS = ("segmentation", "segmentation_frames", "ef")
CLASSES = {"acdc": ("background", "rv", "myocardium", "lv"), "mnms": ("background", "lv", "myocardium", "rv")}
LV = {"acdc": 3, "mnms": 1}


def get_config(arg: str = "segmentation") -> ml_collections.ConfigDict:
    variant, *flags = arg.split(",")
    if variant not in VARIANTS or not set(flags) <= {"mnms", "tiny"}:
        raise ValueError(f"unknown variant {arg!r}; use one of {VARIANTS}, optionally with ',mnms' and/or ',tiny'")
    tiny, layout = "tiny" in flags, "mnms" if "mnms" in flags else "acdc"
    ef = variant == "ef"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4 if tiny else 2  # tiny: the tests' 4 CPU devices
    c.eval_batch_size = c.batch_size
    c.num_train_steps = 3 if tiny else 3000
    c.num_epochs = 0
    c.log_every = 1 if tiny else 50
    c.eval_every = 3 if tiny else 300
    c.checkpoint_every = c.eval_every
    c.progress = False

    c.data = ml_collections.ConfigDict(dict(
        name="cine_folder", root="", layout=layout, in_plane_mm=1.5, grid=(16, 16) if tiny else (128, 128),
        normalize="zscore", num_classes=4, class_names=CLASSES[layout], ef_class=LV[layout] if ef else 0,
        val_fraction=0.2, test_fraction=0.2, split_seed=0))
    c.task = ml_collections.ConfigDict()
    features = (4, 8) if tiny else (16, 32, 64)
    if ef:
        c.task.name = "regression"
        c.task.num_outputs = 1
        c.task.loss = "mse"
        c.task.target_offset = 0.55  # about the middle of ACDC's EF (from under 0.2 in DCM to over 0.7 in HCM) ...
        c.task.target_scale = 6.0  # ... and 1 / its spread: the network learns a standardised EF
        c.model = ml_collections.ConfigDict(dict(name="convlstm_regressor", features=features,
                                                 lstm_features=8 if tiny else 64, norm="batch"))
        best = ("mae", "min")
    else:
        c.task.name = "segmentation"
        c.task.num_classes = 4
        c.task.loss = "dice_ce"
        c.task.include_background = True
        c.task.per_frame = True  # per-frame Dice over the labelled frames, EF at ED and ES
        c.task.ef_class = LV[layout]
        c.task.ef_exponent = 1.0  # whole stacks: voxel counts are volumes
        c.model = ml_collections.ConfigDict(dict(name="convlstm_unet", features=features, skip_lstm=False,
                                                 norm="batch"))
        if variant == "segmentation_frames":
            c.model = ml_collections.ConfigDict(dict(name="unet", features=features, norm="batch",
                                                     time_distributed=True))
        best = ("dice_mean", "max")
    c.optimizer = ml_collections.ConfigDict(dict(name="adam", learning_rate=1e-3, schedule="constant",
                                                 warmup_steps=0))
    c.parallel = ml_collections.ConfigDict(dict(strategy="sharding"))
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2, best_metric=best[0], best_mode=best[1]))
    return c
