"""Calibration of predicted probabilities: ECE and MCE over equal-width or equal-mass bins, Brier score, NLL,
the bins of a reliability diagram, and temperature scaling. Pure jnp functions (float32).

Two readings of "confidence", as torchmetrics' `CalibrationError` has them:

- top-label (single-label classification; segmentation voxels): the largest class probability, correct when its
  class is the label (`top_label`; torchmetrics `task="multiclass"`);
- binary (multi-label classification, every (example, label) pair): the positive probability against the 0/1
  label (`binary`; torchmetrics `task="binary"`).

Bins. Equal-width: [k/B, (k+1)/B) for k < B, and a confidence of exactly 1.0 in a bin of its own: torchmetrics
bins by `torch.bucketize(conf, linspace(0, 1, B + 1), right=True) - 1`, which puts 1.0 at index B, and medjax does
the same so the numbers agree, that bin included. Equal-mass: the inner edges are the sorted confidences at ranks
floor(b N / B), b = 1..B-1, and a confidence joins the bin of the last edge <= it; with distinct confidences bin b
holds exactly the ranks floor(b N / B) .. floor((b+1) N / B) - 1, and tied confidences stay in one bin.

ECE = sum_b (n_b / N) |acc_b - conf_b| (torchmetrics norm "l1"), MCE = max_b |acc_b - conf_b| (norm "max"; an empty
bin counts 0), acc_b and conf_b the mean correctness and confidence in bin b. Per-example `weights` (a bootstrap
resample's multiplicities) weight every count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import MedjaxError

BINNINGS = ("width", "mass")
TEMPERATURE_BOUNDS = (0.01, 100.0)


@jax.jit
def top_label(probs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(confidence, correct) per example of class probabilities (N, C) and integer labels (N,)."""
    probs = jnp.asarray(probs)
    return probs.max(-1), (jnp.argmax(probs, -1) == jnp.asarray(labels)).astype(probs.dtype)


@jax.jit
def binary(probs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(confidence, correct) of positive probabilities and 0/1 labels of one shape, flattened."""
    probs = jnp.asarray(probs)
    return probs.reshape(-1), jnp.asarray(labels).reshape(-1).astype(probs.dtype)


def is_binary(logits: jax.Array, labels: jax.Array) -> bool:
    """Predictions and labels of one shape are binary (sigmoid per entry); (N, C) with labels (N,) are classes."""
    return tuple(np.shape(logits)) == tuple(np.shape(labels))


def probabilities(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sigmoid of binary logits, softmax over the last axis of class logits (see `is_binary`)."""
    logits = jnp.asarray(logits, jnp.float32)
    return jax.nn.sigmoid(logits) if is_binary(logits, labels) else jax.nn.softmax(logits, -1)


def confidence(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(confidence, correct) of logits: `binary` for binary logits, `top_label` otherwise."""
    probs = probabilities(logits, labels)
    return (binary if is_binary(logits, labels) else top_label)(probs, labels)


def bin_index(conf: jax.Array, n_bins: int = 15, binning: str = "width") -> tuple[jax.Array, int]:
    """(bin of every confidence, number of bins): `n_bins + 1` equal-width bins (the last holds 1.0 exactly) or
    `n_bins` equal-mass bins (see the module docstring)."""
    conf = jnp.asarray(conf)
    if binning == "width":
        edges = jnp.linspace(0.0, 1.0, n_bins + 1, dtype=conf.dtype)
        return jnp.searchsorted(edges, conf, side="right") - 1, n_bins + 1
    if binning == "mass":
        n = conf.shape[0]
        inner = jnp.sort(conf)[(np.arange(1, n_bins) * n) // n_bins]
        return jnp.searchsorted(inner, conf, side="right"), n_bins
    raise MedjaxError(f"unknown calibration binning {binning!r}; known: {list(BINNINGS)}")


@functools.partial(jax.jit, static_argnames=("n_bins", "binning"))
def bin_statistics(conf: jax.Array, correct: jax.Array, n_bins: int = 15, binning: str = "width",
                   weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per bin: `count` (weighted), mean `confidence` and `accuracy` (0 where empty), the reliability diagram's
    bars and the terms of ECE / MCE."""
    index, num = bin_index(conf, n_bins, binning)
    return binned(index, num, conf, correct, weights)


def binned(index: jax.Array, num_bins: int, conf: jax.Array, correct: jax.Array,
           weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """`bin_statistics` of examples already assigned to bins (`bin_index`): what a bootstrap, whose resamples only
    reweight the examples, computes once."""
    conf = jnp.asarray(conf)
    w = jnp.ones_like(conf) if weights is None else jnp.asarray(weights, conf.dtype)
    count = jax.ops.segment_sum(w, index, num_bins)
    mean = lambda x: jnp.nan_to_num(jax.ops.segment_sum(w * x, index, num_bins) / count)  # noqa: E731
    return {"count": count, "confidence": mean(conf), "accuracy": mean(jnp.asarray(correct, conf.dtype))}


def error(bins: dict[str, jax.Array], norm: str = "l1") -> jax.Array:
    """ECE (`norm="l1"`) or MCE (`norm="max"`) of `bin_statistics` (NaN when every weight is 0)."""
    gap = jnp.abs(bins["accuracy"] - bins["confidence"])
    if norm == "l1":
        return jnp.sum(gap * bins["count"] / bins["count"].sum())
    if norm == "max":
        return gap.max()
    raise MedjaxError(f"unknown calibration norm {norm!r}; known: ['l1', 'max']")


@functools.partial(jax.jit, static_argnames=("n_bins", "binning", "norm"))
def calibration_error(conf: jax.Array, correct: jax.Array, n_bins: int = 15, binning: str = "width",
                      norm: str = "l1", weights: jax.Array | None = None) -> jax.Array:
    """ECE (`norm="l1"`) or MCE (`norm="max"`) of confidences and 0/1 correctness (torchmetrics'
    `CalibrationError` for equal-width bins)."""
    return error(bin_statistics(conf, correct, n_bins, binning, weights), norm)


@jax.jit
def brier(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Brier score, as scikit-learn's `brier_score_loss(scale_by_half="auto")`: binary (probabilities and 0/1
    labels of one shape) mean (p - y)^2; classes (probs (N, C), labels (N,)) the mean over examples of
    sum_c (p_c - [y = c])^2, halved for two classes (then it is the binary score of class 1)."""
    probs = jnp.asarray(probs, jnp.float32)
    labels = jnp.asarray(labels)
    if is_binary(probs, labels):
        return jnp.mean((probs - labels) ** 2)
    onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    score = jnp.mean(jnp.sum((probs - onehot) ** 2, -1))
    return score / 2 if probs.shape[-1] == 2 else score


@jax.jit
def nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of the labels: sigmoid cross-entropy per entry for binary logits, softmax
    cross-entropy for class logits (N, C) (scikit-learn's `log_loss` of the probabilities, without its clipping)."""
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels)
    if is_binary(logits, labels):
        return jnp.mean(jnp.logaddexp(0.0, logits) - logits * labels)
    log_probs = jax.nn.log_softmax(logits, -1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), -1))


@functools.partial(jax.jit, static_argnames=("n_bins",))
def _scores(logits: jax.Array, labels: jax.Array, n_bins: int) -> dict[str, jax.Array]:
    conf, correct = confidence(logits, labels)
    return {"ece": calibration_error(conf, correct, n_bins),
            "ece_mass": calibration_error(conf, correct, n_bins, "mass"),
            "mce": calibration_error(conf, correct, n_bins, norm="max"),
            "brier": brier(probabilities(logits, labels), labels), "nll": nll(logits, labels)}


def scores(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """`ece` (equal-width bins), `ece_mass` (equal-mass bins), `mce`, `brier` and `nll` of logits against labels
    (class logits (N, C) with labels (N,), or binary logits and labels of one shape)."""
    return {k: float(v) for k, v in _scores(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), n_bins).items()}


@functools.partial(jax.jit, static_argnames=("iterations",))
def _fit(logits: jax.Array, labels: jax.Array, lo: jax.Array, hi: jax.Array, iterations: int) -> jax.Array:
    slope = jax.grad(lambda b: nll(logits * b, labels))

    def halve(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        rising = slope(jnp.exp(mid)) > 0  # the minimum lies below mid
        return jnp.where(rising, lo, mid), jnp.where(rising, mid, hi)

    lo, hi = jax.lax.fori_loop(0, iterations, halve, (lo, hi))
    return jnp.exp(-(lo + hi) / 2)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    iterations: int = 60) -> float:
    """The temperature T minimising `nll(logits / T, labels)` within `bounds` (Guo et al. 2017), to be fit on held-out
    data. The NLL is convex in the inverse temperature b = 1/T (a log-sum-exp of functions linear in b, minus one
    linear in b), so its derivative in b increases: bisection on the sign of that derivative over log b, one jitted
    loop, pins the minimiser to float precision; a minimiser beyond a bound gives that bound."""
    lo, hi = bounds
    if not 0 < lo < hi:
        raise MedjaxError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
    return float(_fit(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.log(1.0 / hi), jnp.log(1.0 / lo),
                      iterations))
