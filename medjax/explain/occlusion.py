"""Occlusion sensitivity (Zeiler and Fergus 2014): how much the target score drops when a window of the input is
replaced by a baseline value, 2D and 3D.

Windows of `window` voxels start at 0, stride, 2 stride, ... along each axis, the last one shifted back to end at
the border (MONAI's sliding-window positions, `medjax.inference.sliding_window.starts_along`), so every voxel is
covered. Each voxel's value is score(x) minus the mean score over the windows that cover it: positive where
hiding the voxel lowers the score (important evidence). All windows of all examples are ONE program: the occluded
inputs are built inside a vmap (a window's mask is an outer product of 1D intervals, never a stored array), and
the per-window scores are spread back to voxels with one einsum of 1D window-membership matrices.

MONAI's `OcclusionSensitivity(mask_size=window, overlap=o, mode=value, activate=False)` gives the same windows when
stride = int(window * (1 - o)); its map (B, K, *spatial) holds the mean occluded logit per class, so medjax's map
= score(x) - MONAI's map[:, target]. MONAI needs batch 1 and loops over windows in Python.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import MedjaxError
from medjax.explain.core import Apply, example_score, map_chunked, map_examples
from medjax.inference.sliding_window import starts_along


def _per_axis(value: int | Sequence[int], nd: int, what: str) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, Sequence) else (value,) * nd
    if len(values) != nd or any(int(v) < 1 for v in values):
        raise MedjaxError(f"occlusion {what} must be a positive int or one per spatial axis ({nd}), got {value!r}")
    return tuple(int(v) for v in values)


def windows(spatial: Sequence[int], window: int | Sequence[int], stride: int | Sequence[int]
            ) -> tuple[tuple[int, ...], list[list[int]]]:
    """(window size per axis, window starts per axis) for an input of `spatial` size."""
    nd = len(spatial)
    win, step = _per_axis(window, nd, "window"), _per_axis(stride, nd, "stride")
    if any(w > n for w, n in zip(win, spatial)):
        raise MedjaxError(f"occlusion window {win} is larger than the input {tuple(spatial)}")
    return win, [starts_along(n, w, s) for n, w, s in zip(spatial, win, step)]


def num_windows(spatial: Sequence[int], window: int | Sequence[int], stride: int | Sequence[int]) -> int:
    """How many occluded copies of each example `occlusion` scores."""
    return int(np.prod([len(s) for s in windows(spatial, window, stride)[1]]))


def occlusion(apply: Apply, variables: Any, x: jax.Array, target: jax.Array, region: jax.Array | None = None, *,
              window: int | Sequence[int] = 8, stride: int | Sequence[int] = 4, baseline: float = 0.0,
              batch_size: int | None = None) -> jax.Array:
    """Occlusion sensitivity maps (N, *spatial, 1): score(x) - mean score with a covering window set to
    `baseline` (every channel)."""
    spatial = tuple(x.shape[1:-1])
    win, starts = windows(spatial, window, stride)
    grid = jnp.asarray(list(itertools.product(*starts)), jnp.int32)  # (W, nd), last axis fastest
    # membership[d][i, v]: window i along axis d covers position v
    membership = [jnp.asarray([[s <= v < s + w for v in range(n)] for s in st], x.dtype)
                  for st, w, n in zip(starts, win, spatial)]
    nd = len(spatial)
    letters = "abcdefgh"[:nd]
    spread = f"{letters}," + ",".join(f"{a}{a.upper()}" for a in letters) + "->" + letters.upper()

    def one(ex, chunk):
        x0 = ex["x"]

        def occluded_score(start):
            inside = None
            for d in range(nd):
                pos = jax.lax.broadcasted_iota(jnp.int32, spatial, d)
                axis_in = (pos >= start[d]) & (pos < start[d] + win[d])
                inside = axis_in if inside is None else inside & axis_in
            xo = jnp.where(inside[..., None], jnp.asarray(baseline, x0.dtype), x0)
            return example_score(apply, variables, xo, ex["target"], ex["region"])

        scores = map_chunked(occluded_score, grid, chunk).reshape([len(s) for s in starts])
        total = jnp.einsum(spread, scores, *membership)
        count = jnp.einsum(spread, jnp.ones_like(scores), *membership)
        full = example_score(apply, variables, x0, ex["target"], ex["region"])
        return (full - total / count)[..., None]

    return map_examples(one, {"x": x, "target": target, "region": region}, len(grid) + 1, batch_size)
