"""`medjax evaluate --uncertainty mc_dropout|tta|ensemble [--samples T]`: the `uncertainty` section of eval.json.

A split is scored with S sampled predictions per example (`medjax.inference.predictive`, one compiled program):
`mc_dropout` T passes with dropout on (a model with `dropout_rate` > 0), `tta` T draws of `config.augment`
(`medjax.inference.tta`: segmentation maps are mapped back exactly, so only flip, rot90 and intensity transforms),
`ensemble` the K members of a run trained with `config.ensemble.size` K (`--samples` is K). On an ensemble,
`mc_dropout` and `tta` sample every member (T x K predictions).

The section holds the method and sample counts, the task's metrics of the predictive mean (`metrics`), the mean
predictive entropy and mutual information over the cases (nats; segmentation: each case's mean over its voxels,
inside its "mask" if any), and the referral curves (`medjax.trust.uncertainty.referral_curve`) by either score:
accuracy and ROC AUC (classification) or mean per-case foreground Dice (segmentation) of the retained cases.
Plots in `<workdir>/plots/`: `uncertainty_referral_<split>.png` and, for segmentation, the per-voxel maps of the
first cases (`uncertainty_<split>.png` in 2D, `uncertainty_<split>_case<i>_{entropy,mutual_information}.nii.gz`
in 3D).
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from medjax import metrics
from medjax.data.stream import as_source
from medjax.errors import MedjaxError
from medjax.inference import predictive
from medjax.inference import tta as tta_lib
from medjax.tasks.base import dropout_rate
from medjax.trust import calibration
from medjax.trust import uncertainty as unc

METHODS = ("mc_dropout", "tta", "ensemble")
DEFAULT_SAMPLES = 10  # MC-dropout passes / TTA draws when --samples is not given
PREVIEW_CASES = 4  # segmentation cases whose per-voxel maps are saved


def check(s: Any, method: str, samples: int | None) -> int:
    """Refuse what `method` cannot do for setup `s` (one line naming the key or option); returns the number of
    samples per member (T, or K for `ensemble`)."""
    if method not in METHODS:
        raise MedjaxError(f"unknown --uncertainty {method!r}; known: {', '.join(METHODS)}")
    kind = getattr(getattr(s, "task", None), "kind", None)
    if kind not in ("softmax", "sigmoid"):
        raise MedjaxError(f"--uncertainty needs a classification or segmentation task, not "
                          f"config.task.name={s.config.task.name!r}")
    if s.config.inference.roi_size:
        raise MedjaxError("--uncertainty does not run sliding-window evaluation (config.inference.roi_size) yet: "
                          "evaluate whole inputs")
    if samples is not None and samples < 1:
        raise MedjaxError(f"--samples must be >= 1, got {samples}")
    if method == "ensemble":
        if not s.members:
            raise MedjaxError("--uncertainty ensemble needs a run trained with config.ensemble.size > 1")
        if samples not in (None, s.members):
            raise MedjaxError(f"--samples {samples} with --uncertainty ensemble: the ensemble has "
                              f"config.ensemble.size={s.members} members (leave --samples out)")
        return s.members
    if method == "tta":
        tta_lib.check(s.config.augment, dense=s.config.task.name == "segmentation")
    if method == "mc_dropout" and dropout_rate(s.task.model) <= 0:
        raise MedjaxError(f"--uncertainty mc_dropout needs dropout: config.model ({s.config.model.name!r}) has "
                          "dropout rate 0; train with --config.model.dropout_rate=0.1 (monai_unet: dropout)")
    return DEFAULT_SAMPLES if samples is None else samples


def evaluate(s: Any, state: Any, split: str, method: str, samples: int | None = None) -> dict[str, Any]:
    """The `uncertainty` section for `split` under `state` (on the strategy's devices); process 0 writes the
    plots."""
    from medjax.train.loop import split_outputs

    t = check(s, method, samples)
    task, config = s.task, s.config
    dense = config.task.name == "segmentation"
    source = as_source(s.splits[split], f"split {split!r}")
    tta = None
    if method == "tta":
        tta = tta_lib.make_tta(config.augment, np.shape(source[0]["image"])[:-1], dense)
    sample = predictive.sampler(task, s.members, None if method == "ensemble" else method, t, config.seed, tta)

    def step(state: Any, batch: dict) -> dict:
        logits = sample(state, batch)
        mean = unc.mean_logits(logits, task.kind)
        out = task.outputs_from_logits(mean, batch)
        entropy, mi = unc.uncertainty(logits, task.kind)
        if dense:  # per-case means over the voxels (inside the mask), and the maps for the preview
            mask = batch.get("mask")
            weight = jnp.ones(entropy.shape, jnp.float32) if mask is None else (mask > 0).astype(jnp.float32)
            axes = tuple(range(1, entropy.ndim))
            count = jnp.maximum(weight.sum(axes), 1.0)
            out.update(entropy_map=entropy, mi_map=mi, pred=jnp.argmax(mean, -1).astype(jnp.int32),
                       index=batch["index"], entropy=(entropy * weight).sum(axes) / count,
                       mutual_information=(mi * weight).sum(axes) / count)
        else:
            out.update(entropy=entropy, mutual_information=mi, mean_logits=mean)
        return out

    preview: dict[str, list] = {"image": [], "pred": [], "entropy": [], "mi": [], "spacing": []}

    def keep_preview(out: dict) -> dict:
        out = dict(out)
        maps = [out.pop(k, None) for k in ("entropy_map", "mi_map", "pred", "index")]
        if maps[0] is not None:
            for r in np.flatnonzero((out["weight"] > 0) & (maps[3] < PREVIEW_CASES)):
                example = source[int(maps[3][r])]
                preview["image"].append(np.asarray(example["image"]))
                preview["pred"].append(maps[2][r])
                preview["entropy"].append(maps[0][r])
                preview["mi"].append(maps[1][r])
                preview["spacing"].append(example.get("spacing"))
        return out

    outputs = split_outputs(s, state, split, s.strategy.compile_eval_step(step), keep_preview)
    valid = {k: v[outputs["weight"] > 0] for k, v in outputs.items()}
    scores = {"entropy": valid["entropy"], "mutual_information": valid["mutual_information"]}
    if dense:
        counts = valid["dice_counts"].sum(axis=1) if task.per_frame else valid["dice_counts"]
        case_dice = np.array([metrics.mean_foreground_dice(metrics.dice_from_counts(*c)) for c in counts])
        referral = {name: unc.dice_referral(v, case_dice) for name, v in scores.items()}
    else:
        referral = {name: unc.classification_referral(v, valid["probs"], valid["label"], task.multi_label)
                    for name, v in scores.items()}
    section = {"method": method, "samples": int(t), "members": int(s.members or 1),
               "metrics": task.summarize(outputs),
               "mean_entropy": float(np.mean(valid["entropy"])),
               "mean_mutual_information": float(np.mean(valid["mutual_information"])),
               "referral": referral, "plots": []}
    if not dense:  # how far the mean prediction's probabilities can be trusted (segmentation: --calibrate)
        section["calibration"] = calibration.scores(valid["mean_logits"], valid["label"], config.trust.n_bins)
    if s.is_main:
        plots = os.path.join(s.workdir, "plots")
        path = os.path.join(plots, f"uncertainty_referral_{split}.png")
        from medjax.viz import save_referral_png

        save_referral_png(path, referral)
        written = [path]
        if preview["image"]:
            written += unc.save_maps(os.path.join(plots, f"uncertainty_{split}"), np.stack(preview["image"]),
                                     np.stack(preview["pred"]), np.stack(preview["entropy"]),
                                     np.stack(preview["mi"]), task.class_names, preview["spacing"])
        section["plots"] = [os.path.relpath(p, s.workdir) for p in written]
    return section
