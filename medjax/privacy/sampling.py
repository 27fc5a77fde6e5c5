"""Poisson batches of a fixed shape, as DP-SGD's accounting assumes them.

Step s includes every training example independently with probability q = batch_size / N: the sample size is
Binomial(N, q) and the sample a uniformly random subset of that size (the same distribution, drawn as jax-privacy's
`CyclicPoissonSampling` draws it). A sample larger than the padded size P is cut to a uniformly random subset of
P (what `dp_accounting.TruncatedSubsampledGaussianDpEvent` accounts for); a smaller one is padded with rows of
weight 0, which contribute no gradient. The draw is `np.random.default_rng([seed, step, POISSON_STREAM])`: a pure
function of the seed and the step, identical on every process (each reads its own rows), so a resumed run draws
the same batches.

The padded size (`padded_batch_size`) is a multiple of `multiple` (devices x per-device micro-batch) and, left at
0, chosen per accountant: `pld` accounts for the truncation exactly, so P = expected size + `PLD_STDS` standard
deviations (N = 1000, q = 0.032, sigma = 1, 1000 steps, delta 1e-5: epsilon 6.589 without truncation; cut at
+5 std (60 rows) 6.592, at +3 std (49 rows) 7.872); `rdp` cannot, so P is the smallest size whose truncation
is negligible (`medjax.privacy.accounting`).
"""

from __future__ import annotations

import math

import numpy as np

from medjax.errors import MedjaxError
from medjax.privacy import accounting

POISSON_STREAM = 17  # third seed word: no collision with the shuffled stream's [seed, epoch]
PLD_STDS = 5.0


def _round_up(x: int, multiple: int) -> int:
    return -(-int(x) // multiple) * multiple


def auto_padded_batch_size(n: int, batch_size: int, multiple: int, accountant: str, steps: int = 0,
                           delta: float = 0.0, noise_multiplier: float = 0.0) -> int:
    """The fixed batch shape of Poisson batches (module docstring); `steps`, `delta` and `noise_multiplier` are
    what the `rdp` choice depends on. Never more than needed to hold every example (N + 1, rounded up)."""
    q = batch_size / n
    cap = _round_up(n + 1, multiple)
    if accountant == "pld":
        return min(cap, _round_up(math.ceil(batch_size + PLD_STDS * math.sqrt(batch_size * (1 - q))), multiple))
    from scipy.stats import binom

    eps0 = accounting.poisson_epsilon(q, noise_multiplier, steps, delta / 2, "rdp")
    allowed = accounting.TRUNCATION_SHARE * delta / (1.0 + math.exp(min(eps0, 700.0))) / max(steps, 1)
    sizes = np.arange(_round_up(batch_size, multiple), cap + 1, multiple)
    ok = sizes[binom.sf(sizes, n + 1, q) <= allowed]
    return int(ok[0]) if len(ok) else cap


def poisson_batch(seed: int, step: int, n: int, q: float, padded: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (padded,): the Poisson sample of step `step` (0-based), cut or padded to `padded`
    rows. Padding rows point at example 0 with weight 0."""
    rng = np.random.default_rng([seed, step, POISSON_STREAM])
    size = min(int(rng.binomial(n, q)), padded)
    indices = np.zeros(padded, np.int64)
    indices[:size] = rng.choice(n, size=size, replace=False)
    weights = (np.arange(padded) < size).astype(np.float32)
    return indices, weights


class PoissonSelect:
    """The `select` of a `medjax.data.stream.TrainStream`: batch number -> (global indices, weights)."""

    def __init__(self, seed: int, n: int, batch_size: int, padded: int):
        if not 0 < batch_size <= n:
            raise MedjaxError(f"config.batch_size={batch_size} must be between 1 and the {n} training examples for "
                              "Poisson sampling (config.privacy)")
        self.seed, self.n, self.q, self.padded = seed, n, batch_size / n, padded

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return poisson_batch(self.seed, step, self.n, self.q, self.padded)
