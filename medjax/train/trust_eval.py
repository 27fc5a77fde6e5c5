"""`medjax evaluate --calibrate` and `--subgroups`: calibration and subgroup analysis of a split's predictions
(`medjax.trust`), added to eval.json (see docs/trust.md for what each number is).

The predictions come from one more pass over the split (and over `val` for the temperature): classification keeps
every case's logits; segmentation keeps each case's Dice and, for calibration, a seeded sample of
`trust.voxels_per_case` voxels per case (inside its "mask"; 0 = all voxels): the split's voxels pooled, a few
thousand per case, are what ECE and the temperature are computed over. Runs evaluated by sliding windows
(`inference.roi_size`) sample the log of the blended probabilities, which softmax maps back to those probabilities.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from medjax import metrics
from medjax.errors import MedjaxError
from medjax.inference.predictive import predictive_logits
from medjax.tasks.base import keep_valid
from medjax.train import loop, volume_eval
from medjax.train.steps import make_eval_step
from medjax.trust import calibration
from medjax.trust import subgroups as subgroups_lib

KINDS = ("classification", "segmentation")


@dataclasses.dataclass(frozen=True)
class Request:
    """What `evaluate` was asked for beyond the task's metrics, checked before anything is evaluated."""

    calibrate: bool
    metadata: str | None  # the --subgroups CSV
    groups: dict[str, list[str]]  # column -> the group of every case of the split


def request(s: Any, split: str, calibrate: bool = False, subgroups: str | None = None,
            group_columns: Sequence[str] | None = None) -> Request | None:
    """The checked request, or None when neither is asked for. Errors a user can cause (the wrong kind of run, no
    val split to fit a temperature on, a metadata CSV that does not cover the split) are raised here, before the
    checkpoint is restored."""
    if group_columns and not subgroups:
        raise MedjaxError("--group-columns picks columns of the --subgroups CSV: pass --subgroups too")
    if not (calibrate or subgroups):
        return None
    kind = s.config.task.name
    if kind not in KINDS:
        raise MedjaxError(f"--calibrate and --subgroups analyse classification and segmentation runs, not "
                          f"config.task.name={kind!r}")
    if split not in s.splits:
        raise MedjaxError(f"dataset {s.config.data.name!r} has no {split!r} split")
    if calibrate and "val" not in s.splits:
        raise MedjaxError(f"--calibrate fits the temperature on the val split, and dataset {s.config.data.name!r} "
                          f"has none")
    groups = {}
    if subgroups:
        if kind == "classification" and s.task.multi_label:
            raise MedjaxError("--subgroups analyses single-label classification and segmentation; this run is "
                              "multi-label (config.task.multi_label=True)")
        groups = subgroups_lib.join_groups(subgroups, s.case_ids[split], split, group_columns)
    return Request(calibrate, subgroups, groups)


def report(s: Any, canonical: Any, step: int, checkpoint: str, split: str, req: Request) -> dict[str, Any]:
    """The eval.json keys of `req`; process 0 writes WORKDIR/calibration.json and the plots."""
    cfg = s.config.trust
    found = predictions(s, s.strategy.from_canonical(canonical), {split, "val"} if req.calibrate else {split})
    preds = found[split]
    out: dict[str, Any] = {}
    if req.calibrate:
        val = found["val"]
        temperature = calibration.fit_temperature(val["logits"], val["labels"])
        before = calibration.scores(preds["logits"], preds["labels"], cfg.n_bins)
        after = calibration.scores(preds["logits"] / temperature, preds["labels"], cfg.n_bins)
        out.update(before, **{f"{k}_calibrated": v for k, v in after.items()}, temperature=temperature,
                   calibration_samples=len(preds["labels"]))
        if s.is_main:
            fit = {"nll": float(calibration.nll(val["logits"], val["labels"])),
                   "nll_calibrated": float(calibration.nll(val["logits"] / temperature, val["labels"]))}
            loop._write_json(os.path.join(s.workdir, "calibration.json"), {
                "temperature": temperature, "fit_split": "val", "fit_samples": len(val["labels"]), "step": step,
                "checkpoint": checkpoint, "bounds": list(calibration.TEMPERATURE_BOUNDS), **fit})
            _save_reliability(s, split, preds, temperature)
    if req.groups:
        if s.config.task.name == "classification":
            found, cases = subgroups_lib.classification_metrics(preds["probs"], preds["case_labels"], cfg.n_bins)
        else:
            found, cases = subgroups_lib.segmentation_metrics(preds["dice"])
        options = dict(n_resamples=cfg.bootstrap_resamples, confidence_level=cfg.confidence_level,
                       seed=s.config.seed, min_cases=cfg.min_group_cases)
        out["subgroups"] = {"metadata": os.path.abspath(req.metadata), **options,
                            "columns": subgroups_lib.analyze(found, cases, req.groups, **options)}
        if s.is_main:
            _save_subgroups(s, split, out["subgroups"]["columns"])
    return out


def predictions(s: Any, state: Any, splits: set[str]) -> dict[str, dict[str, np.ndarray]]:
    """{split: what calibration and subgroups need of it}: `logits` and `labels` of the examples (classification:
    one row per case, or per (case, label) when multi-label) or of the sampled voxels (segmentation); per case,
    `probs` and `case_labels` (classification) or `dice` (segmentation: the case's mean foreground Dice)."""
    task = s.task
    if s.config.task.name == "segmentation" and volume_eval.uses_windows(s.config):
        return {split: _window_predictions(s, state, split) for split in splits}

    score = make_eval_step(task, s.members)

    def step(state: Any, batch: dict) -> dict:
        out = score(state, batch)
        logits = predictive_logits(task, state.params, state.batch_stats, batch["image"], s.members)
        extra = {"label": batch["label"], "index": batch["index"]}
        if "mask" in batch:
            extra["mask"] = batch["mask"]
        return {**out, **extra, "logits": logits.astype(jnp.float32)}

    compiled = s.strategy.compile_eval_step(step)
    if s.config.task.name == "classification":
        found = {}
        for split in splits:
            out = keep_valid(loop.split_outputs(s, state, split, compiled))
            labels = out["label"] if task.multi_label else out["label"].reshape(-1)
            found[split] = {"logits": out["logits"], "labels": labels, "probs": out["probs"], "case_labels": labels}
        return found

    def on_host(out: dict) -> dict:  # only the sampled voxels outlive the batch
        rows = np.flatnonzero(out["weight"] > 0)
        mask = out.pop("mask", None)
        sampled = [_sample(s, out["logits"][r], out["label"][r], None if mask is None else mask[r],
                           int(out["index"][r])) for r in rows]
        kept = {k: v for k, v in out.items() if k not in ("logits", "label", "index")}
        return {**{k: v[rows] for k, v in kept.items()}, **_pool(sampled)}

    found = {}
    for split in splits:
        out = loop.split_outputs(s, state, split, compiled, on_host)
        voxels = {k: out.pop(k) for k in ("logits", "labels")}
        found[split] = {**voxels, "dice": _case_dice(task.case_records(out), task.class_names)}
    return found


def _window_predictions(s: Any, state: Any, split: str) -> dict[str, np.ndarray]:
    """`predictions` of a run evaluated by sliding windows: voxels sampled from the log of the blended
    probabilities, each case's Dice from `volume_eval.evaluate_volumes`."""
    voxels: list[dict] = []

    def on_case(i: int, probs: np.ndarray, example: dict) -> None:
        log_probs = np.log(np.maximum(probs, np.finfo(np.float32).tiny))
        voxels.append(_sample(s, log_probs, np.asarray(example["label"]), example.get("mask"), i))

    records = volume_eval.evaluate_volumes(s, state, split, on_case=on_case)[1]
    return {**_pool(voxels), "dice": _case_dice(records, s.task.class_names)}


def _sample(s: Any, logits: np.ndarray, label: np.ndarray, mask: np.ndarray | None, index: int) -> dict:
    """`trust.voxels_per_case` voxels of one case (inside `mask`), drawn with the seed (config.seed, index)."""
    k = s.config.trust.voxels_per_case
    logits = np.asarray(logits, np.float32).reshape(-1, logits.shape[-1])
    inside = np.arange(len(logits)) if mask is None else np.flatnonzero(np.asarray(mask).reshape(-1) > 0)
    if 0 < k < len(inside):
        inside = np.sort(np.random.default_rng([s.config.seed, index]).choice(inside, k, replace=False))
    return {"logits": logits[inside], "labels": np.asarray(label).reshape(-1)[inside].astype(np.int32)}


def _pool(sampled: list[dict]) -> dict[str, np.ndarray]:
    """The sampled voxels of several cases as one array each."""
    return {k: np.concatenate([v[k] for v in sampled]) for k in ("logits", "labels")}


def _case_dice(records: list[dict], class_names: Sequence[str]) -> np.ndarray:
    """Each case's mean foreground Dice from its eval_cases.json record (NaN where no class is defined)."""
    return np.asarray([metrics.mean_foreground_dice(
        [np.nan if r[f"dice/{n}"] is None else r[f"dice/{n}"] for n in class_names]) for r in records], np.float32)


def _save_reliability(s: Any, split: str, preds: dict, temperature: float) -> None:
    from medjax import viz

    panels = []
    for title, logits in (("uncalibrated", preds["logits"]), (f"temperature {temperature:.3g}",
                                                              preds["logits"] / temperature)):
        conf, correct = calibration.confidence(logits, preds["labels"])
        bins = calibration.bin_statistics(conf, correct, s.config.trust.n_bins)
        panels.append((title, {k: np.asarray(v) for k, v in bins.items()}))
    viz.save_reliability_png(os.path.join(s.workdir, "plots", f"reliability_{split}.png"), panels)


def _save_subgroups(s: Any, split: str, columns: dict) -> None:
    """One panel per metric, the groups of every column in it (`column=group`)."""
    from medjax import viz

    panels: dict[str, dict] = {}
    for column, result in columns.items():
        for group, entry in result["groups"].items():
            for metric, value in entry["metrics"].items():
                panel = panels.setdefault(metric, {"title": metric, "groups": [], "n": [], "values": [],
                                                   "intervals": []})
                panel["groups"].append(f"{column}={group}")
                panel["n"].append(entry["n"])
                panel["values"].append(value["value"])
                panel["intervals"].append(value["ci_bca"] or value["ci_percentile"])
    viz.save_subgroups_png(os.path.join(s.workdir, "plots", f"subgroups_{split}.png"), list(panels.values()))
