"""Tissue-classification patches from the ICBM152 slices: a small, real, labelled 2D classification set.

Each example is a `patch_size`^2 patch of an axial T1 slice (`medjax.data.icbm152`, same train/val/test slabs, so
no patch of one split comes from a slice of another) centred on a pixel whose tissue label is CSF, grey or white
matter; the patch's label is that centre pixel's tissue (0 = CSF, 1 = grey, 2 = white). Centres are drawn
uniformly without replacement per split and class from a seeded generator, so a given (seed, counts) is always
the same set. Patches reaching outside the slice are padded with the background intensity. Used by the GAN
augmentation experiment (`experiments/gan_augmentation.py`), where the training set is deliberately tiny.

A known bias can be injected (`experiments/trust_report.py`): with `site_shift` != 0 some patches come from a
"site B" whose scanner adds `site_shift` (z-scored units) to every intensity. At site B are every second patch of
each class in `site_b_classes` in training (`site_b`), and every second patch of every class in val and test; a
model trained with site B tied to one class learns the scanner as a sign of that class, which a subgroup report by
site (`site_b` writes the metadata) must find.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax.errors import MedjaxError

CLASS_NAMES = ("csf", "grey_matter", "white_matter")


def patches_at(image: np.ndarray, centres: np.ndarray, size: int, fill: float) -> np.ndarray:
    """(N, H, W, C) slices and (K, 3) (slice, row, col) centres -> (K, size, size, C) patches."""
    lo = size // 2
    padded = np.pad(image, [(0, 0), (lo, size - lo), (lo, size - lo), (0, 0)], constant_values=fill)
    return np.stack([padded[n, r:r + size, c:c + size] for n, r, c in centres]).astype(np.float32)


def site_b(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """(N,) bool: the examples at site B, every second example (positions 1, 3, ... among the examples of its
    class, in split order) of the classes in `classes`."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), np.int64)
    for k in np.unique(labels):
        rank[labels == k] = np.arange(int((labels == k).sum()))
    return np.isin(labels, list(classes)) & (rank % 2 == 1)


def load_icbm152_patches(patch_size: int = 16, train_per_class: int = 20, val_per_class: int = 100,
                         test_per_class: int = 200, seed: int = 0, in_plane_mm: float = 1.0,
                         root: str | None = None, site_shift: float = 0.0,
                         site_b_classes: Sequence[int] = ()) -> dict:
    """{"train" | "val" | "test": {"image": (N, p, p, 1) float32, "label": (N,) int32}}, classes in CLASS_NAMES
    order, `<split>_per_class` examples of each class (class-major order); site B's patches (`site_b`: in
    training of `site_b_classes`, in val and test of every class) shifted by `site_shift`."""
    from medjax.data.icbm152 import load_icbm152_slices

    if patch_size < 2:
        raise MedjaxError(f"patch_size must be >= 2, got {patch_size}")
    bad = [k for k in site_b_classes if not 0 <= k < len(CLASS_NAMES)]
    if bad:
        raise MedjaxError(f"config.data.site_b_classes: {bad} are not classes; use 0..{len(CLASS_NAMES) - 1} "
                          f"({', '.join(CLASS_NAMES)})")
    slices = load_icbm152_slices(root=root, in_plane_mm=in_plane_mm)
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in counts.items():
        image, label = slices[split]["image"], slices[split]["label"]
        fill = float(image.min())
        images, labels = [], []
        for k in range(len(CLASS_NAMES)):
            where = np.argwhere(label == k + 1)  # tissue k+1 in the slice labels (0 is background)
            if len(where) < per_class:
                raise MedjaxError(f"icbm152_patches: split {split!r} has only {len(where)} {CLASS_NAMES[k]} pixels, "
                                  f"fewer than {split}_per_class={per_class}")
            centres = where[rng.choice(len(where), per_class, replace=False)]
            images.append(patches_at(image, centres, patch_size, fill))
            labels.append(np.full(per_class, k, np.int32))
        images, labels = np.concatenate(images), np.concatenate(labels)
        if site_shift:
            at_b = site_b(labels, site_b_classes if split == "train" else range(len(CLASS_NAMES)))
            images[at_b] += np.float32(site_shift)
        out[split] = {"image": images, "label": labels}
    return out
