"""Does a conditional GAN help a classifier that has little labelled data? Real only vs real + synthetic.

    python -m experiments.gan_augmentation --out runs/gan_augmentation [--seeds 0 1 2 3 4] [--tiny]

Data: 16 x 16 tissue patches of real MRI (`icbm152_patches`: CSF / grey / white matter at the centre pixel,
ICBM152 T1 at 1 mm), 20 labelled training patches per class, 100 per class for validation, 200 for test, each
split from its own slab of slices.

1. A class-conditional DCGAN (projection discriminator, hinge loss, spectral norm, Adam b1=0.5 with D at 4x G's
   learning rate, EMA generator) is trained once on the 60 training patches; `--synthetic_per_class` patches
   per class are drawn from its EMA generator and mapped back to the data's intensity units.
2. For every seed, the same small ResNet is trained for the same number of steps and batch size on (a) the real
   patches and (b) the real plus synthetic patches, and scored on the test patches (best validation AUC checkpoint).
3. Reported: test accuracy and macro AUC per arm as mean and 95% t-interval over seeds, the paired difference
   (b - a) with its interval, and the Fréchet distance of the synthetic patches to the real test patches on the
   penultimate features of the seed-0 real-only classifier (with real training patches as the reference).

`get_config("gan" | "classifier")` holds the two configs (`data.root` is filled in by the runner). Writes
`<out>/results.json` and `<out>/results.md`. `--tiny` runs a seconds-long version for the tests.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import ml_collections
import numpy as np

from medjax import schema
from medjax.configs.gan_augmentation import CLASS_NAMES, get_config


def _config(arg: str, root: str, tiny: bool, **overrides) -> ml_collections.ConfigDict:
    c = get_config(arg)
    c.data.root = root
    if tiny:
        c.num_train_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 4, 4
    for k, v in overrides.items():
        c[k] = v
    return schema.complete(c)


def save_npz(path: pathlib.Path, splits: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}_{part}": v[key] for s, v in splits.items() for part, key in (("images", "image"),
                                                                                ("labels", "label"))}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% two-sided t-interval (half-width 0 for one value)."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float(v.mean()), float(v.mean()), float(v.mean())
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def run(out: pathlib.Path, seeds: list[int], synthetic_per_class: int, tiny: bool) -> dict:
    from medjax.data.icbm152_patches import load_icbm152_patches
    from medjax.gan import loop as gan_loop
    from medjax.gan.frechet import encoder_frechet_distance, load_encoder
    from medjax.train import loop

    counts = dict(train_per_class=20, val_per_class=20 if tiny else 100, test_per_class=20 if tiny else 200)
    real = load_icbm152_patches(patch_size=16, seed=0, **counts)
    save_npz(out / "real.npz", real)

    t0 = time.perf_counter()
    gan_config = _config("gan", str(out / "real.npz"), tiny)
    loop.train(gan_config, str(out / "gan"))
    s = gan_loop.setup(gan_config, str(out / "gan"))
    state, _, _ = loop.restore_checkpoint(s, str(out / "gan"), "latest")
    labels = np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int32), synthetic_per_class)
    unit = gan_loop.sample(state, s.task, len(labels), seed=1234, labels=labels)
    lo, hi = s.intensity_range
    synthetic = ((unit + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)  # back to the data's units
    gan_s = time.perf_counter() - t0
    augmented = dict(real)
    augmented["train"] = {"image": np.concatenate([real["train"]["image"], synthetic]),
                          "label": np.concatenate([real["train"]["label"], labels])}
    save_npz(out / "augmented.npz", augmented)

    arms = {"real": out / "real.npz", "real+synthetic": out / "augmented.npz"}
    per_seed: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm, root in arms.items():
            config = _config("classifier", str(root), tiny, seed=seed)
            workdir = out / f"{arm.replace('+', '_')}_seed{seed}"
            loop.train(config, str(workdir))
            result = loop.evaluate(config, str(workdir), which="best", split="test")
            per_seed[arm].append({"seed": seed, "acc": result["acc"], "auc": result["auc"]})
            print(arm, seed, json.dumps(per_seed[arm][-1]), flush=True)

    encoder = load_encoder(_config("classifier", str(arms["real"]), tiny, seed=seeds[0]),
                           str(out / f"real_seed{seeds[0]}"))
    test = real["test"]["image"]
    fd = {"synthetic_vs_test": encoder_frechet_distance(encoder, test, synthetic),
          "real_train_vs_test": encoder_frechet_distance(encoder, test, real["train"]["image"])}

    summary = {arm: {m: t_interval([r[m] for r in rows]) for m in ("acc", "auc")} for arm, rows in per_seed.items()}
    diff = {m: t_interval([b[m] - a[m] for a, b in zip(per_seed["real"], per_seed["real+synthetic"])])
            for m in ("acc", "auc")}
    return {"seeds": seeds, "synthetic_per_class": synthetic_per_class, "real_per_class": counts,
            "gan_steps": gan_config.num_train_steps,
            "classifier_steps": _config("classifier", "", tiny).num_train_steps,
            "gan_train_s": gan_s, "per_seed": per_seed, "summary": summary, "paired_difference": diff,
            "frechet_distance": fd}


def table(result: dict) -> str:
    fmt = lambda m, lo, hi: f"{m:.3f} [{lo:.3f}, {hi:.3f}]"  # noqa: E731
    lines = ["| training set | test accuracy (95% CI) | test macro AUC (95% CI) |", "|---|---|---|"]
    for arm, s in result["summary"].items():
        lines.append(f"| {arm} | {fmt(*s['acc'])} | {fmt(*s['auc'])} |")
    d = result["paired_difference"]
    lines.append(f"| difference (paired) | {fmt(*d['acc'])} | {fmt(*d['auc'])} |")
    fd = result["frechet_distance"]
    lines += ["", f"Fréchet distance to the real test patches (seed-{result['seeds'][0]} real-only classifier's "
                  f"features): synthetic {fd['synthetic_vs_test']:.3f}, real training patches "
                  f"{fd['real_train_vs_test']:.3f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--synthetic_per_class", type=int, default=100)
    p.add_argument("--tiny", action="store_true", help="seconds-long run (tests)")
    args = p.parse_args(argv)
    import absl.logging

    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts

    absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax's read-only restore chatter
    result = run(args.out, args.seeds, args.synthetic_per_class, args.tiny)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(table(result) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
