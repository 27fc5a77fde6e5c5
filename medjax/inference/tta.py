"""Test-time augmentation: the training augmentations (`config.augment`, `medjax.data.augment`) applied at
inference, K random draws (vmapped, `medjax.inference.predictive`), each draw's prediction mapped back.

A classifier's prediction does not move, so every transform may be used. A segmentation's predicted map must be
moved back to the input's voxels: `flip` and `rot90` permute voxels, which is undone exactly; the intensity
transforms (gamma, contrast_brightness, noise, blur, bias_field) move nothing. `affine` and `elastic` resample the
image, which no map of the predictions undoes exactly (nearest-neighbour inversion loses voxels, linear blurs),
so TTA for segmentation refuses them: set `--config.augment.transforms` to the invertible ones for evaluation.

How a draw is undone: the same draw (the augmentation's key is `fold_in(draw_key, example index)`, as in
training) is applied to a map of voxel indices as if it were a label (nearest, exact for flips and quarter
turns), which gives for every output voxel the input voxel it shows; scattering the predictions back to those
voxels is the exact inverse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from medjax.data.augment import DEFAULTS, make_augment
from medjax.errors import MedjaxError

EXACTLY_INVERTIBLE = ("flip", "rot90")
NOT_INVERTIBLE = ("affine", "elastic")


def active_transforms(cfg: ml_collections.ConfigDict) -> list[str]:
    """The transforms of `config.augment` that apply with a probability above 0."""
    names = cfg.transforms or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    p = lambda name: (cfg[name].p if name in cfg else DEFAULTS[name]["p"])  # noqa: E731
    return [n for n in names if n in DEFAULTS and p(n) > 0]


def check(cfg: ml_collections.ConfigDict, dense: bool) -> None:
    """MedjaxError naming `config.augment.transforms` when there is nothing to draw or, with `dense`
    (segmentation), a transform cannot be undone."""
    names = active_transforms(cfg)
    if not names:
        raise MedjaxError("--uncertainty tta draws from config.augment, which applies no transform: set e.g. "
                          "--config.augment.transforms=flip,rot90 (with p > 0)")
    if dense and set(names) & set(NOT_INVERTIBLE):
        bad = sorted(set(names) & set(NOT_INVERTIBLE))
        raise MedjaxError(f"--uncertainty tta for segmentation undoes {', '.join(EXACTLY_INVERTIBLE)} exactly but not "
                          f"{', '.join(bad)} (a resampling): set --config.augment.transforms to flip, rot90 and "
                          "intensity transforms for evaluation")


def make_tta(cfg: ml_collections.ConfigDict, spatial_shape: Sequence[int], dense: bool) -> Callable:
    """`draw(key, batch) -> (image, voxel_map or None)`: one augmentation draw of every example of `batch` (needs
    "image" and "index"); with `dense` (segmentation) also the map (N, *spatial) of the input voxel each output
    voxel shows, for `invert`. Refuses what `check` refuses."""
    check(cfg, dense)
    augment = make_augment(cfg, spatial_shape=spatial_shape)

    def draw(key: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array | None]:
        image = batch["image"]
        inputs = {"image": image, "index": batch["index"]}
        if dense:
            n, spatial = image.shape[0], image.shape[1:-1]
            voxels = jnp.arange(math.prod(spatial), dtype=jnp.int32).reshape(spatial)
            inputs["label"] = jnp.broadcast_to(voxels, (n, *spatial))
        out = augment(key, inputs)
        return out["image"], (out["label"] if dense else None)

    return draw


def invert(pred: jax.Array, voxels: jax.Array) -> jax.Array:
    """Predictions (N, *spatial, C) of an augmented image back on the input's voxels, given `voxels` (N,
    *spatial): the input voxel (flat index) each output voxel shows. Exact for permutations (flips, rot90)."""
    n, c = pred.shape[0], pred.shape[-1]
    flat, idx = pred.reshape(n, -1, c), voxels.reshape(n, -1)
    back = jax.vmap(lambda f, i: jnp.zeros_like(f).at[i].set(f))(flat, idx)
    return back.reshape(pred.shape)
