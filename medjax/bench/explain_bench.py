"""`medjax bench` rows of kind "explain": one explanation method over a protocol batch, medjax against the PyTorch
tools on the same model and weights.

The medjax side is what `medjax explain` runs: `medjax.explain.methods.bind` with the row config's `explain`
section, compiled by `medjax.explain.core.shard_over_data` (one program: examples and their samples vmapped,
chunked to `explain.batch_size` model evaluations in flight). The torch side is MONAI's ResNet with the same
weights (`bench.build_models`), eager or through `torch.compile`, explained by

* `ig`: Captum's `IntegratedGradients` (same steps, rule and baseline), with `internal_batch_size` =
  `explain.batch_size`, so both sides hold the same number of evaluations at once (Captum without it runs every
  step of every example in one forward pass and runs out of memory at this shape);
* `occlusion`: MONAI's `OcclusionSensitivity` (window `explain.occlusion_window`, the overlap that gives the same
  window starts as `explain.occlusion_stride`, the baseline as a constant fill, logits: `activate=False`,
  `n_batch` = `explain.batch_size`); it takes one example at a time, so the batch is a Python loop.

The rows explain 4 examples per call with 32 model evaluations in flight (the MedMNIST 3D protocol's batch): IG's
4 x 50 evaluations go through the model 32 at a time on both sides (medjax: 32 + 18 steps per example; Captum: 8
steps of the 4 examples per chunk) and occlusion's 27 windows in one call per example, so the cost per example does
not depend on how many are explained and examples/s is what a batch of 32 examples would give.

Targets are medjax's predicted classes, passed to both. Each torch variant's maps must agree with medjax's within
5e-3 of their largest magnitude (occlusion: medjax's score - MONAI's mean occluded logit): a check that both sides
compute the same method, not the parity test (tests/explain holds those, at 1e-4 on small inputs). At this shape
float32 summation order alone moves IG's maps by 1.0e-3 of their maximum (Integrated Gradients, 50 steps, 28^3
ResNet-18 against Captum, measured on the 2-core CPU). A call takes minutes on
a CPU at this shape, so a row times the first call (with compilation) and then `EXPLAIN_REPEATS[mode]` more.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from medjax.bench import bench as B

EXPLAIN_REPEATS = {"full": 2, "quick": 1, "smoke": 1}
MAP_RTOL = 5e-3


def torch_explainer(method: str, module: Any, cfg, targets: np.ndarray) -> Any:
    """`explain(x NCHW tensor) -> maps` in medjax's convention, (N, *spatial, C) (ig) or (N, *spatial, 1)."""
    import torch

    t = torch.from_numpy(targets.astype(np.int64))
    if method == "ig":
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(module)

        def explain(x):
            out = ig.attribute(x, baselines=float(cfg.baseline), target=t.to(x.device), n_steps=cfg.ig_steps,
                               method=cfg.ig_method, internal_batch_size=cfg.batch_size or None)
            return np.moveaxis(B._sync(out).detach().cpu().numpy(), 1, -1)

        return explain
    from monai.visualize import OcclusionSensitivity

    window, stride = int(cfg.occlusion_window), int(cfg.occlusion_stride)
    # MONAI's window step is int(window * (1 - overlap)): half a voxel of slack keeps float rounding off it
    occ = OcclusionSensitivity(module, mask_size=window, n_batch=cfg.batch_size or 64, verbose=False,
                               mode=float(cfg.baseline), overlap=1 - (stride + 0.5) / window, activate=False)

    def explain(x):
        maps = []
        with torch.no_grad():
            for i in range(len(x)):
                scores = module(x[i:i + 1])[0, int(targets[i])]
                maps.append((scores - occ(x[i:i + 1])[0][0, int(targets[i])]).cpu().numpy())
        return np.stack(maps)[..., None]

    return explain


def run_explain_case(case: B.Case, mode: str, warmup: int, repeats: int, frameworks=B.FRAMEWORKS, log=print,
                     budget: B.CompileBudget | None = None, precision: str = "float32") -> list[dict]:
    """Records for one explain row (float32 whatever is asked: the references run in float32)."""
    import jax
    import torch

    from medjax.explain import core
    from medjax.explain.methods import bind

    try:
        import captum  # noqa: F401
    except ImportError as e:
        raise B.BenchError("the explain rows compare against Captum: pip install 'medjax[bench]'") from e
    budget = budget or B.CompileBudget()
    config = B.case_config(case, mode, "float32")
    batch = B.case_data(case, config, mode)
    models = B.build_models(case, config, batch)
    cfg, x = config.explain, batch["image"]
    apply = functools.partial(models.task.model.apply, train=False)
    variables = models.variables
    targets = np.asarray(jax.jit(apply)(variables, x)).argmax(-1).astype(np.int32)
    padded, n = core.pad_to_devices({"x": x, "target": targets}, len(jax.devices()))
    run_medjax = core.shard_over_data(bind(case.explain, apply, cfg, seed=config.seed))
    timed = EXPLAIN_REPEATS[mode]
    common = {"case": case.name, "kind": case.kind, "config": case.config, "data": case.data,
              "torch_model": case.torch_model, "model": config.model.to_dict(), "batch": int(n),
              "input_shape_nc": [n, case.in_channels, *x.shape[1:-1]], "input_shape_medjax": list(x.shape),
              "num_classes": case.num_classes, "method": case.explain, "explain": cfg.to_dict(),
              "reference": "captum.attr.IntegratedGradients" if case.explain == "ig"
              else "monai.visualize.OcclusionSensitivity", "warmup": 0, "repeats": timed, "precision": "float32",
              "mode": mode}
    if precision != "float32":
        common["precision_note"] = f"explanations run in float32 (asked: {precision})"
    outputs: dict[str, np.ndarray] = {}

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            def go():
                return np.asarray(jax.block_until_ready(run_medjax(variables, padded)))[:n]
        else:
            _, _, module = models.make_torch()
            module.eval()
            compiled = torch.compile(module, backend=backend, dynamic=False) if backend else module
            xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).to(B.torch_device())
            explain = torch_explainer(case.explain, compiled, cfg, targets)

            def go():
                return explain(xt)
        rss0 = B._maxrss_mb()
        t0 = time.perf_counter()
        outputs[fw] = go()
        first = time.perf_counter() - t0
        step = B._median_time(go, 0, timed)
        rec = {"compile_s": first, "infer_first_s": first, "infer_step_s": step,
               "rss_increase_mb": B._maxrss_mb() - rss0}
        if fw == "medjax":
            rec["device_peak_bytes"], rec["device_peak_note"] = B._jax_peak_bytes()
        return rec

    results = B.run_frameworks(case.name, n, common, frameworks, run, budget, log)
    for fw, rec in results.items():
        if fw != "medjax" and fw in outputs and "medjax" in outputs:
            ref = outputs["medjax"]
            rel = float(np.abs(outputs[fw] - ref).max() / max(np.abs(ref).max(), 1e-12))
            rec["output_check"] = {"against": "medjax", "rel_diff": rel, "rtol": MAP_RTOL, "passed": rel <= MAP_RTOL}
            if rel > MAP_RTOL:
                raise RuntimeError(f"{case.name}: {fw} and medjax maps disagree: max |diff| / max |map| {rel:.3g}")
    return [results[fw] for fw in frameworks]
