"""Data with boxes for the detection task: a boxes file per dataset, boxes from label maps, box-aware patches.

Every example of a detection split carries its boxes in the corner convention of `medjax.detection.boxes` (voxel
units along the image's array axes), padded to `data.max_boxes` = G rows: "boxes" (G, 2d) float32, "box_labels"
(G,) int32 (the 0-based foreground class; -1 on padding) and "box_valid" (G,) bool, next to "image"
(*spatial, C) and a "label" map (*spatial) whose values are class + 1 inside the objects (the Retina U-Net's
segmentation target and the patch sampler's foreground).

Boxes come from:

(a) a boxes file (source `boxes`, `load_boxes_source`), read with images through `medjax.data.formats.load_volume`:
    - JSON, MONAI's detection datalist: `{"training": [{"image": path, "box": [[...], ...], "label": [...]}],
      "validation": [...], "test": [...]}` (image paths relative to `data.root`; "validation" / "test" entries
      become those splits, else `medjax.data.splits` decides); labels are class indices or names;
    - CSV with a header, one box per row: `case,class,x1,y1,(z1,)x2,y2,(z2)`; the case's image is
      `<root>/<images_dir>/<case>.<ext>` (`formats.find_case`); a row `case,,...` with empty cells lists a case
      without boxes.
    Boxes are corners (`box_format="corner"`) or centre and size (`"center"`, MONAI's LUNA16 datalists), in voxel
    (`coordinates="voxel"`) or world (`"world"`: RAS mm of the loaded volume's affine) coordinates. A world point
    maps to the continuous voxel index of `boxes.world_to_voxel` (voxel centres at integers), so its box
    coordinate is that index + 1/2 (a box from 2 to 5 covers voxels 2, 3, 4). 2D datasets (4 coordinates per box)
    read images with one slice along the third axis. The "label" map is the boxes painted in
    (`medjax.detection.instances.rasterize_boxes`).
(b) the label maps of any segmentation source (`msd`, `image_folder`, ...), when the task is detection
    (`with_boxes`): one box per connected component of each class (`instances.component_boxes`, nnDetection's
    convention). Every source names its classes background first (its label maps' values); the detection
    classes are those names without the background.

Bad input is a `MedjaxError` naming the file, case and box: a box outside its image (beyond 1e-3 voxels), a box of
zero size, a class the config does not declare, a case whose image does not exist, and a training split without a
single object.

Training patches (`box_patch`, used by the training stream whenever examples carry boxes): with probability
`fg_ratio` the patch holds a uniformly drawn box (every object, large or small, is as likely), placed uniformly
among the starts that keep that whole box inside (along an axis where the box is longer than the patch: among
those that keep a uniformly drawn point of it inside), otherwise placed uniformly; boxes are shifted into the
patch, clipped to it, and dropped when less than `data.min_box_visible` of their area (volume) stays inside.
Centring patches on objects, as segmentation patches are, taught a 3D detector that lesions sit in the middle
of its input (it detected the centre of every patch and no lesion of a whole volume).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from medjax.data import splits as splits_lib
from medjax.data.stream import as_source
from medjax.detection import boxes as box_lib
from medjax.detection.instances import component_boxes, pad_boxes, rasterize_boxes
from medjax.errors import MedjaxError

BOX_KEYS = ("boxes", "box_labels", "box_valid")
COORDINATES = ("voxel", "world")
BOX_FORMATS = ("corner", "center")
NORMALIZE = ("zscore", "ct", "none")
OUTSIDE_TOLERANCE = 1e-3  # voxels: world -> voxel round-off at the image border
JSON_SPLITS = {"training": "train", "validation": "val", "test": "test"}


# --------------------------------------------------------------------------------------------------- checks

def check_boxes(boxes: np.ndarray, spatial_shape: Sequence[int], where: str) -> None:
    """Every box non-degenerate and inside the image [0, size] (within `OUTSIDE_TOLERANCE`), else a MedjaxError
    naming `where`, the box and the axis."""
    boxes = np.asarray(boxes, np.float64)
    d = len(spatial_shape)
    if boxes.size and boxes.shape[-1] != 2 * d:
        raise MedjaxError(f"{where}: boxes have {boxes.shape[-1]} coordinates but the image is {d}D "
                          f"(shape {tuple(spatial_shape)}): {d}D boxes need {2 * d}")
    size = np.asarray(spatial_shape, np.float64)
    for i, box in enumerate(boxes.reshape(-1, 2 * d)):
        lo, hi = box[:d], box[d:]
        if not np.all(np.isfinite(box)):
            raise MedjaxError(f"{where}: box {i} {box.tolist()} is not finite")
        if np.any(hi <= lo):
            axis = int(np.argmax(hi <= lo))
            raise MedjaxError(f"{where}: box {i} {box.tolist()} has zero size along axis {axis} (corners must be "
                              f"(x1, y1{', z1' if d == 3 else ''}, x2, ...) with x2 > x1)")
        if np.any(lo < -OUTSIDE_TOLERANCE) or np.any(hi > size + OUTSIDE_TOLERANCE):
            raise MedjaxError(f"{where}: box {i} {box.tolist()} lies outside the image of size "
                              f"{tuple(int(n) for n in spatial_shape)} (voxels)")


def world_to_box(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) boxes -> voxel boxes of the image with voxel-to-world `affine`: `boxes.world_to_voxel` (a
    continuous voxel index, centres at integers) + 1/2 (box coordinates count voxel edges)."""
    return np.asarray(box_lib.world_to_voxel(np.asarray(boxes, np.float32), affine), np.float64) + 0.5


def _corners(rows: np.ndarray, box_format: str) -> np.ndarray:
    if box_format == "center" and rows.size:
        return np.asarray(box_lib.from_center_size(rows.astype(np.float32)), np.float64)
    return rows


# ----------------------------------------------------------------------------------------- the boxes file

@dataclasses.dataclass
class BoxEntry:
    """One case of a boxes file: its id, image file, boxes (n, 2d) as written and class indices (n,)."""

    case: str
    image: str
    boxes: np.ndarray
    classes: np.ndarray
    split: str | None = None


def _class_index(value: Any, class_names: Sequence[str], where: str) -> int:
    names = list(class_names)
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(names):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return _class_index(int(value), names, where)
    raise MedjaxError(f"{where}: class {value!r} is not declared in config.data.class_names {names} (give a name or "
                      f"an index 0..{len(names) - 1})")


def _box_rows(values: Any, where: str) -> np.ndarray:
    try:
        rows = np.asarray(values, np.float64)
    except (TypeError, ValueError) as e:
        raise MedjaxError(f"{where}: boxes must be lists of numbers, got {values!r:.80}") from e
    if rows.size == 0:
        return rows.reshape(0, 0)
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2 or rows.shape[1] not in (4, 6):
        raise MedjaxError(f"{where}: each box needs 4 (2D) or 6 (3D) numbers, got shape {rows.shape}")
    return rows


def _read_json(path: str, root: str, class_names: Sequence[str], box_format: str) -> list[BoxEntry]:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MedjaxError(f"cannot read boxes file {path}: {e}") from e
    if not isinstance(content, dict) or "training" not in content or set(content) - set(JSON_SPLITS):
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise MedjaxError(f"{path}: expected MONAI's detection datalist {{\"training\": [...], \"validation\": [...], "
                          f"\"test\": [...]}} (training required), got {keys}")
    given = set(content) != {"training"}
    entries = []
    for key, split in JSON_SPLITS.items():
        for i, item in enumerate(content.get(key) or []):
            where = f"{path} {key}[{i}]"
            if not isinstance(item, dict) or "image" not in item:
                raise MedjaxError(f"{where}: expected {{\"image\": path, \"box\": [[...]], \"label\": [...]}}")
            image = os.path.join(root, str(item["image"]))
            where = f"{where} (case {splits_lib.case_id(image)!r})"
            boxes = _box_rows(item.get("box", []), where)
            labels = list(item.get("label", []))
            if len(labels) != len(boxes):
                raise MedjaxError(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
            entries.append(BoxEntry(splits_lib.case_id(image), image, _corners(boxes, box_format),
                                    np.asarray([_class_index(v, class_names, where) for v in labels], np.int32),
                                    split if given else None))
    return entries


def _read_csv(path: str, images_dir: str, class_names: Sequence[str], box_format: str) -> list[BoxEntry]:
    from medjax.data.formats import find_case

    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MedjaxError(f"cannot read boxes file {path}: {e}") from e
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["case", "class"]:
        raise MedjaxError(f"{path}: expected a header case,class,x1,y1,(z1,)x2,y2,(z2) and one box per row")
    by_case: dict[str, tuple[list, list]] = {}
    for n, row in enumerate(rows[1:], start=2):
        case = row[0].strip()
        where = f"{path} line {n} (case {case!r})"
        boxes, classes = by_case.setdefault(case, ([], []))
        values = [c.strip() for c in row[1:]]
        if not any(values):
            continue  # a case without boxes
        if len(values) not in (5, 7):
            raise MedjaxError(f"{where}: expected case,class and 4 (2D) or 6 (3D) coordinates, got {len(row)} cells")
        boxes.append(_box_rows([float(v) for v in values[1:]], where)[0])
        classes.append(_class_index(values[0], class_names, where))
    entries = []
    for case, (boxes, classes) in by_case.items():
        image = find_case(images_dir, case)
        if image is None:
            raise MedjaxError(f"{path} names case {case!r}, but {images_dir} has no image file {case}.<ext>")
        rows_ = np.asarray(boxes, np.float64).reshape(len(boxes), -1) if boxes else np.zeros((0, 0))
        entries.append(BoxEntry(case, image, _corners(rows_, box_format), np.asarray(classes, np.int32)))
    return entries


def read_boxes_file(path: str, root: str, images_dir: str, class_names: Sequence[str],
                    box_format: str = "corner") -> list[BoxEntry]:
    """The cases of a boxes file (JSON datalist or CSV, see the module docstring); every image must exist and
    every class be declared; all boxes of the file have one rank."""
    if box_format not in BOX_FORMATS:
        raise MedjaxError(f"unknown config.data.box_format={box_format!r}; known: {list(BOX_FORMATS)}")
    if not class_names:
        raise MedjaxError("config.data.class_names must declare the box classes (foreground only, e.g. ('nodule',))")
    if not os.path.isfile(path):
        raise MedjaxError(f"boxes file not found: {path} (config.data.boxes_file)")
    entries = (_read_csv(path, images_dir, class_names, box_format) if path.lower().endswith(".csv")
               else _read_json(path, root, class_names, box_format))
    if not entries:
        raise MedjaxError(f"{path} lists no cases")
    for e in entries:
        if not os.path.exists(e.image):
            raise MedjaxError(f"{path} names case {e.case!r} whose image {e.image} does not exist")
    widths = {e.boxes.shape[1] for e in entries if e.boxes.size}
    if len(widths) > 1:
        raise MedjaxError(f"{path} mixes 2D and 3D boxes ({sorted(widths)} coordinates)")
    return entries


def _normalize(image: np.ndarray, cfg: ml_collections.ConfigDict) -> np.ndarray:
    from medjax.data.volume import ct_window, zscore

    if cfg.normalize not in NORMALIZE:
        raise MedjaxError(f"unknown config.data.normalize={cfg.normalize!r}; known: {list(NORMALIZE)}")
    if cfg.normalize == "zscore":
        return zscore(image)
    if cfg.normalize == "ct":
        return ct_window(image, float(cfg.ct_level), float(cfg.ct_width))
    return image.astype(np.float32)


def load_boxes_case(entry: BoxEntry, cfg: ml_collections.ConfigDict, dims: int) -> dict[str, np.ndarray]:
    """One case as a detection example (module docstring): the image read, normalised, 2D if `dims` is 2; its
    boxes converted to voxel boxes, checked and padded to `cfg.max_boxes`; the painted label map; the spacing."""
    from medjax.data.formats import load_volume
    from medjax.data.volume import check_finite

    volume = check_finite(load_volume(entry.image))
    image, affine = _normalize(volume.array, cfg), np.asarray(volume.affine, np.float64)
    spacing = np.asarray(volume.spacing, np.float32)
    if dims == 2:
        if image.shape[2] != 1:
            raise MedjaxError(f"{entry.image}: 2D boxes (4 coordinates) need 2D images, but it has {image.shape[2]} "
                              f"slices along its third axis")
        image, spacing = image[:, :, 0], spacing[:2]
        affine = affine[np.ix_([0, 1, 3], [0, 1, 3])]
    boxes = entry.boxes.reshape(-1, 2 * dims)
    if cfg.coordinates == "world" and len(boxes):
        boxes = world_to_box(boxes, affine)
    where = f"case {entry.case!r} ({entry.image})"
    check_boxes(boxes, image.shape[:-1], where)
    padded, classes, valid = pad_boxes(np.clip(boxes, 0, np.tile(image.shape[:-1], 2)), entry.classes,
                                       cfg.max_boxes, where)
    return {"image": image.astype(np.float32), "label": rasterize_boxes(padded, classes, valid, image.shape[:-1]),
            "boxes": padded, "box_labels": classes, "box_valid": valid, "spacing": spacing}


def load_boxes_source(cfg: ml_collections.ConfigDict) -> tuple[dict, list[str], dict[str, list[str]]]:
    """The `boxes` source: ({split: cached random-access source}, class names: "background" then the declared
    ones, as the painted label maps number them, {split: case ids}) from `data.root` and `data.boxes_file`, split by
    `medjax.data.splits`, cached as array_record like the `msd` source."""
    from medjax.data.cache import build_or_load, file_fingerprint

    if not cfg.root:
        raise MedjaxError("config.data.root must name the dataset folder (with config.data.boxes_file) for "
                          "data.name='boxes'")
    if cfg.coordinates not in COORDINATES:
        raise MedjaxError(f"unknown config.data.coordinates={cfg.coordinates!r}; known: {list(COORDINATES)}")
    class_names = [str(c) for c in cfg.class_names]
    path = os.path.join(cfg.root, cfg.boxes_file)
    entries = read_boxes_file(path, cfg.root, os.path.join(cfg.root, cfg.images_dir), class_names, cfg.box_format)
    dims = next((e.boxes.shape[1] // 2 for e in entries if e.boxes.size), 3)
    given = [e.split for e in entries] if entries[0].split is not None else None
    split = splits_lib.resolve([e.case for e in entries], cfg, given, f"the split keys of {path}")
    channels = _channels(entries[0].image)

    def generator(cases: list[int]):
        def gen():
            for i in cases:
                yield load_boxes_case(entries[i], cfg, dims)
        return gen

    spatial = (None,) * dims
    g = int(cfg.max_boxes)
    features = {"image": ((*spatial, channels), np.float32), "label": (spatial, np.int32),
                "boxes": ((g, 2 * dims), np.float32), "box_labels": ((g,), np.int32), "box_valid": ((g,), np.bool_),
                "spacing": ((dims,), np.float32)}
    from medjax.data.formats import data_files

    files = {f for e in entries for f in data_files(e.image)} | {path}
    spec = {"source": "boxes", "root": os.path.abspath(cfg.root), "split": split, "dims": dims,
            "entries": [(e.case, e.image, e.boxes.tolist(), e.classes.tolist()) for e in entries],
            **{k: cfg[k] for k in ("coordinates", "box_format", "normalize", "ct_level", "ct_width", "max_boxes")},
            "class_names": class_names, "files": file_fingerprint(sorted(files))}
    name = "boxes_" + "".join(ch if ch.isalnum() else "_" for ch in os.path.basename(os.path.normpath(cfg.root)))
    sources = build_or_load(name, spec, features, {k: generator(v) for k, v in split.items()},
                            cache_dir=cfg.cache_dir or None)
    return sources, ["background", *class_names], splits_lib.select_ids([e.case for e in entries], split)


def _channels(image_path: str) -> int:
    from medjax.data.formats import load_volume

    return int(load_volume(image_path).array.shape[-1])


# ------------------------------------------------------------------------------ boxes from segmentation data

class BoxedSource:
    """A random-access source whose examples get the boxes of a precomputed table (one row per example)."""

    def __init__(self, source: Any, table: Mapping[str, np.ndarray]):
        self.source, self.table = source, dict(table)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {**self.source[i], **{k: v[i] for k, v in self.table.items()}}


def _component_table(source: Any, names: Sequence[str], max_boxes: int, split: str,
                     cases: Sequence[str]) -> dict[str, np.ndarray]:
    rows = []
    for i in range(len(source)):
        label = np.asarray(source[i]["label"])
        where = f"split {split!r} case {cases[i]!r}"
        top = int(label.max(initial=0))
        if top >= len(names) or int(label.min(initial=0)) < 0:
            bad = top if top >= len(names) else int(label.min())
            raise MedjaxError(f"{where}: label value {bad} is not a declared class (the dataset declares {list(names)}"
                              f", values 0..{len(names) - 1})")
        boxes, classes = component_boxes(label, len(names) - 1)
        rows.append(pad_boxes(boxes, classes, max_boxes, where))
    return {k: np.stack([r[j] for r in rows]) for j, k in enumerate(BOX_KEYS)}


def with_boxes(data: Any, cfg: ml_collections.ConfigDict) -> Any:
    """`data` (a `medjax.data.sources.Dataset`) with boxes on every example and its foreground class names (every
    source's names start with the background, as its label maps): splits that carry boxes are kept, the others get
    one box per connected component of each label map (`component_boxes`). A training split without any box is an
    error."""
    from medjax.data.sources import Dataset

    out: dict[str, Any] = {}
    names = list(data.class_names)
    derived = False
    for split, value in data.splits.items():
        source = as_source(value, f"split {split!r}")
        if len(source) and "boxes" in source[0]:
            out[split] = value
            continue
        if not len(source) or "label" not in source[0]:
            raise MedjaxError(f"split {split!r} of dataset {cfg.name!r} has neither boxes nor label maps, which the "
                              f"detection task needs")
        derived = True
        table = _component_table(source, names, int(cfg.max_boxes), split, data.cases(split))
        out[split] = {**value, **table} if isinstance(value, Mapping) else BoxedSource(source, table)
    train = as_source(out["train"], "train split")
    if not any(np.asarray(train[i]["box_valid"]).any() for i in range(len(train))):
        what = "label map" if derived else "boxes list"
        raise MedjaxError(f"dataset {cfg.name!r}: every training case's {what} is empty (no object to detect)")
    return Dataset(out, names[1:], case_ids=data.case_ids)


# ------------------------------------------------------------------------------------------ training patches

def box_patch(example: Mapping[str, np.ndarray], patch_size: Sequence[int], fg_ratio: float, min_visible: float,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One training patch of an example with boxes (module docstring): every per-voxel array cut at one start
    (padded first where the image is smaller than the patch, as `medjax.data.patches.pad_example`), the boxes
    shifted, clipped and filtered. The draws from `rng` are fixed in kind and order, so a seeded stream repeats."""
    from medjax.data.patches import extract_patch, pad_example, patch_shape, voxel_keys

    keys = voxel_keys(example)
    if set(keys) & set(BOX_KEYS):
        raise MedjaxError(f"box arrays of shape {np.shape(example['boxes'])} look like per-voxel arrays of the image "
                          f"{np.shape(example['image'])}: use another data.max_boxes")
    spatial = np.shape(example["image"])[:-1]
    d = len(spatial)
    size = patch_shape(tuple(patch_size), d)
    if not 0.0 <= min_visible <= 1.0:
        raise MedjaxError(f"config.data.min_box_visible must be in [0, 1], got {min_visible}")
    padded = pad_example(example, size)
    before = np.array([max(p - n, 0) // 2 for n, p in zip(spatial, size)], np.float32)
    boxes = np.asarray(example["boxes"], np.float32) + np.tile(before, 2)
    valid = np.asarray(example["box_valid"], bool)
    full = np.asarray(np.shape(padded["image"])[:-1])
    limit = full - np.asarray(size)
    if rng.random() < fg_ratio and valid.any():
        box = boxes[rng.choice(np.flatnonzero(valid))]
        point = np.floor(box[:d] + rng.random(d) * (box[d:] - box[:d])).astype(int)
        first, last, extent = np.floor(box[:d]).astype(int), np.ceil(box[d:]).astype(int), np.asarray(size)
        # Starts that keep the whole box inside; along an axis where the box is longer than the patch, those that
        # keep the drawn point inside. Drawn uniformly: a patch centred on the box would teach the detector that
        # objects sit in the middle of its input.
        whole = last - extent <= first
        lo = np.clip(np.where(whole, last, point + 1) - extent, 0, limit)
        hi = np.clip(np.where(whole, first, point), 0, limit)
        start = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])
    else:
        start = np.array([rng.integers(0, m + 1) for m in limit])
    out = dict(padded)
    for k in keys:
        out[k] = extract_patch(np.asarray(padded[k]), start, size)
    shifted = boxes - np.tile(start, 2).astype(np.float32)
    clipped = np.clip(shifted, 0, np.tile(np.asarray(size, np.float32), 2))
    area = np.prod(np.maximum(shifted[:, d:] - shifted[:, :d], 0), axis=1)
    inside = np.prod(np.maximum(clipped[:, d:] - clipped[:, :d], 0), axis=1)
    keep = valid & (inside > 0) & (inside >= min_visible * np.where(area > 0, area, np.inf))
    out["boxes"] = np.where(keep[:, None], clipped, 0).astype(np.float32)
    out["box_labels"] = np.where(keep, example["box_labels"], -1).astype(np.int32)
    out["box_valid"] = keep
    return out
