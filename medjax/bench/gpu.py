"""The one-shot GPU table: every bench row at its protocol shape, float32 and bfloat16, medjax against torch eager,
torch autocast (bfloat16) and torch.compile, with model FLOP utilisation. Run by `medjax/bench/gpu.sh`
on a lent GPU (one call of at most 10 minutes); on a CPU (`--smoke`) it checks the plumbing at tiny shapes.

    python -m medjax.bench.gpu --out DIR [--smoke] [--budget-s 480] [--cases NAME ...]

Order, until `--budget-s` seconds are spent (whatever remains is recorded as skipped, with the reason): every row
in float32 (medjax and torch eager), then in bfloat16 (medjax's `compute.precision=bfloat16` against torch
autocast), then torch.compile in float32. Timing is `medjax/bench/bench.py`'s (same rows, weights, loss
checks; torch is synchronised around every timed step). FLOPs per training step come from XLA's cost analysis of
medjax's compiled step (`flops`: multiply-adds count twice); MFU = FLOPs / step time / the card's peak at that
precision (dense tensor-core rates from the vendor's datasheet, `PEAKS`), next to the rate of a large matmul
measured in the same process. JAX computes float32 convolutions and matmuls at its default precision, which on
NVIDIA GPUs may use TF32 tensor cores; torch's settings are recorded (`allow_tf32`).

Writes DIR/gpu.json and DIR/gpu.md (one table: rows x precision, ex/s and ratios, MFU).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

# Dense (no sparsity) tensor-core peaks, FLOP/s, from NVIDIA's datasheets; float32 is the TF32 tensor-core rate.
PEAKS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},  # SXM; PCIe cards are lower
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}


def card_peak(name: str | None, precision: str) -> float | None:
    for key, peaks in PEAKS.items():
        if name and key in name:
            return peaks[precision]
    return None


def measured_matmul_rate(precision: str, n: int) -> float:
    """FLOP/s of an n x n x n matmul in JAX (median of 5 after a warm-up)."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / sorted(times)[2]


def step_flops(case, precision: str, mode: str) -> float | None:
    """XLA's count of FLOPs in one of medjax's training steps for the row."""
    import jax

    from medjax import rng as mrng
    from medjax.bench import bench as B
    from medjax.train.state import TrainState
    from medjax.train.steps import make_train_step

    if case.kind not in B.RUNNERS or case.kind == "sliding_window":  # GAN and explain rows are not in RUNNERS
        return None
    config = B.case_config(case, mode, precision)
    batch = B.case_data(case, config, mode)
    models = B.build_models(case, config, batch)
    v = models.variables
    state = jax.eval_shape(lambda p, s: TrainState(step=jax.numpy.zeros((), "int32"), params=p, batch_stats=s,
                                                   opt_state=models.tx.init(p), rng=mrng.to_data(mrng.key(0))),
                           v["params"], v.get("batch_stats", {}))
    compiled = jax.jit(make_train_step(models.task, models.tx)).lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None


def run(out: pathlib.Path, mode: str = "full", budget_s: float = 480.0, case_names: list[str] | None = None,
        log=print) -> dict:
    import torch

    from medjax.bench import bench as B

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cases = B.select_cases("smoke" if mode == "smoke" else "full", case_names)
    warmup, repeats = (0, 1) if mode == "smoke" else (2, 5)
    compile_backend = "eager" if mode == "smoke" else "inductor"
    B.cold_torch_compile()
    records, skipped = [], []
    left = lambda: budget_s - (time.perf_counter() - t0)  # noqa: E731
    bench_mode = "smoke" if mode == "smoke" else "full"
    plan = [(p, ("medjax", "torch_eager"), "") for p in ("float32", "bfloat16")]
    plan.append(("float32", ("medjax", "torch_compile"), "compile"))
    for precision, frameworks, tag in plan:
        for case in cases:
            if case.kind in ("gan", "sliding_window", "explain") and precision == "bfloat16":
                continue  # these rows run in float32 whatever is asked (bench.py)
            if left() <= 0:
                skipped.append({"case": case.name, "precision": precision, "frameworks": list(frameworks),
                                "reason": f"the {budget_s:.0f} s budget was spent"})
                continue
            log(f"{case.name} {precision} {'/'.join(frameworks)} ({left():.0f} s left)")
            try:
                recs = B.run_case(case, bench_mode, warmup, repeats, frameworks=frameworks, log=log,
                                  budget=B.CompileBudget(compile_backend), precision=precision)
            except Exception as e:  # noqa: BLE001  (one broken row must not lose the others' numbers)
                skipped.append({"case": case.name, "precision": precision, "frameworks": list(frameworks),
                                "reason": f"{type(e).__name__}: {str(e)[:300]}"})
                continue
            if tag == "compile":
                recs = [r for r in recs if r["framework"] == "torch_compile"]
            for r in recs:
                r["precision"] = precision
            records += recs
    machine = B.machine()
    card = machine.get("gpu_name") or machine.get("jax_device_kind")
    peaks = {p: card_peak(card, p) for p in ("float32", "bfloat16")}
    n = 256 if mode == "smoke" else 8192
    measured = {p: measured_matmul_rate(p, n) for p in ("float32", "bfloat16")}
    flops = {}
    for case in cases:
        for precision in ("float32", "bfloat16"):
            try:
                flops[(case.name, precision)] = step_flops(case, precision, bench_mode)
            except Exception:  # noqa: BLE001
                flops[(case.name, precision)] = None
    for r in records:
        f = flops.get((r["case"], r["precision"]))
        if f and r.get("train_step_s") and r["status"] == "ok":
            r["flops_per_step"] = f
            r["achieved_flop_per_s"] = f / r["train_step_s"]
            r["mfu"] = r["achieved_flop_per_s"] / peaks[r["precision"]] if peaks[r["precision"]] else None
    result = {"mode": mode, "budget_s": budget_s, "machine": machine, "peaks": peaks, "measured_matmul": measured,
              "torch_allow_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                   "cudnn": torch.backends.cudnn.allow_tf32},
              "records": records, "skipped": skipped, "total_wall_s": time.perf_counter() - t0}
    (out / "gpu.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    write_markdown(out / "gpu.md", result)
    log(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} in {result['total_wall_s']:.0f} s")
    return result


def _cell(v, spec=".1f"):
    return "—" if v is None else format(v, spec)


def write_markdown(path: pathlib.Path, result: dict) -> None:
    m = result["machine"]
    peaks = ", ".join(f"{k} {_cell(v and v / 1e12, '.0f')} TFLOP/s" for k, v in result["peaks"].items())
    measured = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in result["measured_matmul"].items())
    lines = [f"# medjax vs PyTorch on {m.get('gpu_name') or m.get('jax_device_kind')} ({result['mode']})", "",
             f"JAX {m['jax']} ({m['jax_backend']}), torch {m['torch']}; peaks used for MFU (datasheet, dense): "
             f"{peaks}; measured matmul: {measured}. Total {result['total_wall_s']:.0f} s.", "",
             "| row | precision | medjax train ex/s | torch eager (autocast in bf16) | torch.compile | medjax/eager | "
             "medjax/compile | medjax MFU | medjax infer ex/s | torch infer ex/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in result["records"]:
        by.setdefault((r["case"], r["precision"]), {})[r["framework"]] = r
    for (case, precision), fws in by.items():
        if "medjax" not in fws:
            continue
        mj, eager = fws["medjax"], fws.get("torch_eager")
        comp = by.get((case, "float32"), {}).get("torch_compile") if precision == "float32" else None

        def rate(r, key="train_examples_per_s"):
            return r.get(key) if r and r["status"] == "ok" else None

        def ratio(a, b):
            return a / b if a and b else None

        train = rate(mj) or None
        lines.append(f"| {case} | {precision} | {_cell(train)} | {_cell(rate(eager))} | {_cell(rate(comp))} | "
                     f"{_cell(ratio(train, rate(eager)), '.2f')} | {_cell(ratio(train, rate(comp)), '.2f')} | "
                     f"{_cell(mj.get('mfu') and 100 * mj['mfu'], '.1f')}{'%' if mj.get('mfu') else ''} | "
                     f"{_cell(rate(mj, 'infer_examples_per_s'))} | {_cell(rate(eager, 'infer_examples_per_s'))} |")
    if result["skipped"]:
        lines += ["", "Not run:", ""] + [f"- {s['case']} {s['precision']} {'/'.join(s['frameworks'])}: {s['reason']}"
                                         for s in result["skipped"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on any backend (tests)")
    p.add_argument("--budget-s", type=float, default=480.0, help="stop starting rows after this many seconds")
    p.add_argument("--cases", nargs="+", default=None)
    args = p.parse_args(argv)
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts

    run(args.out, "smoke" if args.smoke else "full", args.budget_s, args.cases)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
