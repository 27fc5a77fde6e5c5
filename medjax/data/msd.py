"""Medical Segmentation Decathlon (MSD) task folders: the index from ``dataset.json`` and one case at a time.

Layout (as the MSD tarballs unpack, e.g. ``Task04_Hippocampus/``)::

    dataset.json   {"name", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", ...},
                    "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...],
                    "test": ["./imagesTs/y.nii.gz", ...]}
    imagesTr/  labelsTr/  imagesTs/

The index comes from ``dataset.json`` (folders are not scanned, so stray files such as the macOS AppleDouble
``._*`` copies in the tarballs are ignored; listed ``._*`` entries are dropped too). Every listed file must exist.
The MSD's official test images have no labels (plain paths), so they are not used for training or scoring; a
``dataset.json`` whose ``test`` entries are ``{"image", "label"}`` pairs (datasets in this layout that publish test
labels) gives labelled test cases, which the ``msd`` source makes its test split (``medjax.data.splits``).

Without ``dataset.json`` (other challenges' layouts: PROMISE12, LUNA16 lung masks, preprocessed ACDC ``.h5``),
``images_dir`` and ``labels_dir`` are paired by file name: the label of ``<stem>.<ext>`` is
``<labels_dir>/<stem><label_suffix>.<any ext>``. ``images_dir`` may be a glob pattern (``subset*``,
``TrainingData_Part*``); ``labels_dir`` equal to ``images_dir`` means "beside each image" (an HDF5 file with an
empty suffix is then its own label, under another key). ``class_names`` / ``modalities`` replace what
dataset.json would say.
Files of every format ``formats.load_volume`` reads may be listed (NIfTI, NRRD, MetaImage, HDF5, TIFF).

Intensity normalisation (``normalize="auto"``), chosen per channel from the modality name:
    "CT"      -> ``ct_window(level=40, width=400)``: HU are absolute, so a fixed soft-tissue window maps the same
                 tissue to the same value in every scan (override ``ct_level``/``ct_width``; lung: -600/1500);
    otherwise -> ``zscore`` over the channel's non-zero voxels (MR intensities are arbitrary per scan; the zero
                 background is left out and stays 0), as nnU-Net / MONAI ``NormalizeIntensity(nonzero=True)``.
``normalize`` may also be "ct", "zscore" (every channel) or "none" (raw values, float32).
Order (as nnU-Net): normalise on the stored grid, so statistics come from acquired voxels, then resample.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from medjax.data.formats import load_label, load_volume
from medjax.data.hdf5 import DEFAULT_LAYOUT, Hdf5Layout
from medjax.data.nifti import check_pair
from medjax.data.volume import Volume, check_finite, ct_window, resample_to_spacing, zscore
from medjax.errors import MedjaxError

NORMALIZE = ("auto", "ct", "zscore", "none")


@dataclasses.dataclass(frozen=True)
class MsdIndex:
    """What ``dataset.json`` (or the folders paired by file name) promises, every path absolute and existing."""

    root: str
    name: str
    class_names: tuple[str, ...]  # index = class id ("labels" ordered by integer key, 0 = background)
    modalities: tuple[str, ...]  # one per image channel ("modality" ordered by integer key)
    training: tuple[tuple[str, str], ...]  # (image path, label path)
    test: tuple[str, ...]  # image paths (no labels)
    labelled_test: tuple[tuple[str, str], ...] = ()  # test entries with labels: (image path, label path)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def cases(self) -> tuple[tuple[str, str], ...]:
        """Every labelled case: the training cases, then the labelled test entries (``load_msd_case``'s index)."""
        return self.training + self.labelled_test


def _ordered(table, key: str, dataset_json: str) -> tuple[str, ...]:
    """{"0": a, "1": b} -> (a, b); keys must be the integers 0..n-1 so position == class/channel index."""
    if not isinstance(table, dict) or not table:
        raise MedjaxError(f"{dataset_json}: '{key}' must be a non-empty mapping like {{\"0\": ...}}, got {table!r}")
    try:
        items = sorted((int(k), str(v)) for k, v in table.items())
    except (TypeError, ValueError) as e:
        raise MedjaxError(f"{dataset_json}: '{key}' keys must be integers, got {sorted(table)}") from e
    if [k for k, _ in items] != list(range(len(items))):
        raise MedjaxError(f"{dataset_json}: '{key}' keys must be 0..{len(items) - 1}, got {[k for k, _ in items]}")
    return tuple(v for _, v in items)


def _is_appledouble(entry: str) -> bool:
    return os.path.basename(entry).startswith("._")


def load_msd_index(root: str, *, images_dir: str = "imagesTr", labels_dir: str = "labelsTr", label_suffix: str = "",
                   class_names: Sequence[str] = (), modalities: Sequence[str] = ()) -> MsdIndex:
    """Read and check ``<root>/dataset.json``, or pair ``images_dir`` with ``labels_dir`` by file name when there
    is none (see the module docstring); no image is opened."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise MedjaxError(f"MSD task folder not found: {root}")
    dataset_json = os.path.join(root, "dataset.json")
    if not os.path.isfile(dataset_json):
        if _image_folders(root, images_dir):
            return _index_from_folders(root, images_dir, labels_dir, label_suffix, class_names, modalities)
        raise MedjaxError(f"{root} is not an MSD task folder: no dataset.json (found: {sorted(os.listdir(root))[:10]})"
                          f" and no {images_dir}/ folder to pair with {labels_dir}/ by file name")
    try:
        with open(dataset_json, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MedjaxError(f"cannot read {dataset_json}: {e}") from e
    if not isinstance(meta, dict):
        raise MedjaxError(f"{dataset_json}: expected a JSON object, got {type(meta).__name__}")
    for key in ("labels", "modality", "training"):
        if key not in meta:
            raise MedjaxError(f"{dataset_json} has no '{key}' entry (found: {sorted(meta)})")
    class_names = _ordered(meta["labels"], "labels", dataset_json)
    modalities = _ordered(meta["modality"], "modality", dataset_json)

    missing: list[str] = []

    def resolve(entry, where: str) -> str:
        if not isinstance(entry, str) or not entry:
            raise MedjaxError(f"{dataset_json}: {where} must be a file path, got {entry!r}")
        path = os.path.normpath(os.path.join(root, entry))
        if not os.path.isfile(path):
            missing.append(path)
        return path

    training = meta["training"]
    if not isinstance(training, list):
        raise MedjaxError(f"{dataset_json}: 'training' must be a list of {{image, label}}, "
                          f"got {type(training).__name__}")
    cases = []
    for n, case in enumerate(training):
        if not isinstance(case, dict) or "image" not in case or "label" not in case:
            raise MedjaxError(f"{dataset_json}: training[{n}] must be {{\"image\": ..., \"label\": ...}}, got {case!r}")
        if _is_appledouble(str(case["image"])):
            continue
        cases.append((resolve(case["image"], f"training[{n}].image"), resolve(case["label"], f"training[{n}].label")))
    if not cases:
        raise MedjaxError(f"{dataset_json}: the training list is empty")
    test_entries = meta.get("test", [])
    if not isinstance(test_entries, list):
        raise MedjaxError(f"{dataset_json}: 'test' must be a list of paths or {{image, label}} entries, got "
                          f"{type(test_entries).__name__}")
    test, labelled_test = [], []
    for n, entry in enumerate(test_entries):
        if isinstance(entry, dict):
            if "image" not in entry:
                raise MedjaxError(f"{dataset_json}: test[{n}] must be a path or {{\"image\": ..., \"label\": ...}}, "
                                  f"got {entry!r}")
            if _is_appledouble(str(entry["image"])):
                continue
            image = resolve(entry["image"], f"test[{n}].image")
            if "label" in entry:
                labelled_test.append((image, resolve(entry["label"], f"test[{n}].label")))
            else:
                test.append(image)
        elif not _is_appledouble(str(entry)):
            test.append(resolve(entry, f"test[{n}]"))
    if missing:
        raise MedjaxError(f"{dataset_json} lists {len(missing)} file(s) that do not exist, e.g. {missing[:3]}")
    return MsdIndex(root=root, name=str(meta.get("name", os.path.basename(os.path.normpath(root)))),
                    class_names=class_names, modalities=modalities, training=tuple(cases), test=tuple(test),
                    labelled_test=tuple(labelled_test))


def _image_folders(root: str, images_dir: str) -> list[str]:
    """The folders ``images_dir`` names under ``root``: one, or every match of a glob pattern (``subset*``)."""
    import glob

    return [p for p in sorted(glob.glob(os.path.join(glob.escape(root), images_dir))) if os.path.isdir(p)]


def _index_from_folders(root: str, images_dir: str, labels_dir: str, label_suffix: str,
                        class_names: Sequence[str], modalities: Sequence[str]) -> MsdIndex:
    from medjax.data.formats import case_files, case_name, find_case, format_of

    if not class_names or not modalities:
        raise MedjaxError(f"{root} has no dataset.json: set config.data.class_names (background first) and "
                          f"config.data.modalities (one per image channel, e.g. CT or MR) to pair {images_dir}/ with "
                          f"{labels_dir}/ by file name")
    beside = labels_dir == images_dir  # each label in its image's folder
    if not beside and not os.path.isdir(os.path.join(root, labels_dir)):
        raise MedjaxError(f"label folder not found: {os.path.join(root, labels_dir)} (config.data.labels_dir)")
    cases, lacking = [], []
    for image_root in _image_folders(root, images_dir):
        label_root = image_root if beside else os.path.join(root, labels_dir)
        same_folder = os.path.realpath(image_root) == os.path.realpath(label_root)
        for name in case_files(image_root):
            image, stem = os.path.join(image_root, name), case_name(name)
            if os.path.isdir(image) or (same_folder and label_suffix and stem.endswith(label_suffix)):
                continue  # a DICOM folder is no volume file here; a label beside its image is not a case
            label = find_case(label_root, stem + label_suffix)
            if label is None:
                lacking.append(image)
            elif label == image and format_of(image) != "hdf5":
                raise MedjaxError(f"{image} would be its own label: set config.data.label_suffix (e.g. "
                                  f"_segmentation) or config.data.labels_dir")
            else:
                cases.append((image, label))
    if lacking:
        raise MedjaxError(f"{len(lacking)} image(s) without a label named <stem>{label_suffix}.<ext> in "
                          f"{'its folder' if beside else os.path.join(root, labels_dir)}, e.g. {lacking[:3]}")
    if not cases:
        raise MedjaxError(f"no image files in {os.path.join(root, images_dir)} (NIfTI, NRRD, MetaImage, HDF5, TIFF)")
    return MsdIndex(root=root, name=os.path.basename(os.path.normpath(root)), class_names=tuple(map(str, class_names)),
                    modalities=tuple(map(str, modalities)), training=tuple(cases), test=())


def _normalize(image: Volume, modalities: Sequence[str], normalize: str, ct_level: float, ct_width: float) -> Volume:
    if normalize not in NORMALIZE:
        raise MedjaxError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if normalize == "none":
        return image
    out = np.empty(image.array.shape, np.float32)
    for c, modality in enumerate(modalities):
        use_ct = normalize == "ct" or (normalize == "auto" and modality.strip().upper() == "CT")
        x = image.array[..., c]
        out[..., c] = ct_window(x, ct_level, ct_width) if use_ct else zscore(x)
    return dataclasses.replace(image, array=out)


def load_msd_case(
    index: MsdIndex,
    i: int,
    spacing: float | Sequence[float] | None = None,
    normalize: str = "auto",
    *,
    ct_level: float = 40.0,
    ct_width: float = 400.0,
    hdf5: Hdf5Layout = DEFAULT_LAYOUT,
) -> tuple[Volume, Volume]:
    """Labelled case ``i`` of ``index.cases`` (training cases first, then labelled test entries): image
    (X, Y, Z, C) float32 normalised, label (X, Y, Z) int32, both RAS+, checked (finite image, channels ==
    modalities, labels in 0..num_classes-1, same grid), then resampled to ``spacing`` mm if given (linear image,
    nearest label)."""
    n = len(index.cases)
    if not (isinstance(i, (int, np.integer)) and 0 <= i < n):
        raise MedjaxError(f"{index.root}: case {i!r} does not exist; labelled cases are 0..{n - 1}")
    image_path, label_path = index.cases[int(i)]
    image = check_finite(load_volume(image_path, hdf5=hdf5))
    if image.array.shape[3] != len(index.modalities):
        raise MedjaxError(f"{image_path} has {image.array.shape[3]} channel(s) but dataset.json lists "
                          f"{len(index.modalities)} modalities {list(index.modalities)}")
    label = load_label(label_path, num_classes=index.num_classes, hdf5=hdf5)
    check_pair(image, label)
    image = _normalize(image, index.modalities, normalize, ct_level, ct_width)
    if spacing is not None:
        image = resample_to_spacing(image, spacing, is_label=False)
        label = resample_to_spacing(label, spacing, is_label=True)
    return image, label

