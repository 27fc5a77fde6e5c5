"""Turn `config.data` into in-memory splits: `{split: {"image": ..., "label": ...}}` plus class names.

One small function per source, chosen by `config.data.name`; later data work (TFDS/grain) plugs in here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from medjax import schema
from medjax.data import splits as splits_lib
from medjax.data import synthetic
from medjax.data.npz import load_npz_splits
from medjax.data.stream import as_source
from medjax.errors import MedjaxError

Splits = dict[str, dict[str, np.ndarray]]


def _icbm152(cfg: ml_collections.ConfigDict) -> tuple[Splits, list[str]]:
    from medjax.data.icbm152 import load_icbm152_slices

    out = load_icbm152_slices(cfg.root or None, in_plane_mm=cfg.in_plane_mm,
                              max_slices_per_split=cfg.max_slices_per_split, plane=cfg.plane,
                              max_train_slices=cfg.max_train_slices)
    meta = out.pop("meta")
    return out, list(meta["class_names"])


def _icbm152_patches(cfg: ml_collections.ConfigDict) -> tuple[Splits, list[str]]:
    from medjax.data.icbm152_patches import CLASS_NAMES, load_icbm152_patches

    keys = ("patch_size", "train_per_class", "val_per_class", "test_per_class", "seed", "in_plane_mm", "site_shift")
    return (load_icbm152_patches(**{k: cfg[k] for k in keys}, site_b_classes=tuple(cfg.site_b_classes),
                                 root=cfg.root or None), list(CLASS_NAMES))


def _synthetic_cine(cfg: ml_collections.ConfigDict) -> tuple[Splits, list[str]]:
    """Beating-heart sequences (`medjax.data.cine`); each split draws its own patients (seed ranges never
    overlap): {"image" (N, T, *s, 1), "label" (N, T, *s), "target" (N, 1) ejection fraction}. Optional
    `noise`, `speckle` and `ef_range` go to `beating_heart`."""
    from medjax.data.cine import CLASS_NAMES, cine_dataset

    kwargs = dict(num_frames=cfg.num_frames, size=cfg.size, spatial_dims=cfg.spatial_dims,
                  noise=cfg.noise, speckle=cfg.speckle, ef_range=tuple(cfg.ef_range))
    base = 1_000_000 * int(cfg.seed)
    counts = {"train": cfg.num_train, "val": cfg.num_eval, "test": cfg.num_eval}
    splits = {}
    for k, (name, n) in enumerate(counts.items()):
        d = cine_dataset(range(base + 100_000 * k, base + 100_000 * k + n), **kwargs)
        splits[name] = {"image": d["image"], "label": d["label"], "target": d["ef"][:, None]}
    return splits, list(CLASS_NAMES)


def _cine_folder(cfg: ml_collections.ConfigDict) -> Dataset:
    """Cine cases from `data.root`, or from `data.train_root` / `val_root` / `test_root` in the same layout, in
    `data.layout` folder / acdc / mnms (`medjax.data.cine_io.load_cine_folder`: 4D files of any `formats` type or
    cine DICOM images, labels on every frame or on ED and ES only, targets.csv or the EF of the labels), brought
    onto one grid and length with a "mask" of the voxels that have a reference, split by `medjax.data.splits`
    (the roots, `split_file`, `num_folds` or the seeded `val_fraction` / `test_fraction`). The splits hold
    "image", "label", "mask", "ed_es" (the ED and ES frames, for EF) and "target" as the data provides them;
    `hdf5_*` name the keys of HDF5 cases."""
    from medjax.data.cine_io import load_cine_folder

    roots = splits_lib.split_roots(cfg)
    if not roots[0][1]:
        raise MedjaxError("config.data.root must name a folder of cine cases for data.name='cine_folder' (images/ "
                          "and labels/ or targets.csv; ACDC's training/; M&Ms' Training/Labeled/)")
    keys = ("layout", "images_dir", "labels_dir", "targets_csv", "frames_csv", "normalize", "in_plane_mm", "grid",
            "num_slices", "num_frames", "ef_class")
    num_classes = int(cfg.num_classes or 0) or None
    parts = [load_cine_folder(folder, num_classes=num_classes, hdf5=hdf5_layout(cfg),
                               **{k: cfg[k] for k in keys}) for _, folder in roots]
    reference = {k: v.shape[1:] for k, v in parts[0].items() if k != "cases"}
    for (_, folder), part in zip(roots[1:], parts[1:]):
        shapes = {k: v.shape[1:] for k, v in part.items() if k != "cases"}
        if shapes != reference:
            raise MedjaxError(f"the cases of {folder} and {roots[0][1]} differ in what they hold or in shape "
                              f"({shapes} vs {reference}): every split root needs the same layout, and set "
                              f"config.data.grid, num_slices and num_frames to bring them onto one grid")
    data = {k: np.concatenate([part[k] for part in parts]) for k in parts[0] if k != "cases"}
    cases = [case for part in parts for case in part["cases"]]
    given = [split for (split, _), part in zip(roots, parts) for _ in part["cases"]] if roots[0][0] else None
    split = splits_lib.resolve(cases, cfg, given, splits_lib.roots_name(cfg))
    class_names = [str(c) for c in (cfg.class_names or ())]
    if not class_names and "label" in data:
        class_names = [f"class{i}" for i in range(num_classes or max(2, int(data["label"].max()) + 1))]
    return Dataset(splits_lib.select(data, split), class_names, case_ids=splits_lib.select_ids(cases, split))


def _wsi_folder(cfg: ml_collections.ConfigDict) -> Dataset:
    """Whole slides (`data.root`/`slides_dir`) labelled by a CSV (`labels_csv`: slide,label[,split]) as bags of
    tissue tiles, one per slide (`medjax.data.wsi_folder`); tiles are read from the slides as batches need them,
    or from the array_record cache with `cache_tiles`. Train with `bag_size` tiles drawn per slide per step."""
    from medjax.data.wsi_folder import load_wsi_folder

    splits, class_names = load_wsi_folder(cfg)
    return Dataset(splits, class_names)


def _npz(cfg: ml_collections.ConfigDict) -> tuple[Splits, list[str]]:
    splits = load_npz_splits(cfg.root)
    return splits, [str(c) for c in cfg.class_names]


def _medmnist(cfg: ml_collections.ConfigDict) -> Dataset:
    """Any of the 18 MedMNIST sets by name (`data.name=breastmnist`, `data.size`, `data.root`), official splits,
    cached as array_record the first time (the .npz is not read again while the cache matches it)."""
    from medjax.data.cache import arrays_generator, build_or_load, file_fingerprint
    from medjax.data.medmnist import load_medmnist, medmnist_info, medmnist_path

    info, size = medmnist_info(cfg.name), int(cfg.size)
    root = cfg.root or None
    path = medmnist_path(root, info.name, size)
    loaded: dict = {}

    def generator(split: str):
        def gen():
            if not loaded:
                loaded.update(load_medmnist(root, info.name, size)[0])
            return arrays_generator(loaded[split])()
        return gen

    if not os.path.isfile(path):
        load_medmnist(root, info.name, size)  # raises the reader's message (path and how to get the file)
    spatial = (size,) * (3 if info.is_3d else 2)
    features = {"image": ((*spatial, info.n_channels), np.float32),
                "label": (((info.n_classes,) if info.multi_label else ()), np.int32)}
    spec = {"source": "medmnist", "name": info.name, "size": size, "files": file_fingerprint([path])}
    sources = build_or_load(f"medmnist_{info.name}_{size}", spec, features,
                            {split: generator(split) for split in ("train", "val", "test")},
                            cache_dir=cfg.cache_dir or None)
    return Dataset(sources, list(info.class_names), info.multi_label)


def hdf5_layout(cfg: ml_collections.ConfigDict):
    """`data.hdf5_*` as the `Hdf5Layout` the readers take."""
    from medjax.data.hdf5 import Hdf5Layout

    return Hdf5Layout(image_key=cfg.hdf5_image_key, label_key=cfg.hdf5_label_key, axes=cfg.hdf5_axes,
                      spacing_attr=cfg.hdf5_spacing_attr)


def _msd(cfg: ml_collections.ConfigDict) -> Dataset:
    """A Decathlon task folder (`data.root`), or any folder of image / label files paired by name (`images_dir`,
    `labels_dir`, `label_suffix`, `class_names`, `modalities` when there is no dataset.json), in any format
    `medjax.data.formats` reads (`hdf5_*` name HDF5 keys): labelled cases split into train / val / test by
    `medjax.data.splits` (dataset.json's test entries with labels are the test split; the official imagesTs
    have none, and then a seeded permutation, `split_file` or `num_folds` decide), normalised and resampled once,
    cached as array_record volumes of their own shapes, each with its voxel "spacing" (3,) in mm (for surface
    metrics). Fields: `spacing` (mm; () keeps each case's grid),
    `normalize`, `ct_level`, `ct_width`, `val_fraction`, `test_fraction`, `split_seed`, `split_file`, `fold`,
    `num_folds`, `cache_dir`."""
    from medjax.data.cache import build_or_load, file_fingerprint
    from medjax.data.formats import data_files
    from medjax.data.msd import load_msd_case, load_msd_index

    if not cfg.root:
        raise MedjaxError("config.data.root must name a Decathlon task folder (with dataset.json) for data.name='msd'")
    index = load_msd_index(cfg.root, images_dir=cfg.images_dir, labels_dir=cfg.labels_dir,
                           label_suffix=cfg.label_suffix, class_names=tuple(cfg.class_names),
                           modalities=tuple(cfg.modalities))
    given = ["train"] * len(index.training) + ["test"] * len(index.labelled_test) if index.labelled_test else None
    cases = [splits_lib.case_id(image) for image, _ in index.cases]
    split = splits_lib.resolve(cases, cfg, given,
                               f"the test entries with labels of {os.path.join(index.root, 'dataset.json')}")
    spacing = tuple(float(v) for v in (cfg.spacing or ())) or None
    options = dict(normalize=cfg.normalize, ct_level=float(cfg.ct_level),
                   ct_width=float(cfg.ct_width))
    layout = hdf5_layout(cfg)

    def generator(cases: list[int]):
        def gen():
            for i in cases:
                image, label = load_msd_case(index, i, spacing, **options, hdf5=layout)
                yield {"image": image.array, "label": label.array,
                       "spacing": np.asarray(label.spacing, np.float32)}
        return gen

    features = {"image": ((None, None, None, len(index.modalities)), np.float32),
                "label": ((None, None, None), np.int32), "spacing": ((3,), np.float32)}
    dataset_json = os.path.join(index.root, "dataset.json")
    files = {f for case in index.cases for p in case for f in data_files(p)}  # .mhd/.nhdr data files too
    spec = {"source": "msd", "root": os.path.abspath(cfg.root), "split": split, "spacing": spacing, **options,
            "hdf5": dataclasses.asdict(layout), "class_names": index.class_names, "modalities": index.modalities,
            "keys": sorted(features),
            "files": file_fingerprint([*([dataset_json] if os.path.isfile(dataset_json) else []), *files])}
    name = "msd_" + "".join(ch if ch.isalnum() else "_" for ch in index.name)
    sources = build_or_load(name, spec, features, {k: generator(v) for k, v in split.items()},
                            cache_dir=cfg.cache_dir or None)
    return Dataset(sources, list(index.class_names), case_ids=splits_lib.select_ids(cases, split))


def _folder_option(root: str, value: str, default: str | None) -> str | None:
    """`value` relative to `root` (absolute paths kept); unset -> `default` under the root."""
    if value:
        return os.path.join(root, str(value))
    return os.path.join(root, default) if root and default else None


def _mask_values(cfg: ml_collections.ConfigDict) -> dict[int, int] | None:
    """`data.mask_values` as {stored value: class}: a mapping (keys may be numeric strings) or (value, class) pairs."""
    given = cfg.mask_values
    if not given:
        return None
    if isinstance(given, ml_collections.ConfigDict):
        given = given.to_dict()
    try:
        items = given.items() if hasattr(given, "items") else [tuple(pair) for pair in given]
        return {int(k): int(v) for k, v in items}
    except (TypeError, ValueError) as e:
        raise MedjaxError(f"config.data.mask_values must map stored mask values to classes, e.g. {{0: 0, 255: 1}} "
                          f"or ((0, 0), (255, 1)); got {given!r}") from e


def _image_pairs(cfg: ml_collections.ConfigDict) -> tuple[list, list[str] | None, str]:
    """(pairs, the split each pair is given or None, what gives it) from `data.pairs_csv` or the folders under
    `data.root` / each of `data.train_root`, `val_root`, `test_root`."""
    from medjax.data.image_folder import find_pairs

    pairs_csv = _folder_option(cfg.root or "", cfg.pairs_csv, None)
    roots = splits_lib.split_roots(cfg)
    if pairs_csv is not None:
        if roots[0][0]:
            raise MedjaxError(f"config.data.pairs_csv lists the files (its split column gives the splits): leave "
                              f"{splits_lib.roots_name(cfg)} empty")
        for key in ("images_dir", "masks_dir", "fov_dir"):
            if cfg.get(key):
                raise MedjaxError(f"config.data.pairs_csv lists the files: leave config.data.{key} empty")
        pairs = find_pairs(pairs_csv=pairs_csv, case_pattern=cfg.case_pattern)
        given = [p.split for p in pairs] if pairs[0].split is not None else None
        return pairs, given, f"the split column of {pairs_csv}"
    if not (roots[0][1] or cfg.images_dir):
        raise MedjaxError("config.data.root must name a folder with images/ and masks/ (or set config.data."
                          "images_dir and masks_dir, or config.data.pairs_csv) for data.name='image_folder'")
    pairs, given = [], []
    for split, folder in roots:
        dirs = dict(images_dir=_folder_option(folder, cfg.images_dir, "images"),
                    masks_dir=_folder_option(folder, cfg.masks_dir, "masks"),
                    fov_dir=_folder_option(folder, cfg.fov_dir,
                                           "fov" if os.path.isdir(os.path.join(folder, "fov")) else None))
        if dirs["masks_dir"] is None:
            raise MedjaxError("config.data.masks_dir (or config.data.root with a masks/ folder) is needed: "
                              "segmentation trains on masks")
        found = find_pairs(**dirs, mask_suffix=cfg.mask_suffix, fov_suffix=cfg.fov_suffix,
                           case_pattern=cfg.case_pattern)
        pairs += found
        given += [split] * len(found)
    return pairs, given if roots[0][0] else None, splits_lib.roots_name(cfg)


def _image_folder(cfg: ml_collections.ConfigDict) -> Dataset:
    """2D images with masks (and optional field-of-view masks) from folders or a CSV (`medjax.data.image_folder`),
    split into train / val / test by `medjax.data.splits`, held in memory.

    `data.root` holds `images/`, `masks/` and optionally `fov/` (used when present); `data.images_dir`,
    `masks_dir`, `fov_dir` (relative to the root) or `pairs_csv` (columns image,mask[,fov][,split]) replace
    those. With `data.train_root` (and `val_root`, `test_root`) each split has its own folder in that layout.
    Reader options: `mask_suffix`, `fov_suffix`, `case_pattern`, `size` ((H, W); () keeps the stored size),
    `color`, `mask_values`, `num_classes`. The FOV becomes the split key "mask" (float32, 1 inside), which the
    segmentation loss and Dice respect. `data.spacing` (H, W) in mm becomes the per-image "spacing" the surface
    metrics use (else 1 per pixel). Class names: `data.class_names`, else class0.. up to `data.num_classes` (or the
    largest label found)."""
    from medjax.data.image_folder import fov_weights, load_pairs

    pairs, given, given_by = _image_pairs(cfg)
    class_names = [str(c) for c in (cfg.class_names or ())]
    num_classes = int(cfg.num_classes or 0) or len(class_names) or None
    if class_names and num_classes != len(class_names):
        raise MedjaxError(f"config.data.num_classes={num_classes} but config.data.class_names names "
                          f"{len(class_names)} classes: {class_names}")
    size = tuple(int(v) for v in (cfg.size or ())) or None
    data = load_pairs(pairs, color=cfg.color, mask_values=_mask_values(cfg), size=size, num_classes=num_classes)
    arrays = {"image": data["image"], "label": data["label"]}
    if "fov" in data:
        arrays["mask"] = fov_weights(data["fov"])
    if cfg.spacing:
        spacing = np.asarray(cfg.spacing, np.float32)
        if spacing.shape != (2,) or not (spacing > 0).all():
            raise MedjaxError(f"config.data.spacing must be the pixel spacing (H, W) in mm, two positive numbers; "
                              f"got {tuple(cfg.spacing)}")
        arrays["spacing"] = np.tile(spacing, (len(arrays["image"]), 1))
    cases = [p.case for p in pairs]
    split = splits_lib.resolve(cases, cfg, given, given_by)
    if not class_names:
        count = num_classes or max(2, int(data["label"].max()) + 1)
        class_names = [f"class{i}" for i in range(count)]
    return Dataset(splits_lib.select(arrays, split), class_names, case_ids=splits_lib.select_ids(cases, split))


def _boxes(cfg: ml_collections.ConfigDict) -> Dataset:
    """Detection cases listed with their boxes in one file (`data.boxes_file` under `data.root`: MONAI's JSON
    detection datalist or a CSV `case,class,x1,y1,(z1,)x2,y2,(z2)`), in voxel or world coordinates
    (`data.coordinates`), corners or centre + size (`data.box_format`), images read by `formats.load_volume`,
    normalised (`data.normalize`), split by `medjax.data.splits` (or the datalist's "validation" / "test"),
    cached as array_record (`medjax.data.detection`). `data.class_names` declares the classes."""
    from medjax.data.detection import load_boxes_source

    return Dataset(*load_boxes_source(cfg))


def _icbm152_lesions(cfg: ml_collections.ConfigDict) -> tuple[Splits, list[str]]:
    """Simulated lesions with known boxes in the real ICBM152 brain, 3D volumes or 2D axial slices
    (`medjax.data.icbm152_lesions`), different lesions per split."""
    from medjax.data.icbm152_lesions import CLASS_NAMES, load_icbm152_lesions

    keys = ("spatial_dims", "voxel_mm", "num_train", "num_val", "num_test", "lesions_per_case", "radius_mm",
            "contrast", "noise", "seed", "max_boxes", "slices_per_case")
    return load_icbm152_lesions(**{k: cfg[k] for k in keys}, root=cfg.root or None), list(CLASS_NAMES)


def _synthetic(cfg: ml_collections.ConfigDict, make: Callable) -> tuple[Splits, list[str]]:
    sizes = {"train": cfg.num_train, "val": cfg.num_eval, "test": cfg.num_eval}
    splits = synthetic.split(make, sizes, seed=cfg.seed, size=tuple(cfg.size), num_classes=cfg.num_classes)
    return splits, [f"class{i}" for i in range(cfg.num_classes)]


SOURCES: dict[str, Callable] = {
    "icbm152": _icbm152,
    "icbm152_patches": _icbm152_patches,
    "icbm152_lesions": _icbm152_lesions,
    "boxes": _boxes,
    "synthetic_cine": _synthetic_cine,
    "cine_folder": _cine_folder,
    "image_folder": _image_folder,
    "msd": _msd,
    "npz": _npz,
    "wsi_folder": _wsi_folder,
    "synthetic_segmentation": lambda cfg: _synthetic(cfg, synthetic.blobs_segmentation),
    "synthetic_classification": lambda cfg: _synthetic(cfg, synthetic.blobs_classification),
}


@dataclasses.dataclass
class Dataset:
    """What a source provides: splits (arrays in memory, or cached random-access sources), facts about the
    labels that configs may leave to the data (`task.num_classes=0`, `task.multi_label='auto'`) and each
    split's case ids in example order (what evaluation records and per-case metadata name a case by: the file
    stem of folder sources; by default the example's position in its split, as a string)."""

    splits: Splits
    class_names: list[str]
    multi_label: bool = False
    case_ids: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def num_examples(self, split: str) -> int:
        return len(as_source(self.splits[split]))

    def cases(self, split: str) -> list[str]:
        """The case ids of `split`, in example order."""
        return self.case_ids.get(split) or [str(i) for i in range(self.num_examples(split))]


def load_splits(cfg: ml_collections.ConfigDict) -> Dataset:
    """Load every split named by the source."""
    from medjax.data.medmnist import MEDMNIST

    cfg = schema.filled("data", cfg)
    if cfg.name in MEDMNIST:
        return _medmnist(cfg)
    result = SOURCES[cfg.name](cfg)
    data = result if isinstance(result, Dataset) else Dataset(*result)
    for split, arrays in data.splits.items():
        if not isinstance(arrays, dict):
            continue  # cached sources: checked by their readers while the cache is built
        for key, value in arrays.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise MedjaxError(f"dataset {cfg.name!r}: split {split!r} has non-finite values in {key!r}")
    return data


def train_transform(cfg: ml_collections.ConfigDict):
    """The host-side per-example transform of the training stream, or None: clips of `cfg.clip_length` frames
    every `cfg.clip_stride` (image sequences, `medjax.data.clips`), then random patches of `cfg.patch_size` with
    foreground ratio `cfg.fg_ratio` (large volumes); or `cfg.bag_size` instances drawn per bag (multiple-instance
    learning, `medjax.data.bags`). Both clips and patches carry every per-frame / per-voxel array of an example
    (label, FOV "mask", ...) with the image and pass per-example arrays through. Only the training stream builds
    it: evaluation sees whole examples, and the model's example input comes from `train_input_shape`. Examples
    with boxes (detection) get box-aware patches: centred on a box with probability `cfg.fg_ratio`, boxes cut
    below `cfg.min_box_visible` dropped (`medjax.data.detection.box_patch`)."""
    cfg = schema.data_common(cfg)
    if cfg.bag_size:
        if cfg.clip_length or cfg.patch_size:
            raise MedjaxError("config.data.bag_size samples the instances of bags; it does not combine with "
                              "clip_length or patch_size: unset one")
        from medjax.data.bags import bag_transform

        return bag_transform(int(cfg.bag_size))
    steps = []
    if cfg.clip_length:
        from medjax.data.clips import clip_transform

        steps.append(clip_transform(int(cfg.clip_length), int(cfg.clip_stride)))
    elif cfg.clip_stride != 1:
        raise MedjaxError("config.data.clip_stride is set but config.data.clip_length is not: set both")
    if cfg.patch_size:
        steps.append(_patch_transform(tuple(cfg.patch_size), cfg.fg_ratio, cfg.min_box_visible))
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def transform(example: dict, rng: np.random.Generator) -> dict:
        for step in steps:
            example = step(example, rng)
        return example

    return transform


def train_input_shape(cfg: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape one training input has after `train_transform`, from a stored example's image shape alone:
    `cfg.clip_length` frames first, then `cfg.patch_size` for the leading spatial axes (channels kept).
    For the model's example input, so setting up a run (or evaluating one) never builds the transform."""
    from medjax.data.clips import check_clip
    from medjax.data.patches import patch_shape

    cfg = schema.data_common(cfg)
    shape = tuple(int(n) for n in image_shape)
    if cfg.clip_length:
        check_clip(int(cfg.clip_length), int(cfg.clip_stride), shape[0])
        shape = (int(cfg.clip_length), *shape[1:])
    if cfg.patch_size:
        shape = (*patch_shape(cfg.patch_size, len(shape) - 1), shape[-1])
    return shape


def _patch_transform(patch_size: tuple[int, ...], fg_ratio: float, min_box_visible: float):
    """Random patches; examples with boxes (detection) get box-aware patches (`medjax.data.detection.box_patch`)."""
    from medjax.data.detection import box_patch
    from medjax.data.patches import sample_example_patches, voxel_keys

    def transform(example: dict, rng: np.random.Generator) -> dict:
        if "boxes" in example:
            return box_patch(example, patch_size, fg_ratio, min_box_visible, rng)
        seed = int(rng.integers(2**31))
        patch, cut = sample_example_patches(example, patch_size, 1, fg_ratio, seed), set(voxel_keys(example))
        return {k: (v[0] if k in cut else v) for k, v in patch.items()}

    return transform
