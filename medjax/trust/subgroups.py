"""Subgroup (fairness) analysis: metrics per group of a per-case metadata column, the worst group, the gaps and
ratios between groups, each with bootstrap confidence intervals.

Metadata is a CSV with a `case` column and one column per grouping (`case,sex,site`): `join_groups` reads it and
gives every case of a split its group in each column (an empty cell is the group "(missing)").

Metrics (a group's value is computed on its cases only; NaN = undefined there):
  classification (`classification_metrics`): `auc` (binary: class 1's probability; multi-class: one-vs-rest,
  unweighted mean over classes, undefined when a class has no positive or no negative case), `accuracy`, `ece`
  (top-label, equal-width bins, `medjax.trust.calibration`); binary tasks also `tpr`, `fpr` and `selection_rate`
  of the prediction argmax (= p(class 1) > 0.5);
  segmentation (`segmentation_metrics`): `dice_mean`, the mean over the group's cases of each case's mean
  foreground Dice (cases where it is undefined left out).
Gaps, as fairlearn's `MetricFrame.difference()` / `.ratio()` (method "between_groups"): `<metric>_difference` =
max - min and `<metric>_ratio` = min / max over the groups where the metric is defined; for the selection rate and
the TPR they carry fairlearn's names (`demographic_parity_*`, `equal_opportunity_*`), and `equalized_odds_difference`
= max(TPR difference, FPR difference), `equalized_odds_ratio` = min(TPR ratio, FPR ratio) (fairlearn's
agg="worst_case"). The worst group of a metric is the one with the lowest value (highest for `fpr` and `ece`).

Confidence intervals (`stratified_resamples`, `bootstrap`, `intervals`): the cases of each group are resampled
with replacement within the group (a stratified bootstrap: every resample keeps the group sizes), drawn as
scipy.stats.bootstrap draws its samples (`np.random.default_rng(seed).integers(0, n_g, (B, n_g))` per group in
order), so scipy on the same data and seed sees the same resamples. A resample is a vector of case multiplicities;
every statistic (each group's metrics and every gap) is a function of that vector, and one jitted program maps it
over all resamples and the leave-one-out jackknife vectors BCa's acceleration needs (`jax.lax.map` in vmapped
chunks; every metadata column at once). The percentile and BCa intervals are then scipy's formulas, vectorised over
the statistics (linear quantiles; BCa as Efron & Tibshirani 14.3 with scipy's multi-sample jackknife, groups as the
samples). A group with fewer than `min_cases` cases, or a statistic undefined in some resample, keeps its value and
gets a null interval with the reason.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import MedjaxError
from medjax.trust import calibration

MISSING = "(missing)"
FAIRNESS_NAMES = {"selection_rate": "demographic_parity", "tpr": "equal_opportunity"}


# ----------------------------------------------------------------------------------------------- metadata

def read_metadata(path: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(group columns, {case: {column: value}}) of a metadata CSV `case,<group columns>...` (UTF-8; empty
    cells read as "(missing)"); a case listed twice is an error."""
    if not os.path.isfile(path):
        raise MedjaxError(f"metadata CSV not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MedjaxError(f"cannot read metadata CSV {path}: {e}") from e
    header = [h.strip() for h in rows[0]] if rows else []
    if "case" not in header or len(header) < 2 or len(set(header)) != len(header):
        raise MedjaxError(f"{path}: the header must be case,<group columns>... with distinct names, got "
                          f"{','.join(header) or 'nothing'}")
    table: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise MedjaxError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
        values = {k: v.strip() or MISSING for k, v in zip(header, row)}
        case = values.pop("case")
        if case in table:
            raise MedjaxError(f"{path} lists case {case!r} twice (lines {lines[case]} and {line})")
        table[case], lines[case] = values, line
    return [h for h in header if h != "case"], table


def join_groups(path: str, case_ids: Sequence[str], split: str,
                columns: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{column: the group of every case of `split`, in example order} for `columns` (default: every group column
    of the CSV). Unknown columns and cases of the split the CSV lacks are errors naming them; rows for cases of
    other splits are ignored."""
    known, table = read_metadata(path)
    chosen = [c.strip() for c in columns] if columns else known
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise MedjaxError(f"{path} has no column {unknown[0]!r}; its group columns: {', '.join(known)}")
    if len(set(case_ids)) != len(case_ids):
        twice = next(c for c in case_ids if list(case_ids).count(c) > 1)
        raise MedjaxError(f"the {split} split has two cases with the id {twice!r}: metadata cannot be joined to it")
    missing = [c for c in case_ids if c not in table]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise MedjaxError(f"{path} lacks {len(missing)} of the {len(case_ids)} cases of the {split} split: {shown} "
                          f"(one row per case, ids as in eval_cases.json)")
    return {c: [table[case][c] for case in case_ids] for c in chosen}


# ----------------------------------------------------------------------------------------------- metrics

@dataclasses.dataclass(frozen=True)
class Metric:
    """`fn(cases, weights (N,)) -> value` of per-case arrays `cases` (passed into the jitted program, not baked
    into it), NaN when undefined (`undefined` says when)."""

    name: str
    fn: Callable[[dict, jax.Array], jax.Array]
    higher_is_better: bool | None  # None: no worse direction (the selection rate)
    undefined: str = ""


Cases = dict[str, np.ndarray]


def _mean(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.sum(w * x) / jnp.sum(w)


def _auc_terms(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """(4, N): the sort order of `scores`, each sorted entry's block of tied scores [start, end) and whether it
    is positive; resamples only reweight the cases, so this is computed once."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    new = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(new)
    block = np.cumsum(new) - 1
    return np.stack([order, starts[block], np.r_[starts[1:], len(s)][block], positive[order]]).astype(np.int32)


def _weighted_auc(terms: jax.Array, w: jax.Array) -> jax.Array:
    """Mann-Whitney AUC of weighted cases: P(score_pos > score_neg) + P(tie) / 2 (sklearn's value at unit weights)."""
    order, start, end, positive = terms
    ws = w[order]
    pos = ws * positive
    neg = ws - pos
    below = jnp.concatenate([jnp.zeros(1, ws.dtype), jnp.cumsum(neg)])  # weight of negatives before each position
    wins = jnp.sum(pos * (below[start] + 0.5 * (below[end] - below[start])))
    return wins / (pos.sum() * neg.sum())


def classification_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> tuple[list[Metric], Cases]:
    """(metrics, per-case arrays) of single-label classification from class probabilities (N, C), labels (N,)."""
    probs = np.asarray(probs, np.float32)
    labels = np.asarray(labels).reshape(-1).astype(np.int32)
    conf, correct = calibration.top_label(probs, labels)
    index, num_bins = calibration.bin_index(conf, n_bins)
    columns = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    cases = {"conf": np.asarray(conf), "correct": np.asarray(correct), "bin": np.asarray(index),
             "auc": np.stack([_auc_terms(probs[:, c], labels == c) for c in columns])}
    out = [Metric("auc", lambda d, w: jnp.mean(jax.vmap(_weighted_auc, (0, None))(d["auc"], w)), True,
                  "AUC needs a positive and a negative case of every class"),
           Metric("accuracy", lambda d, w: _mean(d["correct"], w), True)]
    if probs.shape[1] == 2:
        cases.update(selected=(probs.argmax(-1) == 1).astype(np.float32), positive=(labels == 1).astype(np.float32))
        out += [Metric("tpr", lambda d, w: _mean(d["selected"], w * d["positive"]), True, "no positive case"),
                Metric("fpr", lambda d, w: _mean(d["selected"], w * (1 - d["positive"])), False, "no negative case"),
                Metric("selection_rate", lambda d, w: _mean(d["selected"], w), None)]
    out.append(Metric("ece", lambda d, w: calibration.error(
        calibration.binned(d["bin"], num_bins, d["conf"], d["correct"], w)), False))
    return out, cases


def segmentation_metrics(dice: np.ndarray) -> tuple[list[Metric], Cases]:
    """(metrics, per-case arrays) from each case's mean foreground Dice (N,) (NaN where a case has none):
    `dice_mean`."""
    dice = np.asarray(dice, np.float32)
    cases = {"dice": np.nan_to_num(dice), "defined": (~np.isnan(dice)).astype(np.float32)}
    return [Metric("dice_mean", lambda d, w: _mean(d["dice"], w * d["defined"]), True,
                   "no case with a defined Dice")], cases


def gap_names(metrics: list[Metric]) -> tuple[list[str], list[list[str]]]:
    """(names of the gaps, the metrics each compares), in the order `gaps` returns them."""
    names, uses = [], []
    for m in metrics:
        base = FAIRNESS_NAMES.get(m.name, m.name)
        names += [f"{base}_difference", f"{base}_ratio"]
        uses += [[m.name], [m.name]]
    odds = [m.name for m in metrics if m.name in ("tpr", "fpr")]
    if odds:
        names += ["equalized_odds_difference", "equalized_odds_ratio"]
        uses += [odds, odds]
    return names, uses


def gaps(metrics: list[Metric], values: jax.Array, defined: jax.Array) -> jax.Array:
    """The gaps of per-group values (M, G) (`gap_names`) over the groups `defined` (M, G) on the data: NaN with
    fewer than two, and NaN when a resample leaves one of them undefined."""
    nan = jnp.full((), jnp.nan, values.dtype)
    two = defined.sum(1) >= 2
    hi = jnp.max(jnp.where(defined, values, -jnp.inf), 1)
    lo = jnp.min(jnp.where(defined, values, jnp.inf), 1)
    diff, ratio = jnp.where(two, hi - lo, nan), jnp.where(two, lo / hi, nan)
    out = [jnp.stack([diff, ratio], 1).reshape(-1)]
    odds = np.asarray([j for j, m in enumerate(metrics) if m.name in ("tpr", "fpr")], np.int32)
    if len(odds):  # fairlearn's agg="worst_case" over the components with two groups
        usable = two[odds]
        out.append(jnp.where(usable.any(), jnp.stack([jnp.max(jnp.where(usable, diff[odds], -jnp.inf)),
                                                      jnp.min(jnp.where(usable, ratio[odds], jnp.inf))]), nan))
    return jnp.concatenate(out)


# ----------------------------------------------------------------------------------------------- bootstrap

def stratified_resamples(strata: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(B, N) float32 multiplicities of B resamples that draw each stratum's cases with replacement within it:
    stratum g's draws are `rng.integers(0, n_g, (B, n_g))` of one `np.random.default_rng(seed)`, strata in
    order (scipy.stats.bootstrap's draws for the samples (stratum 0, stratum 1, ...))."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, len(strata)), np.float32)
    rows = np.arange(n_resamples)[:, None]
    for g in range(int(strata.max()) + 1):
        members = np.flatnonzero(strata == g)
        np.add.at(counts, (rows, members[rng.integers(0, len(members), (n_resamples, len(members)))]), 1.0)
    return counts


def _quantile(sorted_values: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Linear-interpolation quantiles (numpy's default) of each column of `sorted_values` (B, S) at p (S,)."""
    b = sorted_values.shape[0]
    pos = np.clip(np.nan_to_num(p), 0.0, 1.0) * (b - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, b - 1)
    a = np.take_along_axis(sorted_values, lo[None], 0)[0]
    c = np.take_along_axis(sorted_values, hi[None], 0)[0]
    return np.where(np.isnan(p), np.nan, a + (pos - lo) * (c - a))


def intervals(value: np.ndarray, boot: np.ndarray, jack: np.ndarray, strata: np.ndarray,
              confidence_level: float) -> dict[str, np.ndarray]:
    """Percentile and BCa intervals (S, 2) of statistics with point values (S,), bootstrap values (B, S) and
    leave-one-out values (N, S), as scipy.stats.bootstrap computes them (each stratum one of its samples), plus
    `undefined` (S,): the resamples where a statistic is NaN. Vectorised over the statistics."""
    from scipy.special import ndtr, ndtri

    value, boot, jack = (np.asarray(x, np.float64) for x in (value, boot, jack))
    sizes = np.bincount(strata).astype(np.float64)
    alpha = (1.0 - confidence_level) / 2
    ordered = np.sort(boot, axis=0)
    flat = np.full(value.shape, alpha)
    percentile = np.stack([_quantile(ordered, flat), _quantile(ordered, 1 - flat)], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z0 = ndtri((np.sum(boot < value, 0) + np.sum(boot <= value, 0)) / (2.0 * len(boot)))
        size = sizes[strata][:, None]
        stratum_mean = np.stack([jack[strata == g].mean(0) for g in range(len(sizes))])
        u = (size - 1) * (stratum_mean[strata] - jack)
        a = np.sum(u**3 / size**3, 0) / (6.0 * np.sum(u**2 / size**2, 0) ** 1.5)
        z = ndtri(alpha)
        bca = np.stack([_quantile(ordered, ndtr(z0 + (z0 + zz) / (1 - a * (z0 + zz)))) for zz in (z, -z)], -1)
    return {"percentile": percentile, "bca": bca, "undefined": np.sum(np.isnan(boot), 0)}


def bootstrap(statistic: Callable[[dict, jax.Array], jax.Array], cases: Cases, resamples: np.ndarray,
              finish: Callable[[jax.Array], jax.Array] | None = None, row_cost: int = 1) -> tuple[np.ndarray, ...]:
    """(value, bootstrap values (B, ...), jackknife values (N, ...)) of `statistic(cases, weights)` at unit weights,
    at each resample's multiplicities (`resamples` (B, ..., N), e.g. `stratified_resamples`, several stacked on
    the middle axes) and with each case left out in turn: one jitted program, a `jax.lax.map` over those weight
    rows, vmapped in chunks of about 4M elements of intermediates (`row_cost`: the statistic's intermediates per
    element of a weight row), then `finish` (all rows -> statistics; default: as they are)."""
    b, n = resamples.shape[0], resamples.shape[-1]
    finish = finish or (lambda rows: rows)

    def program(cases: dict, resamples: jax.Array) -> jax.Array:
        def weights(r: jax.Array) -> jax.Array:  # row 0: the data; 1..B: resamples; then leave case r-B-1 out
            w = jnp.where((r >= 1) & (r <= b), resamples[jnp.clip(r - 1, 0, b - 1)], 1.0)
            return jnp.where(jnp.arange(n) == r - b - 1, 0.0, w)

        one = lambda r: statistic(cases, weights(r))  # noqa: E731
        rows = jnp.arange(1 + b + n)
        chunk = min(len(rows), max(1, (1 << 22) // (resamples[0].size * row_cost)))
        return finish(jax.vmap(one)(rows) if chunk == len(rows) else jax.lax.map(one, rows, batch_size=chunk))

    rows = np.asarray(jax.jit(program)(jax.tree.map(jnp.asarray, cases), jnp.asarray(resamples, jnp.float32)))
    return rows[0], rows[1:b + 1], rows[b + 1:]


# ----------------------------------------------------------------------------------------------- report

def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _entry(k: int, out: dict, why_none: str, why_no_ci: str, resamples: int) -> dict:
    """{"value", "ci_percentile", "ci_bca"} of statistic `k`, nulls with a "reason"."""
    value = _num(out["value"][k])
    entry: dict = {"value": value, "ci_percentile": None, "ci_bca": None}
    if value is None:
        entry["reason"] = why_none
    elif why_no_ci:
        entry["reason"] = why_no_ci
    elif out["undefined"][k]:
        entry["reason"] = f"undefined in {int(out['undefined'][k])} of {resamples} bootstrap resamples"
    else:
        entry["ci_percentile"] = [float(v) for v in out["percentile"][k]]
        bca = out["bca"][k]
        if np.isfinite(bca).all():
            entry["ci_bca"] = [float(v) for v in bca]
        else:
            entry["reason"] = "BCa undefined: a degenerate bootstrap or jackknife distribution"
    return entry


def analyze(metrics: list[Metric], cases: Cases, columns: Mapping[str, Sequence[str]], n_resamples: int = 1000,
            confidence_level: float = 0.95, seed: int = 0, min_cases: int = 10) -> dict[str, dict]:
    """{column: report} for `columns` ({column: the group of every case}): per group its n and every metric with
    its intervals, the worst group of each metric, the gaps and ratios with intervals (module docstring). Nothing
    is dropped: an undefined value or a missing interval is null with a "reason". Every column's resamples are
    drawn with `seed` (as if it were analysed alone) and all columns run in one program, groups padded to the
    largest column's count (a padding group has no case and takes part in nothing)."""
    labels = {c: [str(g) for g in groups] for c, groups in columns.items()}
    names = {c: sorted(set(groups)) for c, groups in labels.items()}
    strata = {c: np.asarray([names[c].index(g) for g in groups], np.int32) for c, groups in labels.items()}
    width = max(len(v) for v in names.values())
    masks = np.stack([s[None] == np.arange(width)[:, None] for s in strata.values()]).astype(np.float32)
    resamples = np.stack([stratified_resamples(s, n_resamples, seed) for s in strata.values()], 1)  # (B, C, N)

    def per_group(d: dict, w: jax.Array) -> jax.Array:  # weights (C, N) -> (C, M, G)
        def column(mask: jax.Array, wc: jax.Array) -> jax.Array:
            return jnp.stack([jax.vmap(m.fn, (None, 0))(d, wc[None] * mask) for m in metrics])
        return jax.vmap(column)(d["_masks"], w)

    def finish(rows: jax.Array) -> jax.Array:  # (R, C, M, G) -> (R, C, M * G + gaps), gaps over the data's groups
        one = lambda v, defined: jnp.concatenate([v.reshape(-1), gaps(metrics, v, defined)])  # noqa: E731
        return jax.vmap(jax.vmap(one), (0, None))(rows, ~jnp.isnan(rows[0]))

    cost = width * (len(metrics) + len(cases.get("auc", ())))  # per weight: every group's metrics, AUC per class
    value, boot, jack = bootstrap(per_group, {**cases, "_masks": masks}, resamples, finish, cost)
    return {c: _report(metrics, names[c], strata[c], width, value[k], boot[:, k], jack[:, k], confidence_level,
                       min_cases) for k, c in enumerate(columns)}


def _report(metrics: list[Metric], names: list[str], strata: np.ndarray, width: int, value: np.ndarray,
            boot: np.ndarray, jack: np.ndarray, confidence_level: float, min_cases: int) -> dict:
    """One column's report from its statistics (per metric `width` groups, the first `len(names)` real, then
    the gaps)."""
    out = {"value": value, **intervals(value, boot, jack, strata, confidence_level)}
    sizes = np.bincount(strata, minlength=len(names))
    point = value[: len(metrics) * width].reshape(len(metrics), width)[:, : len(names)]
    small = {g: f"{sizes[i]} cases, fewer than min_group_cases={min_cases}: no bootstrap CI"
             for i, g in enumerate(names) if sizes[i] < min_cases}
    report: dict = {"groups": {}, "worst": {}, "gaps": {}}
    for i, g in enumerate(names):
        report["groups"][g] = {"n": int(sizes[i]), "metrics": {
            m.name: _entry(j * width + i, out, m.undefined, small.get(g, ""), len(boot))
            for j, m in enumerate(metrics)}}
    for j, m in enumerate(metrics):
        defined = [i for i in range(len(names)) if np.isfinite(point[j, i])]
        if m.higher_is_better is not None and defined:
            pick = (min if m.higher_is_better else max)(defined, key=lambda i: point[j, i])
            report["worst"][m.name] = {"group": names[pick], "value": float(point[j, pick])}
    index = {m.name: j for j, m in enumerate(metrics)}
    for k, (name, uses) in enumerate(zip(*gap_names(metrics))):
        spanned = [g for i, g in enumerate(names) if any(np.isfinite(point[index[u], i]) for u in uses)]
        few = next((f"group {g!r}: {small[g]}" for g in spanned if g in small), "")
        two = any(np.isfinite(point[index[u]]).sum() >= 2 for u in uses)
        why = "a ratio over a group value of 0" if two else f"fewer than two groups with a defined {' or '.join(uses)}"
        report["gaps"][name] = _entry(len(metrics) * width + k, out, why, few, len(boot))
    return report
