"""How fast the wsi_folder source reads tiles: the host-side bound of a whole-slide training step.

    python -m experiments.wsi_tiles --out runs/wsi_tiles [--slides 4] [--size 4096] [--tiles 512]

Writes `--slides` synthetic slides of `--size` x `--size` level-0 pixels at 0.25 µm/px (scikit-image's ihc.png
tiled over half the slide, white glass elsewhere; 4 levels, JPEG-compressed 256-pixel TIFF tiles as scanners
write them) with a labels CSV, then reads `--tiles` tissue tiles of 224 pixels in random order through
`medjax.data.wsi_folder` bags and reports tiles per second for: tiffslide and openslide at 20x (level 1, no
resize) and at 0.6 µm/px (level 1, resized), and the array_record tile cache (`cache_tiles`; its one-time build is
timed apart). One thread, so the numbers are per grain reader thread (`data.num_threads`). Writes
`<out>/results.json` and `<out>/results.md`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import ml_collections
import numpy as np

from medjax.data.sources import load_splits


def write_slides(root: pathlib.Path, count: int, size: int) -> None:
    """`root/slides/w{i}.tif` and `root/labels.csv` (alternating labels 0/1, all train)."""
    import tifffile
    from skimage import data

    (root / "slides").mkdir(parents=True, exist_ok=True)
    tissue = data.immunohistochemistry()
    rows = ["slide,label,split"]
    for i in range(count):
        r = np.random.default_rng(i)
        img = r.integers(245, 256, (size, size, 3), dtype=np.uint8)
        reps = -(-size // 512)
        img[:, : size // 2] = np.tile(tissue, (reps, reps, 1))[:size, : size // 2]
        levels = [img]
        for _ in range(3):
            prev = levels[-1]
            levels.append(prev.reshape(prev.shape[0] // 2, 2, prev.shape[1] // 2, 2, 3).mean((1, 3)).astype(np.uint8))
        with tifffile.TiffWriter(str(root / "slides" / f"w{i}.tif"), bigtiff=False) as tif:
            for k, lv in enumerate(levels):
                tif.write(lv, subfiletype=1 if k else 0, tile=(256, 256), photometric="rgb", compression="jpeg",
                          resolution=(4e4 / 2**k,) * 2, resolutionunit="CENTIMETER")
        rows.append(f"w{i},{i % 2},train")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def tiles_per_second(root: pathlib.Path, tiles: int, **data) -> tuple[float, int]:
    """(tiles per second, tiles read) reading `tiles` tissue tiles in a seeded random order of (bag, tile)."""
    cfg = ml_collections.ConfigDict(dict(name="wsi_folder", root=str(root), tile_size=224, val_fraction=0.0, **data))
    split = load_splits(cfg).splits["train"]
    r = np.random.default_rng(0)
    picks = [(int(b), int(r.integers(int(split[int(b)]["instance_mask"].sum()))))
             for b in r.integers(len(split), size=tiles)]
    start = time.perf_counter()
    for b, t in picks:
        split[b]["image"][[t]]
    return tiles / (time.perf_counter() - start), len(picks)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--slides", type=int, default=4)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--tiles", type=int, default=512)
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    root = out / "data"
    write_slides(root, args.slides, args.size)
    rows = {}
    for name, data in (("tiffslide, 20x", dict(magnification=20.0)),
                       ("openslide, 20x", dict(magnification=20.0, reader="openslide")),
                       ("tiffslide, 0.6 µm/px (resized)", dict(mpp=0.6)),
                       ("openslide, 0.6 µm/px (resized)", dict(mpp=0.6, reader="openslide"))):
        rows[name] = tiles_per_second(root, args.tiles, **data)[0]
    cache = dict(magnification=20.0, cache_tiles=True, cache_dir=str(out / "cache"))
    start = time.perf_counter()
    load_splits(ml_collections.ConfigDict(dict(name="wsi_folder", root=str(root), tile_size=224, val_fraction=0.0,
                                                   **cache)))
    build_s = time.perf_counter() - start
    rows["array_record cache, 20x"] = tiles_per_second(root, args.tiles, **cache)[0]
    result = {"slides": args.slides, "size": args.size, "tiles": args.tiles, "cache_build_s": build_s,
              "tiles_per_s": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    lines = [f"{args.slides} slides of {args.size} x {args.size} px, {args.tiles} random 224-px tissue tiles, "
             f"one thread (cache built once in {build_s:.1f} s)", "", "| read | tiles/s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in rows.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
