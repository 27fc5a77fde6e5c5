"""Anchor boxes per feature level, 2D and 3D, with the numbers of MONAI's `AnchorGenerator` and
`AnchorGeneratorWithAnchorShape` (`monai.apps.detection.utils.anchor_utils`, default `indexing="ij"`; tested).

A level's anchors are its cell anchors (A boxes centred on 0, one per size/shape) shifted to every feature-map
location: location index * stride + stride // 2 along each axis, the strides being `image_size // feature_size`
(integer division, as MONAI). The order is location-major, C-order over the feature map's axes, then the A cell
anchors: the order in which `medjax.detection.postprocess.flatten_levels` flattens a channels-last head output
(B, *feature_size, A * K), so anchor i and head row i belong together. Levels are concatenated in order.

Anchors depend only on static shapes: they are numpy float32 arrays computed from Python numbers, which
`jax.jit` embeds as constants of the program (no tracing, no device work to build them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.errors import MedjaxError


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence) -> np.ndarray:
    """The (len(aspect_ratios) * len(sizes), 2d) cell anchors of one level, ratio-major (MONAI's
    `AnchorGenerator.generate_anchors`, rounded to whole voxels as MONAI does).

    2D: `aspect_ratios` are numbers r with w:h = 1:r at area size**2 (w = size / sqrt(r), h = size * sqrt(r)).
    3D: pairs (r1, r2) with w:h:d = 1:r1:r2 at volume size**3."""
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    if ratios.ndim == 1:  # 2D
        area_scale = np.sqrt(ratios)
        factors = [1 / area_scale, area_scale]
    elif ratios.ndim == 2 and ratios.shape[1] == 2:  # 3D
        area_scale = np.power(ratios[:, 0] * ratios[:, 1], np.float32(1 / 3.0))
        factors = [1 / area_scale, ratios[:, 0] / area_scale, ratios[:, 1] / area_scale]
    else:
        raise MedjaxError(f"aspect_ratios must be numbers (2D) or pairs (3D), got shape {tuple(ratios.shape)}")
    sides = [(f[:, None] * scales[None, :]).reshape(-1) for f in factors]
    half = np.stack(sides, axis=1) / np.float32(2)
    return np.round(np.concatenate([-half, half], axis=1))


def cell_anchors_from_shapes(base_shapes: Sequence[Sequence[float]], scale: float = 1.0) -> np.ndarray:
    """The (A, 2d) cell anchors of anchors with explicit sides `scale * base_shapes` ((w, h) or (w, h, d) each),
    rounded (one level of MONAI's `AnchorGeneratorWithAnchorShape`, the generator of its 3D RetinaNet)."""
    shapes = np.asarray(base_shapes, np.float32)
    if shapes.ndim != 2 or shapes.shape[1] not in (2, 3):
        raise MedjaxError(f"base_shapes must be (w, h) or (w, h, d) rows, got shape {tuple(shapes.shape)}")
    half = np.float32(scale) * shapes / np.float32(2)
    return np.round(np.concatenate([-half, half], axis=1))


def level_anchors(cells: np.ndarray, feature_size: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """All anchors (prod(feature_size) * A, 2d) of one level: `cells` (A, 2d) centred at every location
    index * stride + stride // 2."""
    d = cells.shape[-1] // 2
    if len(feature_size) != d or len(stride) != d:
        raise MedjaxError(f"{d}D anchors need {d} feature sizes and strides, got {tuple(feature_size)} and "
                          f"{tuple(stride)}")
    axes = [np.arange(n) * s + s // 2 for n, s in zip(feature_size, stride)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d).astype(np.float32)
    shifts = np.concatenate([centres, centres], axis=1)
    return (shifts[:, None, :] + np.asarray(cells, np.float32)[None, :, :]).reshape(-1, 2 * d)


def strides(image_size: Sequence[int], feature_sizes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Each level's stride: image size // feature size per axis (MONAI's rule)."""
    return [tuple(int(i) // int(f) for i, f in zip(image_size, fs)) for fs in feature_sizes]


def generate_anchors(image_size: Sequence[int], feature_sizes: Sequence[Sequence[int]],
                     cells: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[int, ...]]:
    """(anchors (sum of level sizes, 2d), level sizes (prod(feature_size) * A per level)) for an image of
    `image_size` whose feature levels have `feature_sizes`, with `cells[i]` the cell anchors of level i
    (`cell_anchors` / `cell_anchors_from_shapes`). The level sizes are what `postprocess.detect` and
    `matching.match_atss` take to split the anchors back into levels."""
    if len(feature_sizes) != len(cells):
        raise MedjaxError(f"{len(feature_sizes)} feature levels but {len(cells)} sets of cell anchors")
    per_level = [level_anchors(c, fs, s) for c, fs, s in zip(cells, feature_sizes, strides(image_size,
                                                                                           feature_sizes))]
    return np.concatenate(per_level, axis=0), tuple(int(a.shape[0]) for a in per_level)
