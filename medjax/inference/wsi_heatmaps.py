"""Tile-level heat maps of a trained multiple-instance model: where on the slide the decision came from.

For each slide of a split, the restored model (`task.name='mil'`) scores the slide's bag; each tile's attention
weight and its probability of the positive class (the last class; `medjax.models.abmil`'s per-tile logits) are
placed back on the slide's tile grid (`medjax.data.wsi.grid_values`) and drawn over the thumbnail of the level
the tissue mask came from (`medjax.viz.save_heatmap_png`): `<workdir>/plots/heatmaps/<split>/<slide>_attention.png`
and `..._tile_prob.png`. Tiles a capped bag (`data.max_tiles`) left out stay clear.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from medjax.data import wsi
from medjax.errors import MedjaxError


def write_heatmaps(config: ml_collections.ConfigDict, workdir: str, split: str = "test",
                   which: str = "best") -> dict[str, dict]:
    """Heat-map PNGs for every slide of `split` under the `which` checkpoint (best, falling back to latest).
    Returns {slide name: {"probs": the slide's class probabilities, "attention" and "tile_prob": the values on
    the tile grid (rows, cols; NaN without a tile), "paths": {"attention": PNG, "tile_prob": PNG}}}."""
    from medjax.train.loop import restore_checkpoint, setup
    from medjax.train.parallel import replicated_to_host
    from medjax.viz import save_heatmap_png

    s = setup(config, workdir)
    source = s.splits.get(split)
    if source is None:
        raise MedjaxError(f"dataset {s.config.data.name!r} has no {split!r} split")
    if not hasattr(source, "bag_tiles") or not hasattr(s.task, "forward"):
        raise MedjaxError("heat maps need a slide source (data.name='wsi_folder') and a bag task (task.name='mil')")
    canonical, step, _ = restore_checkpoint(s, workdir, which)
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    forward = jax.jit(lambda p, b, image, mask: s.task.forward_bags(p, b, {"image": image, "instance_mask": mask},
                                                               train=False)[:3])
    folder = os.path.join(workdir, "plots", "heatmaps", split)
    out = {}
    for i, entry in enumerate(source.entries):
        example = source[i]
        logits, attention, tile_logits = forward(params, stats, np.asarray(example["image"])[None],
                                                 example["instance_mask"][None])
        tiles = source.bag_tiles(i)
        real = tiles >= 0
        grid = entry.grid
        values = {"attention": np.asarray(attention[0])[real],
                  "tile_prob": np.asarray(jax.nn.softmax(tile_logits[0]))[real, -1]}
        with wsi.open_slide(entry.path, s.config.data.reader, s.config.data.slide_mpp or None) as slide:
            thumb = slide.read_level(grid.tissue_level)
            ds = slide.level_downsamples[grid.tissue_level]
        shift = (grid.footprint - grid.stride) / 2  # draw each tile's cell around its centre
        extent = (shift / ds, (shift + grid.grid_shape[1] * grid.stride) / ds,
                  (shift + grid.grid_shape[0] * grid.stride) / ds, shift / ds)
        probs = np.asarray(jax.nn.softmax(logits[0]))
        stem = os.path.splitext(os.path.basename(entry.name))[0]
        result: dict = {"probs": probs, "paths": {}}
        for kind, label, value_range in (("attention", "attention weight", None),
                                         ("tile_prob", f"tile P({s.task.class_names[-1]})", (0.0, 1.0))):
            full = np.full(len(grid), np.nan)
            full[tiles[real]] = values[kind]
            result[kind] = wsi.grid_values(grid, full)
            result["paths"][kind] = os.path.join(folder, f"{stem}_{kind}.png")
            save_heatmap_png(result["paths"][kind], thumb, result[kind], extent, label=label,
                             value_range=value_range,
                             title=f"{entry.name}: label {s.task.class_names[entry.label]}, "
                                   f"P({s.task.class_names[-1]}) = {probs[-1]:.3f} (step {step})")
        out[entry.name] = result
    return out
