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

    keys = ("patch_size", "train_per_class", "val_per_class", "test_per_class", "seed", "in_plane_mm")
    return load_icbm152_patches(**{k: cfg[k] for k in keys}, root=cfg.root or None), list(CLASS_NAMES)


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


def _cine_folder(cfg: ml_collections.ConfigDict) -> tuple[Splits, list[str]]:
    """Cine cases from `data.root` (`medjax.data.cine_io.load_cine_folder`: 4D NIfTI or cine DICOM images,
    4D NIfTI labels, targets.csv), split by `case_split` (`val_fraction`, `test_fraction`, `split_seed`).
    Options: `images_dir`, `labels_dir`, `targets_csv`, `normalize`, `num_classes`, `class_names`."""
    from medjax.data.cine_io import load_cine_folder

    if not cfg.root:
        raise MedjaxError("config.data.root must name a folder with images/ (and labels/ or targets.csv) for "
                          "data.name='cine_folder'")
    keys = ("images_dir", "labels_dir", "targets_csv", "normalize")
    num_classes = int(cfg.num_classes or 0) or None
    data = load_cine_folder(cfg.root, num_classes=num_classes, **{k: cfg[k] for k in keys})
    data.pop("cases")
    splits = split_by_case(data, cfg)
    class_names = [str(c) for c in (cfg.class_names or ())]
    if not class_names and "label" in data:
        class_names = [f"class{i}" for i in range(num_classes or max(2, int(data["label"].max()) + 1))]
    return splits, class_names


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


def _msd(cfg: ml_collections.ConfigDict) -> Dataset:
    """A Decathlon task folder (`data.root`): labelled cases split into train / val / test by a seeded
    permutation (the official imagesTs have no labels), normalised and resampled once, cached as array_record
    volumes of their own shapes. Fields: `spacing` (mm; () keeps each case's grid), `normalize`, `ct_level`,
    `ct_width`, `val_fraction`, `test_fraction` (of all labelled cases), `split_seed`, `cache_dir`."""
    from medjax.data.cache import build_or_load, file_fingerprint
    from medjax.data.msd import load_msd_case, load_msd_index

    if not cfg.root:
        raise MedjaxError("config.data.root must name a Decathlon task folder (with dataset.json) for data.name='msd'")
    index = load_msd_index(cfg.root)
    split = case_split(len(index.training), cfg.val_fraction, cfg.test_fraction,
                        cfg.split_seed)
    spacing = tuple(float(v) for v in (cfg.spacing or ())) or None
    options = dict(normalize=cfg.normalize, ct_level=float(cfg.ct_level),
                   ct_width=float(cfg.ct_width))

    def generator(cases: list[int]):
        def gen():
            for i in cases:
                image, label = load_msd_case(index, i, spacing, **options)
                yield {"image": image.array, "label": label.array}
        return gen

    features = {"image": ((None, None, None, len(index.modalities)), np.float32),
                "label": ((None, None, None), np.int32)}
    spec = {"source": "msd", "root": os.path.abspath(cfg.root), "split": split, "spacing": spacing, **options,
            "files": file_fingerprint([os.path.join(index.root, "dataset.json"),
                                       *(p for case in index.training for p in case)])}
    name = "msd_" + "".join(ch if ch.isalnum() else "_" for ch in index.name)
    sources = build_or_load(name, spec, features, {k: generator(v) for k, v in split.items()},
                            cache_dir=cfg.cache_dir or None)
    return Dataset(sources, list(index.class_names))


def _folder_option(cfg: ml_collections.ConfigDict, key: str, default: str | None) -> str | None:
    """`data.<key>` relative to `data.root` (absolute paths kept); unset -> `default` under the root."""
    root = cfg.root or ""
    value = cfg.get(key)
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


def _image_folder(cfg: ml_collections.ConfigDict) -> tuple[Splits, list[str]]:
    """2D images with masks (and optional field-of-view masks) from folders or a CSV (`medjax.data.image_folder`),
    split into train / val / test by a seeded permutation (`case_split`), held in memory.

    `data.root` holds `images/`, `masks/` and optionally `fov/` (used when present); `data.images_dir`,
    `masks_dir`, `fov_dir` or `pairs_csv` (relative to the root) replace those. Reader options: `mask_suffix`,
    `fov_suffix`, `size` ((H, W); () keeps the stored size), `color`, `mask_values`, `num_classes`. The FOV
    becomes the split key "mask" (float32, 1 inside), which the segmentation loss and Dice respect.
    Class names: `data.class_names`, else class0.. up to `data.num_classes` (or the largest label found)."""
    from medjax.data.image_folder import fov_weights, load_image_folder

    pairs_csv = _folder_option(cfg, "pairs_csv", None)
    if pairs_csv is None and not (cfg.root or cfg.images_dir):
        raise MedjaxError("config.data.root must name a folder with images/ and masks/ (or set config.data."
                          "images_dir and masks_dir, or config.data.pairs_csv) for data.name='image_folder'")
    dirs: dict[str, str | None] = {}
    if pairs_csv is not None:
        for key in ("images_dir", "masks_dir", "fov_dir"):
            if cfg.get(key):
                raise MedjaxError(f"config.data.pairs_csv lists the files: leave config.data.{key} empty")
    else:
        root_fov = os.path.join(cfg.root or "", "fov")
        dirs = dict(images_dir=_folder_option(cfg, "images_dir", "images"),
                    masks_dir=_folder_option(cfg, "masks_dir", "masks"),
                    fov_dir=_folder_option(cfg, "fov_dir", "fov" if os.path.isdir(root_fov) else None))
        if dirs["masks_dir"] is None:
            raise MedjaxError("config.data.masks_dir (or config.data.root with a masks/ folder) is needed: "
                              "segmentation trains on masks")
    class_names = [str(c) for c in (cfg.class_names or ())]
    num_classes = int(cfg.num_classes or 0) or len(class_names) or None
    if class_names and num_classes != len(class_names):
        raise MedjaxError(f"config.data.num_classes={num_classes} but config.data.class_names names "
                          f"{len(class_names)} classes: {class_names}")
    size = tuple(int(v) for v in (cfg.size or ())) or None
    data = load_image_folder(**dirs, pairs_csv=pairs_csv, color=cfg.color,
                             mask_values=_mask_values(cfg), size=size, mask_suffix=cfg.mask_suffix,
                             fov_suffix=cfg.fov_suffix, num_classes=num_classes)
    arrays = {"image": data["image"], "label": data["label"]}
    if "fov" in data:
        arrays["mask"] = fov_weights(data["fov"])
    splits = split_by_case(arrays, cfg)
    if not class_names:
        count = num_classes or max(2, int(data["label"].max()) + 1)
        class_names = [f"class{i}" for i in range(count)]
    return splits, class_names


def split_by_case(arrays: dict[str, np.ndarray], cfg: ml_collections.ConfigDict) -> Splits:
    """In-memory arrays (one row per case) divided by `case_split` with `data.val_fraction`, `test_fraction` and
    `split_seed`."""
    split = case_split(len(arrays["image"]), cfg.val_fraction, cfg.test_fraction,
                       cfg.split_seed)
    return {name: {k: v[np.asarray(idx, np.int64)] for k, v in arrays.items()} for name, idx in split.items()}


def case_split(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Case indices per split: `test_fraction` of all cases first (`split_cases` with `seed`), then
    `val_fraction` of all cases out of the rest (with `seed + 1`); empty val / test splits are left out."""
    from medjax.data.msd import split_cases

    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise MedjaxError(f"config.data.val_fraction={val_fraction} and test_fraction={test_fraction} must be "
                          f">= 0 and leave cases for training")
    rest, test = split_cases(n, test_fraction, seed)
    val_share = val_fraction * n / len(rest)
    if val_share >= 1:
        raise MedjaxError(f"cannot hold out val_fraction={val_fraction} of {n} cases after the test cases")
    train_pos, val_pos = split_cases(len(rest), val_share, seed + 1)
    out = {"train": [rest[j] for j in train_pos], "val": sorted(rest[j] for j in val_pos), "test": test}
    return {k: v for k, v in out.items() if v or k == "train"}


def _synthetic(cfg: ml_collections.ConfigDict, make: Callable) -> tuple[Splits, list[str]]:
    sizes = {"train": cfg.num_train, "val": cfg.num_eval, "test": cfg.num_eval}
    splits = synthetic.split(make, sizes, seed=cfg.seed, size=tuple(cfg.size), num_classes=cfg.num_classes)
    return splits, [f"class{i}" for i in range(cfg.num_classes)]


SOURCES: dict[str, Callable] = {
    "icbm152": _icbm152,
    "icbm152_patches": _icbm152_patches,
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
    """What a source provides: splits (arrays in memory, or cached random-access sources) and facts about the
    labels that configs may leave to the data (`task.num_classes=0`, `task.multi_label='auto'`)."""

    splits: Splits
    class_names: list[str]
    multi_label: bool = False

    def num_examples(self, split: str) -> int:
        return len(as_source(self.splits[split]))


def load_splits(cfg: ml_collections.ConfigDict) -> Dataset:
    """Load every split named by the source."""
    from medjax.data.medmnist import MEDMNIST

    cfg = schema.filled("data", cfg)
    if cfg.name in MEDMNIST:
        return _medmnist(cfg)
    result = SOURCES[cfg.name](cfg)
    if isinstance(result, Dataset):
        return result
    splits, class_names = result
    for split, arrays in splits.items():
        for key, value in arrays.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise MedjaxError(f"dataset {cfg.name!r}: split {split!r} has non-finite values in {key!r}")
    return Dataset(splits, class_names)


def train_transform(cfg: ml_collections.ConfigDict):
    """The host-side per-example transform of the training stream, or None: clips of `cfg.clip_length` frames
    every `cfg.clip_stride` (image sequences, `medjax.data.clips`), then random patches of `cfg.patch_size` with
    foreground ratio `cfg.fg_ratio` (large volumes); or `cfg.bag_size` instances drawn per bag (multiple-instance
    learning, `medjax.data.bags`). Evaluation always sees whole examples."""
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
        steps.append(_patch_transform(tuple(cfg.patch_size), cfg.fg_ratio))
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def transform(example: dict, rng: np.random.Generator) -> dict:
        for step in steps:
            example = step(example, rng)
        return example

    return transform


def _patch_transform(patch_size: tuple[int, ...], fg_ratio: float):
    from medjax.data.patches import sample_patches

    def transform(example: dict, rng: np.random.Generator) -> dict:
        if set(example) - {"image", "label"}:
            raise MedjaxError(f"config.data.patch_size: patch sampling carries only image and label, but the "
                              f"examples also hold {sorted(set(example) - {'image', 'label'})}; unset patch_size")
        seed = int(rng.integers(2**31))
        images, labels = sample_patches(example["image"], example["label"], patch_size, 1, fg_ratio, seed)
        return {"image": images[0], "label": labels[0]}

    return transform
