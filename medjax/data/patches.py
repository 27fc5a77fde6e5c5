"""Host-side patch sampling for large volumes, with nnU-Net-style foreground oversampling.

Everything here is numpy and a pure function of its inputs and seed: `sample_patches(..., seed=s)` returns the same
patches every time, so a resumed run samples what the interrupted one would have. Derive per-example seeds from
(base seed, epoch or step, global example index), e.g. `seed=(cfg.seed, step, index)`, which numpy's
`default_rng` accepts; then results do not depend on the number of processes or workers.

Layout: one volume, no batch axis. Images are `(*spatial, C)` (channels-last), labels are `(*spatial)`;
2D and 3D alike.

Sampling (`patch_starts`): with probability `fg_ratio` the patch is centred on a voxel drawn uniformly from all
foreground voxels (`label > 0`) and shifted, if needed, so that it lies inside the volume; otherwise (or when the
label has no foreground) the start is uniform over all positions where the patch fits. For foreground away from
the border, the fraction of patch centres that land on foreground is therefore
`fg_ratio + (1 - fg_ratio) * f`, where `f` is the foreground fraction of the region patch centres can reach.

Volumes smaller than the patch in some dimension must be padded first (`sample_patches` does it): `pad_to_patch`
pads symmetrically (the extra voxel, when odd, goes after), the image with its per-channel minimum (the background
of CT in HU and of most MR) unless `image_pad_value` is given, the label with 0 (background).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.errors import MedjaxError

SeedLike = int | Sequence[int]


def _patch_size(patch_size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
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


def pad_to_patch(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: int | Sequence[int],
    image_pad_value: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad `image` (*spatial, C) and `label` (*spatial) so every spatial size is at least `patch_size`.

    Padding is symmetric (`diff // 2` before, the rest after, as `sliding_window_inference` does). The image is
    padded with `image_pad_value`, or by default with its per-channel minimum; the label with 0. Arrays that are
    already large enough are returned unchanged (not copied).
    """
    image, label = np.asarray(image), np.asarray(label)
    _check_pair(image, label)
    size = _patch_size(patch_size, label.ndim)
    widths = []
    for n, p in zip(label.shape, size):
        diff = max(p - n, 0)
        widths.append((diff // 2, diff - diff // 2))
    if not any(sum(w) for w in widths):
        return image, label
    label = np.pad(label, widths, mode="constant", constant_values=0)
    if image.size == 0:
        raise MedjaxError(f"cannot pad an empty image of shape {image.shape}")
    channels = []
    for c in range(image.shape[-1]):
        value = image[..., c].min() if image_pad_value is None else image_pad_value
        channels.append(np.pad(image[..., c], widths, mode="constant", constant_values=value))
    return np.stack(channels, axis=-1), label


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
    size = _patch_size(patch_size, label.ndim)
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


def sample_patches(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: int | Sequence[int],
    count: int,
    fg_ratio: float,
    seed: SeedLike,
    image_pad_value: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`count` patches of one volume: `(images (count, *patch, C), labels (count, *patch))`.

    The volume is padded to the patch size if needed (`pad_to_patch`), then each start is drawn by
    `patch_starts` from `np.random.default_rng(seed)`; the same arguments always give the same patches.
    """
    image, label = np.asarray(image), np.asarray(label)
    _check_pair(image, label)
    size = _patch_size(patch_size, label.ndim)
    if int(count) < 0:
        raise MedjaxError(f"count must be >= 0, got {count}")
    image, label = pad_to_patch(image, label, size, image_pad_value)
    rng = np.random.default_rng(seed)
    fg = foreground_indices(label)
    images = np.empty((int(count), *size, image.shape[-1]), image.dtype)
    labels = np.empty((int(count), *size), label.dtype)
    for i in range(int(count)):
        start = patch_starts(rng, label, size, fg_ratio, foreground=fg)
        images[i] = extract_patch(image, start, size)
        labels[i] = extract_patch(label, start, size)
    return images, labels
