"""Privacy accounting for DP-SGD with Google's dp-accounting: epsilon at delta after some steps, the noise multiplier
for a target epsilon, and how many steps a budget lasts.

One DP-SGD step (`Mechanism`) is the Gaussian mechanism (noise std `sigma * clip_norm` on a sum of per-example
gradients clipped to `clip_norm`) on a Poisson sample (each of the N training examples independently with
probability q = batch_size / N) that is cut to a fixed `padded_batch_size` P when it is larger (a uniformly random
subset of P is kept: the padded batch has a fixed shape). Neighbouring datasets differ by adding or removing one
example.

- `pld` (the default) composes the privacy loss distribution of exactly this mechanism:
  `dp_accounting.TruncatedSubsampledGaussianDpEvent(N, q, P, sigma)` (the event jax-privacy's truncated Poisson
  batch selection is accounted with; arXiv:2508.15089), or the plain Poisson event when P > N. The distribution is
  discretised at `PLD_DISCRETIZATION` (dp-accounting's default is 1e-4; 1e-3 builds the truncated event ~10x
  faster and moved epsilon by < 0.01% in our checks; the discretisation is pessimistic, so epsilon stays an upper
  bound).
- `rdp` (Renyi DP, Mironov et al.; what Opacus reports) has no event for truncated batches. medjax makes the
  truncation negligible instead and pays for it in delta: a run of T steps and its untruncated twin differ only
  when some batch is cut, which happens with probability at most beta = T * P[Binomial(N + 1, q) > P], so
  (epsilon, delta_rdp)-DP of the twin gives (epsilon, delta_rdp + (1 + e^epsilon) beta)-DP of the run. epsilon is
  RDP's at delta_rdp = delta - (1 + e^eps0) beta, eps0 = RDP's epsilon at delta / 2 (an upper bound on epsilon as
  long as (1 + e^eps0) beta <= delta / 2). The automatic padded size keeps (1 + e^eps0) beta below
  `TRUNCATION_SHARE` of delta, so RDP's number moves by a negligible amount, but P is larger than for `pld`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

from medjax.errors import MedjaxError

ACCOUNTANTS = ("pld", "rdp")
PLD_DISCRETIZATION = 1e-3
TRUNCATION_SHARE = 1e-3  # rdp: the share of delta that may pay for truncated batches (automatic padded size)
MAX_NOISE_MULTIPLIER = 100.0  # noise 100x the clip norm: a target that needs more is out of reach


def dp_accounting() -> Any:
    """The dp-accounting package, or an error naming the extra that installs it."""
    try:
        import dp_accounting as lib
    except ImportError as e:
        raise MedjaxError("DP-SGD accounting needs dp-accounting: pip install 'medjax[privacy]'") from e
    return lib


def check_accountant(name: str) -> None:
    if name not in ACCOUNTANTS:
        raise MedjaxError(f"unknown config.privacy.accountant={name!r}; known: {list(ACCOUNTANTS)}")


def poisson_epsilon(q: float, noise_multiplier: float, steps: int, delta: float, accountant: str = "pld") -> float:
    """epsilon at `delta` after `steps` Poisson-subsampled Gaussian steps (sampling probability `q`, no
    truncation): the number dp-accounting's accountants (and Opacus's `RDPAccountant` for `rdp`) report."""
    check_accountant(accountant)
    lib = dp_accounting()
    if steps <= 0:
        return 0.0
    event = lib.PoissonSampledDpEvent(q, lib.GaussianDpEvent(noise_multiplier))
    if accountant == "rdp":
        acc = lib.rdp.RdpAccountant()
        return float(acc.compose(event, int(steps)).get_epsilon(delta))
    return float(_poisson_pld(q, noise_multiplier).self_compose(int(steps)).get_epsilon_for_delta(delta))


@functools.lru_cache(maxsize=256)  # a solve visits ~20 sigmas; a second setup of the run (evaluate) repeats them
def _poisson_pld(q: float, noise_multiplier: float) -> Any:
    from dp_accounting.pld import privacy_loss_distribution as pld

    return pld.from_gaussian_mechanism(noise_multiplier, sampling_prob=q,
                                       value_discretization_interval=PLD_DISCRETIZATION)


@functools.lru_cache(maxsize=256)
def _truncated_pld(n: int, q: float, padded: int, noise_multiplier: float) -> Any:
    from dp_accounting.pld import privacy_loss_distribution as pld

    return pld.from_truncated_subsampled_gaussian_mechanism(
        dataset_size=n, sampling_probability=q, truncated_batch_size=padded, noise_multiplier=noise_multiplier,
        value_discretization_interval=PLD_DISCRETIZATION)


def truncation_probability(n: int, q: float, padded: int, steps: int) -> float:
    """An upper bound on the probability that any of `steps` Poisson batches of a dataset with up to n + 1
    examples (a neighbour of the training set) is larger than `padded` (union bound)."""
    from scipy.stats import binom

    return min(1.0, steps * float(binom.sf(padded, n + 1, q)))


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """One DP-SGD step as medjax runs it (module docstring), and its (epsilon, delta) after some steps."""

    dataset_size: int
    batch_size: int  # expected: q * dataset_size
    padded_batch_size: int
    noise_multiplier: float
    accountant: str
    delta: float

    @property
    def q(self) -> float:
        return self.batch_size / self.dataset_size

    def epsilon(self, steps: int) -> float:
        """epsilon at `delta` after `steps` steps (inf for rdp when the padded size is too small to neglect)."""
        steps = int(steps)
        if steps <= 0:
            return 0.0
        if self.accountant == "pld":
            n, p = self.dataset_size, self.padded_batch_size
            one = (_poisson_pld(self.q, self.noise_multiplier) if p > n else
                   _truncated_pld(n, self.q, p, self.noise_multiplier))
            return float(one.self_compose(steps).get_epsilon_for_delta(self.delta))
        cost = self.truncation_delta(steps)
        if cost > self.delta / 2:
            return math.inf
        return poisson_epsilon(self.q, self.noise_multiplier, steps, self.delta - cost, "rdp")

    def truncation_delta(self, steps: int) -> float:
        """rdp: the part of delta that pays for truncated batches, (1 + e^eps0) beta (module docstring)."""
        beta = truncation_probability(self.dataset_size, self.q, self.padded_batch_size, steps)
        if beta == 0.0:
            return 0.0
        eps0 = poisson_epsilon(self.q, self.noise_multiplier, steps, self.delta / 2, "rdp")
        return (1.0 + math.exp(min(eps0, 700.0))) * beta

    def steps_within(self, target_epsilon: float, max_steps: int) -> int:
        """The most steps (<= max_steps) whose epsilon is at most `target_epsilon` (epsilon grows with steps)."""
        lo, hi = 0, int(max_steps)
        if self.epsilon(hi) <= target_epsilon:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.epsilon(mid) <= target_epsilon else (lo, mid)
        return lo


def solve_noise_multiplier(target_epsilon: float, steps: int, mechanism_of: Callable[[float], Mechanism],
                           guess: float | None = None, rel_tol: float = 5e-3) -> float:
    """The smallest noise multiplier (to `rel_tol`) whose `mechanism_of(sigma).epsilon(steps)` is at most
    `target_epsilon`, by bisection on log(sigma) (epsilon falls as sigma grows) from a bracket around `guess`
    (e.g. the untruncated mechanism's answer, cheap to compute; default: from MAX_NOISE_MULTIPLIER down). Out of
    reach below `MAX_NOISE_MULTIPLIER`: a MedjaxError."""

    def ok(sigma: float) -> bool:
        return mechanism_of(sigma).epsilon(steps) <= target_epsilon

    hi = MAX_NOISE_MULTIPLIER
    if not ok(hi):
        raise MedjaxError(
            f"config.privacy.target_epsilon={target_epsilon:g} is out of reach in {steps} steps at delta="
            f"{mechanism_of(hi).delta:g} (even noise_multiplier={hi:g} spends more): raise the target, train fewer "
            f"steps (num_train_steps) or use a smaller batch_size")
    guessed = guess is not None and guess < hi
    guess, factor = (guess, 1.02) if guessed else (hi, 2.0)
    grow = 2.0 if guessed else 1.0  # a guess's bracket starts narrow and widens geometrically
    if ok(guess):  # widen downwards from the guess until lo fails (or sigma is negligible)
        hi, lo = guess, guess / factor
        while ok(lo):
            if lo < 1e-3:
                return lo
            factor *= grow
            hi, lo = lo, lo / factor
    else:  # widen upwards until hi holds
        lo, hi = guess, min(guess * factor, MAX_NOISE_MULTIPLIER)
        while not ok(hi):
            factor *= grow
            lo, hi = hi, min(hi * factor, MAX_NOISE_MULTIPLIER)
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi
