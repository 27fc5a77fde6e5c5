"""Whole-slide images (SVS, NDPI, pyramidal TIFF, ...): reading pyramid levels, finding tissue, tiling it.

A pathology slide is a gigapixel image stored as a pyramid: level 0 at full resolution (about 0.25 µm per pixel,
"40x"), each further level downsampled (usually 2x or 4x). Nothing here reads a whole level 0 into memory:

* `open_slide(path)`: a `Slide` read through tiffslide (pure Python, the default) or openslide (`reader=
  "openslide"`, needs `openslide-bin` + `openslide-python`); levels, their sizes and downsamples, microns per
  pixel from the file's metadata (or given by hand), and `read_region` at any level.
* `tissue_mask(rgb)`: Otsu's threshold on the saturation (or the grey value) of a low-resolution level, minus
  connected specks smaller than a given area.
* `tile_grid(slide, tile_size, mpp=... | magnification=...)`: the tiles of a regular grid (with `overlap`) whose
  tissue fraction is at least `min_tissue`, as level-0 coordinates plus the level to read them from; `read_tiles`
  reads them as (N, tile_size, tile_size, 3) uint8.

Resolution: a magnification M means 10 / M µm per pixel (40x = 0.25, 20x = 0.5, 10x = 1.0), the scanners'
convention that Camelyon16's 0.23-0.25 µm/px level 0 follows. A tile at `mpp` m is read from the coarsest level
whose pixels are no larger than m (up to 10% larger is accepted) and resized to `tile_size` if that level's
pixels are not exactly m; without `mpp` and `magnification` tiles are level-0 pixels and no mpp is needed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from medjax.errors import MedjaxError

READERS = ("tiffslide", "openslide")
TISSUE_CHANNELS = ("saturation", "grey")
MICRONS_AT_1X = 10.0  # magnification M = MICRONS_AT_1X / M µm per pixel
MPP_TOLERANCE = 0.1  # a level may have pixels up to 10% larger than requested (then upsampled to tile_size)
TISSUE_PIXELS_PER_TILE = 8  # the automatic tissue level shows a tile as at least 8 x 8 mask pixels
EXTRA = "pip install 'medjax[pathology]'"


def _backend(reader: str) -> Any:
    if reader not in READERS:
        raise MedjaxError(f"unknown slide reader {reader!r} (config.data.reader); known: {list(READERS)}")
    try:
        if reader == "tiffslide":
            import tiffslide

            return tiffslide.TiffSlide
        import openslide

        return openslide.OpenSlide
    except ImportError as e:
        extra = EXTRA if reader == "tiffslide" else "pip install openslide-bin openslide-python"
        raise MedjaxError(f"reading whole-slide images with {reader} needs it installed: {extra} ({e})") from e


class Slide:
    """One whole-slide image. `mpp` (µm per level-0 pixel) overrides the file's metadata, for slides without it.

    Attributes: `path`, `name` (file name), `reader`, `level_dimensions` ((width, height) per level, as the
    readers give them), `level_downsamples`, `mpp` (None if neither the file nor the caller says) and
    `objective_power` (the scanner's magnification, None if unknown; informational)."""

    def __init__(self, path: str, reader: str = "tiffslide", mpp: float | None = None):
        cls = _backend(reader)
        if not os.path.isfile(path):
            raise MedjaxError(f"{path}: no such slide file")
        try:
            self._handle = cls(path)
        except Exception as e:  # the readers raise their own types for unknown / corrupt files
            raise MedjaxError(f"{path}: cannot read the slide with {reader} ({type(e).__name__}: {e})") from e
        self.path, self.name, self.reader = path, os.path.basename(path), reader
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._handle.level_downsamples)
        props = self._handle.properties
        meta = _positive(props.get(f"{reader}.mpp-x"))
        self.mpp = float(mpp) if mpp else meta
        self.objective_power = _positive(props.get(f"{reader}.objective-power"))

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float | None:
        """µm per pixel at `level` (None without `mpp`)."""
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (height, width, 3) of `size` (width, height) pixels at `level`, whose top-left corner is
        `location` (x, y) in LEVEL-0 pixels (the openslide convention). Outside the slide: tiffslide pads with 0,
        openslide's transparent pixels are white."""
        if not 0 <= level < self.level_count:
            raise MedjaxError(f"{self.path}: level {level} does not exist (the slide has {self.level_count})")
        loc, sz = (int(location[0]), int(location[1])), (int(size[0]), int(size[1]))
        if self.reader == "tiffslide":
            arr = np.asarray(self._handle.read_region(loc, level, sz, as_array=True))
        else:
            rgba = np.asarray(self._handle.read_region(loc, level, sz))
            arr = np.where(rgba[..., 3:] == 0, np.uint8(255), rgba[..., :3])
        if arr.ndim == 2 or arr.shape[-1] == 1:
            arr = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=-1)
        return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)

    def read_level(self, level: int) -> np.ndarray:
        """The whole of `level` (for the small ones: thumbnails, tissue detection)."""
        return self.read_region((0, 0), level, self.level_dimensions[level])

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def open_slide(path: str, reader: str = "tiffslide", mpp: float | None = None) -> Slide:
    """`Slide(path, reader, mpp)`: the slide at `path`, read with `reader` ("tiffslide" or "openslide")."""
    return Slide(path, reader, mpp)


# ------------------------------------------------------------------------------------------------ resolution


def requested_mpp(mpp: float = 0.0, magnification: float = 0.0) -> float | None:
    """The µm per pixel asked for by `mpp` or `magnification` (10 / M); None when both are 0 (level-0 pixels)."""
    if mpp and magnification:
        raise MedjaxError(f"config.data.mpp={mpp} and config.data.magnification={magnification} both set the tile "
                          f"resolution: set one (magnification M means {MICRONS_AT_1X:g} / M µm per pixel)")
    if mpp < 0 or magnification < 0:
        raise MedjaxError(f"config.data.mpp ({mpp}) and magnification ({magnification}) must be >= 0")
    if magnification:
        return MICRONS_AT_1X / magnification
    return float(mpp) if mpp else None


def read_level_for(slide: Slide, mpp: float | None) -> tuple[int, float]:
    """(level to read, level-0 pixels per output pixel) for tiles at `mpp` µm/px (None: level-0 pixels)."""
    if mpp is None:
        return 0, 1.0
    if slide.mpp is None:
        raise MedjaxError(f"{slide.path}: the slide's metadata give no microns per pixel, which tiles at {mpp:g} "
                          f"µm/px need; pass its level-0 µm/px by hand (config.data.slide_mpp, or open_slide(..., "
                          f"mpp=...))")
    scale = mpp / slide.mpp
    fits = [lv for lv, ds in enumerate(slide.level_downsamples) if ds <= scale * (1 + MPP_TOLERANCE)]
    if not fits:
        raise MedjaxError(f"{slide.path}: its finest level has {slide.mpp:.4g} µm/px (about "
                          f"{MICRONS_AT_1X / slide.mpp:.3g}x), coarser than the requested {mpp:.4g} µm/px "
                          f"({MICRONS_AT_1X / mpp:.3g}x); request a lower magnification / larger mpp")
    return max(fits, key=lambda lv: slide.level_downsamples[lv]), scale


# ---------------------------------------------------------------------------------------------------- tissue


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of `values` (scikit-image's `threshold_otsu`, 256 bins)."""
    try:
        from skimage.filters import threshold_otsu
    except ImportError as e:
        raise MedjaxError(f"tissue detection needs scikit-image: {EXTRA}") from e

    return float(threshold_otsu(np.asarray(values)))


def remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """`mask` without its 4-connected components of fewer than `min_size` pixels."""
    import scipy.ndimage

    mask = np.asarray(mask, bool)
    if min_size <= 1 or not mask.any():
        return mask.copy()
    labels, _ = scipy.ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def tissue_mask(rgb: np.ndarray, channel: str = "saturation", min_size: int = 0) -> np.ndarray:
    """Tissue pixels (H, W) bool of a low-resolution RGB image: Otsu's threshold on the HSV saturation (stained
    tissue is coloured, glass is grey-white) or on the grey value (tissue is darker), then connected components
    under `min_size` pixels removed. A uniform image has no tissue."""
    if channel not in TISSUE_CHANNELS:
        raise MedjaxError(f"unknown tissue channel {channel!r} (config.data.tissue_channel); known: "
                          f"{list(TISSUE_CHANNELS)}")
    x = np.asarray(rgb, np.float64)
    if x.shape[-1:] != (3,):
        raise MedjaxError(f"tissue_mask: expected an RGB image (H, W, 3), got shape {x.shape}")
    if channel == "saturation":
        hi = x.max(axis=-1)
        values = np.where(hi > 0, (hi - x.min(axis=-1)) / np.where(hi > 0, hi, 1.0), 0.0)
    else:
        values = -(x @ np.array([0.2125, 0.7154, 0.0721]))  # skimage's rgb2gray weights; darker = larger
    if values.max() == values.min():
        return np.zeros(values.shape, bool)
    return remove_small_objects(values > otsu_threshold(values), min_size)


# ------------------------------------------------------------------------------------------------------ grid


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """The tissue tiles of one slide, in row-major grid order.

    `coords` (T, 2): level-0 (x, y) of each tile's top-left corner; `cells` (T, 2): its (row, col) in the full
    grid of `grid_shape` (every position, tissue or not); `tissue` (T,): its tissue fraction. A tile spans
    `footprint` level-0 pixels, neighbours are `stride` apart; it is read as `read_size` pixels at `level` and
    resized to `tile_size` when they differ. `mpp`: µm per tile pixel (None: level-0 pixels of unknown size).
    `tissue_level`: the level the tissue mask was computed at."""

    coords: np.ndarray
    cells: np.ndarray
    tissue: np.ndarray
    grid_shape: tuple[int, int]
    level: int
    read_size: int
    tile_size: int
    footprint: float
    stride: float
    mpp: float | None
    tissue_level: int

    def __len__(self) -> int:
        return len(self.coords)


def _coverage(n_tiles: int, stride: float, footprint: float, n_pixels: int, downsample: float) -> np.ndarray:
    """(n_tiles, n_pixels): level-0 length of tile i's span [x_i, x_i + footprint) inside mask pixel j's span."""
    start = np.floor(np.arange(n_tiles) * stride + 1e-9)[:, None]
    lo = np.arange(n_pixels)[None, :] * downsample
    return np.clip(np.minimum(start + footprint, lo + downsample) - np.maximum(start, lo), 0.0, None)


def auto_tissue_level(slide: Slide, footprint: float) -> int:
    """The coarsest level at which a tile still covers `TISSUE_PIXELS_PER_TILE` pixels per side (else 0)."""
    fits = [lv for lv, ds in enumerate(slide.level_downsamples) if footprint / ds >= TISSUE_PIXELS_PER_TILE]
    return max(fits, key=lambda lv: slide.level_downsamples[lv]) if fits else 0


def tile_grid(slide: Slide, tile_size: int, *, mpp: float = 0.0, magnification: float = 0.0, overlap: int = 0,
              min_tissue: float = 0.5, tissue_level: int = -1, tissue_channel: str = "saturation",
              tissue_min_size: float = 1.0) -> TileGrid:
    """The grid of `tile_size` tiles at `mpp` µm/px or `magnification` (neither: level-0 pixels) with `overlap`
    pixels shared by neighbours, keeping the tiles whose tissue fraction is at least `min_tissue`. Only whole
    tiles inside the slide are made. Tissue comes from `tissue_mask` at `tissue_level` (-1: `auto_tissue_level`)
    with specks smaller than `tissue_min_size` tiles' area removed."""
    if tile_size < 1 or not 0 <= overlap < tile_size:
        raise MedjaxError(f"config.data.tile_size={tile_size} must be >= 1 and overlap={overlap} in [0, tile_size)")
    if not 0 <= min_tissue <= 1:
        raise MedjaxError(f"config.data.min_tissue={min_tissue} must be a fraction in [0, 1]")
    target = requested_mpp(mpp, magnification)
    level, scale = read_level_for(slide, target)
    footprint, stride = tile_size * scale, (tile_size - overlap) * scale
    width, height = slide.level_dimensions[0]
    rows, cols = (int(math.floor((n - footprint) / stride + 1e-9)) + 1 if n >= footprint else 0
                  for n in (height, width))
    t_level = auto_tissue_level(slide, footprint) if tissue_level < 0 else tissue_level
    if t_level >= slide.level_count:
        raise MedjaxError(f"{slide.path}: config.data.tissue_level={tissue_level} but the slide has "
                          f"{slide.level_count} levels")
    ds = slide.level_downsamples[t_level]
    min_pixels = int(round(tissue_min_size * (footprint / ds) ** 2))
    mask = tissue_mask(slide.read_level(t_level), tissue_channel, min_pixels).astype(np.float64)
    fraction = (_coverage(rows, stride, footprint, mask.shape[0], ds) @ mask
                @ _coverage(cols, stride, footprint, mask.shape[1], ds).T) / footprint**2
    cells = np.argwhere(fraction >= min_tissue).astype(np.int64)
    coords = np.floor(cells[:, ::-1] * stride + 1e-9).astype(np.int64)
    read_size = int(round(footprint / slide.level_downsamples[level]))
    return TileGrid(coords, cells, fraction[cells[:, 0], cells[:, 1]], (rows, cols), level, read_size,
                    int(tile_size), float(footprint), float(stride), target, t_level)


def read_tiles(slide: Slide, grid: TileGrid, indices: Any = None) -> np.ndarray:
    """Tiles `indices` (default all) of `grid` as RGB uint8 (N, tile_size, tile_size, 3)."""
    from PIL import Image

    idx = np.arange(len(grid)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    out = np.empty((len(idx), grid.tile_size, grid.tile_size, 3), np.uint8)
    r = grid.read_size
    for i, t in enumerate(idx):
        x, y = grid.coords[t]
        tile = slide.read_region((int(x), int(y)), grid.level, (r, r))
        if r != grid.tile_size:
            tile = np.asarray(Image.fromarray(tile).resize((grid.tile_size, grid.tile_size), Image.BILINEAR))
        out[i] = tile
    return out


def tiles_to_float(tiles: np.ndarray) -> np.ndarray:
    """uint8 tiles as float32 in [0, 1] (what the models and the `hed` augmentation take)."""
    return np.asarray(tiles, np.float32) / np.float32(255.0)


def grid_values(grid: TileGrid, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Per-tile `values` (T,) placed on the full grid (rows, cols); positions without a tile get `fill`."""
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) != len(grid):
        raise MedjaxError(f"grid_values: {len(values)} values for a grid of {len(grid)} tiles")
    out = np.full(grid.grid_shape, fill, np.float64)
    out[grid.cells[:, 0], grid.cells[:, 1]] = values
    return out
