"""Small synthetic datasets for tests and smoke runs: they exercise the full pipeline in seconds."""

from __future__ import annotations

import numpy as np


def blobs_segmentation(num_examples: int, size: tuple[int, ...], num_classes: int, seed: int) -> dict:
    """Images of noisy discs/balls whose label is the disc's class; learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in size], indexing="ij")
    images = np.zeros((num_examples, *size, 1), np.float32)
    labels = np.zeros((num_examples, *size), np.int32)
    for i in range(num_examples):
        for cls in range(1, num_classes):
            centre = [rng.uniform(0.25 * s, 0.75 * s) for s in size]
            radius = rng.uniform(0.12, 0.25) * min(size)
            dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
            inside = dist2 < radius**2
            labels[i][inside] = cls
            images[i, ..., 0][inside] = cls / (num_classes - 1)
    images += rng.normal(0, 0.1, images.shape).astype(np.float32)
    return {"image": images, "label": labels}


def blobs_classification(num_examples: int, size: tuple[int, ...], num_classes: int, seed: int) -> dict:
    """Images whose class is the brightness of a centred square; one channel."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    images = rng.normal(0, 0.2, (num_examples, *size, 1)).astype(np.float32)
    centre = tuple(slice(s // 4, 3 * s // 4) for s in size)
    for i, y in enumerate(labels):
        images[(i, *centre, 0)] += y / max(1, num_classes - 1)
    return {"image": images, "label": labels}


def split(make, sizes: dict[str, int], seed: int, **kwargs) -> dict[str, dict]:
    """One generator call per split with distinct seeds, so splits never share examples."""
    return {name: make(n, seed=seed * 1000 + i, **kwargs) for i, (name, n) in enumerate(sizes.items())}
