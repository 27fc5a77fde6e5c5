"""The `wsi_folder` source: whole slides plus a labels CSV become bags of tissue tiles, one bag per slide.

Layout: `<root>/<slides_dir>/` holds the slides (any format the reader opens: .svs, .tif, .ndpi, ...) and
`<root>/<labels_csv>` has a header and one row per slide: `slide,label[,split]`. `slide` is the file's path
under the slides folder (its extension may be left out when one file has that stem); `label` a class name or a
class index; `split` (train / val / test) if the CSV fixes the splits, else slides are split by `case_split`
(`val_fraction`, `test_fraction`, `split_seed`). Classes: `class_names` if given (labels are names from it or
indices), else integer labels name class0, class1, ... and text labels are sorted (Camelyon16's normal, tumor ->
0, 1).

Each slide's tissue tiles come from `medjax.data.wsi.tile_grid` (tile size, resolution, overlap, tissue
settings), computed once when the source loads. A bag is every tile of its slide, or `max_tiles` of them evenly
spaced in grid order (not in training with `bag_size`, which draws from every tile); bags of a split are padded
to its longest with `instance_mask` 0. Tiles are read from the
slides when a batch needs them (one reader per thread), or, with `cache_tiles`, from an array_record cache built
once (`medjax.data.cache`; its fingerprint covers the slide files and every tiling setting, never the labels).
With `stain_normalize` ("macenko" or "reinhard", to the image `stain_reference`) every tile read is normalised on
the host (`medjax.data.stain`; the cache keeps the raw tiles). Training samples `config.data.bag_size` tiles per
bag per step (`medjax.data.bags`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import threading
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from medjax.data import wsi
from medjax.errors import MedjaxError

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
SPLITS = ("train", "val", "test")
GRID_KEYS = ("tile_size", "mpp", "magnification", "overlap", "min_tissue", "tissue_level", "tissue_channel",
             "tissue_min_size")


@dataclasses.dataclass(frozen=True)
class SlideEntry:
    """One row of the labels CSV with its slide's tile grid."""

    name: str  # as the CSV names it
    path: str
    label: int
    split: str
    grid: wsi.TileGrid


class TileStore:
    """The tiles of every slide: read from the slide files (one open slide per thread and slide, as the readers
    are not thread-safe) or from the array_record cache (`cached`, all slides' tiles in order); `normalize`
    (`medjax.data.stain.make_normalizer`) turns uint8 tiles into stain-normalised floats."""

    def __init__(self, entries: Sequence[SlideEntry], reader: str, slide_mpp: float | None, cached: Any = None,
                 normalize: Any = None):
        self.entries, self.reader, self.slide_mpp, self.cached = list(entries), reader, slide_mpp, cached
        self.normalize = normalize or wsi.tiles_to_float
        self.offsets = np.cumsum([0] + [len(e.grid) for e in self.entries])
        self._local = threading.local()

    def _slide(self, i: int) -> wsi.Slide:
        opened = self._local.__dict__.setdefault("slides", {})
        if i not in opened:
            opened[i] = wsi.open_slide(self.entries[i].path, self.reader, self.slide_mpp)
        return opened[i]

    def read(self, slide: int, tiles: np.ndarray) -> np.ndarray:
        """Tiles `tiles` (grid indices) of slide `slide` as uint8 (n, s, s, 3)."""
        if self.cached is None:
            return wsi.read_tiles(self._slide(slide), self.entries[slide].grid, tiles)
        rows = [self.cached[int(self.offsets[slide] + t)]["image"] for t in np.asarray(tiles).reshape(-1)]
        size = self.entries[slide].grid.tile_size
        return np.stack(rows) if rows else np.zeros((0, size, size, 3), np.uint8)


class LazyTiles:
    """One bag's tiles, read only when indexed (`bag[idx]`) or converted (`np.asarray(bag)`): float32 in [0, 1]
    (stain-normalised if the store says so), (T, s, s, 3); padding positions (grid index -1) are zeros."""

    def __init__(self, store: TileStore, slide: int, tiles: np.ndarray):
        self.store, self.slide, self.tiles = store, slide, np.asarray(tiles, np.int64)
        size = store.entries[slide].grid.tile_size
        self.shape = (len(self.tiles), size, size, 3)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        tiles = self.tiles[index]
        flat = np.atleast_1d(tiles)
        out = np.zeros((len(flat), *self.shape[1:]), np.float32)
        real = flat >= 0
        if real.any():
            out[real] = self.store.normalize(self.store.read(self.slide, flat[real]))
        return out.reshape(np.shape(tiles) + self.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class BagSource:
    """A random-access source of bags, one per slide: {"image": LazyTiles (T, s, s, 3), "instance_mask" (T,),
    "label" ()}. `entries[i]` is bag i's slide and `bag_tiles(i)` its tiles' grid indices (-1 = padding)."""

    def __init__(self, store: TileStore, slides: Sequence[int], length: int, max_tiles: int):
        self.store, self.slides, self.length = store, list(slides), int(length)
        self._tiles = [_bag_tiles(len(store.entries[i].grid), max_tiles, self.length) for i in self.slides]

    @property
    def entries(self) -> list[SlideEntry]:
        return [self.store.entries[i] for i in self.slides]

    def __len__(self) -> int:
        return len(self.slides)

    def bag_tiles(self, i: int) -> np.ndarray:
        return self._tiles[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        tiles = self._tiles[i]
        return {"image": LazyTiles(self.store, self.slides[i], tiles), "instance_mask": (tiles >= 0).astype(np.float32),
                "label": np.int32(self.store.entries[self.slides[i]].label)}


def _bag_tiles(count: int, max_tiles: int, length: int) -> np.ndarray:
    """Grid indices of a bag of `count` tiles: all, or `max_tiles` evenly spaced; -1 pads to `length`."""
    chosen = np.arange(count) if not max_tiles or count <= max_tiles else \
        np.round(np.linspace(0, count - 1, max_tiles)).astype(np.int64)
    return np.concatenate([chosen, np.full(length - len(chosen), -1, np.int64)])


# ---------------------------------------------------------------------------------------------------- loading


def _read_labels(path: str) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise MedjaxError(f"{path}: no labels CSV (config.data.labels_csv: a header and one row per slide: "
                          f"slide,label[,split])")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if not {"slide", "label"} <= columns:
        raise MedjaxError(f"{path}: the labels CSV needs a header with the columns slide,label[,split]; found "
                          f"{sorted(columns) or 'no rows'}")
    return rows


def _slide_path(folder: str, name: str, csv_path: str) -> str:
    """The slide file `name` names under `folder`: the exact path, or the one file with that stem."""
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        return path
    found = [path + ext for ext in SLIDE_EXTENSIONS if os.path.isfile(path + ext)]
    if len(found) != 1:
        what = f"several files named {name}.*: {found}" if found else "no such file"
        raise MedjaxError(f"{csv_path}: slide {name!r}: {what} under {folder} (config.data.slides_dir)")
    return found[0]


def _label_indices(labels: list[str], cfg: ml_collections.ConfigDict, csv_path: str) -> tuple[list[int], list[str]]:
    names = [str(c) for c in (cfg.class_names or ())]
    ints = all(v.strip().lstrip("-").isdigit() for v in labels)
    if names:
        out = [int(v) if ints else (names.index(v) if v in names else -1) for v in labels]
    elif ints:
        out = [int(v) for v in labels]
        names = [f"class{i}" for i in range(int(cfg.num_classes or 0) or max(2, max(out) + 1))]
    else:
        names = sorted(set(labels))
        out = [names.index(v) for v in labels]
    bad = [v for v, i in zip(labels, out) if not 0 <= i < len(names)]
    if bad:
        raise MedjaxError(f"{csv_path}: label {bad[0]!r} is not one of the classes {names} (config.data.class_names "
                          f"/ num_classes)")
    return out, names


def _assign_splits(rows: list[dict[str, str]], cfg: ml_collections.ConfigDict, csv_path: str) -> list[str]:
    """Each slide's split: the CSV's `split` column when it has one, else `medjax.data.splits` (split_file,
    num_folds or the seeded val_fraction / test_fraction) over the slide names."""
    from medjax.data import splits as splits_lib

    given = [(r.get("split") or "").strip().lower() for r in rows]
    if any(given):
        for line, value in enumerate(given, 2):
            if value not in SPLITS:
                raise MedjaxError(f"{csv_path}, line {line}: split {value!r} must be one of {list(SPLITS)} (or leave "
                                  f"the split column out to split by config.data.val_fraction / test_fraction)")
    split = splits_lib.resolve([r["slide"].strip() for r in rows], cfg, given if any(given) else None,
                               f"the split column of {csv_path}")
    out = [""] * len(rows)
    for name, idx in split.items():
        for i in idx:
            out[i] = name
    return out


def _grid(path: str, cfg: ml_collections.ConfigDict) -> wsi.TileGrid:
    with wsi.open_slide(path, cfg.reader, cfg.slide_mpp or None) as slide:
        grid = wsi.tile_grid(slide, **{k: cfg[k] for k in GRID_KEYS})
    if not len(grid):
        raise MedjaxError(f"{path}: no tile has a tissue fraction >= config.data.min_tissue={cfg.min_tissue} "
                          f"({grid.grid_shape[0]} x {grid.grid_shape[1]} grid); lower min_tissue or check the slide")
    return grid


def _tile_cache(entries: list[SlideEntry], cfg: ml_collections.ConfigDict) -> Any:
    """The array_record cache of every slide's tiles, in order (built on first use)."""
    from medjax.data.cache import build_or_load, file_fingerprint

    def generate():
        for e in entries:
            with wsi.open_slide(e.path, cfg.reader, cfg.slide_mpp or None) as slide:
                for start in range(0, len(e.grid), 64):
                    for tile in wsi.read_tiles(slide, e.grid, np.arange(start, min(start + 64, len(e.grid)))):
                        yield {"image": tile}

    size = int(cfg.tile_size)
    spec = {"source": "wsi_folder", "slides": [e.path for e in entries],
            "files": file_fingerprint([e.path for e in entries]), "reader": cfg.reader,
            "slide_mpp": cfg.slide_mpp, **{k: cfg[k] for k in GRID_KEYS}}
    return build_or_load("wsi_tiles", spec, {"image": ((size, size, 3), np.uint8)}, {"tiles": generate},
                         cache_dir=cfg.cache_dir or None)["tiles"]


def _normalizer(cfg: ml_collections.ConfigDict) -> Any:
    """`data.stain_normalize` with `data.stain_reference` (an RGB image under root), or None."""
    if not cfg.stain_normalize:
        if cfg.stain_reference:
            raise MedjaxError("config.data.stain_reference is set but config.data.stain_normalize is not: set both")
        return None
    from medjax.data.stain import make_normalizer

    reference = None
    if cfg.stain_reference:
        from PIL import Image

        path = os.path.join(cfg.root, cfg.stain_reference)
        try:
            with Image.open(path) as img:
                reference = np.asarray(img.convert("RGB"))
        except OSError as e:
            raise MedjaxError(f"{path}: cannot read the stain reference image (config.data.stain_reference): "
                              f"{e}") from e
    return make_normalizer(cfg.stain_normalize, reference)


def load_wsi_folder(cfg: ml_collections.ConfigDict) -> tuple[dict[str, BagSource], list[str]]:
    """({split: BagSource}, class names) of a completed `config.data` (see the module docstring)."""
    if not cfg.root:
        raise MedjaxError("config.data.root must name a folder with the slides and the labels CSV for "
                          "data.name='wsi_folder'")
    csv_path = os.path.join(cfg.root, cfg.labels_csv)
    rows = _read_labels(csv_path)
    folder = os.path.join(cfg.root, cfg.slides_dir)
    labels, class_names = _label_indices([r["label"].strip() for r in rows], cfg, csv_path)
    splits = _assign_splits(rows, cfg, csv_path)
    entries = []
    for row, label, split in zip(rows, labels, splits):
        path = _slide_path(folder, row["slide"].strip(), csv_path)
        entries.append(SlideEntry(row["slide"].strip(), path, label, split, _grid(path, cfg)))
    cached = _tile_cache(entries, cfg) if cfg.cache_tiles else None
    store = TileStore(entries, cfg.reader, cfg.slide_mpp or None, cached, _normalizer(cfg))
    out = {}
    for split in SPLITS:
        members = [i for i, e in enumerate(entries) if e.split == split]
        cap = 0 if split == "train" and cfg.bag_size else cfg.max_tiles  # training draws from every tile
        if members:
            longest = max(min(len(entries[i].grid), cap or len(entries[i].grid)) for i in members)
            out[split] = BagSource(store, members, longest, cap)
    if "train" not in out:
        raise MedjaxError(f"{csv_path}: no slide is in the train split")
    return out, class_names


# ---------------------------------------------------------------------------------------------- Camelyon16


def camelyon16_labels(root: str, out_csv: str, val_fraction: float = 0.0, seed: int = 0) -> dict[str, int]:
    """Write the labels CSV of a Camelyon16 download (its published layout: `training/normal/*.tif`,
    `training/tumor/*.tif`, `testing/images/*.tif` and `testing/reference.csv`, whose rows start with the test
    slide's name and its class, Normal or Tumor) to `out_csv` (outside the dataset folder; the dataset is only
    read). Slide paths are relative to `root` (so `data.slides_dir='.'`); training slides are split train, with
    a seeded `val_fraction` of them val; the test slides are test. Returns the number of slides per split."""
    from medjax.data.splits import split_cases

    def tifs(folder: str) -> list[str]:
        path = os.path.join(root, folder)
        if not os.path.isdir(path):
            raise MedjaxError(f"{path}: missing; {root} does not have the Camelyon16 layout (training/normal, "
                              f"training/tumor, testing/images, testing/reference.csv)")
        return sorted(f"{folder}/{n}" for n in os.listdir(path) if n.lower().endswith(".tif"))

    train = [(p, "normal") for p in tifs("training/normal")] + [(p, "tumor") for p in tifs("training/tumor")]
    reference = os.path.join(root, "testing", "reference.csv")
    if not os.path.isfile(reference):
        raise MedjaxError(f"{reference}: missing (the Camelyon16 test labels)")
    with open(reference, newline="") as f:
        classes = {row[0].strip().lower(): row[1].strip().lower() for row in csv.reader(f)
                   if len(row) >= 2 and row[1].strip().lower() in ("normal", "tumor")}
    test = []
    for path in tifs("testing/images"):
        stem = os.path.splitext(os.path.basename(path))[0].lower()
        if stem not in classes:
            raise MedjaxError(f"{reference}: no Normal/Tumor row for the test slide {path}")
        test.append((path, classes[stem]))
    val = set(split_cases(len(train), val_fraction, seed)[1]) if train else set()
    rows = [(p, c, "val" if i in val else "train") for i, (p, c) in enumerate(train)]
    rows += [(p, c, "test") for p, c in test]
    tmp = f"{out_csv}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide", "label", "split"])
        writer.writerows(rows)
    os.replace(tmp, out_csv)
    return {s: sum(r[2] == s for r in rows) for s in SPLITS}
