"""Random boxes for the detection tests (numpy, float32, corner format)."""

import numpy as np


def random_boxes(rng: np.random.Generator, n: int, dims: int, extent: float = 48.0, max_side: float = 16.0):
    """n well-formed boxes (n, 2 * dims) with low corners in [0, extent) and sides in [1, max_side)."""
    lo = rng.uniform(0, extent, (n, dims))
    return np.concatenate([lo, lo + rng.uniform(1, max_side, (n, dims))], axis=1).astype(np.float32)
