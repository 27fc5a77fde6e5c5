"""Whole-volume evaluation for models trained on patches: each case predicted by sliding windows, Dice per case.

Used when `config.inference.roi_size` is set. The device batch is `eval_batch_size` WINDOWS (sharded like any
batch, every process feeding its rows), not cases, so one compiled program serves cases of every shape; the
Gaussian blending runs on the host (`sliding_window_volume`, same result as the one-program MONAI-parity form).
Every process walks the same cases in the same order, which multi-host evaluation needs.

Config (`config.inference`): `roi_size` (the window; usually the training patch size), `overlap` (0.5),
`mode` ("gaussian" or "constant"), `sigma_scale` (0.125).

Detection tasks (those with `detect`) are evaluated by sliding-window detection instead (`detection_outputs`):
each device call detects a batch of windows (network and post-processing in one program), and each case's window
detections are shifted and merged (`medjax.inference.sliding_window_detect`, `task.window_merge` /
`window_merge_iou`) into the per-case outputs the task scores (`medjax.train.loop.evaluate_detections`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medjax import metrics
from medjax.data.stream import as_source
from medjax.errors import MedjaxError
from medjax.inference.detection import sliding_window_detect
from medjax.inference.predictive import predictive_logits
from medjax.inference.sliding_window import sliding_window_volume


def uses_windows(config) -> bool:
    return bool(config.inference.roi_size)


def window_predictor(s, state: Any) -> Callable[[np.ndarray], np.ndarray]:
    """`windows (B, *roi, C) -> class probabilities (B, *roi, K)` on every device, B = the eval batch size."""
    bs = s.config.eval_batch_size or s.config.batch_size
    rows = s.strategy.local_rows(bs)
    if s.window_step is None:
        task = s.task

        def probabilities(st, batch):  # an ensemble's: its members' mean probabilities
            logits = predictive_logits(task, st.params, st.batch_stats, batch["image"], s.members)
            return {"prob": jax.nn.softmax(logits.astype(jnp.float32), axis=-1)}

        s.window_step = s.strategy.compile_eval_step(probabilities)

    def predict(windows: np.ndarray) -> np.ndarray:
        out = s.window_step(state, s.strategy.put_batch({"image": windows[rows]}, bs))
        return s.strategy.outputs_to_host(out)["prob"]

    return predict


def predict_volume(s, predict: Callable, image: np.ndarray) -> np.ndarray:
    """Class probabilities (*spatial, K) of one volume (*spatial, C)."""
    inf = s.config.inference
    bs = s.config.eval_batch_size or s.config.batch_size
    return sliding_window_volume(predict, image, tuple(inf.roi_size), overlap=inf.overlap,
                                 mode=inf.mode, sigma_scale=inf.sigma_scale,
                                 sw_batch_size=bs, padding_value=float(np.min(image)) if image.size else 0.0)


def evaluate_volumes(s, state: Any, split: str, preview_path: str | None = None, surface: bool = False,
                     on_case: Callable[[int, np.ndarray, dict], None] | None = None) -> tuple[dict, list[dict]]:
    """(summary as the task computes it, per-case records) for every case of `split`; with `surface`, the
    task's surface metrics of each case too (HD95, ASSD, NSD in mm from the case's "spacing"); with
    `preview_path`, the middle slice of the first case (image, reference, prediction) is saved there;
    `on_case(i, probabilities (*spatial, K), example)` sees each case's blended probabilities."""
    source = _cases(s, split)
    cases = len(source)
    predict = window_predictor(s, state)
    counts, surfaces, shapes = [], [], []
    num_classes = s.task.num_classes
    for i in range(cases):
        example = source[i]
        image, label = np.asarray(example["image"]), np.asarray(example["label"])
        probs = predict_volume(s, predict, image)
        if on_case is not None:
            on_case(i, probs, example)
        pred = probs.argmax(-1)
        mask = None if example.get("mask") is None else jnp.asarray(np.asarray(example["mask"])[None])
        counts.append(np.stack([np.asarray(x) for x in metrics.dice_counts(
            jnp.asarray(pred[None]), jnp.asarray(label[None]), num_classes, mask=mask)]))
        if surface:
            surfaces.append(s.task.case_surface(pred, example))
        shapes.append(list(label.shape))
        if preview_path and i == 0:
            _save_preview(s, preview_path, image, label, pred)
    outputs = {"dice_counts": np.stack(counts), "weight": np.ones(cases, np.float32)}
    if surface:
        outputs["surface"] = np.stack(surfaces)
    ids = s.case_ids[split]
    records = [{"case": ids[i], "index": i, "shape": shape, **r}
               for i, (shape, r) in enumerate(zip(shapes, s.task.case_records(outputs)))]
    return s.task.summarize(outputs), records


def _cases(s, split: str):
    if split not in s.splits:
        raise MedjaxError(f"dataset {s.config.data.name!r} has no {split!r} split")
    source = as_source(s.splits[split], f"split {split!r}")
    if len(source) == 0:
        raise MedjaxError(f"split {split!r} is empty")
    return source


def detection_predictor(s, state: Any) -> Callable[[np.ndarray], dict]:
    """`windows (B, *roi, C) -> fixed-size detections {"boxes", "scores", "labels", "valid"}` on every device,
    B = the eval batch size: one compiled program (network + post-processing)."""
    bs = s.config.eval_batch_size or s.config.batch_size
    rows = s.strategy.local_rows(bs)
    if s.window_step is None:
        task = s.task

        def detections(st, batch):
            return task.detect(st.params, st.batch_stats, batch["image"])._asdict()

        s.window_step = s.strategy.compile_eval_step(detections)

    def predict(windows: np.ndarray) -> dict:
        return s.strategy.outputs_to_host(s.window_step(state, s.strategy.put_batch({"image": windows[rows]}, bs)))

    return predict


def detection_outputs(s, state: Any, split: str) -> dict[str, np.ndarray]:
    """The detection task's eval outputs (`task.eval_outputs`' keys, one row per case) of every case of `split`
    detected by sliding windows."""
    source = _cases(s, split)
    inf, cfg = s.config.inference, s.task.cfg
    bs = s.config.eval_batch_size or s.config.batch_size
    predict = detection_predictor(s, state)
    rows = []
    for i in range(len(source)):
        example = source[i]
        image = np.asarray(example["image"])
        det = sliding_window_detect(predict, image, tuple(inf.roi_size), overlap=inf.overlap, sw_batch_size=bs,
                                    padding_value=float(image.min()), merge=cfg.window_merge,
                                    iou_threshold=cfg.window_merge_iou, max_detections=cfg.max_detections)
        rows.append({"boxes": det.boxes, "scores": det.scores, "labels": det.labels, "det_valid": det.valid,
                     "gt_boxes": np.asarray(example["boxes"]), "gt_labels": np.asarray(example["box_labels"]),
                     "gt_valid": np.asarray(example["box_valid"])})
    outputs = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    outputs["weight"] = np.ones(len(rows), np.float32)
    return outputs


def _save_preview(s, path: str, image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> None:
    if hasattr(s.task, "save_examples"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s.task.save_examples(path, image[None], label[None], pred[None])
