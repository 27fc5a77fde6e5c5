"""Lesion detection in the real ICBM152 brain: a Retina U-Net against the same U-Net trained as a segmenter whose
connected components are the detections (the common baseline), in 3D and on 2D axial slices.

    python -m experiments.detection_icbm152 [--dims 3 2] [--steps N] [--out runs/detection_icbm152]
    python -m experiments.detection_icbm152 --tiny --out /tmp/det     # the test-suite size, seconds per arm

Per dimension, two runs of `medjax train` on `detection_icbm152:{3d|2d}` (Retina U-Net, the detection task) and
`detection_icbm152:{3d|2d},seg` (the U-Net, segmentation), same data (simulated lesions of known extent in the
ICBM152 template, `medjax.data.icbm152_lesions`), same steps, optimizer and augmentation. Both are scored on the
test split's cases from their best validation checkpoint with the same metrics: LUNA16 FROC (sensitivity at
1/8 ... 8 false positives per case, CPM with a 95% bootstrap interval over cases, 1000 resamples) and COCO mAP /
AP50 (`medjax.detection.metrics`). The detector's detections are `medjax evaluate`'s (3D: sliding windows over
each 64^3 volume, merged by NMS; the script checks its CPM equals evaluate's). The segmenter's detections are
the connected components of its predicted lesion class (3D: Gaussian-blended sliding windows), scored by their
mean lesion probability (`medjax.detection.instances.segmentation_detections`). Writes `<out>/results.json` and
`<out>/table.md` (the table in docs/detection.md) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ARMS = {"det": "Retina U-Net (detection task)", "seg": "U-Net segmenter + connected components"}
RESAMPLES = 1000


def _config(dims: int, arm: str, tiny: bool, steps: int | None):
    from medjax.config import build_config

    variant = f"{dims}d" + (",seg" if arm == "seg" else "") + (",tiny" if tiny else "")
    overrides = [f"--config.num_train_steps={steps}"] if steps else []
    return build_config(f"detection_icbm152:{variant}", overrides), variant


def _case_detections(config, workdir: str, split: str, arm: str):
    """Per-case (boxes, scores, labels) of the best checkpoint on `split`, the reference (boxes, labels), and for
    the detector `medjax evaluate`'s summary of the same detections."""
    import jax

    from medjax.data.stream import as_source
    from medjax.detection import metrics
    from medjax.detection.instances import segmentation_detections
    from medjax.train import loop, volume_eval

    s = loop.setup(config, workdir)
    canonical, _, _ = loop.restore_checkpoint(s, workdir, "best")
    state = s.strategy.from_canonical(canonical)
    if arm == "det":  # evaluate's detections (medjax.train.loop.evaluate_detections)
        out = loop.detection_outputs(s, state, split)
        pred = list(zip(*metrics.unpad((out["boxes"], out["scores"], out["labels"], out["det_valid"]))))
        gt = [(b[v], lab[v]) for b, lab, v in zip(out["gt_boxes"], out["gt_labels"], out["gt_valid"])]
        return pred, gt, s.task.summarize(out)
    source = as_source(s.splits[split])
    windows = volume_eval.uses_windows(s.config)
    task = s.task
    predict = volume_eval.window_predictor(s, state) if windows else None
    probs = None if windows else jax.jit(lambda st, x: task.probabilities(st.params, st.batch_stats, x))
    pred, gt = [], []
    for i in range(len(source)):
        example = source[i]
        image = np.asarray(example["image"])
        p = volume_eval.predict_volume(s, predict, image) if windows else np.asarray(probs(state, image[None])[0])
        pred.append(segmentation_detections(p))
        valid = np.asarray(example["box_valid"])
        gt.append((np.asarray(example["boxes"])[valid], np.asarray(example["box_labels"])[valid]))
    return pred, gt, None


def score(pred, gt, max_detections: int, seed: int = 0) -> dict:
    """FROC (CPM with its bootstrap interval) and COCO numbers of per-case detections."""
    from medjax.detection import metrics

    pb, ps, pl = ([p[k] for p in pred] for k in range(3))
    gb, gl = [g[0] for g in gt], [g[1] for g in gt]
    froc = metrics.froc(pb, ps, gb, num_resamples=RESAMPLES, seed=seed)
    coco = metrics.coco_metrics(pb, ps, pl, gb, gl, 1, max_dets=(1, 10, max_detections))
    return {"cpm": froc["cpm"], "cpm_ci": list(froc["cpm_ci"]),
            **{f"froc/{r:g}": float(v) for r, v in zip(froc["fp_rates"], froc["sensitivity"])},
            "map": float(coco["mAP"]), "ap50": float(coco["AP50"]), "lesions": froc["num_lesions"],
            "cases": froc["num_cases"], "detections_per_case": float(np.mean([len(b) for b in pb]))}


def run_arm(dims: int, arm: str, tiny: bool, out: str, steps: int | None) -> dict:
    from medjax.train import loop

    config, variant = _config(dims, arm, tiny, steps)
    workdir = os.path.join(out, variant.replace(",", "_"))
    t0 = time.perf_counter()
    loop.train(config, workdir)
    train_s = time.perf_counter() - t0
    pred, gt, evaluated = _case_detections(config, workdir, "test", arm)
    max_detections = _config(dims, "det", tiny, steps)[0].task.max_detections  # the segmenter is held to it too
    pred = [tuple(a[np.argsort(-p[1], kind="stable")[:max_detections]] for a in p) for p in pred]
    result = score(pred, gt, max_detections)
    if evaluated is not None:  # the script's detections are evaluate's
        if not np.isclose(evaluated["cpm"], result["cpm"], atol=1e-9):
            raise RuntimeError(f"{variant}: evaluate's CPM {evaluated['cpm']} != the script's {result['cpm']}")
    with open(os.path.join(workdir, "timing.json")) as f:
        timing = json.load(f)
    return {"dims": dims, "arm": arm, "config": f"detection_icbm152:{variant}", "steps": config.num_train_steps,
            "train_wall_s": train_s, "timing": timing, **result}


def table(rows: list[dict]) -> str:
    lines = ["| data | model | CPM [95% CI] | sens. @ 1/8 FP | @ 1 FP | @ 8 FP | mAP | AP50 | steps | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["cpm_ci"]
        lines.append(f"| {r['dims']}D ({r['cases']} test cases, {r['lesions']} lesions) | {ARMS[r['arm']]} | "
                     f"{r['cpm']:.3f} [{lo:.3f}, {hi:.3f}] | {r['froc/0.125']:.3f} | "
                     f"{r['froc/1']:.3f} | {r['froc/8']:.3f} | {r['map']:.3f} | {r['ap50']:.3f} | "
                     f"{r['steps']} | {r['train_wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    import medjax
    from medjax.bench.bench import _cpu_name

    medjax.configure_cpu()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[3, 2], choices=(2, 3))
    p.add_argument("--tiny", action="store_true", help="the test-suite size (8 mm, 4 steps)")
    p.add_argument("--steps", type=int, default=None, help="training steps of every arm (default: the config's)")
    p.add_argument("--out", default="runs/detection_icbm152")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    rows = [run_arm(d, arm, args.tiny, args.out, args.steps) for d in args.dims for arm in ARMS]
    md = table(rows)
    args_given = sys.argv[1:] if argv is None else argv
    result = {"command": " ".join(["python -m experiments.detection_icbm152", *args_given]),
              "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs",
              "total_s": time.perf_counter() - t0, "rows": rows}
    for name, text in (("results.json", json.dumps(result, indent=2)), ("table.md", md + "\n")):
        with open(os.path.join(args.out, f"{name}.tmp"), "w") as f:
            f.write(text)
        os.replace(os.path.join(args.out, f"{name}.tmp"), os.path.join(args.out, name))
    print(md)
    return rows


if __name__ == "__main__":
    main()
