"""`medjax explain`: a trained run's best checkpoint, its first examples of a split, one method's maps, their
faithfulness, and the files a person looks at.

Writes, under WORKDIR/explain/: `METHOD.png` (each example with its map over it; 3D: the middle slice),
`METHOD_exampleI.nii.gz` and `exampleI_image.nii.gz` for 3D inputs (the heat map and the input on the same grid,
voxel size from the example's spacing when the data has one), and `explain.json`, one entry per method: the
checkpoint, options, and per example its target, score and deletion / insertion AUCs, with their means.

Targets: `--target CLASS` for every example, else the predicted class (classification) or the foreground class
with the largest predicted region (segmentation), whose predicted voxels are the region the score sums over.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax.errors import MedjaxError
from medjax.explain import core, faithfulness
from medjax.explain.gradients import count_relus
from medjax.explain.methods import METHODS, bind, voxel_maps

EXPLAINABLE_TASKS = ("classification", "segmentation")


def choose_targets(logits: np.ndarray, target: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(target per example, region per example or None) from the model's logits; see the module docstring."""
    num_classes = logits.shape[-1]
    if target is not None and not 0 <= target < num_classes:
        raise MedjaxError(f"--target {target} is out of range: the model has {num_classes} classes "
                          f"(0..{num_classes - 1})")
    pred = logits.argmax(-1)
    if logits.ndim == 2:
        targets = pred if target is None else np.full(len(logits), target)
        return targets.astype(np.int32), None
    if target is None:
        areas = np.stack([(pred == c).reshape(len(pred), -1).sum(-1) for c in range(num_classes)], -1)
        first = 1 if num_classes > 1 else 0
        targets = first + areas[:, first:].argmax(-1)
    else:
        targets = np.full(len(logits), target)
    region = (pred == targets.reshape((-1,) + (1,) * (pred.ndim - 1))).astype(np.float32)
    return targets.astype(np.int32), region


def _first_examples(s: Any, split: str, num: int) -> list[dict]:
    from medjax.data.stream import as_source

    if split not in s.splits:
        raise MedjaxError(f"dataset {s.config.data.name!r} has no {split!r} split (it has {', '.join(s.splits)})")
    source = as_source(s.splits[split], f"split {split!r}")
    if num < 1:
        raise MedjaxError(f"--num must be at least 1, got {num}")
    return [source[i] for i in range(min(num, len(source)))]


def explain(config: ml_collections.ConfigDict, workdir: str, method: str, layer: str | None = None,
            split: str = "test", num: int = 8, target: int | None = None, which: str = "best") -> dict:
    """Explain the first `num` examples of `split` under the run's checkpoint; returns (and writes) the method's
    explain.json entry."""
    from medjax.train.loop import restore_checkpoint, setup
    from medjax.train.parallel import replicated_to_host

    if method not in METHODS:
        raise MedjaxError(f"unknown explanation method {method!r}; known: {', '.join(METHODS)}")
    if config.task.name not in EXPLAINABLE_TASKS:
        raise MedjaxError(f"medjax explain explains classification and segmentation runs, not "
                          f"config.task.name={config.task.name!r}")
    if config.ensemble.size > 1:
        raise MedjaxError(f"medjax explain explains one model; this run is an ensemble (config.ensemble.size="
                          f"{config.ensemble.size}): explain a single-model run of the same config")
    if layer is not None and not METHODS[method].layer:
        raise MedjaxError(f"--layer applies to gradcam and gradcampp, not {method}")
    s = setup(config, workdir)
    canonical, step, used = restore_checkpoint(s, workdir, which)
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    apply = functools.partial(s.task.model.apply, train=False)
    cfg = s.config.explain
    examples = _first_examples(s, split, num)
    activation = "sigmoid" if getattr(s.task, "multi_label", False) else "softmax"

    records, shown_images = [], []
    groups: dict[tuple, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(tuple(np.shape(ex["image"])), []).append(i)
    for indices in groups.values():  # examples of one shape are one batch (volumes of a dataset may differ)
        x = np.stack([np.asarray(examples[i]["image"], np.float32) for i in indices])
        if x.ndim not in (4, 5):
            raise MedjaxError(f"medjax explain takes 2D or 3D images (N, *spatial, C), got examples of shape "
                              f"{x.shape[1:]}")
        logits = np.asarray(jax.jit(apply)(variables, x), np.float32)
        targets, region = choose_targets(logits, target)
        chosen = layer
        if METHODS[method].layer:
            chosen = core.check_layer(apply, variables, x[:1], layer, method)
        if method == "guided":
            count_relus(apply, variables, x[:1])
        batch = {"x": x, "target": targets, **({"region": region} if region is not None else {})}
        if METHODS[method].per_example_seed:
            batch["index"] = np.asarray(indices, np.int32)
        padded, n = core.pad_to_devices(batch, s.strategy.num_devices)
        maps = core.shard_over_data(bind(method, apply, cfg, chosen, config.seed), s.strategy.mesh)(variables, padded)
        voxels = voxel_maps(maps, METHODS[method].voxel)
        faith_batch = {"x": padded["x"], "maps": voxels, "target": padded["target"],
                       **({"region": padded["region"]} if region is not None else {})}
        curves = core.shard_over_data(
            lambda v, b: faithfulness.deletion_insertion(apply, v, **b, steps=cfg.faithfulness_steps,
                                                          baseline=cfg.baseline, activation=activation,
                                                          batch_size=cfg.batch_size or None),
            s.strategy.mesh)(variables, faith_batch)
        voxels, curves = np.asarray(voxels)[:n], {k: np.asarray(v)[:n] for k, v in curves.items()}
        scores = np.asarray(jax.vmap(lambda lg, t, r: core.target_score(lg[None], t, r))(
            jnp.asarray(logits), jnp.asarray(targets), None if region is None else jnp.asarray(region)))
        for j, i in enumerate(indices):
            records.append({"example": i, "target": int(targets[j]), "class": _class_name(s.task, int(targets[j])),
                            "score": float(scores[j]),
                            "deletion_auc": float(curves["deletion_auc"][j]),
                            "insertion_auc": float(curves["insertion_auc"][j]),
                            **({"region_voxels": int(region[j].sum())} if region is not None else {}),
                            **({"layer": chosen} if chosen else {})})
            shown_images.append((i, x[j], voxels[j], examples[i].get("spacing")))
    records.sort(key=lambda r: r["example"])
    shown_images.sort(key=lambda t: t[0])

    out = os.path.join(workdir, "explain")
    if s.is_main:
        _write_figures(out, method, shown_images, records)
    entry = {"method": method, "split": split, "step": int(step), "checkpoint": used,
             "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.to_dict().items()},
             "examples": records,
             "mean_deletion_auc": float(np.mean([r["deletion_auc"] for r in records])),
             "mean_insertion_auc": float(np.mean([r["insertion_auc"] for r in records]))}
    if s.is_main:
        _update_json(os.path.join(out, "explain.json"), method, entry)
    return entry


def _class_name(task: Any, index: int) -> str:
    names = getattr(task, "class_names", None) or []
    return str(names[index]) if index < len(names) else f"class{index}"


def _write_figures(out: str, method: str, shown: list[tuple], records: list[dict]) -> None:
    from medjax.viz import save_attribution_png

    os.makedirs(out, exist_ok=True)
    # One PNG per shape group would split the figure; volumes of differing shapes get a row each in their own file.
    by_shape: dict[tuple, list[int]] = {}
    for k, (_, image, _, _) in enumerate(shown):
        by_shape.setdefault(image.shape, []).append(k)
    for g, ks in enumerate(by_shape.values()):
        name = f"{method}.png" if len(by_shape) == 1 else f"{method}_{g}.png"
        titles = [f"example {shown[k][0]}: {records[k]['class']}, deletion AUC {records[k]['deletion_auc']:.3f}"
                  for k in ks]
        save_attribution_png(os.path.join(out, name), np.stack([shown[k][1] for k in ks]),
                         np.stack([shown[k][2] for k in ks]), titles)
    for i, image, voxels, spacing in shown:
        if voxels.ndim == 3:
            affine = np.diag([*(np.asarray(spacing, np.float64) if spacing is not None and np.size(spacing) == 3
                                else np.ones(3)), 1.0])
            _save_nifti(os.path.join(out, f"{method}_example{i}.nii.gz"), voxels, affine)
            _save_nifti(os.path.join(out, f"example{i}_image.nii.gz"), image, affine)


def _save_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    tmp = path[: -len(".nii.gz")] + ".tmp.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), tmp)
    os.replace(tmp, path)


def _update_json(path: str, method: str, entry: dict) -> None:
    """explain.json keeps one entry per method (a later run of a method replaces its entry), written atomically."""
    import json

    from medjax.train.loop import _write_json

    current = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                current = json.load(f)
        except (OSError, ValueError):
            current = {}
    current[method] = entry
    _write_json(path, current)
