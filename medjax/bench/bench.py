"""Side-by-side benchmark: medjax against PyTorch (eager and torch.compile) on the protocols medjax ships.

    medjax bench [--quick | --smoke] [--cases NAME ...] [--precision float32|bfloat16] [--warmup N] [--repeats N]
                 --out DIR
    medjax bench --protocol NAME --out DIR [--quick]     # a whole experiment in both frameworks (protocol.py)

Every row is an experiment config's training step at the shape that config trains on (`CASES`: the config file,
the data it is run on, the batch size, the model, the optimizer and the loss all come from the config). The medjax
side is what `medjax train` runs: the config's task (`medjax.tasks.make_task`, so its loss and deep supervision),
its optimizer (`medjax.train.optim.make_optimizer`) and `medjax.train.steps.make_train_step`, jitted with the state
donated; "infer" is the jitted eval-mode forward. The torch side is the same model with the same weights:

* MONAI's own network where medjax has an equivalent (ResNet-18 2D/3D with the small stem, BasicUNet); its state
  dict is imported into medjax through the MONAI layout (`medjax.transfer.import_weights`, strict);
* otherwise a functional twin of the medjax network (`medjax/bench/twins.py`: U-Net, ConvLSTM U-Net,
  ConvLSTM regressor) over the medjax initial weights;
* the config's loss (cross-entropy, MONAI's DiceCELoss with medjax's deep-supervision weights, MSE on the
  standardised target) and optimizer (`torch.optim.Adam` / `AdamW` with the same learning rate, betas and weight
  decay; gradient-norm clipping where the config clips). Learning-rate schedules are left out on both sides: they
  do not change a step's cost.

`torch_eager` runs that model eagerly, `torch_compile` through `torch.compile` (the optimizer step stays eager;
eval mode recompiles). Inductor's on-disk caches are turned off in the process, so its first step is a cold
compile; in `--quick` torch.compile is skipped (reason recorded) once `COMPILE_BUDGET_S` seconds of its first
steps are spent. Before anything is timed, the first training step's loss of each torch variant must agree with
medjax's within 1e-4 relative (3e-2 in bfloat16): the record keeps the check, a disagreement fails the run.

Not timed on either side: data loading and on-device augmentation (`msd_unet3d` and `image_folder_unet` augment
in training; `python -m medjax.bench.input_pipeline` measures that part), evaluation and checkpoints
(`--protocol` measures whole runs).

The RetinaNet rows (`icbm152_retinanet_3d`: a training step; `icbm152_retinanet_sliding_window`: sliding-window
detection of a volume) compare with MONAI's `RetinaNet` / `RetinaNetDetector` on imported weights
(`medjax/bench/detection_bench.py` describes them).

The explain rows (`explain_*`) time one attribution method over the protocol batch against Captum / MONAI on the
same weights (`medjax/bench/explain_bench.py`; maps checked within 1e-4 of their scale).

`msd_sliding_window` is inference only: the evaluation `medjax evaluate` runs for a patch-trained 3D U-Net
(`medjax.inference.sliding_window_volume` with the config's roi, overlap, Gaussian blending and window batch,
class probabilities per window on the device) against `monai.inferers.sliding_window_inference` with the torch
twin (outputs checked within 1e-4). The GAN rows time one whole GAN training step (D, then G;
`medjax/bench/gan_bench.py`). The DP-SGD row (`dp_sgd_icbm152`) times one private step against Opacus on the same
GroupNorm ResNet, and each against its own non-private step (`medjax/bench/dp_bench.py`).

Modes: the default (`full`) times 10 steps after 3 warm-up steps; `--quick` 3 after 1, at the SAME shapes (a
quick run cuts steps, never shapes); `--smoke` shrinks batch, size and width to seconds (the tests only check
the plumbing: its numbers mean nothing). Measured per framework: training and inference throughput (examples/s
from the median timed step), the first step's wall time (`compile_s`: jit or torch.compile included), and memory
(the process max-RSS increase; JAX's device `peak_bytes_in_use` where the backend reports it).

Outputs in DIR: `bench.json` (machine, XLA flags, settings, one record per case and framework), `bench.md` (table
with medjax/torch ratios; > 1 means medjax is faster) and `bench.png` (training-throughput ratios).
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


@dataclasses.dataclass(frozen=True)
class Case:
    """One protocol row: an experiment config, the data it runs on, and the torch model to compare with."""

    name: str
    # "classification" | "segmentation" | "regression" | "sliding_window" | "gan" | "detection" | "explain" |
    # "dp_sgd"
    kind: str
    config: str  # a shipped config, medjax.configs NAME[:variant]
    data: str  # the data the protocol trains on (only its shape is used: random values of that shape)
    in_channels: int
    num_classes: int
    spatial: tuple[int, ...]  # one example's spatial shape (an image, a training patch, a frame)
    torch_model: str  # "monai_resnet" | "monai_basic_unet" | "twin" | "gan" | "monai_retinanet" | "opacus"
    overrides: tuple[str, ...] = ()  # key=value config overrides that name the data set
    frames: int = 0  # > 0: sequences (N, T, *spatial, C)
    volume: tuple[int, ...] = ()  # sliding window: the evaluated volume's shape
    smoke: tuple[str, ...] | None = None  # extra overrides for --smoke (tests only); None: not a smoke case
    smoke_spatial: tuple[int, ...] = ()
    explain: str = ""  # kind "explain": the medjax explain method (medjax.explain.methods.METHODS)

    def overrides_for(self, mode: str, precision: str) -> list[str]:
        extra = list(self.overrides) + [f"compute.precision={precision}"]
        if mode == "smoke":
            extra += list(self.smoke or ())
        return [f"--config.{o}" for o in extra]

    def shape(self, mode: str) -> tuple[int, ...]:
        return self.smoke_spatial if mode == "smoke" and self.smoke_spatial else self.spatial


_TINY_RESNET = ("batch_size=2",)
_TINY_UNET = ("batch_size=2", "model.features=(4,8)")
# RetinaNet smoke rows run in 2D (the same rank-agnostic code): a 3D detector's first compile alone is minutes
# on a busy 2-core CPU.
_TINY_RETINANET = ("batch_size=2", "eval_batch_size=2", "model.width=8", "model.fpn_channels=8",
                   "inference.roi_size=(16,16)", "task.topk_per_level=50", "task.max_detections=8")
_EXPLAIN_ROW = ("data.name=organmnist3d", "task.num_classes=11", "batch_size=4", "explain.batch_size=32")
_TINY_RESNET3D = ("batch_size=2",  # MONAI's ResNet class takes 4 stages: one block each, width 4
                  "model={'name': 'resnet', 'stage_sizes': (1, 1, 1, 1), 'block': 'basic', 'stem': 'small', "
                  "'width': 4}")

CASES: dict[str, Case] = {c.name: c for c in (
    Case("medmnist_r18_2d_1ch", "classification", "medmnist_resnet18", "BreastMNIST: 28x28, 1 channel, 2 classes",
         1, 2, (28, 28), "monai_resnet", ("data.name=breastmnist", "task.num_classes=2"),
         smoke=_TINY_RESNET, smoke_spatial=(16, 16)),
    Case("medmnist_r18_2d_3ch", "classification", "medmnist_resnet18", "BloodMNIST: 28x28, 3 channels, 8 classes",
         3, 8, (28, 28), "monai_resnet", ("data.name=bloodmnist", "task.num_classes=8")),
    Case("medmnist_r18_3d", "classification", "medmnist_resnet18:3d",
         "OrganMNIST3D: 28x28x28, 1 channel, 11 classes", 1, 11, (28, 28, 28), "monai_resnet",
         ("data.name=organmnist3d", "task.num_classes=11")),
    Case("quickstart_unet", "segmentation", "quickstart", "ICBM152 axial slices at 2 mm: 96x80, 4 classes",
         1, 4, (96, 80), "twin", ("task.num_classes=4",), smoke=_TINY_UNET, smoke_spatial=(16, 16)),
    Case("fundus_basic_unet", "segmentation", "image_folder_unet:basic_unet",
         "DRIVE-like fundus: 128x128 RGB training patches, 2 classes", 3, 2, (128, 128), "monai_basic_unet",
         ("task.num_classes=2",), smoke=("batch_size=2", "model.features=(4,4,8,8,16,4)"), smoke_spatial=(32, 32)),
    Case("msd_unet3d", "segmentation", "msd_unet3d", "Decathlon Hippocampus: 64^3 training patches, 3 classes",
         1, 3, (64, 64, 64), "twin", ("task.num_classes=3",)),
    Case("msd_sliding_window", "sliding_window", "msd_unet3d",
         "a 128x128x96 volume, 64^3 Gaussian-blended windows, overlap 0.5, 4 windows per device call", 1, 3,
         (64, 64, 64), "twin", ("task.num_classes=3",), volume=(128, 128, 96),
         smoke=("model.features=(4,8)", "inference.roi_size=(16,16,16)"), smoke_spatial=(16, 16, 16)),
    Case("cine_convlstm_unet", "segmentation", "cine_synthetic:segmentation",
         "simulated cine: 12 frames of 48x48, 3 classes", 1, 3, (48, 48), "twin", frames=12,
         smoke=("batch_size=1", "model.features=(4,8)"), smoke_spatial=(16, 16)),
    Case("cine_convlstm_ef", "regression", "cine_synthetic:ef", "simulated cine: 12 frames of 48x48, EF target",
         1, 1, (48, 48), "twin", frames=12),
    Case("icbm152_retinanet_3d", "detection", "detection_icbm152:3d,retinanet",
         "ICBM152 lesions: 32^3 training patches, batch 8, 2 boxes each", 1, 1, (32, 32, 32), "monai_retinanet",
         overrides=("task.cls_loss_norm=elements",),  # MONAI's detector without a sampler, whose loss is compared
         smoke=_TINY_RETINANET, smoke_spatial=(16, 16)),
    Case("icbm152_retinanet_sliding_window", "sliding_window", "detection_icbm152:3d,retinanet",
         "a 64^3 volume, 32^3 windows, overlap 0.25, 4 windows per device call, NMS merge", 1, 1, (32, 32, 32),
         "monai_retinanet", volume=(64, 64, 64), smoke=_TINY_RETINANET, smoke_spatial=(16, 16)),
    # Explain rows: the model runs on batches of the protocol's 32 inputs (explain.batch_size: IG steps or occluded
    # copies in flight, on both sides); 4 examples are explained per timed call (the cost per example does not
    # depend on that count, and a call of 32 examples would take about half an hour on a 2-core CPU).
    Case("explain_ig_r18_3d", "explain", "medmnist_resnet18:3d",
         "OrganMNIST3D: 28x28x28, 1 channel, 11 classes; Integrated Gradients, 50 steps", 1, 11, (28, 28, 28),
         "monai_resnet", _EXPLAIN_ROW, explain="ig", smoke=_TINY_RESNET3D + ("explain.ig_steps=4",),
         smoke_spatial=(8, 8, 8)),
    Case("explain_occlusion_r18_3d", "explain", "medmnist_resnet18:3d",
         "OrganMNIST3D: 28x28x28, 1 channel, 11 classes; occlusion, MONAI's 16^3 windows every 6 voxels", 1, 11,
         (28, 28, 28), "monai_resnet", _EXPLAIN_ROW + ("explain.occlusion_window=16", "explain.occlusion_stride=6"),
         explain="occlusion", smoke=_TINY_RESNET3D + ("explain.occlusion_window=4", "explain.occlusion_stride=2"),
         smoke_spatial=(8, 8, 8)),
    Case("gan_pix2pix", "gan", "gan_icbm152:pix2pix",
         "ICBM152 1 mm axial slices 192x160 -> 4-class tissue maps", 1, 4, (192, 160), "gan",
         smoke=("batch_size=2", "generator.features=(4,8)", "discriminator.features=4"), smoke_spatial=(32, 32)),
    Case("gan_dcgan", "gan", "gan_augmentation:gan", "16x16 ICBM152 tissue patches, 3 classes", 1, 3, (16, 16),
         "gan", smoke=("batch_size=4", "generator.features=8", "discriminator.features=8")),
    Case("dp_sgd_icbm152", "dp_sgd", "dp_icbm152:eps4",
         "16x16 ICBM152 tissue patches, 3 classes; DP-SGD (clip 1, sigma 1) vs Opacus", 1, 3, (16, 16), "opacus",
         ("data.root=unused.npz", "privacy.noise_multiplier=1.0"), smoke=("batch_size=4", "model.width=8")),
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
COMPILE_BUDGET_S = {"full": None, "quick": 330.0, "smoke": None}


class BenchError(Exception):
    """A user error (unknown case, missing dev extras): the CLI prints it and exits 2."""


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


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync(t):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return t


# ------------------------------------------------------------------------------------------------ config and data

def case_config(case: Case, mode: str, precision: str):
    from medjax.config import build_config

    config = build_config(case.config, case.overrides_for(mode, precision))
    if config.get("task", {}).get("multi_label") == "auto":  # the trainer asks the data: these rows are single-label
        task = config.task.to_dict()
        task["multi_label"] = False
        with config.unlocked():
            config.task = task
    return config


def case_data(case: Case, config, mode: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch of the protocol's shape, medjax layout: image (N, [T,] *spatial, C), label / target, weight."""
    rng = np.random.default_rng(seed)
    n = config.batch_size
    lead = (n, case.frames) if case.frames else (n,)
    spatial = case.shape(mode)
    batch = {"image": rng.standard_normal(lead + spatial + (case.in_channels,)).astype(np.float32),
             "weight": np.ones(n, np.float32)}
    if case.kind in ("classification", "dp_sgd"):
        batch["label"] = rng.integers(0, case.num_classes, n).astype(np.int32)
    elif case.kind == "regression":
        batch["target"] = rng.uniform(0.3, 0.8, n).astype(np.float32)  # an ejection fraction
    else:
        batch["label"] = rng.integers(0, case.num_classes, lead + spatial).astype(np.int32)
    return batch


def to_torch_layout(batch: dict[str, np.ndarray], frames: bool) -> dict:
    """Channels moved next to the batch (or frame) axis; int64 labels, as torch's losses want."""
    import torch

    axis = 2 if frames else 1
    out = {"image": torch.from_numpy(np.ascontiguousarray(np.moveaxis(batch["image"], -1, axis)))}
    if "label" in batch:
        out["label"] = torch.from_numpy(batch["label"].astype(np.int64))
    if "target" in batch:
        out["target"] = torch.from_numpy(batch["target"])
    return out


# ----------------------------------------------------------------------------------------------------- the models

def _monai_model(case: Case, config):
    from monai.networks import nets

    m, nd = config.model, len(case.spatial)
    if case.torch_model == "monai_resnet":
        small = m.get("stem", "standard") == "small"
        kw = dict(conv1_t_size=3, conv1_t_stride=1, no_max_pool=True) if small else dict(conv1_t_stride=2)
        kw.update(spatial_dims=nd, n_input_channels=case.in_channels, num_classes=case.num_classes)
        if m.name == "resnet":  # any stage sizes and width (smoke rows): MONAI's ResNet class with those widths
            return nets.ResNet(m.block, list(m.stage_sizes),
                               [m.get("width", 64) * 2 ** i for i in range(len(m.stage_sizes))], **kw)
        return getattr(nets, m.name)(**kw)
    return nets.BasicUNet(spatial_dims=nd, in_channels=case.in_channels, out_channels=case.num_classes,
                          features=tuple(m.features))


def _twin_forward(case: Case, config, p: dict, s: dict) -> Callable:
    """`forward(x, train) -> outputs` of the torch twin of the config's medjax model."""
    from medjax.bench import twins

    m = config.model
    if m.name == "unet":
        depth = len(m.features)
        kind, ds = m.get("norm", "batch"), bool(m.get("deep_supervision", False))
        return lambda x, train: twins.unet(p, s, x, depth, kind, train, ds, m.get("activation", "relu"))
    if m.name == "convlstm_unet":
        return lambda x, train: twins.convlstm_unet(p, s, x, len(m.features), m.get("norm", "batch"), train)
    if m.name == "convlstm_regressor":
        return lambda x, train: twins.convlstm_regressor(p, s, x, len(m.features), m.get("norm", "batch"), train)
    raise BenchError(f"{case.name}: no torch twin for model {m.name!r}")


def _torch_loss(case: Case, config) -> Callable:
    """`loss(outputs, batch)` of the config's task, in torch."""
    import torch.nn.functional as F

    from medjax.bench import twins

    if case.kind == "classification":
        return lambda out, b: F.cross_entropy(out.float(), b["label"])
    if case.kind == "regression":
        t = config.task
        offset, scale = float(t.target_offset), float(t.target_scale)
        return lambda out, b: ((out.float()[:, 0] - (b["target"] - offset) * scale) ** 2).mean()
    loss_name = config.task.loss
    if loss_name == "ce":
        base = lambda logits, labels: F.cross_entropy(logits, labels)  # noqa: E731
    elif loss_name == "dice_ce" and config.task.include_background:
        base = twins.dice_ce_loss(case.num_classes)
    else:
        from monai.losses import DiceCELoss, DiceLoss

        kw = dict(softmax=True, to_onehot_y=True, include_background=config.task.include_background)
        fn = DiceCELoss(**kw) if loss_name == "dice_ce" else DiceLoss(**kw)
        base = lambda logits, labels: fn(logits, labels[:, None])  # noqa: E731

    def loss(out, b):
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        if case.frames:  # (N, T, K, ...) -> (N, K, T, ...): time is one more spatial axis of the Dice
            outputs = tuple(o.transpose(1, 2) for o in outputs)
        return twins.deep_supervision(base, outputs, b["label"])

    return loss


@dataclasses.dataclass
class Models:
    """The medjax task + variables and, for torch, `forward(x, train)`, its parameters and a fresh copy maker."""

    task: Any
    tx: Any
    variables: dict
    make_torch: Callable[[], tuple[Callable, list, Any]]  # () -> (forward, parameters, module or None)


def build_models(case: Case, config, batch: dict) -> Models:
    import jax
    import jax.numpy as jnp
    import torch

    from medjax.tasks import make_task
    from medjax.train.optim import make_optimizer

    task = make_task(config, [f"class{i}" for i in range(case.num_classes)])
    tx = make_optimizer(config.optimizer, max(1, int(config.get("num_train_steps", 0) or 1000)))
    example = jnp.asarray(batch["image"][:1])
    if case.torch_model.startswith("monai"):
        from medjax.transfer import get_layout, import_weights

        torch.manual_seed(config.seed)
        net = _monai_model(case, config)
        state_dict = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
        target = jax.eval_shape(lambda: task.init_variables(jax.random.key(0), example))
        target = {k: v for k, v in target.items() if k in ("params", "batch_stats")}
        variables, _ = import_weights(state_dict, get_layout(config.model.name, "monai"), target, strict=True,
                                      source=f"torch {case.name}")

        def make_torch():
            copy_ = copy.deepcopy(net).to(torch_device())
            return (lambda x, train: copy_.train(train)(x)), list(copy_.parameters()), copy_
    else:
        from medjax.bench.twins import torch_weights

        variables = jax.jit(lambda: task.init_variables(jax.random.key(config.seed), example))()
        variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
        host = jax.device_get(variables)

        def make_torch():
            device = torch_device()
            p = {k: v.to(device).requires_grad_() for k, v in torch_weights(host["params"]).items()}
            s = {k: v.to(device) for k, v in torch_weights(host.get("batch_stats", {})).items()}
            return _twin_forward(case, config, p, s), list(p.values()), None
    return Models(task, tx, jax.tree.map(jnp.asarray, variables), make_torch)


# ---------------------------------------------------------------------------------------------------- frameworks

def time_medjax(task, tx, variables: dict, batch: dict, warmup: int, repeats: int,
                dp_grads: Callable | None = None) -> dict:
    """`medjax train`'s step (`make_train_step` on the task, state donated; with DP-SGD's `dp_grads`), then the
    jitted eval forward."""
    import jax
    import jax.numpy as jnp

    from medjax import rng as mrng
    from medjax.tasks.base import apply_model
    from medjax.train.state import TrainState
    from medjax.train.steps import make_train_step

    params = variables["params"]
    state = jax.jit(lambda p, s: TrainState(step=jnp.zeros((), jnp.int32), params=p, batch_stats=s,
                                            opt_state=tx.init(p), rng=mrng.to_data(mrng.key(0))))(
        params, variables.get("batch_stats", {}))
    train_step = jax.jit(make_train_step(task, tx, dp_grads=dp_grads), donate_argnums=0)
    device_batch = jax.tree.map(jnp.asarray, batch)
    rss0 = _maxrss_mb()
    holder = {"state": state}

    def step():
        holder["state"], metrics = train_step(holder["state"], device_batch)
        return jax.block_until_ready(metrics["loss"])

    t0 = time.perf_counter()
    first_loss = float(step())
    compile_s = time.perf_counter() - t0
    train_s = _median_time(step, warmup, repeats)
    infer = jax.jit(lambda params, stats, img: apply_model(task.model, params, stats, img, train=False)[0])

    def forward():
        s = holder["state"]
        return jax.block_until_ready(infer(s.params, s.batch_stats, device_batch["image"]))

    infer_first_s = _timed(forward)
    infer_s = _median_time(forward, warmup, repeats)
    peak, why = _jax_peak_bytes()
    return {"first_loss": first_loss, "compile_s": compile_s, "train_step_s": train_s,
            "infer_first_s": infer_first_s, "infer_step_s": infer_s, "rss_increase_mb": _maxrss_mb() - rss0,
            "device_peak_bytes": peak, "device_peak_note": why}


def torch_optimizer(cfg, params: list):
    """`config.optimizer` in torch: Adam / AdamW (decoupled decay, as optax) / SGD at the base learning rate."""
    import torch

    betas = (cfg.b1, cfg.b2)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, betas=betas)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum,
                           nesterov=cfg.nesterov)


def time_torch(forward: Callable, params: list, loss_fn: Callable, batch: dict, opt_cfg, compile_backend: str | None,
               warmup: int, repeats: int, precision: str = "float32",
               wrap_optimizer: Callable[[Any], Any] | None = None) -> dict:
    """One training step (forward, the config's loss, backward, clipping, optimizer) and the eval forward.
    `wrap_optimizer` wraps the config's optimizer (Opacus's DPOptimizer: `medjax.bench.dp_bench`)."""
    import contextlib

    import torch

    device = torch_device()
    b = {k: v.to(device) for k, v in batch.items()}
    fwd = torch.compile(forward, backend=compile_backend, dynamic=False) if compile_backend else forward
    opt = torch_optimizer(opt_cfg, params)
    opt = wrap_optimizer(opt) if wrap_optimizer else opt
    clip = opt_cfg.grad_clip_norm

    def autocast():  # torch's mixed precision: float32 weights, bfloat16 compute where autocast allows it
        if precision == "bfloat16":
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = fwd(b["image"], True)
        loss = loss_fn(out, b)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return _sync(loss.detach())

    rss0 = _maxrss_mb()
    t0 = time.perf_counter()
    first_loss = float(step())
    compile_s = time.perf_counter() - t0
    train_s = _median_time(step, warmup, repeats)

    def infer():
        with torch.no_grad(), autocast():
            return _sync(fwd(b["image"], False))

    infer_first_s = _timed(infer)  # eval mode: torch.compile recompiles for the changed BatchNorm path
    infer_s = _median_time(infer, warmup, repeats)
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
    """The per-framework loop every row shares: one record per framework, `run(framework, compile_backend)`
    measuring it; torch.compile is skipped with its reason once the budget is spent, and a failed compile becomes
    a skipped record (other failures raise). Adds wall time and throughputs."""
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
            budget.spend(rec["compile_s"] + rec.get("infer_first_s", 0.0))
        elif fw == "torch_compile" and rec["reason"].startswith("torch.compile failed"):
            budget.spend(rec["wall_s"])  # a failed compile costs its time too
        if rec["status"] == "ok":
            rec["train_examples_per_s"] = batch_size / rec["train_step_s"] if rec.get("train_step_s") else None
            rec["infer_examples_per_s"] = batch_size / rec["infer_step_s"]
        results[fw] = rec
        log(f"  {name} {fw}: {_describe(rec)}")
    return results


def _common(case: Case, config, mode: str, warmup: int, repeats: int, precision: str, batch: dict) -> dict:
    image = batch["image"]
    frames = 1 if case.frames else 0
    nc = [image.shape[0]] + ([image.shape[1]] if frames else []) + [image.shape[-1], *image.shape[1 + frames:-1]]
    opt = config.get("optimizer") or config.get("g_optimizer")
    return {"case": case.name, "kind": case.kind, "config": case.config, "data": case.data,
            "overrides": list(case.overrides), "torch_model": case.torch_model,
            "model": config.get("model", config.get("generator")).to_dict(), "batch": int(image.shape[0]),
            "input_shape_nc": nc, "input_shape_medjax": list(image.shape), "num_classes": case.num_classes,
            "frames": case.frames or None, "warmup": warmup, "repeats": repeats,
            "optimizer": f"{opt.name} lr {opt.learning_rate}" + (
                f" clip {opt.grad_clip_norm}" if opt.grad_clip_norm else ""),
            "loss": config.task.get("loss", "cross-entropy" if case.kind == "classification" else ""),
            "precision": precision, "mode": mode}


def run_supervised_case(case: Case, mode: str, warmup: int, repeats: int, frameworks=FRAMEWORKS, log=print,
                        budget: CompileBudget | None = None, precision: str = "float32") -> list[dict]:
    """Records for one classification / segmentation / regression row."""
    budget = budget or CompileBudget()
    config = case_config(case, mode, precision)
    batch = case_data(case, config, mode)
    models = build_models(case, config, batch)
    torch_batch = to_torch_layout(batch, bool(case.frames))
    loss_fn = _torch_loss(case, config)
    common = _common(case, config, mode, warmup, repeats, precision, batch)

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            return time_medjax(models.task, models.tx, models.variables, batch, warmup, repeats)
        forward, params, _ = models.make_torch()
        return time_torch(forward, params, loss_fn, torch_batch, config.optimizer, backend, warmup, repeats,
                          precision)

    results = run_frameworks(case.name, config.batch_size, common, frameworks, run, budget, log)
    check_losses(results, LOSS_RTOL_BF16 if precision == "bfloat16" else LOSS_RTOL)
    return [results[fw] for fw in frameworks]


def check_losses(results: dict[str, dict], rtol: float = LOSS_RTOL) -> None:
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


def run_sliding_window_case(case: Case, mode: str, warmup: int, repeats: int, frameworks=FRAMEWORKS, log=print,
                            budget: CompileBudget | None = None, precision: str = "float32") -> list[dict]:
    """`medjax evaluate`'s whole-volume prediction against MONAI's sliding-window inference (float32)."""
    budget = budget or CompileBudget()
    import jax
    import jax.numpy as jnp
    import torch
    from monai.inferers import sliding_window_inference as monai_swi

    from medjax.inference.sliding_window import sliding_window_volume

    config = case_config(case, mode, "float32")
    inf = config.inference
    roi, overlap = tuple(inf.roi_size), float(inf.overlap)
    sigma, sw = float(inf.sigma_scale), int(config.eval_batch_size or config.batch_size)
    volume_shape = tuple(2 * r for r in roi) if mode == "smoke" else case.volume
    volume = np.random.default_rng(1).standard_normal(volume_shape + (case.in_channels,)).astype(np.float32)
    models = build_models(case, config, {"image": volume[None]})
    task, variables = models.task, models.variables
    common = {"case": case.name, "kind": case.kind, "config": case.config, "data": case.data,
              "torch_model": case.torch_model, "model": config.model.to_dict(), "batch": 1,
              "input_shape_nc": [1, case.in_channels, *volume_shape], "input_shape_medjax": [1, *volume_shape,
                                                                                            case.in_channels],
              "num_classes": case.num_classes, "roi": list(roi), "overlap": overlap, "mode_blend": "gaussian",
              "sw_batch_size": sw, "warmup": warmup, "repeats": repeats, "precision": "float32", "mode": mode}
    if precision != "float32":
        common["precision_note"] = f"sliding-window inference runs in float32 (asked: {precision})"
    outputs = {}

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            probs = jax.jit(lambda v, w: task.probabilities(v["params"], v.get("batch_stats", {}), w))

            def go():
                return sliding_window_volume(lambda w: np.asarray(probs(variables, jnp.asarray(w))), volume, roi,
                                             overlap=overlap, mode="gaussian", sigma_scale=sigma, sw_batch_size=sw,
                                             padding_value=float(volume.min()))
        else:
            forward, _, _ = models.make_torch()
            fwd = torch.compile(forward, backend=backend, dynamic=False) if backend else forward
            xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, -1, 0))[None]).to(torch_device())

            def go():
                with torch.no_grad():
                    out = monai_swi(xt, roi, sw, lambda w: torch.softmax(fwd(w, False), 1), overlap=overlap,
                                    mode="gaussian", sigma_scale=sigma, padding_mode="constant",
                                    cval=float(volume.min()))
                return np.moveaxis(_sync(out).cpu().numpy()[0], 0, -1)
        rss0 = _maxrss_mb()
        t0 = time.perf_counter()
        outputs[fw] = go()
        first = time.perf_counter() - t0
        rec = {"compile_s": first, "infer_first_s": first, "infer_step_s": _median_time(go, warmup, repeats),
               "rss_increase_mb": _maxrss_mb() - rss0}
        if fw == "medjax":
            rec["device_peak_bytes"], rec["device_peak_note"] = _jax_peak_bytes()
        return rec

    results = run_frameworks(case.name, 1, common, frameworks, run, budget, log)
    for fw, rec in results.items():
        if fw != "medjax" and fw in outputs and "medjax" in outputs:
            d = float(np.abs(outputs[fw] - outputs["medjax"]).max())
            rec["output_check"] = {"against": "medjax", "max_abs_diff": d, "atol": SW_ATOL, "passed": d <= SW_ATOL}
            if d > SW_ATOL:
                raise RuntimeError(f"{case.name}: {fw} and medjax disagree: max |diff| {d:.3g}")
    return [results[fw] for fw in frameworks]


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
    import monai
    import torch

    return {"platform": platform.platform(), "machine": platform.machine(), "processor": _cpu_name(),
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


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


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
    lines = [f"# medjax vs PyTorch ({result['mode']} mode, {result['precision']})", "",
             f"{m['processor']} ({m['platform']}, {m['cpu_count']} CPUs), JAX {m['jax']} ({m['jax_backend']}: "
             f"{', '.join(m['jax_devices'])}{'; GPU ' + m['gpu_name'] if m.get('gpu_name') else ''}), torch "
             f"{m['torch']} ({m['torch_threads']} threads), MONAI {m['monai']}. Total wall time "
             f"{result['total_wall_s']:.1f} s.", "",
             "Throughputs in examples/s (median step after warm-up); first s = wall time of the first step "
             "(includes jit / torch.compile compilation). Ratios medjax/torch: > 1 means medjax is faster "
             "(train / infer).", "",
             "| case | config | shape (N, C, spatial) | framework | train ex/s | infer ex/s | first s | first loss | "
             "medjax/torch_eager | medjax/torch_compile |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["records"]:
        shape = "x".join(str(s) for s in r["input_shape_nc"])
        if r.get("roi"):
            shape += f" roi {'x'.join(map(str, r['roi']))}"
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['config']} | {shape} | {r['framework']} | skipped | | | | | |")
            continue
        ratio_cells = ["", ""]
        if r["framework"] == "medjax" and "ratios" in r:
            q = r["ratios"]
            ratio_cells = [f"{_fmt(q['train_medjax_over_' + o])} / {_fmt(q['infer_medjax_over_' + o])}"
                           for o in ("torch_eager", "torch_compile")]
        loss = _fmt(r.get("first_loss"), ".6f")
        lines.append(f"| {r['case']} | {r['config']} | {shape} | {r['framework']} | "
                     f"{_fmt(r.get('train_examples_per_s'))} | {_fmt(r.get('infer_examples_per_s'))} | "
                     f"{_fmt(r.get('compile_s'))} | {loss} | {ratio_cells[0]} | {ratio_cells[1]} |")
    skipped = [r for r in result["records"] if r["status"] != "ok"]
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {r['case']} {r['framework']}: {' '.join(r['reason'].split())[:240]}"
                                          for r in skipped]
    lines += ["", "First-step loss check (relative, vs medjax; sliding window: max abs output difference; explain: "
                  "max abs map difference / max abs map):", ""]
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
            raise BenchError(f"case(s) {missing} have no --smoke variant; smoke cases: "
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


RUNNERS = {"classification": run_supervised_case, "segmentation": run_supervised_case,
           "regression": run_supervised_case, "sliding_window": run_sliding_window_case}


def run_case(case: Case, mode: str, warmup: int, repeats: int, frameworks=FRAMEWORKS, log=print,
             budget: CompileBudget | None = None, precision: str = "float32") -> list[dict]:
    if case.kind == "gan":
        from medjax.bench.gan_bench import run_gan_case

        return run_gan_case(case, mode, warmup, repeats, frameworks, log, budget, precision)
    if case.kind == "explain":
        from medjax.bench.explain_bench import run_explain_case

        return run_explain_case(case, mode, warmup, repeats, frameworks, log, budget, precision)
    if case.torch_model == "monai_retinanet":
        from medjax.bench import detection_bench

        runner = (detection_bench.run_detection_window_case if case.kind == "sliding_window"
                  else detection_bench.run_detection_case)
        return runner(case, mode, warmup, repeats, frameworks, log, budget, precision)
    if case.kind == "dp_sgd":
        from medjax.bench.dp_bench import run_dp_case

        return run_dp_case(case, mode, warmup, repeats, frameworks, log, budget, precision)
    return RUNNERS[case.kind](case, mode, warmup, repeats, frameworks, log, budget, precision)


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
        log(f"{case.name}: {case.config} ({case.data})")
        records += run_case(case, mode, warmup, repeats, log=log, budget=budget, precision=precision)
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

    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts

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
    group.add_argument("--quick", action="store_true", help="fewer warm-up and timed steps, same shapes")
    group.add_argument("--smoke", action="store_true", help="tiny shapes, seconds (tests: numbers mean nothing)")
    p.add_argument("--cases", nargs="+", default=None, metavar="NAME", help=f"subset of: {', '.join(CASES)}")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before timing (default per mode)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default per mode)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="bfloat16: medjax's mixed-precision policy against torch.autocast(bfloat16)")
    add_protocol_arguments(p)
    p.add_argument("--out", required=True, help="directory for bench.json, bench.md, bench.png")


def add_protocol_arguments(p) -> None:
    p.add_argument("--protocol", default=None, metavar="NAME",
                   help="run a whole experiment in both frameworks instead: quickstart | medmnist_resnet18")
    p.add_argument("--target", type=float, default=None, help="--protocol: the validation metric to reach")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="--protocol: a config override for both frameworks (repeatable)")


def run_from_args(args) -> dict:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if getattr(args, "protocol", None):
        if args.smoke or args.cases:
            raise BenchError("--protocol runs one experiment: --smoke and --cases do not apply (--quick does)")
        from medjax.bench import protocol

        return protocol.run(args.protocol, args.out, quick=args.quick, target=args.target,
                            overrides=args.overrides)
    if getattr(args, "target", None) is not None or getattr(args, "overrides", None):
        raise BenchError("--target and --set belong to --protocol")
    return run(args.out, mode, args.cases, args.warmup, args.repeats, precision=getattr(args, "precision", "float32"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
