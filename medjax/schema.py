"""The config schema: every key a section reads, its one default and a one-line doc, in one place.

`complete(config)` merges these defaults under a loaded config before the command-line overrides, so every key
listed here can be set with `--config.section.key=value`, and a key the schema does not know is an error naming
it (a typo never silently runs the default). The trainers read completed configs only; readers that are also
called on their own (`make_optimizer`, the tasks) complete their section with `filled(...)`. `medjax keys
[SECTION]` prints this table; docs/config.md is generated from it.

Sections whose keys depend on a name are keyed by it: `task` by `task.name`, `data` by `data.name` (on top of
the keys every source takes). `model`, `generator` and `discriminator` are the registered constructor's fields
(`medjax.models`, `medjax.gan.task`), checked when the network is built; `augment` is
`medjax.data.augment.DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from medjax.errors import MedjaxError


class _Required:
    def __repr__(self) -> str:
        return "(required)"


REQUIRED: Any = _Required()


@dataclasses.dataclass(frozen=True)
class Key:
    default: Any
    doc: str


Spec = dict[str, Key]

TOP_LEVEL: Spec = {
    "seed": Key(0, "PRNG seed of initialisation, data order, augmentation and dropout"),
    "batch_size": Key(REQUIRED, "global training batch over all devices and processes"),
    "eval_batch_size": Key(0, "global evaluation batch; 0 = batch_size"),
    "num_train_steps": Key(0, "length of training in optimizer steps (exactly one of this and num_epochs > 0)"),
    "num_epochs": Key(0, "length of training in passes over the train split (converted to steps)"),
    "log_every": Key(0, "steps between metrics.jsonl train records; <= 0 = once per epoch"),
    "eval_every": Key(0, "steps between validations; <= 0 = once per epoch"),
    "checkpoint_every": Key(0, "steps between checkpoints; <= 0 = once per epoch"),
    "progress": Key(True, "show a progress bar (process 0)"),
    "resume_mismatch_ok": Key(False, "resume a workdir whose config.json differs in a model / data key"),
}

OPTIMIZER: Spec = {
    "name": Key(REQUIRED, "adam | adamw | sgd"),
    "learning_rate": Key(REQUIRED, "peak learning rate"),
    "schedule": Key("constant", "constant | cosine (to 0 at the last step) | piecewise (see decay_at)"),
    "warmup_steps": Key(0, "linear warm-up from 0 over this many steps"),
    "decay_at": Key((0.5, 0.75), "piecewise: fractions of training where the rate is multiplied by decay_factor"),
    "decay_factor": Key(0.1, "piecewise: the factor at each decay_at boundary"),
    "weight_decay": Key(1e-4, "adamw's decoupled weight decay (optax's default)"),
    "b1": Key(0.9, "adam / adamw first-moment decay (GANs often use 0.5)"),
    "b2": Key(0.999, "adam / adamw second-moment decay"),
    "momentum": Key(0.9, "sgd momentum"),
    "nesterov": Key(False, "sgd Nesterov momentum"),
    "grad_clip_norm": Key(0.0, "clip the global gradient norm to this; 0 = no clipping"),
}

CHECKPOINT: Spec = {
    "max_to_keep": Key(2, "latest checkpoints kept for resume"),
    "best_metric": Key("", "validation metric whose best value keeps a 'best' checkpoint; '' = none"),
    "best_mode": Key("max", "max | min: which direction of best_metric is better"),
}

PARALLEL: Spec = {"strategy": Key("sharding", "sharding (jit + NamedSharding) | pmap")}

INFERENCE: Spec = {
    "roi_size": Key((), "sliding-window evaluation with this window (usually data.patch_size); () = whole inputs"),
    "overlap": Key(0.5, "fraction of the window shared by neighbouring windows"),
    "mode": Key("gaussian", "gaussian | constant: how overlapping window outputs are blended"),
    "sigma_scale": Key(0.125, "gaussian blending: sigma as a fraction of the window size"),
}

COMPUTE: Spec = {
    "precision": Key("float32", "float32 | bfloat16: mixed precision (parameters, optimizer state, loss stay f32)"),
    "remat": Key(False, "recompute block activations in the backward pass (less memory, same numbers)"),
    "grad_accum_steps": Key(1, "split each batch into N micro-batches, average their gradients, one update"),
}

INIT: Spec = {
    "from": Key("", "pretrained weights: a medjax workdir / import-weights dir / .npz / .safetensors / .pt; '' = "
                    "random"),
    "layout": Key("medjax", "medjax | torchvision | monai: the naming of the source's weights"),
    "skip": Key((), "fnmatch patterns of medjax paths left at their fresh initialisation (e.g. 'head/*')"),
    "strict": Key(True, "every model leaf must get a value and every source entry be used (outside skip)"),
    "adapt_input_channels": Key(False, "adapt kernels differing in input channels only (sum over RGB -> grey)"),
    "inflate": Key(False, "inflate 2D kernels into a 3D model along depth"),
    "inflate_mode": Key("center", "center (middle slice, keeps the 2D function) | average (I3D)"),
}

FINETUNE: Spec = {
    "freeze": Key((), "fnmatch patterns of parameter paths with zero updates and no optimizer state"),
    "groups": Key((), "learning-rate multipliers, 'pattern=factor' strings; the first match wins"),
    "freeze_batch_stats": Key(False, "BatchNorm uses and keeps its running statistics in training"),
    "linear_probe_steps": Key(0, "the first N steps train only `head` (BatchNorm frozen), then everything"),
    "head": Key(("head/*", "final_conv/*", "classifier/*"), "patterns naming the head for the linear probe"),
}

PRIVACY: Spec = {
    "enabled": Key(False, "DP-SGD: per-example clipping, Gaussian noise, Poisson batches (supervised tasks)"),
    "noise_multiplier": Key(0.0, "sigma: the noise std is sigma * clip_norm; 0 = solved from target_epsilon"),
    "target_epsilon": Key(0.0, "privacy budget at delta: solves sigma (noise_multiplier=0) or stops the run when "
                               "spent; 0 = none"),
    "delta": Key(1e-5, "delta of the (epsilon, delta) guarantee; must be below 1 / training examples"),
    "clip_norm": Key(1.0, "bound on each example's gradient L2 norm over all parameters"),
    "sampling": Key("poisson", "poisson: each example in a batch with probability batch_size / N (shuffle: refused, "
                               "no accountant covers it)"),
    "accountant": Key("pld", "pld (exact for the truncated Poisson batches) | rdp (dp-accounting)"),
    "microbatch_size": Key(0, "per-example gradients of this many examples per device at a time; 0 = all at once"),
    "padded_batch_size": Key(0, "fixed batch shape of Poisson batches (larger samples are cut to it); 0 = auto"),
}

TRUST: Spec = {  # medjax evaluate --calibrate / --subgroups (medjax.trust, docs/trust.md)
    "n_bins": Key(15, "calibration: bins of ECE / MCE (equal-width; ece_mass: equal-mass) and of the diagram"),
    "voxels_per_case": Key(4096, "segmentation calibration: voxels drawn per case (inside its mask, seeded); 0 = "
                                 "all"),
    "bootstrap_resamples": Key(1000, "subgroups: bootstrap resamples (within each group) of every CI"),
    "confidence_level": Key(0.95, "subgroups: two-sided level of the percentile and BCa intervals"),
    "min_group_cases": Key(10, "subgroups: a group with fewer cases gets no CI (reported, with the reason)"),
}

ENSEMBLE: Spec = {
    "size": Key(1, "deep ensemble: K members (seeds seed..seed+K-1) trained as one vmapped program; 1 = off"),
}

EXPLAIN: Spec = {
    "batch_size": Key(32, "medjax explain: model evaluations in flight per device (examples x samples); 0 = all"),
    "baseline": Key(0.0, "medjax explain: the input value meaning 'no signal' (IG baseline, occlusion and "
                         "deletion/insertion fill)"),
    "ig_steps": Key(50, "integrated gradients: points of the path integral"),
    "ig_method": Key("gausslegendre", "integrated gradients: gausslegendre | riemann_left | riemann_right | "
                                      "riemann_middle | riemann_trapezoid (Captum's rules)"),
    "smoothgrad_samples": Key(25, "smoothgrad: noisy copies per example (noise seeded by config.seed)"),
    "smoothgrad_stdev": Key(0.15, "smoothgrad: noise std as a fraction of each example's max - min"),
    "occlusion_window": Key(8, "occlusion: the occluded window's side in voxels (or one per axis)"),
    "occlusion_stride": Key(4, "occlusion: step between windows (or one per axis); the last window ends at the "
                               "border"),
    "faithfulness_steps": Key(20, "deletion/insertion curves: equal fractions of the voxels removed / added"),
}

GAN_EVAL: Spec = {"num_examples": Key(16, "generated examples scored and shown per GAN evaluation")}

_GAN_TASK: Spec = {
    "name": Key(REQUIRED, "gan | pix2pix | super_resolution"),
    "loss": Key(REQUIRED, "adversarial loss: non_saturating | hinge | least_squares"),
    "latent_dim": Key(0, "gan: generator input noise size"),
    "conditional": Key(False, "gan: condition generator and discriminator on the class label"),
    "scale": Key(1, "super_resolution: upsampling factor"),
    "l1_weight": Key(0.0, "weight of the L1 reconstruction loss (pix2pix, super_resolution)"),
    "adversarial_weight": Key(1.0, "weight of the generator's adversarial loss"),
    "feature_weight": Key(0.0, "weight of the discriminator feature-matching loss"),
    "r1_gamma": Key(0.0, "R1 gradient penalty on real images; 0 = off"),
    "ema_decay": Key(0.999, "decay of the generator's exponential moving average (evaluated and sampled)"),
    "pinned_d_loss": Key(1e-4, "a discriminator loss below this for pinned_patience logs stops the run"),
    "pinned_patience": Key(5, "consecutive pinned logs before the run stops"),
    "intensity_range": Key((), "(lo, hi) mapped to [-1, 1]; () = the training images' 0.5 / 99.5 percentiles"),
    "target": Key("label_onehot", "pix2pix: label_onehot (label maps -> images) | image (the 'target' array)"),
    "num_classes": Key(0, "classes of the labels; 0 = the dataset's"),
}

_NUM_CLASSES = Key(0, "number of classes; 0 = the dataset's")

TASKS: dict[str, Spec] = {
    "classification": {
        "name": Key(REQUIRED, "classification"),
        "num_classes": _NUM_CLASSES,
        "multi_label": Key(False, "True | False | 'auto' (the dataset's): sigmoid per class instead of softmax"),
    },
    "segmentation": {
        "name": Key(REQUIRED, "segmentation"),
        "num_classes": _NUM_CLASSES,
        "loss": Key("dice_ce", "dice_ce | ce | dice"),
        "include_background": Key(True, "the Dice loss and dice_mean include class 0"),
        "dice_batch": Key(False, "the Dice loss sums over the batch (one Dice per class, nnU-Net's batch Dice): "
                                 "steadier when most examples lack a class (small lesions)"),
        "dice_average": Key("voxels", "voxels (pooled over the split) | cases (mean of per-case Dice)"),
        "per_frame": Key(False, "sequences: also report Dice per frame"),
        "ef_class": Key(None, "sequences: the class whose volume gives an ejection fraction; None = none"),
        "ef_exponent": Key(1.0, "ejection fraction from (segmented size) ** ef_exponent (1.5: area -> volume)"),
        "surface_metrics": Key(True, "evaluate: also HD95, ASSD and NSD per foreground class and case (mm; not "
                                     "during training, not per_frame)"),
        "nsd_tolerance_mm": Key(1.0, "normalised surface Dice tolerance (mm; pixels without a spacing): one "
                                     "number or one per foreground class"),
    },
    "mil": {
        "name": Key(REQUIRED, "mil: one label per bag of instances (slides as bags of tiles), attention pooling"),
        "num_classes": _NUM_CLASSES,
    },
    "regression": {
        "name": Key(REQUIRED, "regression"),
        "num_outputs": Key(1, "regression outputs per example"),
        "target_key": Key("target", "the example key holding the targets"),
        "loss": Key("mse", "mse | l1"),
        "target_scale": Key(1.0, "the model predicts (target - target_offset) * target_scale"),
        "target_offset": Key(0.0, "see target_scale"),
    },
    "detection": {
        "name": Key(REQUIRED, "detection: boxes per class (RetinaNet / Retina U-Net), COCO mAP and LUNA16 FROC"),
        "num_classes": Key(0, "foreground classes (no background); 0 = the dataset's"),
        "anchor_shapes": Key((8.0, 16.0), "anchor sides at the finest level: per anchor one number (square / cube) "
                                          "or (w, h[, d]); doubled at each coarser level"),
        "matcher": Key("atss", "atss (MONAI's / nnDetection's ATSS) | iou (torchvision's fg_iou / bg_iou rule)"),
        "atss_candidates": Key(4, "atss: candidate anchors per level and anchor shape"),
        "atss_center_in_gt": Key(False, "atss: a positive anchor's centre must lie inside its box"),
        "fg_iou": Key(0.5, "iou matcher: an anchor with IoU >= this is foreground"),
        "bg_iou": Key(0.4, "iou matcher: below this background; in between ignored"),
        "focal_gamma": Key(2.0, "classification focal loss gamma (0 with focal_alpha < 0 is BCE)"),
        "focal_alpha": Key(0.25, "focal loss alpha (foreground weight); < 0 = none"),
        "cls_loss_norm": Key("foreground", "focal loss sum divided by the foreground anchors (RetinaNet, torchvision) "
                                           "| elements: averaged over every (anchor, class) (MONAI without a sampler)"),
        "box_loss": Key("smooth_l1", "smooth_l1 (on encoded deltas) | giou (1 - GIoU of decoded boxes)"),
        "smooth_l1_beta": Key(1.0 / 9, "smooth_l1: the quadratic zone (MONAI's 1/9)"),
        "box_loss_weight": Key(1.0, "weight of the box loss against the classification loss"),
        "seg_loss_weight": Key(1.0, "retina_unet: weight of the auxiliary Dice + CE segmentation loss"),
        "score_thresh": Key(0.05, "post-processing: drop (anchor, class) scores at or below this"),
        "topk_per_level": Key(1000, "post-processing: best candidates kept per level before NMS"),
        "nms_thresh": Key(0.5, "post-processing: class-wise NMS IoU threshold"),
        "max_detections": Key(100, "detections kept per image (or per volume after merging windows)"),
        "window_merge": Key("nms", "sliding-window detection: merge the windows' detections by nms | wbf"),
        "window_merge_iou": Key(0.5, "sliding-window detection: IoU threshold of the merge"),
        "froc_match": Key("distance", "FROC hit: distance (centre within the reference's radius, LUNA16) | iou"),
        "froc_iou": Key(0.1, "FROC with froc_match=iou: the IoU a hit needs"),
    },
    **{name: _GAN_TASK for name in ("gan", "pix2pix", "super_resolution")},
}

DATA_COMMON: Spec = {
    "name": Key(REQUIRED, "the source: a MedMNIST set name, msd, image_folder, cine_folder, npz, icbm152, ..."),
    "cache_dir": Key("", "array_record cache of cached sources; '' = $MEDJAX_CACHE_DIR or ~/.cache/medjax"),
    "num_threads": Key(2, "grain threads reading a cached source"),
    "prefetch": Key(4, "grain batches prefetched from a cached source"),
    "clip_length": Key(0, "sequences: train on random clips of this many frames; 0 = whole sequences"),
    "clip_stride": Key(1, "sequences: frame step inside a clip"),
    "patch_size": Key((), "train on random patches of this size; () = whole images"),
    "fg_ratio": Key(0.33, "share of patches centred on foreground"),
    "bag_size": Key(0, "bags (image (K, ...) + instance_mask): train on this many instances drawn per bag per step; "
                       "0 = whole bags"),
    "max_boxes": Key(16, "detection: boxes per example after padding (the batch's fixed shape)"),
    "min_box_visible": Key(0.5, "detection patches: keep a box the patch cuts if this share of it stays inside"),
}

_ROOT = Key("", "the dataset folder")
# How cases are split (medjax.data.splits); the seeded permutation is the default.
_SPLIT: Spec = {
    "val_fraction": Key(0.2, "share held out for validation (seeded): of all cases, or of the non-test cases when "
                             "the test split is given"),
    "test_fraction": Key(0.2, "share of all cases held out for testing (seeded); unused when the test split is "
                              "given"),
    "split_seed": Key(0, "seed of the case permutation"),
    "split_file": Key("", "JSON naming each split's case ids: nnU-Net splits_final.json or {train, val, test}"),
    "fold": Key(0, "the fold of split_file (nnU-Net's list of folds) or of num_folds"),
    "num_folds": Key(0, "k-fold cross-validation of the non-test cases (nnU-Net's KFold, seed 12345); 0 = off"),
}
_SPLIT_ROOTS: Spec = {
    "train_root": Key("", "folder of the training cases in the source's layout (under root); '' = root holds all"),
    "val_root": Key("", "folder of the validation cases; '' = drawn from the training cases"),
    "test_root": Key("", "folder of the test cases, e.g. the official test set; '' = none (with train_root)"),
}
_CLASSES: Spec = {
    "num_classes": Key(0, "label classes; 0 = the largest label found + 1"),
    "class_names": Key((), "class names; () = class0, class1, ..."),
}
_HDF5: Spec = {
    "hdf5_image_key": Key("image", "HDF5 files: the image dataset (fastMRI: reconstruction_rss)"),
    "hdf5_label_key": Key("label", "HDF5 files: the label dataset"),
    "hdf5_axes": Key("zyx", "HDF5 files: the stored axis order, letters x y z and c or t (slice first: zyx)"),
    "hdf5_spacing_attr": Key("spacing", "HDF5 files: the attribute holding (x, y, z) mm; absent = 1 mm"),
}
_SYNTHETIC: Spec = {
    "num_train": Key(REQUIRED, "training examples"),
    "num_eval": Key(REQUIRED, "validation and test examples each"),
    "seed": Key(0, "seed of the generated examples"),
}

DATA: dict[str, Spec] = {
    "medmnist": {"root": Key("", "folder with the MedMNIST .npz; '' = ~/.medmnist"),
                 "size": Key(28, "image size: 28, 64, 128 or 224 (3D: 28 or 64)")},
    "msd": {"root": _ROOT,
            "spacing": Key((), "resample to this voxel spacing (mm); () = each case's grid"),
            "normalize": Key("auto", "auto (CT window for CT, z-score otherwise) | ct | zscore | none"),
            "ct_level": Key(40.0, "CT window level (HU)"), "ct_width": Key(400.0, "CT window width (HU)"),
            "images_dir": Key("imagesTr", "without dataset.json: image folder(s) under root, a glob (subset*) allowed"),
            "labels_dir": Key("labelsTr", "without dataset.json: labels folder under root; = images_dir: beside each"),
            "label_suffix": Key("", "without dataset.json: a label is named <image stem><label_suffix>.<ext>"),
            "class_names": Key((), "without dataset.json: class names, background first"),
            "modalities": Key((), "without dataset.json: one modality per image channel (CT -> CT window)"),
            **_HDF5, **_SPLIT},
    "image_folder": {"root": _ROOT,
                     "images_dir": Key("", "images folder under root; '' = images"),
                     "masks_dir": Key("", "masks folder under root; '' = masks"),
                     "fov_dir": Key("", "field-of-view masks under root; '' = fov if present"),
                     "pairs_csv": Key("", "a CSV of image,mask[,fov][,split] rows instead of folders"),
                     "mask_suffix": Key("", "suffix joining a mask's name to its image's"),
                     "fov_suffix": Key("", "suffix joining a FOV mask's name to its image's"),
                     "size": Key((), "(H, W) to resize to; () = the stored size"),
                     "spacing": Key((), "(H, W) pixel spacing in mm (after any resize), for surface metrics; () = "
                                        "1 pixel"),
                     "color": Key("auto", "auto | gray | rgb"),
                     "mask_values": Key(None, "{stored value: class}; None = values are classes (255 -> 1)"),
                     "case_pattern": Key("", "regex matched at the start of each file stem: the case id "
                                             "pairing files (DRIVE: [0-9]+); '' = the stem"),
                     **_CLASSES, **_SPLIT, **_SPLIT_ROOTS},
    "cine_folder": {"root": _ROOT,
                    "layout": Key("folder", "folder (images/, labels/) | acdc (patientXXX/, Info.cfg) | mnms "
                                            "(<code>/<code>_sa[_gt].nii.gz + frames_csv)"),
                    "images_dir": Key("images", "folder layout: 4D NIfTI / cine DICOM folder under root"),
                    "labels_dir": Key("labels", "folder layout: 4D label NIfTI folder under root"),
                    "targets_csv": Key("targets.csv", "per-case targets (e.g. EF) under root"),
                    "frames_csv": Key("", "CSV of each case's ED and ES frames (from 0; M&Ms'): only those are "
                                          "labelled; '' = every frame (folder) or Info.cfg (acdc)"),
                    "ef_class": Key(0, "without targets_csv: the class whose ED/ES volumes give each case's EF "
                                       "'target'; 0 = none"),
                    "normalize": Key("zscore", "zscore | minmax | none over all frames of a case"),
                    "in_plane_mm": Key(0.0, "resample every case in-plane to this spacing (mm); 0 = keep (cases "
                                            "must share one)"),
                    "grid": Key((), "in-plane (X, Y) voxels: centre crop or zero pad (masked); () = the largest "
                                    "case"),
                    "num_slices": Key(0, "slices per case: centre crop or zero pad (masked); 0 = the most"),
                    "num_frames": Key(0, "frames per case: cut (keeping the labelled ones) or padded at the end "
                                         "(masked); 0 = the longest"),
                    **_HDF5, **_CLASSES, **_SPLIT, **_SPLIT_ROOTS},
    "wsi_folder": {"root": _ROOT,
                   "slides_dir": Key("slides", "the slides' folder under root (the CSV's slide paths are relative "
                                               "to it)"),
                   "labels_csv": Key("labels.csv", "CSV under root, with a header: slide,label[,split]"),
                   "reader": Key("tiffslide", "tiffslide | openslide"),
                   "tile_size": Key(256, "tile side in pixels"),
                   "mpp": Key(0.0, "microns per tile pixel; 0 = from magnification"),
                   "magnification": Key(0.0, "tile magnification M (10 / M µm per pixel); mpp and magnification "
                                             "0 = level-0 pixels"),
                   "slide_mpp": Key(0.0, "µm per level-0 pixel for slides whose metadata lack it; 0 = metadata"),
                   "overlap": Key(0, "pixels shared by neighbouring tiles"),
                   "min_tissue": Key(0.5, "keep the tiles whose tissue fraction is at least this"),
                   "tissue_channel": Key("saturation", "saturation | grey: the value Otsu's threshold splits"),
                   "tissue_level": Key(-1, "pyramid level of the tissue mask; -1 = the coarsest showing a tile as "
                                           ">= 8 x 8 pixels"),
                   "tissue_min_size": Key(1.0, "tissue specks smaller than this many tiles' area are dropped"),
                   "max_tiles": Key(0, "tiles per bag, evenly spaced in grid order when a slide has more (training "
                                       "with bag_size draws from all); 0 = all"),
                   "cache_tiles": Key(False, "read the tiles once into the array_record cache (data.cache_dir)"),
                   "stain_normalize": Key("", "'' | macenko | reinhard: normalise every tile's stain colour on the "
                                              "host"),
                   "stain_reference": Key("", "RGB image under root giving the target stains; '' = Macenko's "
                                              "published reference (reinhard needs one)"),
                   **_CLASSES, **_SPLIT},
    "npz": {"root": Key(REQUIRED, "folder with train.npz, val.npz, test.npz"),
            "class_names": Key((), "class names")},
    "icbm152": {"root": Key("", "folder with the ICBM 152 files; '' = the templateflow package copy"),
                "in_plane_mm": Key(2.0, "in-plane voxel size of the slices"),
                "max_slices_per_split": Key(0, "cap on slices per split; 0 = all"),
                "plane": Key("axial", "axial | coronal | sagittal"),
                "max_train_slices": Key(0, "cap on training slices; 0 = all")},
    "icbm152_lesions": {"root": Key("", "folder with the ICBM 152 files; '' = nilearn's copy"),
                        "spatial_dims": Key(3, "3: volumes | 2: axial slices of them"),
                        "voxel_mm": Key(3, "isotropic voxel size (whole mm): 3 -> 64^3, 4 -> 48^3, 8 -> 32^3"),
                        "num_train": Key(16, "simulated training cases"),
                        "num_val": Key(4, "validation cases"),
                        "num_test": Key(8, "test cases"),
                        "lesions_per_case": Key((1, 4), "(lo, hi): lesions per case, uniform, inclusive"),
                        "radius_mm": Key((4.0, 10.0), "range of the lesions' radii (mm)"),
                        "contrast": Key((0.5, 1.5), "range of the lesions' contrast (brain std), either sign"),
                        "noise": Key(0.1, "Gaussian noise std (brain std)"),
                        "seed": Key(0, "seed of the lesions (each split and case its own stream)"),
                        "slices_per_case": Key(8, "2D: axial slices per case, half of them through lesions")},
    "boxes": {"root": _ROOT,
              "boxes_file": Key("boxes.json", "under root: MONAI's JSON detection datalist or a CSV "
                                              "case,class,x1,y1,(z1,)x2,y2,(z2)"),
              "images_dir": Key("images", "CSV boxes file: the folder under root holding <case>.<ext>"),
              "class_names": Key(REQUIRED, "the box classes, foreground only (JSON labels index them)"),
              "coordinates": Key("voxel", "voxel | world (RAS mm of the loaded image)"),
              "box_format": Key("corner", "corner (x1, y1, z1, x2, y2, z2) | center (cx, cy, cz, w, h, d)"),
              "normalize": Key("zscore", "zscore (non-zero voxels) | ct (window) | none"),
              "ct_level": Key(40.0, "CT window level (HU)"), "ct_width": Key(400.0, "CT window width (HU)"),
              **_SPLIT},
    "icbm152_patches": {"root": Key("", "folder with the ICBM 152 files; '' = the templateflow package copy"),
                        "patch_size": Key(16, "patch side (voxels)"),
                        "train_per_class": Key(20, "training patches per tissue class"),
                        "val_per_class": Key(100, "validation patches per class"),
                        "test_per_class": Key(200, "test patches per class"),
                        "seed": Key(0, "seed of the patch positions"),
                        "in_plane_mm": Key(1.0, "in-plane voxel size"),
                        "site_shift": Key(0.0, "injected bias: intensity added to 'site B' patches (every second "
                                               "of a class); 0 = none"),
                        "site_b_classes": Key((), "injected bias: the classes with site B patches in training (val "
                                                  "and test: every class)")},
    "synthetic_cine": {**_SYNTHETIC,
                       "num_frames": Key(16, "frames per sequence"), "size": Key(64, "in-plane size"),
                       "spatial_dims": Key(2, "2 (slices) or 3 (volumes)"),
                       "ef_range": Key((0.3, 0.75), "range of the ejection fractions drawn"),
                       "noise": Key(0.05, "Gaussian noise std"), "speckle": Key(0.15, "speckle strength")},
    "synthetic_segmentation": {**_SYNTHETIC, "size": Key(REQUIRED, "image size (H, W) or (D, H, W)"),
                               "num_classes": Key(REQUIRED, "classes including background")},
    "synthetic_classification": {**_SYNTHETIC, "size": Key(REQUIRED, "image size (H, W) or (D, H, W)"),
                                 "num_classes": Key(REQUIRED, "classes")},
}

SECTIONS: dict[str, Spec] = {"optimizer": OPTIMIZER, "g_optimizer": OPTIMIZER, "d_optimizer": OPTIMIZER,
                             "checkpoint": CHECKPOINT, "parallel": PARALLEL, "inference": INFERENCE,
                             "compute": COMPUTE, "init": INIT, "finetune": FINETUNE, "privacy": PRIVACY,
                             "trust": TRUST, "ensemble": ENSEMBLE, "eval": GAN_EVAL, "explain": EXPLAIN}
# Sections every config has (filled with their defaults when a file leaves them out).
ALWAYS = ("checkpoint", "parallel", "inference", "compute", "init", "finetune", "privacy", "trust", "ensemble",
          "explain", "augment")
# Checked elsewhere: the network constructors' fields (at build) and the augmentation table.
FREE_FORM = ("model", "generator", "discriminator", "augment")


def data_spec(name: str) -> Spec:
    """The keys of data source `name` (every source's common keys plus its own)."""
    from medjax.data.medmnist import MEDMNIST

    own = DATA["medmnist"] if name in MEDMNIST else None if name == "medmnist" else DATA.get(name)
    if own is None:
        known = sorted(k for k in DATA if k != "medmnist")
        raise MedjaxError(f"unknown dataset config.data.name={name!r}; known: {known} and the MedMNIST sets "
                          f"{sorted(MEDMNIST)}")
    return {**DATA_COMMON, **own}


def task_spec(name: str) -> Spec:
    if name not in TASKS:
        raise MedjaxError(f"unknown config.task.name={name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def _fill(node: Mapping, spec: Spec, where: str) -> ml_collections.ConfigDict:
    """A new ConfigDict: `node`'s keys over `spec`'s defaults; unknown or missing required keys raise."""
    given = node.to_dict() if isinstance(node, ml_collections.ConfigDict) else dict(node)
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise MedjaxError(f"unknown config key {where}.{unknown[0]}; valid: {', '.join(spec)}")
    missing = [k for k, key in spec.items() if key.default is REQUIRED and k not in given]
    if missing:
        raise MedjaxError(f"{where}.{missing[0]} must be set ({spec[missing[0]].doc})")
    out = {k: key.default for k, key in spec.items() if key.default is not REQUIRED}
    out.update(given)
    return ml_collections.ConfigDict(out)


def filled(section: str, node: Mapping | None, name: str | None = None) -> ml_collections.ConfigDict:
    """`config.<section>` with the schema's defaults for the keys it leaves out (task and data by `name`)."""
    node = node.to_dict() if isinstance(node, ml_collections.ConfigDict) else dict(node or {})
    if name is not None and section in ("task", "data"):
        node = {"name": name, **node}
    if section == "task":
        spec = task_spec(name if name is not None else node["name"])
    elif section == "data":
        spec = data_spec(name if name is not None else node["name"])
    else:
        spec = SECTIONS[section]
    return _fill(node, spec, f"config.{section}")


def data_common(node: Mapping) -> ml_collections.ConfigDict:
    """`config.data` with the keys every source takes at their defaults, its other keys as they are (for readers
    of the common keys only, such as the training stream's host transform). A common key the source declares
    itself (icbm152_patches' `patch_size`, the crop size) has the source's meaning, so here it keeps the common
    default."""
    given = node.to_dict() if isinstance(node, ml_collections.ConfigDict) else dict(node)
    own = set(DATA.get(given.get("name"), {})) & set(DATA_COMMON)
    return ml_collections.ConfigDict({**{k: v.default for k, v in DATA_COMMON.items() if v.default is not REQUIRED},
                                      **{k: v for k, v in given.items() if k not in own}})


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A new, locked config: every section and top-level key at its schema default unless the config sets it."""
    from medjax.data import augment

    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    out: dict[str, Any] = {}
    for section in ALWAYS:
        d.setdefault(section, {})
    for key, value in d.items():
        if key in FREE_FORM and key != "augment":
            out[key] = value
        elif key == "augment":
            base = augment.default_config((value or {}).get("transforms") or ()).to_dict()
            for name, fields in (value or {}).items():
                base[name] = {**base[name], **fields} if isinstance(fields, Mapping) and name in base else fields
            out[key] = ml_collections.ConfigDict(base, type_safe=False)
        elif key in ("task", "data") or key in SECTIONS:
            if not isinstance(value, Mapping):
                raise MedjaxError(f"config.{key} must be a section (a ConfigDict), got {value!r}")
            if key in ("task", "data") and "name" not in value:
                raise MedjaxError(f"config.{key}.name must be set")
            out[key] = filled(key, value)
        elif key in TOP_LEVEL:
            out[key] = value
        else:
            raise MedjaxError(f"unknown config key config.{key}; valid top-level keys: "
                              f"{', '.join([*TOP_LEVEL, 'task', 'data', 'model', *SECTIONS, *ALWAYS[-1:]])}")
    for key, spec in TOP_LEVEL.items():
        if key not in out:
            if spec.default is REQUIRED:
                raise MedjaxError(f"config.{key} must be set ({spec.doc})")
            out[key] = spec.default
    gan = out["task"]["name"] in ("gan", "pix2pix", "super_resolution") if "task" in out else False
    needed = ("generator", "discriminator", "g_optimizer", "d_optimizer") if gan else ("model", "optimizer")
    for section in ("task", "data", *needed):
        if section not in out:
            raise MedjaxError(f"config.{section} must be set")
    completed = ml_collections.ConfigDict(out)
    completed.lock()
    return completed


def table(section: str | None = None) -> list[tuple[str, Any, str]]:
    """(dotted key, default, doc) rows for `section` (a name such as 'optimizer', 'task.segmentation',
    'data.msd') or for everything."""
    groups: dict[str, Spec] = {"": TOP_LEVEL, **{k: v for k, v in SECTIONS.items() if k not in
                                                 ("g_optimizer", "d_optimizer")}}
    groups.update({f"task.{k}": v for k, v in TASKS.items() if k in ("classification", "segmentation", "mil",
                                                                      "regression", "detection", "gan")})
    groups["data"] = DATA_COMMON
    groups.update({f"data.{k}": v for k, v in DATA.items()})
    if section is not None:
        if section not in groups:
            raise MedjaxError(f"unknown config section {section!r}; known: {', '.join(k for k in groups if k)}")
        groups = {section: groups[section]}
    rows = []
    for group, spec in groups.items():
        prefix = group.split(".")[0] + "." if group else ""
        rows.extend((prefix + k, key.default, key.doc) for k, key in spec.items())
    return rows


def _show(value: Any) -> str:
    return "(required)" if value is REQUIRED else repr(value)


def render_table(rows: list[tuple[str, Any, str]]) -> str:
    """Aligned `key  default  doc` lines."""
    width = max(len(k) for k, _, _ in rows)
    shown = [_show(v) for _, v, _ in rows]
    vwidth = min(24, max(len(v) for v in shown))
    return "\n".join(f"{k:<{width}}  {v:<{vwidth}}  {doc}" for (k, _, doc), v in zip(rows, shown))


def render_values(config: ml_collections.ConfigDict, section: str | None = None) -> str:
    """Every key of a completed config with its value and the schema's doc (free-form sections: no doc)."""
    docs = {"": TOP_LEVEL, **SECTIONS, "task": task_spec(config.task.name), "data": data_spec(config.data.name)}
    rows = []

    def walk(node: Any, prefix: str, spec: Spec | None) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, ml_collections.ConfigDict) and not prefix:
                walk(v, key + ".", docs.get(k))
            elif isinstance(v, ml_collections.ConfigDict) and prefix == "augment.":
                walk(v, key + ".", None)
            else:
                rows.append((key, v, spec[k].doc if spec and k in spec else ""))

    walk(config, "", TOP_LEVEL)
    if section is not None:
        rows = [r for r in rows if r[0].startswith(section.split(".")[0] + ".")]
        if not rows:
            raise MedjaxError(f"the config has no section {section!r}")
    return render_table(rows)


def markdown() -> str:
    """docs/config.md: one table per section (tests keep the page equal to this)."""
    lines = ["# Config keys", "",
             "Generated from `medjax/schema.py` (`medjax keys` prints the same table; `medjax keys --config NAME` "
             "shows a config's values). Every key can be set on the command line as `--config.KEY=VALUE`; a key "
             "not listed is an error. `model`, `generator` and `discriminator` take the registered constructor's "
             "fields (see the API reference); `augment` takes the transforms of `medjax.data.augment`.", ""]
    titled = [("top level", table("")), *[(k, table(k)) for k in SECTIONS
                                                       if k not in ("g_optimizer", "d_optimizer")],
              *[(f"task.{k}", table(f"task.{k}")) for k in ("classification", "segmentation", "mil", "regression",
                                                             "detection", "gan")],
              ("data (every source)", table("data")),
              *[(f"data.{k}", table(f"data.{k}")) for k in DATA]]
    for title, rows in titled:
        lines += [f"## {title}", "", "| key | default | doc |", "|---|---|---|"]
        lines += [f"| `{k}` | `{_show(v)}` | {doc.replace('|', '/')} |" for k, v, doc in rows]
        lines.append("")
    return "\n".join(lines)
