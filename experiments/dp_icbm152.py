"""What does differential privacy cost on real MRI? DP-SGD at epsilon 1, 4, 8 against non-private training.

Task: 16 x 16 ICBM152 tissue patches (CSF / grey / white matter at the centre pixel, `icbm152_patches`): 200 per
class of the training slabs to train on (N = 600), 200 other patches per class of the same slabs held out (the
`val` split: never trained on, the membership audit's non-members), 500 per class of the separate test slabs for
accuracy. A small GroupNorm ResNet (`dp_icbm152` config), 400 Adam steps. The DP arms draw Poisson batches
(expected 64, q = 64 / 600) with per-example clipping at 1.0 and the noise multiplier solved so that the budget
(delta = 1e-5) lasts exactly the 400 steps; the non-private arm trains the same network on shuffled batches of 64.

Per arm: test accuracy and AUC (`medjax evaluate`), the epsilon spent, the loss-threshold membership-inference AUC
of the 600 training patches against the 600 held-out ones (`medjax.privacy.audit`), and the cost of a training
step: after training, every arm's compiled step is run `--rounds` times, the arms interleaved round by round so
that a shared machine's load hits them alike; the medians of wall time and of process CPU time (all threads) per
step, and their ratios to the non-private step (a DP step processes the padded Poisson batch, 102 rows for an
expected 64).

    python -m experiments.dp_icbm152 [--out runs/dp] [--arms nonprivate eps1 eps4 eps8]
Results: docs/privacy.md and the README ("Privacy"), from `<out>/results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

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
    row = {"arm": arm, "target_epsilon": ARMS[arm], "epsilon": result.get("epsilon"), "acc": result["acc"],
           "auc": result["auc"], **mia}
    if s.privacy:
        m = s.privacy.mechanism
        row.update(noise_multiplier=m.noise_multiplier, padded_batch_size=m.padded_batch_size)
    return row


def step_times(arms: list[str], patches: str, tiny: bool, rounds: int) -> dict[str, dict[str, float]]:
    """{arm: {"wall_ms", "cpu_ms"}}: medians over `rounds` of each arm's compiled train step on one of its batches,
    the arms interleaved (module docstring). Nothing is written."""
    import tempfile

    import jax

    from medjax.config import build_config
    from medjax.train import loop

    steps = {}
    with tempfile.TemporaryDirectory() as scratch:
        for arm in arms:
            config = build_config(f"dp_icbm152:{arm}{',tiny' if tiny else ''}", [f"--config.data.root={patches}"])
            s = loop.setup(config, scratch)
            stream = s.train_stream()
            compiled = s.strategy.compile_train_step(s.train_step_fn())
            steps[arm] = {"fn": compiled, "state": s.initial_state(),
                          "batch": s.strategy.put_batch(next(stream), stream.global_batch_size)}
    times: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
    for r in range(rounds + 1):  # round 0 compiles
        for arm, st in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            st["state"], metrics = st["fn"](st["state"], st["batch"])
            jax.block_until_ready(metrics["loss"])
            if r:
                times[arm].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {arm: {"wall_ms": 1000 * statistics.median(w for w, _ in t),
                  "cpu_ms": 1000 * statistics.median(c for _, c in t)} for arm, t in times.items()}


def table(rows: list[dict]) -> str:
    """The markdown table of the README and docs/privacy.md."""
    lines = ["| arm | epsilon | sigma | test acc | test AUC | MIA AUC | step ms, wall / CPU | "
             "step / non-private, wall / CPU |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        sigma = f"{r['noise_multiplier']:.3f}" if "noise_multiplier" in r else "-"
        ratio = (f"{r['wall_ratio']:.2f}x / {r['cpu_ratio']:.2f}x" if "wall_ratio" in r else "-")
        lines.append(f"| {r['arm']} | {eps} | {sigma} | {r['acc']:.3f} | {r['auc']:.3f} | {r['mia_auc']:.3f} | "
                     f"{r['wall_ms']:.1f} / {r['cpu_ms']:.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    p = argparse.ArgumentParser(description="DP-SGD at several budgets against non-private training, ICBM152 patches")
    p.add_argument("--out", default="runs/dp")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--rounds", type=int, default=30, help="timed steps per arm (interleaved)")
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
    times = step_times(args.arms, str(patches), args.tiny, args.rounds)
    for r in rows:
        r.update(times[r["arm"]])
        if "nonprivate" in times:
            r["wall_ratio"] = r["wall_ms"] / times["nonprivate"]["wall_ms"]
            r["cpu_ratio"] = r["cpu_ms"] / times["nonprivate"]["cpu_ms"]
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
