"""Splits stored in one `.npz` file as `<split>_images` / `<split>_labels` (the MedMNIST layout)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from medjax.errors import MedjaxError


def load_npz_splits(path: str, splits=("train", "val", "test")) -> dict[str, dict[str, np.ndarray]]:
    """Read the named splits; images gain a channel axis if they have none (N,H,W -> N,H,W,1), scaled to [0,1]
    when stored as uint8. Labels (N,1) become (N,) for single-label data; (N,K) multi-label stay as they are."""
    if not os.path.isfile(path):
        raise MedjaxError(f"data file not found: {path}")
    try:
        data = np.load(path)
        files = set(data.files)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise MedjaxError(f"cannot read {path}: {e}") from e
    out = {}
    for name in splits:
        for part in ("images", "labels"):
            if f"{name}_{part}" not in files:
                raise MedjaxError(f"{path} has no '{name}_{part}' array (found: {sorted(files)})")
        images, labels = data[f"{name}_images"], data[f"{name}_labels"]
        if len(images) != len(labels):
            raise MedjaxError(f"{path}: {name}_images has {len(images)} rows but {name}_labels has {len(labels)}")
        images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
        if images.ndim == 3:
            images = images[..., None]
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        out[name] = {"image": images, "label": labels.astype(np.int32)}
    return out
