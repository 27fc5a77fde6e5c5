"""Throughput and memory of medjax's training step under its parallel and compute options.

    python -m medjax.bench.train_options scaling [--devices 1 2 4] [--strategy sharding] --out DIR
    python -m medjax.bench.train_options compute [--case msd_unet3d] --out DIR

`scaling`: the trainer's step (the strategy's compiled `make_train_step`) on 1, 2, 4... devices at the same
global batch, each device count in its own process (`JAX_NUM_CPU_DEVICES` on CPU, the first N accelerators
otherwise). On a CPU the "devices" share the same cores, so the ratio measures the partitioning overhead, not a
speed-up; on GPUs it is the scaling curve.

`compute`: one model and batch (a `medjax bench` row at its protocol shape) under each `config.compute` option:
plain, `remat`, `grad_accum_steps` 2 and 4, `precision=bfloat16`. Memory is XLA's own account of the compiled step
(`compiled.memory_analysis()`: temporaries, i.e. activations and workspace, plus arguments and outputs), so it is
exact on every platform; time is the median of `--repeats` steps after one warm-up.

Both write DIR/<mode>.json and DIR/<mode>.md. Numbers depend on the machine: they are written with its description.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time


def timed_steps(step, state, batch, repeats: int) -> tuple[float, float, object]:
    import jax

    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), state


def _setup(case_name: str, precision: str = "float32", remat: bool = False, batch_size: int | None = None,
           shape: str = "full"):
    """(task, optax tx, variables, host batch) for a `medjax bench` row in `shape` mode ("full": the protocol's
    shape; "smoke": the tests'), with its precision, remat and (if given) batch size changed through its config."""
    from medjax.bench import bench

    case = bench.CASES[case_name]
    config = bench.case_config(case, shape, precision)
    with config.unlocked():
        config.compute.remat = remat
        if batch_size is not None:
            config.batch_size = batch_size
    batch = bench.case_data(case, config, shape)
    models = bench.build_models(case, config, batch)
    return models.task, models.tx, models.variables, batch


def _state(tx, variables, strategy):
    import jax.numpy as jnp

    from medjax import rng as mrng
    from medjax.train.state import TrainState

    def create():
        p = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(p), rng=mrng.to_data(mrng.key(0)))

    return strategy.init_state(create)


def scaling_worker(case_name: str, strategy_name: str, repeats: int, shape: str = "full") -> dict:
    """In-process: the step on every visible device."""
    import jax

    from medjax.train.parallel import make_strategy
    from medjax.train.steps import make_train_step

    task, tx, variables, batch = _setup(case_name, shape=shape)
    strategy = make_strategy(strategy_name)
    state = _state(tx, variables, strategy)
    step = strategy.compile_train_step(make_train_step(task, tx, strategy.axis_name))
    placed = strategy.put_batch(batch, len(batch["label"]))
    first, median, _ = timed_steps(step, state, placed, repeats)
    return {"case": case_name, "strategy": strategy_name, "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "global_batch": len(batch["label"]),
            "first_step_s": first, "step_s": median, "examples_per_s": len(batch["label"]) / median}


def run_scaling(case_name: str, devices: list[int], strategy: str, repeats: int, shape: str = "full") -> list[dict]:
    rows = []
    for n in devices:
        env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(n))
        code = (f"import json, medjax; medjax.configure_cpu(); from medjax.bench import train_options as t; "
                f"print('RESULT', json.dumps(t.scaling_worker({case_name!r}, {strategy!r}, {repeats}, {shape!r})))")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"{n} devices failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.split("RESULT", 1)[1]))
        print(f"  {n} device(s): {rows[-1]['examples_per_s']:.2f} examples/s", flush=True)
    base = rows[0]["examples_per_s"]
    for r in rows:
        r["throughput_vs_first"] = r["examples_per_s"] / base
    return rows


COMPUTE_OPTIONS = {  # name -> (precision, remat, grad_accum_steps)
    "plain": ("float32", False, 1),
    "remat": ("float32", True, 1),
    "grad_accum_2": ("float32", False, 2),
    "grad_accum_4": ("float32", False, 4),
    "bfloat16": ("bfloat16", False, 1),
}


def run_compute(case_name: str, repeats: int, options: list[str], batch_size: int | None) -> list[dict]:
    import jax

    from medjax.train.parallel import make_strategy
    from medjax.train.steps import make_train_step

    strategy = make_strategy("sharding", jax.devices()[:1])
    rows = []
    for name in options:
        precision, remat, accum = COMPUTE_OPTIONS[name]
        task, tx, variables, batch = _setup(case_name, precision, remat, batch_size)
        if len(batch["label"]) % accum:
            rows.append({"option": name, "skipped": f"batch {len(batch['label'])} not divisible by {accum}"})
            continue
        state = _state(tx, variables, strategy)
        step = strategy.compile_train_step(make_train_step(task, tx, None, accum_steps=accum))
        placed = strategy.put_batch(batch, len(batch["label"]))
        mem = step.lower(state, placed).compile().memory_analysis()
        first, median, _ = timed_steps(step, state, placed, repeats)
        rows.append({"option": name, "precision": precision, "remat": remat, "grad_accum_steps": accum,
                     "case": case_name, "batch": len(batch["label"]), "step_s": median, "first_step_s": first,
                     "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
                     "argument_bytes": getattr(mem, "argument_size_in_bytes", None),
                     "output_bytes": getattr(mem, "output_size_in_bytes", None)})
        print(f"  {name}: {median:.3f} s/step, temporaries {rows[-1]['temp_bytes'] / 2**20:.1f} MiB", flush=True)
    plain = next((r for r in rows if r["option"] == "plain"), None)
    for r in rows:
        if "step_s" in r and plain is not None:
            r["time_vs_plain"] = r["step_s"] / plain["step_s"]
            r["temp_vs_plain"] = r["temp_bytes"] / plain["temp_bytes"] if plain["temp_bytes"] else None
    return rows


def _markdown(mode: str, rows: list[dict], machine: dict) -> str:
    head = f"# medjax {mode}\n\nMachine: {machine['platform']}, {machine['cpu_count']} CPUs, jax {machine['jax']} " \
           f"({machine['device_kind']}).\n\n"
    if mode == "scaling":
        lines = ["| devices | global batch | step s | examples/s | vs 1 device |", "|---|---|---|---|---|"]
        lines += [f"| {r['devices']} | {r['global_batch']} | {r['step_s']:.3f} | {r['examples_per_s']:.2f} | "
                  f"{r['throughput_vs_first']:.2f} |" for r in rows]
    else:
        lines = ["| option | step s | time vs plain | temporaries MiB | memory vs plain |", "|---|---|---|---|---|"]
        lines += [f"| {r['option']} | {r['step_s']:.3f} | {r.get('time_vs_plain', float('nan')):.2f} | "
                  f"{r['temp_bytes'] / 2**20:.1f} | {r.get('temp_vs_plain') or float('nan'):.2f} |"
                  for r in rows if "step_s" in r]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("scaling", "compute"))
    p.add_argument("--case", default=None, help="a medjax bench row (its protocol shape)")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--strategy", default="sharding", choices=("sharding", "pmap"))
    p.add_argument("--options", nargs="+", default=list(COMPUTE_OPTIONS), choices=list(COMPUTE_OPTIONS))
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the row's config's; compute "
                   "mode: 4, so that gradient accumulation has micro-batches to split)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    import jax

    from medjax.bench.bench import machine

    if args.mode == "scaling":
        rows = run_scaling(args.case or "medmnist_r18_2d_1ch", args.devices, args.strategy, args.repeats)
    else:
        rows = run_compute(args.case or "msd_unet3d", args.repeats, args.options, args.batch or 4)
    info = dict(machine(), device_kind=jax.devices()[0].device_kind)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.mode}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    (out / f"{args.mode}.md").write_text(_markdown(args.mode, rows, info))
    print((out / f"{args.mode}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
