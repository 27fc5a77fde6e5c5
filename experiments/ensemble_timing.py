"""Is a deep ensemble trained as one vmapped program faster than its members trained one after another?

Both arms train the same K members (seeds 0..K-1: the same initialisations, data orders and final weights, see
tests/train/test_ensemble.py) of a config (default: the quickstart, a 2D U-Net (16, 32, 64, 128) on real ICBM152
T1 slices, batch 16, at its own shapes; `--steps` cuts the number of steps, not the shapes):

    ensemble    one `medjax train` with --config.ensemble.size=K
    sequential  K `medjax train` runs with --config.seed=0..K-1

and each run validates and checkpoints once, at its last step. Reported per arm: the wall time of the whole
`train` calls (setup, compilation, steps, validation, checkpoint) and the steady-state step time (`train_s` of
timing.json over the steps after the first); the ratios are ensemble / sequential (below 1: the vmapped program
is faster).

    python -m experiments.ensemble_timing [--members 3] [--steps 30] [--config quickstart] [--out DIR]

Results: docs/usage.md, "Uncertainty" (numbers from DIR/results.json).
"""
from __future__ import annotations

import argparse
import json
import os
import time


def _train(config_name: str, overrides: list[str], workdir: str) -> dict:
    from medjax.config import build_config
    from medjax.train import loop

    t0 = time.perf_counter()
    loop.train(build_config(config_name, overrides), workdir)
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, "timing.json")) as f:
        timing = json.load(f)
    return {"wall_s": wall, "first_step_s": timing["first_step_s"], "train_s": timing["train_s"],
            "steps": timing["steps"]}


def main(argv: list[str] | None = None) -> dict:
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    p = argparse.ArgumentParser(description="deep ensemble as one vmapped program vs K sequential runs")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--config", default="quickstart")
    p.add_argument("--out", default="runs/ensemble_timing")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for both arms (repeatable), e.g. --set model.dropout_rate=0.1")
    args = p.parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    common = [f"--config.num_train_steps={args.steps}", f"--config.eval_every={args.steps}",
              f"--config.checkpoint_every={args.steps}", f"--config.log_every={args.steps}",
              "--config.progress=false", *(f"--config.{o}" for o in args.overrides)]
    ensemble = _train(args.config, [*common, f"--config.ensemble.size={args.members}"],
                      os.path.join(args.out, "ensemble"))
    sequential = [_train(args.config, [*common, f"--config.seed={k}"], os.path.join(args.out, f"seed{k}"))
                  for k in range(args.members)]
    seq = {k: sum(r[k] for r in sequential) for k in ("wall_s", "first_step_s", "train_s")}
    step = lambda r, n=1: r["train_s"] / max(r["steps"] - 1, 1) / n  # noqa: E731
    result = {
        "config": args.config, "members": args.members, "steps": args.steps, "overrides": args.overrides,
        "ensemble": ensemble, "sequential": {"runs": sequential, **seq},
        "wall_ratio": ensemble["wall_s"] / seq["wall_s"],
        "step_ratio": step(ensemble) / sum(step(r) for r in sequential),
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json.tmp"), "w") as f:
        json.dump(result, f, indent=2)
    os.replace(os.path.join(args.out, "results.json.tmp"), os.path.join(args.out, "results.json"))
    print(f"{args.members} members, {args.steps} steps of {args.config}: ensemble {ensemble['wall_s']:.1f} s wall "
          f"({step(ensemble) * 1e3:.0f} ms/step), sequential {seq['wall_s']:.1f} s "
          f"({sum(step(r) for r in sequential) * 1e3:.0f} ms/step over the {args.members} runs); ratio "
          f"{result['wall_ratio']:.2f} (wall), {result['step_ratio']:.2f} (steady-state step)")
    return result


if __name__ == "__main__":
    main()
