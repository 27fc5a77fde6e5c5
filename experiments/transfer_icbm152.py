"""Does pretraining pay off on a small task? Fine-tune vs from scratch, same budget, on real MRI.

Pretraining task: the quickstart (a 2D U-Net segmenting background / CSF / grey / white matter on 84 AXIAL
ICBM152 slices, 300 steps; `make run` writes it to runs/quickstart). Target task: the same tissues on CORONAL
slices, with only 4 labelled training slices (evenly spaced over the training range); validation and test are
coronal slabs held out with gaps (26 slices each). Both arms train the same U-Net with the same optimizer, steps,
augmentation and data order; the only difference is the initialisation:

    finetune  --config.init.from=runs/quickstart (its best checkpoint, layout medjax)
    scratch   random initialisation

One arm, one seed:
    medjax train    --config transfer_icbm152:finetune --workdir runs/transfer/finetune_s0
    medjax evaluate --config transfer_icbm152:finetune --workdir runs/transfer/finetune_s0
Everything (pretraining if runs/quickstart has no checkpoint, both arms, several seeds, the table):
    python -m experiments.transfer_icbm152 [--seeds 0 1 2] [--out runs/transfer]
Results: README, section "Transfer learning" (numbers from `runs/transfer/results.json`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from medjax.configs.transfer_icbm152 import ARMS, PRETRAINED


def _summary(values: list[float]) -> dict:
    import numpy as np

    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "runs": list(map(float, v))}


def main(argv=None) -> dict:
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    from medjax.config import build_config
    from medjax.train import loop

    p = argparse.ArgumentParser(description="pretrained vs from-scratch on few coronal ICBM152 slices")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/transfer")
    p.add_argument("--pretrained", default=PRETRAINED)
    p.add_argument("--tiny", action="store_true", help="test-suite size")
    args = p.parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's per-checkpoint notices, as the CLI does
    suffix = ",tiny" if args.tiny else ""
    if not os.path.isdir(os.path.join(args.pretrained, "checkpoints")):
        print(f"pretraining the quickstart into {args.pretrained}", file=sys.stderr)
        qs = build_config("quickstart" + (":tiny" if args.tiny else ""),
                          ["--config.progress=false"])
        loop.train(qs, args.pretrained)
    results: dict = {"pretrained": args.pretrained, "seeds": args.seeds, "arms": {}}
    for arm in ARMS:
        per_seed = []
        for seed in args.seeds:
            workdir = os.path.join(args.out, f"{arm}_s{seed}")
            overrides = [f"--config.seed={seed}", "--config.progress=false"]
            if arm == "finetune":
                overrides.append(f"--config.init.from={args.pretrained}")
            config = build_config(f"transfer_icbm152:{arm}{suffix}", overrides)
            loop.train(config, workdir)
            per_seed.append(loop.evaluate(config, workdir))
            print(f"{arm} seed {seed}: test dice_mean {per_seed[-1]['dice_mean']:.4f}", file=sys.stderr)
        keys = [k for k in per_seed[0] if k.startswith("dice")]
        results["arms"][arm] = {k: _summary([r[k] for r in per_seed]) for k in keys}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("| class | fine-tuned | from scratch |\n|---|---|---|")
    for k in results["arms"]["finetune"]:
        a, b = results["arms"]["finetune"][k], results["arms"]["scratch"][k]
        print(f"| {k} | {a['mean']:.3f} ± {a['sd']:.3f} | {b['mean']:.3f} ± {b['sd']:.3f} |")
    return results


if __name__ == "__main__":
    main()
