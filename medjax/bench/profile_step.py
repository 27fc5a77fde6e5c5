"""Where a bench row's training step spends its time: an XLA op profile of medjax's step, and every convolution of
the model timed alone (forward, input gradient, weight gradient) in medjax and in torch.

    python -m medjax.bench.profile_step medmnist_r18_2d_1ch [--trace] [--convs] [--out DIR]

`--trace` runs the row's jitted step under `jax.profiler` (with `--xla_cpu_enable_xprof_traceme`, set before JAX
starts) and sums the XLA:CPU thunks' wall time per kind of fused op (`transpose_copy_fusion`, `reduce-window`,
...), over both threads; convolutions and dots run through XNNPACK / YNNPACK / Eigen calls whose time the trace
attributes only partly, so read the convolution table for those. `--convs` collects the model's convolutions
(`medjax.models.ops.Conv` calls: input shape, kernel, stride, padding; repeated shapes counted once) and times each
alone as the model runs it (`ops.conv_general_dilated`) against `torch.nn.functional.conv{2,3}d` and
`torch.ops.aten.convolution_backward` on the same shapes, median of `--repeats` after a warm-up, both in the same
process; the totals weigh each shape by its count. Both default to on.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import pathlib
import re
import sys
import tempfile


def _enable_traceme() -> None:
    flag = "--xla_cpu_enable_xprof_traceme=true"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


def _row_step(name: str):
    """(jitted train step, state, batch, case, config, task) of bench row `name` at its protocol shape."""
    import jax
    import jax.numpy as jnp

    from medjax import rng as mrng
    from medjax.bench import bench as B
    from medjax.train.state import TrainState
    from medjax.train.steps import make_train_step

    case = B.CASES[name]
    if case.kind not in ("classification", "segmentation", "regression"):
        raise SystemExit(f"profile_step profiles training rows; {name} is a {case.kind} row")
    config = B.case_config(case, "full", "float32")
    batch = B.case_data(case, config, "full")
    models = B.build_models(case, config, batch)
    v = models.variables
    state = jax.jit(lambda p, s: TrainState(step=jnp.zeros((), jnp.int32), params=p, batch_stats=s,
                                            opt_state=models.tx.init(p), rng=mrng.to_data(mrng.key(0))))(
        v["params"], v.get("batch_stats", {}))
    step = jax.jit(make_train_step(models.task, models.tx), donate_argnums=0)
    return step, state, jax.tree.map(jnp.asarray, batch), case, config, models


def trace_categories(name: str, steps: int = 2) -> dict[str, float]:
    """ms per step of each XLA op kind (thread time summed), from a jax.profiler trace of the row's step."""
    import jax
    from jax.profiler import ProfileData

    step, state, batch, *_ = _row_step(name)
    for _ in range(2):
        state, m = step(state, batch)
        jax.block_until_ready(m)
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        for _ in range(steps):
            state, m = step(state, batch)
            jax.block_until_ready(m)
        jax.profiler.stop_trace()
        data = ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
    totals: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "Eigen" not in line.name:  # the XLA:CPU worker threads
                continue
            for event in line.events:
                if not event.name.startswith("ThunkExecutor"):
                    totals[re.sub(r"[.]\d+$", "", event.name)] += event.duration_ns / 1e6 / steps
    return dict(totals.most_common())


def model_convs(name: str) -> list[dict]:
    """Every distinct convolution the row's model runs in training (ops.Conv calls), with its count."""
    import flax.linen as nn
    import jax

    from medjax.models import ops

    _, state, batch, case, config, models = _row_step(name)
    seen: collections.OrderedDict = collections.OrderedDict()

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, ops.Conv) and context.method_name == "__call__":
            x = args[0]
            k = (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)
            nd = len(k)
            per = lambda v: (v,) * nd if isinstance(v, int) else tuple(v)  # noqa: E731
            pad = nn.linear.canonicalize_padding(module.padding, nd)
            key = (tuple(x.shape), k, int(module.features), per(module.strides), str(pad), per(module.kernel_dilation))
            entry = seen.setdefault(key, {"input": list(x.shape), "kernel": list(k), "features": int(module.features),
                                          "strides": list(per(module.strides)), "padding": pad,
                                          "dilation": list(per(module.kernel_dilation)), "count": 0})
            entry["count"] += 1
            entry["is_input_layer"] = tuple(x.shape) == tuple(batch["image"].shape)  # no input gradient needed
        return next_fun(*args, **kwargs)

    from medjax.tasks.base import apply_model

    with nn.intercept_methods(record):
        jax.eval_shape(lambda p, s, x: apply_model(models.task.model, p, s, x, train=True), state.params,
                       state.batch_stats, batch["image"])
    return list(seen.values())


def time_conv(conv: dict, repeats: int = 5) -> dict:
    """ms of forward, input gradient and weight gradient, medjax (ops.conv_general_dilated) and torch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from medjax.bench.bench import _median_time
    from medjax.models import ops

    nd = len(conv["kernel"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal(conv["input"]).astype(np.float32)
    w = (rng.standard_normal((*conv["kernel"], x.shape[-1], conv["features"])) * 0.05).astype(np.float32)
    pad = conv["padding"] if isinstance(conv["padding"], str) else [tuple(p) for p in conv["padding"]]
    spatial = tuple(range(1, nd + 1))
    dn = jax.lax.ConvDimensionNumbers((0, nd + 1) + spatial, (nd + 1, nd) + tuple(range(nd)), (0, nd + 1) + spatial)

    def f(x, w):
        return ops.conv_general_dilated(x, w, tuple(conv["strides"]), pad, rhs_dilation=tuple(conv["dilation"]),
                                        dimension_numbers=dn)

    xj, wj = jnp.asarray(x), jnp.asarray(w)
    g = jnp.ones(jax.eval_shape(f, xj, wj).shape, jnp.float32)
    fwd = jax.jit(f)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0])
    ms = lambda fn: 1000 * _median_time(fn, 1, repeats)  # noqa: E731
    need_dx = not conv.get("is_input_layer", False)  # the model's input gets no gradient in training
    out = {"medjax_fwd_ms": ms(lambda: fwd(xj, wj).block_until_ready()),
           "medjax_dx_ms": ms(lambda: dx(xj, wj, g).block_until_ready()) if need_dx else 0.0,
           "medjax_dw_ms": ms(lambda: dw(xj, wj, g).block_until_ready())}
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    wt = torch.from_numpy(np.ascontiguousarray(np.transpose(w, (nd + 1, nd, *range(nd)))))
    if isinstance(pad, str):
        raise SystemExit(f"string padding {pad!r}: the torch side needs explicit padding")
    lo = [p[0] for p in pad]
    if any(p[0] != p[1] for p in pad):
        raise SystemExit(f"asymmetric padding {pad}: not timed against torch")
    conv_fn = torch.nn.functional.conv2d if nd == 2 else torch.nn.functional.conv3d
    kw = dict(stride=conv["strides"], padding=lo, dilation=conv["dilation"])
    with torch.no_grad():
        gt = torch.ones_like(conv_fn(xt, wt, **kw))

    def back(mask):
        return lambda: torch.ops.aten.convolution_backward(gt, xt, wt, None, conv["strides"], lo, conv["dilation"],
                                                           False, [0] * nd, 1, mask)

    with torch.no_grad():
        out["torch_fwd_ms"] = ms(lambda: conv_fn(xt, wt, **kw))
    out["torch_dx_ms"] = ms(back([True, False, False])) if need_dx else 0.0
    out["torch_dw_ms"] = ms(back([False, True, False]))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("row", help="a bench row, e.g. medmnist_r18_2d_1ch (medjax bench --cases names them)")
    p.add_argument("--trace", action="store_true", help="the XLA op profile only")
    p.add_argument("--convs", action="store_true", help="the convolution table only")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=pathlib.Path, default=None, help="write profile.json here")
    args = p.parse_args(argv)
    both = not (args.trace or args.convs)
    if args.trace or both:
        _enable_traceme()
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts

    result: dict = {"row": args.row}
    if args.trace or both:
        cats = trace_categories(args.row)
        result["trace_ms_per_step"] = cats
        print(f"{args.row}: XLA:CPU thunks, ms per step (thread time over both workers)")
        for k, v in list(cats.items())[:20]:
            print(f"  {v:9.2f}  {k}")
    if args.convs or both:
        rows, totals = [], collections.Counter()
        for conv in model_convs(args.row):
            t = time_conv(conv, args.repeats)
            rows.append(dict(conv, **t))
            for k, v in t.items():
                totals[k] += v * conv["count"]
            print(f"  {'x'.join(map(str, conv['input']))} k{'x'.join(map(str, conv['kernel']))} -> "
                  f"{conv['features']} s{conv['strides'][0]} (x{conv['count']}): medjax fwd/dx/dw "
                  f"{t['medjax_fwd_ms']:.1f}/{t['medjax_dx_ms']:.1f}/{t['medjax_dw_ms']:.1f} ms, torch "
                  f"{t['torch_fwd_ms']:.1f}/{t['torch_dx_ms']:.1f}/{t['torch_dw_ms']:.1f} ms", flush=True)
        result["convs"] = rows
        result["conv_totals_ms"] = dict(totals)
        mj = sum(v for k, v in totals.items() if k.startswith("medjax"))
        tt = sum(v for k, v in totals.items() if k.startswith("torch"))
        print(f"{args.row}: convolutions per step, medjax {mj:.0f} ms (fwd {totals['medjax_fwd_ms']:.0f}, dx "
              f"{totals['medjax_dx_ms']:.0f}, dw {totals['medjax_dw_ms']:.0f}), torch {tt:.0f} ms (fwd "
              f"{totals['torch_fwd_ms']:.0f}, dx {totals['torch_dx_ms']:.0f}, dw {totals['torch_dw_ms']:.0f})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
