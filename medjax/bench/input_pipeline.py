"""Is the input pipeline fast enough? Host stream and on-device augmentation against the training step's appetite.

    python -m medjax.bench.input_pipeline [--cases quickstart msd3d] [--steps 8] [--out result.json]

For each case, with the experiment's own config and a heavy augmentation chain (every transform in `AUGMENT`
at its default probability; rot90 left out of the 2D case, whose slices are not square), it measures in one process,
after warm-up (medians over `--steps` repeats):
  host_ex_s       examples/s the host stream delivers when drained back to back (in-memory batches for the
                  quickstart; grain reading array_record volumes + foreground-oversampled patch sampling for 3D);
  augment_ex_s    examples/s of the jitted augmentation alone on the device;
  step_ex_s       examples/s of the training step without augmentation, and step_aug_ex_s with it (in the step);
  loop_ex_s       examples/s of the real loop body: next(stream) -> put on device -> augmented step.
Ratios: host / step_aug (> 1: the host keeps the device fed), augmentation's share of the step time, and
loop / step_aug (about 1: nothing but compute limits training).

Cases: `quickstart` (quickstart: 2D U-Net on ICBM152 slices, batch 16) and `msd3d`
(msd_unet3d defaults: 3D U-Net 16..256 with instance norm and deep supervision, 64^3 patches,
batch 2) on a generated Decathlon folder of `--cases3d` MR volumes of 128 x 128 x 96 voxels.
On a CPU the host stream and the device compete for the same cores, so this is the pessimistic case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

from medjax import rng
from medjax.bench.train_options import timed_steps
from medjax.config import build_config
from medjax.data.augment import make_augment
from medjax.train.loop import make_train_stream, setup
from medjax.train.steps import AUGMENT_STREAM, make_train_step

AUGMENT = ("flip", "rot90", "affine", "elastic", "gamma", "contrast_brightness", "noise", "blur", "bias_field")


def heavy_augment_overrides(square: bool) -> list[str]:
    """Every transform on (rot90 only where the rotated plane is square: not the quickstart's 96 x 80 slices)."""
    names = [n for n in AUGMENT if square or n != "rot90"]
    return [f"--config.augment.transforms={','.join(names)}"]


def write_msd_task(root: str, cases: int, shape=(128, 128, 96), seed: int = 0) -> None:
    """A Decathlon folder of MR-like volumes: a ball (class 1) with a core (class 2) at a random place."""
    import nibabel as nib

    r = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(root, "labelsTr"), exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    training = []
    for i in range(cases):
        centre = r.uniform(0.3, 0.7, 3) * np.array(shape)
        dist = np.linalg.norm(grid - centre, axis=-1)
        label = np.where(dist < 6, 2, np.where(dist < 16, 1, 0)).astype(np.uint8)
        image = (100 + 200 * (label > 0) + 100 * (label == 2) + r.normal(0, 30, shape)).astype(np.float32)
        name = f"ball_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), os.path.join(root, "imagesTr", name))
        nib.save(nib.Nifti1Image(label, np.eye(4)), os.path.join(root, "labelsTr", name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "Ball", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "ball", "2": "core"},
            "training": training, "test": []}
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(meta, f)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(config, workdir: str, steps: int) -> dict:
    s = setup(config, workdir)
    bs = s.config.batch_size
    stream = make_train_stream(s)
    for _ in range(2):
        next(stream)
    t = time.perf_counter()
    for _ in range(steps):
        next(stream)
    host = steps * bs / (time.perf_counter() - t)

    batch = s.strategy.put_batch(next(stream), bs)
    augment = jax.jit(make_augment(s.config.augment))
    key = jax.random.fold_in(rng.key(0), AUGMENT_STREAM)
    t0 = time.perf_counter()
    jax.block_until_ready(augment(key, batch))
    augment_compile = time.perf_counter() - t0
    t_aug = _median_time(lambda: augment(key, batch), steps)

    results = {}
    for name, aug in (("step", None), ("step_aug", s.augment)):
        state = s.strategy.init_state(s.create)
        step = s.strategy.compile_train_step(make_train_step(s.task, s.tx, s.strategy.axis_name, aug))
        results[f"{name}_compile_s"], median, state = timed_steps(step, state, batch, steps)
        results[f"{name}_ex_s"] = bs / median
        if aug is not None:  # the real loop body, stream included
            t = time.perf_counter()
            for _ in range(steps):
                state, m = step(state, s.strategy.put_batch(next(stream), bs))
            jax.block_until_ready(m)
            results["loop_ex_s"] = steps * bs / (time.perf_counter() - t)
    out = {"batch_size": bs, "example_shape": list(np.shape(batch["image"])[1:]), "host_ex_s": host,
           "augment_ex_s": bs / t_aug, "augment_compile_s": augment_compile, **results}
    out["host_over_step_aug"] = out["host_ex_s"] / out["step_aug_ex_s"]
    out["augment_share_of_step"] = 1 - out["step_aug_ex_s"] / out["step_ex_s"]
    out["loop_over_step_aug"] = out["loop_ex_s"] / out["step_aug_ex_s"]
    return out


def case_config(case: str, tmp: str, cases3d: int):
    common = ["--config.progress=false", *heavy_augment_overrides(square=case != "quickstart")]
    if case == "quickstart":
        return build_config("quickstart", common)
    if case == "msd3d":
        root = os.path.join(tmp, "Task99_Ball")
        write_msd_task(root, cases3d)
        return build_config("msd_unet3d",
                            [*common, f"--config.data.root={root}", f"--config.data.cache_dir={tmp}/cache",
                             "--config.data.val_fraction=0.0", "--config.data.test_fraction=0.0"])
    raise SystemExit(f"unknown case {case!r}; use quickstart or msd3d")


def main(argv=None) -> dict:
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["quickstart", "msd3d"])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--cases3d", type=int, default=6)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "devices": [str(d) for d in jax.devices()],
                          "jax": jax.__version__}, "augment": list(AUGMENT), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            config = case_config(case, tmp, args.cases3d)
            report["cases"][case] = r = measure(config, os.path.join(tmp, f"run_{case}"), args.steps)
            print(f"{case}: host {r['host_ex_s']:.1f} ex/s, augmentation alone {r['augment_ex_s']:.1f} ex/s, "
                  f"step {r['step_ex_s']:.2f} ex/s, step+augmentation {r['step_aug_ex_s']:.2f} ex/s, loop "
                  f"{r['loop_ex_s']:.2f} ex/s -> host/step {r['host_over_step_aug']:.1f}x, augmentation "
                  f"{100 * r['augment_share_of_step']:.0f}% of the step, loop/step {r['loop_over_step_aug']:.2f}",
                  flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
