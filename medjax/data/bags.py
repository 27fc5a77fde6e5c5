"""Bags for multiple-instance learning: an example is a bag of K instances (e.g. a slide's tiles) with one label.

A bag example holds "image" (K, *spatial, C), "instance_mask" (K,) float32 (1 = a real instance, 0 = padding that
makes bags of different sizes stack into one batch) and its "label" (and any other per-bag keys). Training on
whole slides is rarely affordable, so the training stream samples `config.data.bag_size` instances per bag per
step (`bag_transform`); evaluation sees whole bags. The draw uses the stream's per-position generator
(`medjax.data.stream`), so it is a pure function of (seed, stream position): a resumed run draws the same tiles.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medjax.data.stream import Transform
from medjax.errors import MedjaxError

PER_INSTANCE = ("image", "instance_mask")


def sample_bag(example: Mapping, size: int, rng: np.random.Generator) -> dict:
    """`size` instances of a bag drawn without replacement from its valid ones (`instance_mask` > 0), kept in
    the bag's order; a bag with fewer valid instances keeps them all, padded with zero images (mask 0). Only the
    indexed instances are read (the image may be a lazy array, e.g. `medjax.data.wsi_folder.LazyTiles`)."""
    if "instance_mask" not in example:
        raise MedjaxError(f"config.data.bag_size samples bags, but the examples have no 'instance_mask' (they hold "
                          f"{sorted(example)}); unset bag_size")
    valid = np.flatnonzero(np.asarray(example["instance_mask"]) > 0)
    chosen = np.sort(rng.choice(valid, size=size, replace=False)) if len(valid) > size else valid
    tiles = np.asarray(example["image"][chosen], np.float32)
    image = np.zeros((size, *tiles.shape[1:]), np.float32)
    image[:len(chosen)] = tiles
    mask = (np.arange(size) < len(chosen)).astype(np.float32)
    return {**{k: v for k, v in example.items() if k not in PER_INSTANCE}, "image": image, "instance_mask": mask}


def bag_transform(size: int) -> Transform:
    """The training stream's host transform that samples `size` instances per bag."""
    if size < 1:
        raise MedjaxError(f"config.data.bag_size={size} must be >= 1 (or 0 for whole bags)")

    def transform(example: dict, rng: np.random.Generator) -> dict:
        return sample_bag(example, size, rng)

    return transform
