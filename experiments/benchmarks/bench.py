"""Side-by-side benchmark: medjax against PyTorch (eager and torch.compile) on the same models and weights.

    medjax bench [--quick | --smoke] [--cases NAME ...] [--warmup N] [--repeats N] --out DIR

Each case is (model, input shape, batch size, Adam lr 1e-3, cross-entropy) run by three frameworks:

* `medjax`: the trainer's step (`medjax.train.steps.make_train_step` on a TrainState), jitted with the state
  donated; inference is the jitted eval-mode apply.
* `torch_eager`: the MONAI model (`monai.networks.nets.resnet18` / `BasicUNet`), `torch.optim.Adam`,
  `torch.nn.functional.cross_entropy`, eval-mode forward under `torch.no_grad()` for inference.
* `torch_compile`: the same with `torch.compile(model)` (the optimizer step stays eager; eval mode recompiles).
  Inductor's on-disk caches are turned off in the process, so its first step is a cold compile on every run.
  Skipped, with the reason recorded, when compiling fails, and in `--quick` once `COMPILE_BUDGET_S` seconds of
  torch.compile first steps are spent (Inductor takes 40-100+ s per ResNet-18 graph on a 2-core CPU).

The torch model is built first; its state dict is imported into the medjax variables through the MONAI layout
(`medjax.transfer.import_weights`, strict), so both sides compute the same function. Before anything is timed
the first-step loss of medjax and of each torch variant (same weights, same batch, float32, BatchNorm in train
mode) must agree within 1e-4 relative; the check is recorded (and a disagreement fails the run).

Measured per framework: training throughput (examples/s from the median of `repeats` timed steps after
`warmup` untimed ones), inference throughput (likewise, eval-mode forward), warm-up time (wall time of the first
train step, which includes jit / torch.compile compilation; `infer_first_s` likewise for the forward), and memory:
the process max-RSS increase during that framework's run (`resource.getrusage`; 0 when it stayed below an earlier
peak of the same process, so read it as a lower bound) and, for JAX, the device's `peak_bytes_in_use` where
`memory_stats()` reports it (None on CPU).

`sliding_window_256` is inference only: medjax `sliding_window_inference` (one jitted program) against
`monai.inferers.sliding_window_inference` on the small 3D conv net of `experiments/benchmarks/sliding_window.py`
(outputs checked to agree within 1e-4 absolute).

`dcgan_64` and `pix2pix_256` time one whole GAN training step (D update, then G update; `medjax.gan.step`) against
the same networks in torch functional form with the same initial weights, latents and Adam settings; both
first-step losses (D and G) must agree within 1e-4 relative (`experiments/benchmarks/gan_bench.py`).

`convlstm_64` times a per-frame segmentation step of a 2-layer ConvLSTM over 16 frames against the common PyTorch
ConvLSTM with the same weights (`experiments/benchmarks/convlstm_bench.py`; first-step losses within 1e-4).

`--quick` shrinks batch sizes, spatial sizes and repeats so that all cases finish in minutes on a small CPU;
`--smoke` is a seconds-long run of one case per kind (for the tests). The shapes actually used are recorded:
read them from bench.json / bench.md, never from the case names.

Outputs in DIR: `bench.json` (machine, settings, one record per case and framework), `bench.md` (a table with
the medjax/torch ratios; > 1 means medjax is faster) and `bench.png` (training-throughput ratios).
torch and monai are dev extras: this module is not on medjax's runtime path.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

FRAMEWORKS = ("medjax", "torch_eager", "torch_compile")
LOSS_RTOL = 1e-4
LOSS_RTOL_BF16 = 3e-2  # bfloat16 keeps 8 mantissa bits: the two frameworks round differently
PRECISIONS = ("float32", "bfloat16")
SW_ATOL = 1e-4
LR = 1e-3
SMALL_UNET = (8, 8, 16, 32, 64, 8)


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    size: int  # spatial edge (square / cube)
    features: tuple[int, ...] | None = None  # basic_unet only
    roi: int | None = None  # sliding window only
    frames: int | None = None  # convlstm only


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "classification" | "segmentation" | "sliding_window" | "gan" | "convlstm"
    arch: str  # medjax model name ("" for sliding_window)
    spatial_dims: int
    in_channels: int
    num_classes: int
    full: Shape
    quick: Shape
    smoke: Shape | None = None  # None: not part of --smoke
    stem: str = "standard"  # resnet: "standard" (7x7/2 + max-pool) or "small" (3x3/1, no pool)


CASES: dict[str, Case] = {c.name: c for c in (
    Case("resnet18_2d_28", "classification", "resnet18", 2, 3, 10, Shape(64, 28), Shape(16, 28), Shape(4, 16),
         stem="small"),
    Case("resnet18_2d_224", "classification", "resnet18", 2, 3, 10, Shape(32, 224), Shape(4, 128)),
    Case("resnet18_3d_28", "classification", "resnet18", 3, 1, 10, Shape(16, 28), Shape(2, 16), stem="small"),
    Case("basic_unet_2d_256", "segmentation", "basic_unet", 2, 1, 3, Shape(8, 256, (32, 32, 64, 128, 256, 32)),
         Shape(2, 128, (32, 32, 64, 128, 256, 32)), Shape(2, 32, SMALL_UNET)),
    Case("basic_unet_3d_96", "segmentation", "basic_unet", 3, 1, 3, Shape(2, 96, (32, 32, 64, 128, 256, 32)),
         Shape(1, 32, (32, 32, 64, 128, 256, 32))),
    Case("sliding_window_256", "sliding_window", "", 3, 1, 2, Shape(1, 256, roi=64), Shape(1, 96, roi=32),
         Shape(1, 24, roi=16)),
    # GAN rows (experiments/benchmarks/gan_bench.py): features = (width, latent size) for dcgan, U-Net levels for
    # pix2pix (its PatchGAN starts at the first level's width).
    Case("dcgan_64", "gan", "dcgan", 2, 1, 0, Shape(64, 64, (64, 128)), Shape(16, 32, (32, 64)),
         Shape(4, 16, (8, 16))),
    Case("pix2pix_256", "gan", "pix2pix", 2, 1, 0, Shape(8, 256, (64, 128, 256, 512)),
         Shape(2, 64, (16, 32, 64, 128))),  # no --smoke shape: one case per kind (tests/gan checks its parity)
    # ConvLSTM row (experiments/benchmarks/convlstm_bench.py): features = (hidden channels, layers), T frames.
    Case("convlstm_64", "convlstm", "convlstm", 2, 1, 3, Shape(8, 64, (32, 2), frames=16),
         Shape(2, 32, (16, 2), frames=8), Shape(1, 8, (4, 1), frames=3)),
)}

MODES = {  # mode -> (warmup, repeats)
    "full": (3, 10),
    "quick": (1, 3),
    "smoke": (0, 1),
}
# torch.compile backend per mode: --smoke only checks the plumbing (Dynamo capture, no Inductor code generation,
# which takes about a minute per graph on a 2-core CPU); its torch_compile numbers are not Inductor's.
COMPILE_BACKEND = {"full": "inductor", "quick": "inductor", "smoke": "eager"}
# --quick: once torch.compile has spent this many seconds in first steps, later cases skip it (reason recorded).
# The sliding-window case's 3-layer net compiles in seconds and is not counted.
COMPILE_BUDGET_S = {"full": None, "quick": 330.0, "smoke": None}


def cold_torch_compile() -> dict:
    """Turn off Inductor's on-disk caches in this process, so `compile_s` is a cold compile on every run."""
    done = {}
    for module, attr in (("torch._inductor.config", "fx_graph_cache"),
                         ("torch._functorch.config", "enable_autograd_cache")):
        try:
            mod = __import__(module, fromlist=["x"])
            if hasattr(mod, attr):
                setattr(mod, attr, False)
                done[f"{module}.{attr}"] = False
        except Exception:  # noqa: BLE001  (private config; absent in some torch versions)
            pass
    return done


class BenchError(Exception):
    """A user error (unknown case, missing dev extras): the CLI prints it and exits 2."""


# ----------------------------------------------------------------------------------------------------------- utils

def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median_time(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn) for _ in range(repeats))


def _jax_peak_bytes() -> tuple[int | None, str | None]:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception as e:  # noqa: BLE001  (backend-specific)
        return None, f"memory_stats() failed: {e}"
    if not stats or "peak_bytes_in_use" not in stats:
        return None, f"jax.devices()[0].memory_stats() reports nothing on {jax.default_backend()}"
    return int(stats["peak_bytes_in_use"]), None


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# ------------------------------------------------------------------------------------------------ models and data

def _torch_model(case: Case, shape: Shape):
    from monai.networks import nets

    if case.arch == "resnet18":
        kw = dict(conv1_t_size=3, conv1_t_stride=1, no_max_pool=True) if case.stem == "small" else \
            dict(conv1_t_stride=2)
        return nets.resnet18(spatial_dims=case.spatial_dims, n_input_channels=case.in_channels,
                             num_classes=case.num_classes, **kw)
    return nets.BasicUNet(spatial_dims=case.spatial_dims, in_channels=case.in_channels,
                          out_channels=case.num_classes, features=shape.features)


def _medjax_model(case: Case, shape: Shape):
    from medjax.models import build_model

    if case.arch == "resnet18":
        kw = dict(stem_kernel=3, stem_stride=1, stem_pool=False) if case.stem == "small" else {}
        return build_model("resnet18", num_classes=case.num_classes, **kw)
    return build_model("basic_unet", num_classes=case.num_classes, features=tuple(shape.features))


def _data(case: Case, shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images NC..., int labels) in torch layout, float32 / int64."""
    rng = np.random.default_rng(seed)
    spatial = (shape.size,) * case.spatial_dims
    x = rng.standard_normal((shape.batch, case.in_channels, *spatial)).astype(np.float32)
    label_shape = (shape.batch,) if case.kind == "classification" else (shape.batch, *spatial)
    y = rng.integers(0, case.num_classes, label_shape).astype(np.int64)
    return x, y


# ---------------------------------------------------------------------------------------------------- frameworks

def _run_medjax(case: Case, shape: Shape, state_dict: dict, x: np.ndarray, y: np.ndarray, warmup: int,
                repeats: int, precision: str = "float32") -> dict:
    import jax
    import jax.numpy as jnp

    from medjax.transfer import get_layout, import_weights

    model = _medjax_model(case, shape)
    if precision == "bfloat16":  # medjax's mixed-precision policy (config.compute.precision): float32 params
        model = model.clone(dtype=jnp.bfloat16)
    xj = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *xj.shape[1:])), train=False))
    target = {k: v for k, v in target.items() if k in ("params", "batch_stats")}
    variables, report = import_weights(state_dict, get_layout(case.arch, "monai"), target, strict=True,
                                       source=f"torch {case.name}")
    out = time_medjax_train(model, variables, xj, y, warmup, repeats)
    out["import_report"] = {"loaded": len(report.loaded), "folded": len(report.folded), "dropped": len(report.dropped)}
    return out


def time_medjax_train(model, variables: dict, xj: np.ndarray, y: np.ndarray, warmup: int, repeats: int) -> dict:
    """The trainer's jitted step (state donated) with Adam and softmax cross-entropy on `model(xj)` against the
    integer labels `y`, then the jitted eval-mode forward: first loss, compile and step times, memory."""
    import jax
    import jax.numpy as jnp
    import optax

    from medjax import losses
    from medjax import rng as mrng
    from medjax.tasks.base import apply_model
    from medjax.train.state import TrainState
    from medjax.train.steps import make_train_step

    variables = jax.tree.map(jnp.asarray, variables)

    class _Task:  # the loss of medjax's classification/segmentation tasks, without their config plumbing
        def loss(self, params, batch_stats, batch, key):
            logits, new_stats = apply_model(model, params, batch_stats, batch["image"], train=True)
            loss = losses.softmax_cross_entropy(logits, batch["label"])
            return loss, (new_stats, {"loss": loss})

    tx = optax.adam(LR)
    params = variables["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                       opt_state=tx.init(params), rng=mrng.to_data(mrng.key(0)))
    train_step = jax.jit(make_train_step(_Task(), tx), donate_argnums=0)
    batch = {"image": jnp.asarray(xj), "label": jnp.asarray(y.astype(np.int32))}

    rss0 = _maxrss_mb()
    holder = {"state": state}

    def step():
        holder["state"], metrics = train_step(holder["state"], batch)
        return jax.block_until_ready(metrics["loss"])

    t0 = time.perf_counter()
    first_loss = float(step())
    compile_s = time.perf_counter() - t0
    train_s = _median_time(step, warmup, repeats)

    infer = jax.jit(lambda params, stats, img: apply_model(model, params, stats, img, train=False)[0])

    def forward():
        s = holder["state"]
        return jax.block_until_ready(infer(s.params, s.batch_stats, batch["image"]))

    infer_first_s = _timed(forward)
    infer_s = _median_time(forward, warmup, repeats)
    peak, why = _jax_peak_bytes()
    return {"first_loss": first_loss, "compile_s": compile_s, "train_step_s": train_s,
            "infer_first_s": infer_first_s, "infer_step_s": infer_s, "rss_increase_mb": _maxrss_mb() - rss0,
            "device_peak_bytes": peak, "device_peak_note": why}


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_torch(net, compile_backend: str | None, x: np.ndarray, y: np.ndarray, warmup: int, repeats: int,
               precision: str = "float32") -> dict:
    import contextlib

    import torch

    device = torch_device()
    net.to(device)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    net.train()
    model = torch.compile(net, backend=compile_backend, dynamic=False) if compile_backend else net
    opt = torch.optim.Adam(net.parameters(), lr=LR)

    def autocast():  # torch's mixed precision: float32 weights, bfloat16 compute where autocast allows it
        if precision == "bfloat16":
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(t):
        if device == "cuda":
            torch.cuda.synchronize()
        return t

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(xt).float(), yt)
        loss.backward()
        opt.step()
        return sync(loss.detach())

    rss0 = _maxrss_mb()
    t0 = time.perf_counter()
    first_loss = float(step())
    compile_s = time.perf_counter() - t0
    train_s = _median_time(step, warmup, repeats)

    net.eval()

    def forward():
        with torch.no_grad(), autocast():
            return sync(model(xt))

    infer_first_s = _timed(forward)  # eval mode: torch.compile recompiles for the changed BatchNorm path
    infer_s = _median_time(forward, warmup, repeats)
    return {"first_loss": first_loss, "compile_s": compile_s, "train_step_s": train_s,
            "infer_first_s": infer_first_s, "infer_step_s": infer_s, "rss_increase_mb": _maxrss_mb() - rss0,
            "device_peak_bytes": None, "device_peak_note": "torch on CPU: no allocator peak; see rss_increase_mb"}


class CompileBudget:
    """Seconds torch.compile may still spend (None: unlimited) and the backend to use."""

    def __init__(self, backend: str = "inductor", seconds: float | None = None):
        self.backend, self.left, self.total = backend, seconds, seconds

    def skip_reason(self) -> str | None:
        if self.left is not None and self.left <= 0:
            return (f"the --quick torch.compile budget ({self.total:.0f} s of first-step compile time) "
                    f"was spent on earlier cases")
        return None

    def spend(self, seconds: float) -> None:
        if self.left is not None:
            self.left -= seconds


def _compile_fields(rec: dict, budget: CompileBudget) -> None:
    rec["compile_backend"] = budget.backend
    if budget.backend != "inductor":
        rec["compile_note"] = f"torch.compile backend={budget.backend!r}: plumbing check, not Inductor's speed"


def run_frameworks(name: str, batch_size: int, common: dict, frameworks, run: Callable[[str, str | None], dict],
                   budget: CompileBudget, log=print) -> dict[str, dict]:
    """The per-framework loop every trained case shares: one record per framework, `run(framework,
    compile_backend)` measuring it; torch.compile is skipped with its reason once the budget is spent, and a
    failed compile becomes a skipped record (other failures raise). Adds wall time and throughputs."""
    results: dict[str, dict] = {}
    for fw in frameworks:
        rec = dict(common, framework=fw, status="ok", reason=None)
        t0 = time.perf_counter()
        if fw == "torch_compile":
            _compile_fields(rec, budget)
            if budget.skip_reason():
                rec.update(status="skipped", reason=budget.skip_reason())
        try:
            if rec["status"] == "ok":
                rec.update(run(fw, budget.backend if fw == "torch_compile" else None))
        except Exception as e:  # noqa: BLE001
            if fw != "torch_compile":
                raise
            rec.update(status="skipped", reason=f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}")
        rec["wall_s"] = time.perf_counter() - t0
        if fw == "torch_compile" and rec["status"] == "ok":
            budget.spend(rec["compile_s"] + rec["infer_first_s"])
        elif fw == "torch_compile" and rec["reason"].startswith("torch.compile failed"):
            budget.spend(rec["wall_s"])  # a failed compile costs its time too
        if rec["status"] == "ok":
            rec["train_examples_per_s"] = batch_size / rec["train_step_s"]
            rec["infer_examples_per_s"] = batch_size / rec["infer_step_s"]
        results[fw] = rec
        log(f"  {name} {fw}: {_describe(rec)}")
    return results


def run_model_case(case: Case, shape: Shape, warmup: int, repeats: int, frameworks=FRAMEWORKS,
                   log=print, budget: CompileBudget | None = None, precision: str = "float32") -> list[dict]:
    budget = budget or CompileBudget()
    import torch

    torch.manual_seed(0)
    net = _torch_model(case, shape)
    nets = {"torch_eager": net, "torch_compile": copy.deepcopy(net)}  # compile starts from the same weights
    state_dict = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
    x, y = _data(case, shape)
    spatial = [shape.size] * case.spatial_dims
    common = {"case": case.name, "kind": case.kind, "arch": case.arch, "batch": shape.batch,
              "input_shape_nc": [shape.batch, case.in_channels, *spatial],
              "input_shape_medjax": [shape.batch, *spatial, case.in_channels], "num_classes": case.num_classes,
              "features": list(shape.features) if shape.features else None, "stem": case.stem,
              "warmup": warmup, "repeats": repeats, "optimizer": f"adam lr {LR}", "loss": "softmax cross-entropy",
              "precision": precision}

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            return _run_medjax(case, shape, state_dict, x, y, warmup, repeats, precision)
        return _run_torch(nets[fw], backend, x, y, warmup, repeats)

    results = run_frameworks(case.name, shape.batch, common, frameworks, run, budget, log)
    _check_losses(results, LOSS_RTOL_BF16 if precision == "bfloat16" else LOSS_RTOL)
    return [results[fw] for fw in frameworks]


def _check_losses(results: dict[str, dict], rtol: float = LOSS_RTOL) -> None:
    ref = results.get("medjax")
    if ref is None:
        return
    for fw, rec in results.items():
        if fw == "medjax" or rec["status"] != "ok":
            continue
        rel = _rel(rec["first_loss"], ref["first_loss"])
        rec["loss_check"] = {"against": "medjax", "medjax_first_loss": ref["first_loss"], "rel_diff": rel,
                             "rtol": rtol, "passed": rel <= rtol}
    ref["loss_check"] = {"against": "torch", "rtol": rtol,
                         "passed": all(r.get("loss_check", {}).get("passed", True) for r in results.values()
                                       if r is not ref)}
    bad = [f"{fw}: {r['first_loss']!r} vs medjax {ref['first_loss']!r}" for fw, r in results.items()
           if r is not ref and r.get("loss_check") and not r["loss_check"]["passed"]]
    if bad:
        raise RuntimeError(f"{ref['case']}: first-step losses disagree beyond {rtol} relative: {bad}")


def run_sliding_window_case(case: Case, shape: Shape, warmup: int, repeats: int, frameworks=FRAMEWORKS,
                            log=print, budget: CompileBudget | None = None) -> list[dict]:
    budget = budget or CompileBudget()
    from functools import partial

    import jax
    import jax.numpy as jnp
    import torch
    from monai.inferers import sliding_window_inference as monai_swi

    from experiments.benchmarks import sliding_window as sw
    from medjax.inference import sliding_window_inference

    layers = sw.make_weights(0)
    volume = np.random.default_rng(1).standard_normal((shape.batch, shape.size, shape.size, shape.size, 1)
                                                      ).astype(np.float32)
    roi = (shape.roi,) * 3
    params, xj = sw.jax_params(layers), jnp.asarray(volume)
    device = torch_device()
    xt = torch.from_numpy(np.ascontiguousarray(volume.transpose(0, 4, 1, 2, 3))).to(device)
    net = sw.torch_net(layers).to(device)
    common = {"case": case.name, "kind": case.kind, "arch": "conv3d(1-8-8-2)", "batch": shape.batch,
              "input_shape_nc": [shape.batch, 1, *(shape.size,) * 3],
              "input_shape_medjax": [shape.batch, *(shape.size,) * 3, 1], "roi": list(roi), "overlap": sw.OVERLAP,
              "mode": sw.MODE, "sw_batch_size": sw.SW_BATCH, "warmup": warmup, "repeats": repeats}

    def medjax_fns():
        fn = jax.jit(lambda p, v: sliding_window_inference(partial(sw.jax_net, p), v, roi, overlap=sw.OVERLAP,
                                                           mode=sw.MODE, sw_batch_size=sw.SW_BATCH))
        return lambda: np.asarray(jax.block_until_ready(fn(params, xj)))

    def torch_fns(compiled: bool):
        predictor = torch.compile(net, backend=budget.backend, dynamic=False) if compiled else net

        def go():
            with torch.no_grad():
                return monai_swi(xt, roi, sw.SW_BATCH, predictor, overlap=sw.OVERLAP, mode=sw.MODE
                                 ).cpu().numpy().transpose(0, 2, 3, 4, 1)
        return go

    outputs, records = {}, []
    for fw in frameworks:
        rec = dict(common, framework=fw, status="ok", reason=None)
        t0 = time.perf_counter()
        rss0 = _maxrss_mb()
        if fw == "torch_compile":
            _compile_fields(rec, budget)
        try:
            fn = medjax_fns() if fw == "medjax" else torch_fns(fw == "torch_compile")
            t1 = time.perf_counter()
            outputs[fw] = fn()
            rec["infer_first_s"] = rec["compile_s"] = time.perf_counter() - t1
            rec["infer_step_s"] = _median_time(fn, warmup, repeats)
            rec["infer_examples_per_s"] = shape.batch / rec["infer_step_s"]
            rec["train_examples_per_s"] = None
            rec["rss_increase_mb"] = _maxrss_mb() - rss0
            if fw == "medjax":
                rec["device_peak_bytes"], rec["device_peak_note"] = _jax_peak_bytes()
        except Exception as e:  # noqa: BLE001
            if fw != "torch_compile":
                raise
            rec.update(status="skipped", reason=f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}")
        rec["wall_s"] = time.perf_counter() - t0
        records.append(rec)
        log(f"  {case.name} {fw}: {_describe(rec)}")
    if "medjax" in outputs:
        for rec in records:
            if rec["framework"] != "medjax" and rec["framework"] in outputs:
                d = float(np.abs(outputs[rec["framework"]] - outputs["medjax"]).max())
                rec["output_check"] = {"against": "medjax", "max_abs_diff": d, "atol": SW_ATOL,
                                       "passed": d <= SW_ATOL}
                if d > SW_ATOL:
                    raise RuntimeError(f"{case.name}: {rec['framework']} and medjax disagree: max |diff| {d:.3g}")
    return records


# -------------------------------------------------------------------------------------------------------- report

def _describe(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"skipped ({rec['reason']})"
    parts = []
    if rec.get("train_examples_per_s"):
        parts.append(f"train {rec['train_examples_per_s']:.2f} ex/s")
    parts.append(f"infer {rec['infer_examples_per_s']:.2f} ex/s")
    parts.append(f"first step {rec['compile_s']:.2f} s")
    if "first_loss" in rec:
        parts.append(f"loss {rec['first_loss']:.6f}")
    return ", ".join(parts)


def add_ratios(records: list[dict]) -> None:
    """medjax/torch throughput ratios (> 1: medjax faster), on each case's medjax record."""
    by_case: dict[str, dict[str, dict]] = {}
    for r in records:
        by_case.setdefault(r["case"], {})[r["framework"]] = r
    for fws in by_case.values():
        mj = fws.get("medjax")
        if mj is None:
            continue
        ratios = {}
        for other in ("torch_eager", "torch_compile"):
            o = fws.get(other)
            for what in ("train", "infer"):
                key = f"{what}_examples_per_s"
                ok = o is not None and o["status"] == "ok" and mj.get(key) and o.get(key)
                ratios[f"{what}_medjax_over_{other}"] = mj[key] / o[key] if ok else None
        mj["ratios"] = ratios


def machine() -> dict:
    import jax
    import torch

    import monai

    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()], "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "torch_cuda": torch.cuda.is_available(),
            "jax_device_kind": jax.devices()[0].device_kind,
            "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),  # medjax's XLA:CPU defaults (medjax/xla_flags.py) included
            "monai": monai.__version__,
            # persistent compilation caches make "compile s" a cache load on a second run
            "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir,
            "torchinductor_fx_graph_cache": _inductor_cache()}


def _inductor_cache():
    try:
        from torch._inductor import config

        return bool(config.fx_graph_cache)
    except Exception:  # noqa: BLE001
        return None


def _fmt(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def write_markdown(path: pathlib.Path, result: dict) -> None:
    m = result["machine"]
    lines = [f"# medjax vs PyTorch ({result['mode']} mode)", "",
             f"{m['platform']}, {m['cpu_count']} CPUs, JAX {m['jax']} ({m['jax_backend']}: "
             f"{', '.join(m['jax_devices'])}), torch {m['torch']} ({m['torch_threads']} threads), "
             f"MONAI {m['monai']}. Total wall time {result['total_wall_s']:.1f} s.", "",
             "Throughputs in examples/s (median step after warm-up); compile s = wall time of the first step "
             "(includes jit / torch.compile compilation). Ratios medjax/torch: > 1 means medjax is faster "
             "(train / infer).", "",
             "| case | shape (N, C, spatial) | framework | train ex/s | infer ex/s | compile s | first loss | "
             "medjax/torch_eager | medjax/torch_compile |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["records"]:
        shape = "x".join(str(s) for s in r["input_shape_nc"])
        if r.get("roi"):
            shape += f" roi {'x'.join(map(str, r['roi']))}"
        if r.get("features"):
            shape += f" f={tuple(r['features'])}"
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {shape} | {r['framework']} | skipped | | | | | |")
            continue
        ratio_cells = ["", ""]
        if r["framework"] == "medjax" and "ratios" in r:
            q = r["ratios"]
            ratio_cells = [f"{_fmt(q['train_medjax_over_' + o])} / {_fmt(q['infer_medjax_over_' + o])}"
                           for o in ("torch_eager", "torch_compile")]
        loss = _fmt(r.get("first_loss"), ".6f")
        lines.append(f"| {r['case']} | {shape} | {r['framework']} | {_fmt(r.get('train_examples_per_s'))} | "
                     f"{_fmt(r.get('infer_examples_per_s'))} | {_fmt(r.get('compile_s'))} | {loss} | "
                     f"{ratio_cells[0]} | {ratio_cells[1]} |")
    skipped = [r for r in result["records"] if r["status"] != "ok"]
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {r['case']} {r['framework']}: {' '.join(r['reason'].split())[:240]}"
                                          for r in skipped]
    lines += ["", "First-step loss check (relative, vs medjax; sliding window: max abs output difference):", ""]
    for r in result["records"]:
        chk = r.get("loss_check") or r.get("output_check")
        if chk and r["framework"] != "medjax":
            val = chk.get("rel_diff", chk.get("max_abs_diff"))
            lines.append(f"- {r['case']} {r['framework']}: {val:.2e} ({'passed' if chk['passed'] else 'FAILED'})")
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: pathlib.Path, records: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meds = [r for r in records if r["framework"] == "medjax" and "ratios" in r]
    names = [r["case"] for r in meds]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names) + 2), 4))
    width = 0.38
    for i, (other, color) in enumerate((("torch_eager", "tab:blue"), ("torch_compile", "tab:orange"))):
        # train ratio where there is one; inference ratio for inference-only cases (hatched)
        vals, hatches = [], []
        for r in meds:
            t = r["ratios"][f"train_medjax_over_{other}"]
            vals.append(t if t is not None else r["ratios"][f"infer_medjax_over_{other}"])
            hatches.append("" if t is not None else "//")
        xs = np.arange(len(names)) + (i - 0.5) * width
        bars = ax.bar(xs, [v or 0.0 for v in vals], width, label=f"medjax / {other}", color=color)
        for b, h, v, x in zip(bars, hatches, vals, xs):
            b.set_hatch(h)
            if v is None:  # that framework was skipped for this case
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("throughput ratio (> 1: medjax faster)")
    ax.set_title("Training throughput, medjax / torch (hatched: inference-only case)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- main

def select_cases(mode: str, names: list[str] | None) -> list[Case]:
    if names:
        unknown = [n for n in names if n not in CASES]
        if unknown:
            raise BenchError(f"unknown benchmark case(s) {unknown}; known: {', '.join(CASES)}")
        cases = [CASES[n] for n in names]
    else:
        cases = [c for c in CASES.values() if mode != "smoke" or c.smoke is not None]
    if mode == "smoke":
        missing = [c.name for c in cases if c.smoke is None]
        if missing:
            raise BenchError(f"case(s) {missing} have no --smoke shape; smoke cases: "
                             f"{[c.name for c in CASES.values() if c.smoke is not None]}")
    return cases


def check_extras() -> None:
    missing = []
    for mod in ("torch", "monai", "matplotlib"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise BenchError(f"medjax bench needs the dev extras {missing} (pip install -e '.[dev]')")


def run(out: str | os.PathLike, mode: str = "full", case_names: list[str] | None = None,
        warmup: int | None = None, repeats: int | None = None, log=print, precision: str = "float32") -> dict:
    if mode not in MODES:
        raise BenchError(f"unknown mode {mode!r}")
    if precision not in PRECISIONS:
        raise BenchError(f"unknown --precision {precision!r}; known: {', '.join(PRECISIONS)}")
    cases = select_cases(mode, case_names)
    if warmup is not None and warmup < 0 or repeats is not None and repeats < 1:
        raise BenchError("--warmup must be >= 0 and --repeats >= 1")
    check_extras()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    warmup = MODES[mode][0] if warmup is None else warmup
    repeats = MODES[mode][1] if repeats is None else repeats
    warnings.filterwarnings("ignore", message=".*donated buffers.*")
    t0 = time.perf_counter()
    records: list[dict] = []
    budget = CompileBudget(COMPILE_BACKEND[mode], COMPILE_BUDGET_S[mode])
    torch_caches = cold_torch_compile()
    for case in cases:
        shape = getattr(case, mode)
        log(f"{case.name}: {mode} shape {shape}")
        if case.kind == "sliding_window":  # float32 inference in both frameworks whatever --precision says
            records += run_sliding_window_case(case, shape, warmup, repeats, log=log, budget=budget)
        elif case.kind == "convlstm":
            from experiments.benchmarks.convlstm_bench import run_convlstm_case

            records += run_convlstm_case(case, shape, warmup, repeats, FRAMEWORKS, log=log, budget=budget,
                                         precision=precision)
        elif case.kind == "gan":
            from experiments.benchmarks.gan_bench import run_gan_case

            records += run_gan_case(case, shape, warmup, repeats, FRAMEWORKS, log=log, budget=budget,
                                    precision=precision)
        else:
            records += run_model_case(case, shape, warmup, repeats, log=log, budget=budget, precision=precision)
    add_ratios(records)
    result = {"mode": mode, "precision": precision, "machine": machine(), "warmup": warmup, "repeats": repeats,
              "torch_compile_backend": budget.backend, "torch_compile_budget_s": budget.total,
              "torch_compile_caches_disabled": torch_caches,
              "cases": [c.name for c in cases], "frameworks": list(FRAMEWORKS), "records": records,
              "total_wall_s": time.perf_counter() - t0}
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    write_markdown(out / "bench.md", result)
    write_plot(out / "bench.png", records)
    log(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'} in {result['total_wall_s']:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        run_from_args(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    return 0


def add_arguments(p) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smaller batches/sizes/repeats: minutes on a CPU")
    group.add_argument("--smoke", action="store_true", help="tiny shapes, one case per kind: seconds (tests)")
    p.add_argument("--cases", nargs="+", default=None, metavar="NAME", help=f"subset of: {', '.join(CASES)}")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before timing (default per mode)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default per mode)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="bfloat16: medjax's mixed-precision policy against torch.autocast(bfloat16) (training cases)")
    p.add_argument("--out", required=True, help="directory for bench.json, bench.md, bench.png")


def run_from_args(args) -> dict:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    return run(args.out, mode, args.cases, args.warmup, args.repeats, precision=getattr(args, "precision", "float32"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
