"""Small simulated whole slides (pyramidal TIFF) for the tests, the pathology notebook and trying the pipeline
without a slide scanner: real tissue (scikit-image's ihc.png) on white glass.

Level 0 is 512 x 768 pixels at 0.25 µm/px ("40x"); levels 1-3 are 2x, 4x and 8x block means, written as further
IFDs (subfile type 1), tiled 64 x 64, with the resolution tags (pixels per centimetre) that tiffslide and openslide
turn into microns per pixel. Tissue fills whole 64-pixel blocks of level 0, so at 0.5 µm/px ("20x") with 32-pixel
tiles (64 level-0 pixels each) the tissue tiles are known by hand: `TISSUE_BLOCKS`.
"""

from __future__ import annotations

import os

import numpy as np

HEIGHT, WIDTH = 512, 768
MPP = 0.25
BLOCK = 64  # level-0 pixels per tile at 0.5 µm/px with 32-pixel tiles
# (row0, row1, col0, col1) of 64-pixel blocks filled with tissue: 3 x 4 + 2 x 3 = 18 tiles
TISSUE_BLOCKS = ((1, 4, 2, 6), (5, 7, 8, 11))
NUM_TISSUE_TILES = 18


def ihc() -> np.ndarray:
    from skimage import data

    return data.immunohistochemistry()  # (512, 512, 3) uint8


def level0(seed: int = 0, blocks=TISSUE_BLOCKS, speck: bool = False) -> np.ndarray:
    """White glass (245..255) with ihc.png pasted into `blocks` (crops chosen by `seed` inside its densely stained
    top 192 x 448 pixels); `speck` adds a 4 x 4 pixel stained dot far from the tissue (smaller than any tile)."""
    r = np.random.default_rng(seed)
    img = r.integers(245, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    tissue = ihc()
    for r0, r1, c0, c1 in blocks:
        h, w = (r1 - r0) * BLOCK, (c1 - c0) * BLOCK
        y, x = r.integers(0, 192 - h + 1), r.integers(0, 448 - w + 1)
        img[r0 * BLOCK:r1 * BLOCK, c0 * BLOCK:c1 * BLOCK] = tissue[y:y + h, x:x + w]
    if speck:
        img[450:454, 40:44] = tissue[100:104, 100:104]
    return img


def pyramid(base: np.ndarray, levels: int = 4) -> list[np.ndarray]:
    out = [base]
    for _ in range(1, levels):
        prev = out[-1].astype(np.float64)
        h, w = prev.shape[0] // 2, prev.shape[1] // 2
        out.append(np.round(prev[:2 * h, :2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3))).astype(np.uint8))
    return out


def write_slide(path: str | os.PathLike, base: np.ndarray, mpp: float | None = MPP,
                levels: int = 4) -> list[np.ndarray]:
    """A tiled pyramidal TIFF of `base`; returns the levels as written. `mpp=None` writes no resolution tags."""
    import tifffile

    written = pyramid(base, levels)
    with tifffile.TiffWriter(str(path), bigtiff=False) as tif:
        for i, lv in enumerate(written):
            kw = dict(tile=(64, 64), photometric="rgb", compression="zlib")
            if mpp is not None:
                kw.update(resolution=(1e4 / (mpp * 2**i),) * 2, resolutionunit="CENTIMETER")
            tif.write(lv, subfiletype=1 if i else 0, **kw)
    return written


def tissue_cells(blocks=TISSUE_BLOCKS) -> list[tuple[int, int]]:
    """(row, col) of the tissue tiles at 64 level-0 pixels per tile, row-major."""
    return sorted((r, c) for r0, r1, c0, c1 in blocks for r in range(r0, r1) for c in range(c0, c1))


SMALL_BLOCKS = ((1, 4, 2, 6),)  # 12 tiles at 20x / 32 px


def tumour(base: np.ndarray) -> np.ndarray:
    """A 'tumour' slide: its first tissue block with the colour channels reversed (a different stain look)."""
    out = base.copy()
    region = out[64:256, 128:384]
    out[64:256, 128:384] = region[..., ::-1]
    return out


def write_dataset(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "train", "val", "val"),
                  blocks: dict | None = None) -> list[str]:
    """`root/slides/s{i}.tif` (even i normal, odd i tumour; `blocks[i]` overrides a slide's tissue blocks) and
    `root/labels.csv` (slide,label,split); returns the CSV lines."""
    import pathlib

    root = pathlib.Path(root)
    (root / "slides").mkdir(parents=True, exist_ok=True)
    lines = ["slide,label,split"]
    for i, split in enumerate(splits):
        base = level0(i, blocks=(blocks or {}).get(i, TISSUE_BLOCKS))
        label = "tumor" if i % 2 else "normal"
        write_slide(root / "slides" / f"s{i}.tif", tumour(base) if i % 2 else base)
        lines.append(f"s{i},{label},{split}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return lines
