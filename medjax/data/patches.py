"""Host-side patch sampling for large volumes, with nnU-Net-style foreground oversampling.

Everything here is numpy and a pure function of its inputs and seed: `sample_patches(..., seed=s)` returns the same
patches every time, so a resumed run samples what the interrupted one would have. Derive per-example seeds from
(base seed, epoch or step, global example index), e.g. `seed=(cfg.seed, step, index)`, which numpy's
`default_rng` accepts; then results do not depend on the number of processes or workers.

Layout: one volume, no batch axis. Images are `(*spatial, C)` (channels-last), labels are `(*spatial)`;
2D and 3D alike. An example (`sample_example_patches`) may hold more per-voxel arrays than the label: a
field-of-view "mask", instance maps, any array whose leading shape is the image's spatial shape (`voxel_keys`);
they are cut at the same starts (and padded the same way) as the image, while per-example arrays (a "target"
(1,), a "spacing") pass through.

Sampling (`patch_starts`): with probability `fg_ratio` the patch is centred on a voxel drawn uniformly from all
foreground voxels (`label > 0`) and shifted, if needed, so that it lies inside the volume; otherwise (or when the
label has no foreground) the start is uniform over all positions where the patch fits. For foreground away from
the border, the fraction of patch centres that land on foreground is therefore
`fg_ratio + (1 - fg_ratio) * f`, where `f` is the foreground fraction of the region patch centres can reach.

Volumes smaller than the patch in some dimension must be padded first (`sample_patches` does it): `pad_to_patch`
pads symmetrically (the extra voxel, when odd, goes after), the image with its per-channel minimum (the background
of CT in HU and of most MR) unless `image_pad_value` is given, the label with 0 (background), and every other
per-voxel array with 0 (`pad_value`: a mask's 0 means "not counted", an instance map's 0 "no instance").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medjax.errors import MedjaxError

SeedLike = int | Sequence[int]


def patch_shape(patch_size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """`patch_size` (one int for every axis, or one per axis) as a tuple of `ndim` positive sizes."""
    size = (int(patch_size),) * ndim if np.isscalar(patch_size) else tuple(int(p) for p in patch_size)
    if len(size) != ndim:
        raise MedjaxError(f"patch_size {tuple(size)} has {len(size)} dimensions but the volume has {ndim}")
    if any(p <= 0 for p in size):
        raise MedjaxError(f"patch_size {size} must be positive in every dimension")
    return size


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim != label.ndim + 1 or image.shape[:-1] != label.shape:
        raise MedjaxError(
            f"image shape {image.shape} must be label shape {label.shape} plus a trailing channel axis (*spatial, C)"
        )


def voxel_keys(example: Mapping[str, np.ndarray]) -> list[str]:
    """The keys of `example` that hold per-voxel arrays: the image and every array whose leading shape is the
    image's spatial shape (label, "mask", instance maps, (*spatial, K) maps). The others (e.g. a "target" (1,))
    are per example."""
    if "image" not in example:
        raise MedjaxError(f"patch sampling needs an 'image' (*spatial, C); the example holds {sorted(example)}")
    spatial = np.shape(example["image"])[:-1]
    if "label" in example:
        _check_pair(np.asarray(example["image"]), np.asarray(example["label"]))
    return [k for k, v in example.items() if np.ndim(v) >= len(spatial) and np.shape(v)[:len(spatial)] == spatial]


def pad_value(key: str, array: np.ndarray, image_pad_value: float | None = None) -> float | np.ndarray:
    """What a per-voxel array is padded with: the image its per-channel minimum (or `image_pad_value`), every
    other array 0 (label background, mask 0 = not counted, instance 0 = none)."""
    if key != "image":
        return 0
    if array.size == 0:
        raise MedjaxError(f"cannot pad an empty image of shape {array.shape}")
    return array.min(axis=tuple(range(array.ndim - 1))) if image_pad_value is None else image_pad_value


def pad_example(example: Mapping[str, np.ndarray], patch_size: int | Sequence[int],
                image_pad_value: float | None = None) -> dict[str, np.ndarray]:
    """`example` with every per-voxel array (`voxel_keys`) padded so each spatial size is at least `patch_size`.

    Padding is symmetric (`diff // 2` before, the rest after, as `sliding_window_inference` does), with
    `pad_value` per key; per-example arrays and arrays already large enough are returned unchanged (not copied).
    """
    keys = voxel_keys(example)
    spatial = np.shape(example["image"])[:-1]
    size = patch_shape(patch_size, len(spatial))
    widths = [(max(p - n, 0) // 2, max(p - n, 0) - max(p - n, 0) // 2) for n, p in zip(spatial, size)]
    out = dict(example)
    if not any(sum(w) for w in widths):
        return out
    for k in keys:
        a = np.asarray(example[k])
        value = np.asarray(pad_value(k, a, image_pad_value), a.dtype)
        padded = np.empty([n + sum(w) for n, w in zip(a.shape, widths)] + list(a.shape[len(spatial):]), a.dtype)
        padded[...] = value  # broadcasts a per-channel value over the trailing axis
        padded[tuple(slice(b, b + n) for (b, _), n in zip(widths, spatial))] = a
        out[k] = padded
    return out


def pad_to_patch(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: int | Sequence[int],
    image_pad_value: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad `image` (*spatial, C) and `label` (*spatial) so every spatial size is at least `patch_size`
    (`pad_example` of the pair: the image with its per-channel minimum or `image_pad_value`, the label with 0)."""
    out = pad_example({"image": np.asarray(image), "label": np.asarray(label)}, patch_size, image_pad_value)
    return out["image"], out["label"]


def extract_patch(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The block `array[start : start + size]` over the leading spatial axes (trailing axes, e.g. C, kept whole).

    Returns a view; raises `MedjaxError` if the block does not lie inside the array.
    """
    start, size = tuple(int(s) for s in start), tuple(int(s) for s in size)
    if len(start) != len(size) or len(start) > array.ndim:
        raise MedjaxError(f"patch start {start} / size {size} do not match array shape {array.shape}")
    for s, p, n in zip(start, size, array.shape):
        if s < 0 or p <= 0 or s + p > n:
            raise MedjaxError(f"patch start {start} size {size} does not fit array shape {array.shape}")
    return array[tuple(slice(s, s + p) for s, p in zip(start, size))]


def foreground_indices(label: np.ndarray) -> np.ndarray:
    """Flat indices of the foreground voxels (label > 0); compute once per volume, pass to `patch_starts`."""
    return np.flatnonzero(np.asarray(label) > 0)


def patch_starts(
    rng: np.random.Generator,
    label: np.ndarray,
    patch_size: int | Sequence[int],
    fg_ratio: float,
    *,
    foreground: np.ndarray | None = None,
) -> tuple[int, ...]:
    """One patch start (a tuple of ints): foreground-centred with probability `fg_ratio`, else uniform.

    `label` is the (already padded) spatial label volume; `foreground` optionally gives its precomputed
    `foreground_indices` (worth it for large volumes and many draws). The random stream consumed per call is
    fixed (a coin, then either one foreground index or one integer per axis), so draws are reproducible.
    """
    label = np.asarray(label)
    size = patch_shape(patch_size, label.ndim)
    if not 0.0 <= fg_ratio <= 1.0:
        raise MedjaxError(f"fg_ratio must be in [0, 1], got {fg_ratio}")
    if any(p > n for p, n in zip(size, label.shape)):
        raise MedjaxError(
            f"volume {label.shape} is smaller than patch_size {size}; pad it first (medjax.data.patches.pad_to_patch)"
        )
    if foreground is None:
        foreground = foreground_indices(label)
    use_fg = rng.random() < fg_ratio
    if use_fg and len(foreground):
        centre = np.unravel_index(foreground[rng.integers(len(foreground))], label.shape)
        return tuple(int(min(max(c - p // 2, 0), n - p)) for c, p, n in zip(centre, size, label.shape))
    return tuple(int(rng.integers(0, n - p + 1)) for p, n in zip(size, label.shape))


def sample_example_patches(
    example: Mapping[str, np.ndarray],
    patch_size: int | Sequence[int],
    count: int,
    fg_ratio: float,
    seed: SeedLike,
    image_pad_value: float | None = None,
) -> dict[str, np.ndarray]:
    """`count` patches of one example: every per-voxel array (`voxel_keys`: image, label, mask, ...) as
    `(count, *patch, ...)`, cut at the same starts; per-example arrays unchanged.

    The example is padded to the patch size if needed (`pad_example`), then each start is drawn by
    `patch_starts` from `np.random.default_rng(seed)`, centred on the label's foreground with probability
    `fg_ratio` (uniform when the example has no label); the same arguments always give the same patches.
    """
    keys = voxel_keys(example)
    spatial = np.shape(example["image"])[:-1]
    size = patch_shape(patch_size, len(spatial))
    if int(count) < 0:
        raise MedjaxError(f"count must be >= 0, got {count}")
    padded = pad_example(example, size, image_pad_value)
    arrays = {k: np.asarray(padded[k]) for k in keys}
    label = arrays.get("label")
    if label is None:  # no foreground to favour: a zero-stride stand-in of the spatial shape
        label = np.broadcast_to(np.zeros((), np.int8), arrays["image"].shape[:-1])
    rng = np.random.default_rng(seed)
    fg = foreground_indices(label)
    out = {k: np.empty((int(count), *size, *a.shape[len(size):]), a.dtype) for k, a in arrays.items()}
    for i in range(int(count)):
        start = patch_starts(rng, label, size, fg_ratio, foreground=fg)
        for k, a in arrays.items():
            out[k][i] = extract_patch(a, start, size)
    return {**padded, **out}


def sample_patches(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: int | Sequence[int],
    count: int,
    fg_ratio: float,
    seed: SeedLike,
    image_pad_value: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`count` patches of one volume: `(images (count, *patch, C), labels (count, *patch))`
    (`sample_example_patches` of the pair)."""
    out = sample_example_patches({"image": np.asarray(image), "label": np.asarray(label)}, patch_size, count,
                                 fg_ratio, seed, image_pad_value)
    return out["image"], out["label"]
