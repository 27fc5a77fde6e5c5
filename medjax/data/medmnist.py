"""MedMNIST v2 / MedMNIST+ datasets read from the `.npz` files the `medmnist` package downloads.

The `medmnist` package itself is not needed (and nothing is downloaded here): the table below carries what its
`INFO` holds that training needs (task, channels, class names), so a wrong or stale file is caught by name
instead of surfacing later as a shape or label error inside a jitted step.

Files: ``{root}/{name}.npz`` at size 28, ``{root}/{name}_{size}.npz`` otherwise (2D: 64, 128, 224; 3D: 64), each
holding ``{train,val,test}_images`` (uint8; (N,S,S) grey or (N,S,S,3) RGB in 2D, (N,S,S,S) in 3D) and
``{train,val,test}_labels`` (uint8 (N,1); (N,14) 0/1 for ChestMNIST). The official splits are kept as they are.

Memory: a whole split is decoded and converted to float32 (4 bytes per pixel), e.g. TissueMNIST-224 train is
165,466 x 224 x 224 x 4 B = 33 GB; pass ``splits=`` to load only what you need.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

from medjax.errors import MedjaxError

SPLITS = ("train", "val", "test")
SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)
DEFAULT_ROOT = os.path.join(os.path.expanduser("~"), ".medmnist")  # where the medmnist package saves files

MULTI_CLASS = "multi-class"
BINARY_CLASS = "binary-class"
MULTI_LABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"


@dataclasses.dataclass(frozen=True)
class MedMNISTInfo:
    """One row of the table: what a loaded split must look like, and how to name its classes."""

    name: str
    python_class: str  # the medmnist package's class, used in the download hint
    task: str  # MULTI_CLASS, BINARY_CLASS, MULTI_LABEL or ORDINAL (as the medmnist INFO spells them)
    n_channels: int
    class_names: tuple[str, ...]
    is_3d: bool
    n_samples: tuple[int, int, int]  # (train, val, test) as published at size 28; informational, never checked

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def multi_label(self) -> bool:
        return self.task == MULTI_LABEL

    @property
    def sizes(self) -> tuple[int, ...]:
        return SIZES_3D if self.is_3d else SIZES_2D


_ORGAN_2D = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
             "lung-right", "pancreas", "spleen")


def _row(name, python_class, task, n_channels, class_names, n_samples, is_3d=False) -> tuple[str, MedMNISTInfo]:
    return name, MedMNISTInfo(name, python_class, task, n_channels, tuple(class_names), is_3d, n_samples)


# Transcribed from medmnist/info.py (v2.1 / v3): class order is the label index.
MEDMNIST: dict[str, MedMNISTInfo] = dict([
    _row("pathmnist", "PathMNIST", MULTI_CLASS, 3,
         ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
          "cancer-associated stroma", "colorectal adenocarcinoma epithelium"), (89996, 10004, 7180)),
    _row("chestmnist", "ChestMNIST", MULTI_LABEL, 1,
         ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
          "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
         (78468, 11219, 22433)),
    _row("dermamnist", "DermaMNIST", MULTI_CLASS, 3,
         ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
          "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"), (7007, 1003, 2005)),
    _row("octmnist", "OCTMNIST", MULTI_CLASS, 1,
         ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"), (97477, 10832, 1000)),
    _row("pneumoniamnist", "PneumoniaMNIST", BINARY_CLASS, 1, ("normal", "pneumonia"), (4708, 524, 624)),
    _row("retinamnist", "RetinaMNIST", ORDINAL, 3, ("0", "1", "2", "3", "4"), (1080, 120, 400)),
    _row("breastmnist", "BreastMNIST", BINARY_CLASS, 1, ("malignant", "normal, benign"), (546, 78, 156)),
    _row("bloodmnist", "BloodMNIST", MULTI_CLASS, 3,
         ("basophil", "eosinophil", "erythroblast",
          "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
          "neutrophil", "platelet"), (11959, 1712, 3421)),
    _row("tissuemnist", "TissueMNIST", MULTI_CLASS, 1,
         ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
          "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
          "Thick Ascending Limb"), (165466, 23640, 47280)),
    _row("organamnist", "OrganAMNIST", MULTI_CLASS, 1, _ORGAN_2D, (34581, 6491, 17778)),
    _row("organcmnist", "OrganCMNIST", MULTI_CLASS, 1, _ORGAN_2D, (13000, 2392, 8268)),
    _row("organsmnist", "OrganSMNIST", MULTI_CLASS, 1, _ORGAN_2D, (13940, 2452, 8829)),
    # The 3D organ dataset orders its 11 classes differently from the 2D ones (as medmnist's INFO does).
    _row("organmnist3d", "OrganMNIST3D", MULTI_CLASS, 1,
         ("liver", "kidney-right", "kidney-left", "femur-right", "femur-left", "bladder", "heart", "lung-right",
          "lung-left", "spleen", "pancreas"), (972, 161, 610), is_3d=True),
    _row("nodulemnist3d", "NoduleMNIST3D", BINARY_CLASS, 1, ("benign", "malignant"), (1158, 165, 310), is_3d=True),
    _row("adrenalmnist3d", "AdrenalMNIST3D", BINARY_CLASS, 1, ("normal", "hyperplasia"), (1188, 98, 298),
         is_3d=True),
    _row("fracturemnist3d", "FractureMNIST3D", MULTI_CLASS, 1,
         ("buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"), (1027, 103, 240),
         is_3d=True),
    _row("vesselmnist3d", "VesselMNIST3D", BINARY_CLASS, 1, ("vessel", "aneurysm"), (1335, 192, 382), is_3d=True),
    _row("synapsemnist3d", "SynapseMNIST3D", BINARY_CLASS, 1, ("inhibitory synapse", "excitatory synapse"),
         (1230, 177, 352), is_3d=True),
])


def medmnist_info(name: str) -> MedMNISTInfo:
    """The table row for `name` (case-insensitive); an unknown name lists the known ones."""
    key = str(name).lower()
    if key not in MEDMNIST:
        raise MedjaxError(f"unknown MedMNIST dataset {name!r}; known: {', '.join(MEDMNIST)}")
    return MEDMNIST[key]


def _check_size(info: MedMNISTInfo, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) not in info.sizes:
        kind = "3D" if info.is_3d else "2D"
        raise MedjaxError(f"MedMNIST {info.name} ({kind}) has no size {size!r}; available: {list(info.sizes)}")


def medmnist_filename(name: str, size: int = 28) -> str:
    """`{name}.npz` at 28, `{name}_{size}.npz` otherwise: the medmnist package's own naming."""
    info = medmnist_info(name)
    _check_size(info, size)
    return f"{info.name}.npz" if int(size) == 28 else f"{info.name}_{int(size)}.npz"


def medmnist_path(root: str | os.PathLike | None, name: str, size: int = 28) -> str:
    """Where the file for (name, size) is expected; `root=None` is the medmnist package's `~/.medmnist`."""
    return os.path.join(os.fspath(root) if root is not None else DEFAULT_ROOT, medmnist_filename(name, size))


def _download_hint(info: MedMNISTInfo, size: int, root: str) -> str:
    return (f"on a machine with network run `pip install medmnist && python -c \"import medmnist; "
            f"medmnist.{info.python_class}(split='train', download=True, size={size}, root='{root}')\"` "
            f"(or `python -m medmnist download --size={size} --root={root}` for every dataset), "
            f"then copy the .npz file there")


def _read(data, path: str, key: str) -> np.ndarray:
    try:
        return data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise MedjaxError(f"cannot read '{key}' from {path} (truncated or corrupt file?): {e}") from e


def _images(raw: np.ndarray, info: MedMNISTInfo, size: int, path: str, split: str) -> np.ndarray:
    """uint8 -> float32 / 255 with a channel axis; the shape must be what the table promises at this size."""
    n = raw.shape[0] if raw.ndim else 0
    spatial = (size,) * (3 if info.is_3d else 2)
    accepted = [(n, *spatial, info.n_channels)] + ([(n, *spatial)] if info.n_channels == 1 else [])
    if raw.shape not in accepted:
        raise MedjaxError(f"{path}: {split}_images has shape {raw.shape}; {info.name} at size {size} needs "
                          f"{' or '.join(str(s) for s in accepted)} (N images of {info.n_channels} channel(s))")
    if raw.dtype == np.uint8:
        images = raw.astype(np.float32)
        np.divide(images, 255.0, out=images)
    elif np.issubdtype(raw.dtype, np.floating):  # already scaled copies are accepted, but must be in [0, 1]
        images = raw.astype(np.float32)
        if images.size and not (np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0):
            raise MedjaxError(f"{path}: {split}_images is {raw.dtype} with values outside [0, 1] "
                              f"(range {np.nanmin(images)}..{np.nanmax(images)}); MedMNIST stores uint8")
    else:
        raise MedjaxError(f"{path}: {split}_images has dtype {raw.dtype}; MedMNIST stores uint8")
    if images.ndim == len(spatial) + 1:
        images = images[..., None]
    return images


def _labels(raw: np.ndarray, info: MedMNISTInfo, path: str, split: str) -> np.ndarray:
    """(N,1) -> (N,) int32 for single-label tasks; multi-label stays (N,K) and must be 0/1."""
    if not (np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_):
        raise MedjaxError(f"{path}: {split}_labels has dtype {raw.dtype}; expected integer class indices")
    if info.multi_label:
        if raw.ndim != 2 or raw.shape[1] != info.n_classes:
            raise MedjaxError(f"{path}: {split}_labels has shape {raw.shape}; {info.name} is multi-label and "
                              f"needs (N, {info.n_classes})")
        bad = np.setdiff1d(np.unique(raw), [0, 1])
        if bad.size:
            raise MedjaxError(f"{path}: {split}_labels of multi-label {info.name} must be 0/1; found values "
                              f"{bad[:10].tolist()}")
        return raw.astype(np.int32)
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise MedjaxError(f"{path}: {split}_labels has shape {raw.shape}; {info.name} needs (N,) or (N, 1)")
    labels = raw.astype(np.int64)
    bad = np.unique(labels[(labels < 0) | (labels >= info.n_classes)])
    if bad.size:
        raise MedjaxError(f"{path}: {split}_labels has values {bad[:10].tolist()} outside [0, {info.n_classes}) "
                          f"for {info.name} ({info.n_classes} classes)")
    return labels.astype(np.int32)


def load_medmnist(root: str | os.PathLike | None, name: str, size: int = 28, *,
                  splits: Sequence[str] = SPLITS) -> tuple[dict[str, dict[str, np.ndarray]], MedMNISTInfo]:
    """Read one MedMNIST file: ({split: {"image": float32 [0,1] channels-last, "label": int32}}, table row).

    Images: 2D (N,S,S,C), 3D (N,S,S,S,1). Labels: (N,) class indices, or (N,14) 0/1 for ChestMNIST.
    Everything the table pins (size, channels, class count, label form) is checked, so a wrong file fails here
    with its path rather than later in training. The file is only read.
    """
    info = medmnist_info(name)
    _check_size(info, size)
    size = int(size)
    root_str = os.fspath(root) if root is not None else DEFAULT_ROOT
    path = medmnist_path(root_str, info.name, size)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise MedjaxError(f"load_medmnist({info.name!r}): splits must be a non-empty subset of {list(SPLITS)}, "
                          f"got {list(splits)}")
    if not os.path.isfile(path):
        raise MedjaxError(f"MedMNIST file not found: {path}; {_download_hint(info, size, root_str)}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise MedjaxError(f"cannot read {path} (truncated or corrupt .npz?): {e}") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise MedjaxError(f"{path} is a single .npy array, not an .npz archive of MedMNIST splits")
    out: dict[str, dict[str, np.ndarray]] = {}
    with data:
        files = set(data.files)
        for split in splits:
            for part in ("images", "labels"):
                if f"{split}_{part}" not in files:
                    raise MedjaxError(f"{path} has no '{split}_{part}' array (found: {sorted(files)})")
            raw_images = _read(data, path, f"{split}_images")
            raw_labels = _read(data, path, f"{split}_labels")
            n_img = raw_images.shape[0] if raw_images.ndim else 0
            n_lab = raw_labels.shape[0] if raw_labels.ndim else 0
            if n_img != n_lab:
                raise MedjaxError(f"{path}: {split}_images has {n_img} rows but {split}_labels has {n_lab}")
            if n_img == 0:
                raise MedjaxError(f"{path}: split '{split}' is empty")
            out[split] = {"image": _images(raw_images, info, size, path, split),
                          "label": _labels(raw_labels, info, path, split)}
    return out, info
