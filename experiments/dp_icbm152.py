"""What does differential privacy cost on real MRI? DP-SGD at epsilon 1, 4, 8 against non-private training.

Task: 16 x 16 ICBM152 tissue patches (CSF / grey / white matter at the centre pixel, `icbm152_patches`): 200 per
class of the training slabs to train on (N = 600), 200 other patches per class of the same slabs held out (the
`val` split: never trained on, the membership audit's non-members), 500 per class of the separate test slabs for
accuracy. A small GroupNorm ResNet (`dp_icbm152` config), 400 Adam steps. The DP arms draw Poisson batches
(expected 64, q = 64 / 600) with per-example clipping at 1.0 and the noise multiplier solved so that the budget
(delta = 1e-5) lasts exactly the 400 steps; the non-private arm trains the same network on shuffled batches of 64.

Per arm: test accuracy and AUC (`medjax evaluate`), the epsilon spent, the mean train-step time (timing.json, first
step excluded) and its ratio to the non-private step, and the loss-threshold membership-inference AUC of the 600
training patches against the 600 held-out ones (`medjax.privacy.audit`).

    python -m experiments.dp_icbm152 [--out runs/dp] [--arms nonprivate eps1 eps4 eps8]
Results: docs/privacy.md and the README ("Privacy"), from `<out>/results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

from medjax.configs.dp_icbm152 import ARMS


def write_patches(path: pathlib.Path, tiny: bool) -> None:
    """train / val (held out from the same slabs) / test patches as one npz (module docstring)."""
    from experiments.gan_augmentation import save_npz
    from medjax.data.icbm152_patches import load_icbm152_patches

    per_class = 10 if tiny else 200
    real = load_icbm152_patches(patch_size=16, seed=0, train_per_class=2 * per_class, val_per_class=1,
                                test_per_class=10 if tiny else 500, in_plane_mm=2.0 if tiny else 1.0)
    train = real["train"]  # class-major: each class's 2 * per_class patches, drawn in random order
    first = (np.arange(len(train["label"])) % (2 * per_class)) < per_class
    save_npz(path, {"train": {k: v[first] for k, v in train.items()},
                    "val": {k: v[~first] for k, v in train.items()}, "test": real["test"]})


def run_arm(arm: str, workdir: str, patches: str, tiny: bool = False) -> dict:
    """Train and evaluate one arm on the npz `patches`; its row of the table (without the step-time ratio)."""
    from medjax.config import build_config
    from medjax.privacy import audit
    from medjax.train import loop

    config = build_config(f"dp_icbm152:{arm}{',tiny' if tiny else ''}", [f"--config.data.root={patches}"])
    loop.train(config, workdir)
    result = loop.evaluate(config, workdir, which="latest")
    s = loop.setup(config, workdir)
    canonical = loop.restore_checkpoint(s, workdir, "latest")[0]
    mia = audit.membership_audit(s, s.strategy.from_canonical(canonical), "train", "val")
    with open(os.path.join(workdir, "timing.json")) as f:
        timing = json.load(f)
    row = {"arm": arm, "target_epsilon": ARMS[arm], "epsilon": result.get("epsilon"), "acc": result["acc"],
           "auc": result["auc"], "step_ms": 1000 * timing["train_s"] / max(timing["steps"] - 1, 1), **mia}
    if s.privacy:
        m = s.privacy.mechanism
        row.update(noise_multiplier=m.noise_multiplier, padded_batch_size=m.padded_batch_size)
    return row


def table(rows: list[dict]) -> str:
    """The markdown table of the README and docs/privacy.md."""
    lines = ["| arm | epsilon (delta 1e-5) | sigma | test acc | test AUC | step (ms) | step / non-private | MIA AUC |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        sigma = f"{r['noise_multiplier']:.3f}" if "noise_multiplier" in r else "-"
        lines.append(f"| {r['arm']} | {eps} | {sigma} | {r['acc']:.3f} | {r['auc']:.3f} | {r['step_ms']:.1f} | "
                     f"{r.get('step_ratio', float('nan')):.2f}x | {r['mia_auc']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    p = argparse.ArgumentParser(description="DP-SGD at several budgets against non-private training, ICBM152 patches")
    p.add_argument("--out", default="runs/dp")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--tiny", action="store_true", help="test-suite size")
    args = p.parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's per-checkpoint notices, as the CLI does
    patches = pathlib.Path(args.out) / "patches.npz"
    write_patches(patches, args.tiny)
    rows = []
    for arm in args.arms:
        rows.append(run_arm(arm, os.path.join(args.out, arm), str(patches), args.tiny))
        print(f"{arm}: {rows[-1]}", file=sys.stderr, flush=True)
    base = [r["step_ms"] for r in rows if r["arm"] == "nonprivate"]
    for r in rows:
        if base:
            r["step_ratio"] = r["step_ms"] / base[0]
    results = {"rows": rows, "table": table(rows)}
    os.makedirs(args.out, exist_ok=True)
    tmp = os.path.join(args.out, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, os.path.join(args.out, "results.json"))
    print(results["table"])
    return results


if __name__ == "__main__":
    main()
