"""The GAN task family (gan, pix2pix, super_resolution): its setup for the one training loop
(`medjax.train.loop.train` / `evaluate`, interface `medjax.train.family.RunSetup`).

The same strategies (`sharding` by default, `pmap`), the same resumable data stream, Orbax checkpoints (latest and,
with `config.checkpoint.best_metric`, best) with exact resume, the same metrics log and curves. What differs:

* **Intensities.** Images are mapped linearly to [-1, 1] (the generators' tanh range) from
  `config.task.intensity_range` (lo, hi), or, when it is empty, the 0.5th and 99.5th percentiles of the training
  images, and clipped. The range used is written to `<workdir>/gan.json` and applies to every split.
* **pix2pix targets.** `config.task.target="label_onehot"` makes the target the one-hot label map in [-1, 1]
  (e.g. T1 -> tissue map); `"image"` needs a dataset that has a `target` array.
* **Evaluation** (every `eval_every` steps, with the EMA generator): PSNR and SSIM against the targets of the
  first `config.eval.num_examples` validation examples (pix2pix, super-resolution; SR also records bicubic
  interpolation's; pix2pix with one-hot targets also the Dice of the generated map's argmax, `dice_mean` over
  the foreground classes), and a PNG grid of samples in `<workdir>/plots/samples_<step>.png`.
* **Divergence** stops the run with `TrainingDiverged` (CLI exit 3), keeping the last good checkpoint: a
  non-finite loss or gradient, or a discriminator loss below `config.task.pinned_d_loss` for
  `config.task.pinned_patience` consecutive log intervals (D wins outright and G gets no signal).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from medjax import rng, schema
from medjax.data.sources import load_splits
from medjax.data.stream import TrainStream, as_arrays
from medjax.errors import MedjaxError
from medjax.gan.step import GANState, create_gan_state, latents, make_gan_step
from medjax.gan.task import GANTask, apply, make_gan_task
from medjax.image_metrics import bicubic_upsample, downsample, psnr, ssim
from medjax.metrics import dice_counts, dice_from_counts
from medjax.train import finetune as finetune_lib
from medjax.train import init_from
from medjax.train.family import SetupBase
from medjax.train.loop import _write_json, resolved
from medjax.train.optim import make_optimizer
from medjax.train.parallel import make_strategy, replicated_to_host
from medjax.viz import save_image_grid_png

DATA_RANGE = 2.0  # images live in [-1, 1]


@dataclasses.dataclass
class GANSetup(SetupBase):
    config: ml_collections.ConfigDict
    workdir: str
    strategy: Any
    task: GANTask
    splits: dict
    intensity_range: tuple[float, float]
    g_tx: Any
    d_tx: Any
    create: Any
    _pinned_since: list = dataclasses.field(default_factory=list, repr=False)  # steps of consecutive pinned D loss

    # --- medjax.train.family.RunSetup ---
    def initial_state(self) -> GANState:
        return self.strategy.init_state(self.create)

    def start(self) -> None:
        """Record the intensity range every split was mapped with (`<workdir>/gan.json`)."""
        if self.is_main:
            os.makedirs(self.workdir, exist_ok=True)
            _write_json(os.path.join(self.workdir, "gan.json"), {"task": self.config.task.name,
                                                                 "intensity_range": list(self.intensity_range)})

    def train_stream(self) -> TrainStream:
        bs = self.config.batch_size
        return TrainStream(self.splits["train"], bs, self.strategy.local_rows(bs), seed=self.config.seed)

    def train_step_fn(self):
        return make_gan_step(self.task, self.g_tx, self.d_tx, float(self.config.task.ema_decay),
                             self.strategy.axis_name)

    def validate(self, state: GANState, canonical: GANState, step: int) -> dict[str, float]:
        plot = os.path.join(self.workdir, "plots", f"samples_{step:06d}.png") if self.is_main else None
        return evaluate_generator(self, canonical, "val", plot)

    def non_finite(self, host: list[tuple[int, dict]]) -> str | None:
        for step, m in host:
            if not m["finite"]:
                return (f"non-finite loss or gradient at step {step} (d_loss {float(m['d_loss'])}, g_loss "
                        f"{float(m['g_loss'])})")
        return None

    def check_record(self, step: int, record: dict[str, float]) -> str | None:
        """A discriminator loss pinned below `task.pinned_d_loss` for `task.pinned_patience` log intervals."""
        pinned_below = float(self.config.task.pinned_d_loss)
        patience = int(self.config.task.pinned_patience)
        if not (self.task.trains_discriminator and record["d_loss"] < pinned_below):
            self._pinned_since.clear()
            return None
        self._pinned_since.append(step)
        if len(self._pinned_since) < patience:
            return None
        return (f"discriminator loss pinned below config.task.pinned_d_loss={pinned_below:g} for {patience} log "
                f"intervals (steps {self._pinned_since[0]}..{step}, last {record['d_loss']:.3g}): the generator "
                "gets no useful gradient")

    def postfix(self, record: dict[str, float]) -> dict[str, str]:
        return {"d": f"{record['d_loss']:.3f}", "g": f"{record['g_loss']:.3f}"}

    def evaluate_checkpoint(self, canonical: GANState, step: int, split: str) -> dict[str, Any]:
        plot = os.path.join(self.workdir, "plots", f"{split}_samples.png") if self.is_main else None
        return evaluate_generator(self, canonical, split, plot)


def _check_unsupported(config: ml_collections.ConfigDict) -> None:
    """Sections the GAN trainer does not implement: refuse rather than silently ignore them."""
    if init_from.requested(config):
        raise MedjaxError("config.init.from is not supported for GAN tasks yet")
    if finetune_lib.is_active(config.finetune):
        raise MedjaxError("config.finetune is not supported for GAN tasks")
    if config.privacy.enabled:
        raise MedjaxError("config.privacy (DP-SGD) is not supported for GAN tasks")
    if config.compute.to_dict() != schema.filled("compute", {}).to_dict():
        raise MedjaxError("config.compute (precision, remat, grad_accum_steps) is not supported for GAN tasks yet")
    sampled = [k for k in ("clip_length", "patch_size") if schema.data_common(config.data)[k]]
    if sampled:  # the GAN stream has no host transform: the whole example would silently be used instead
        raise MedjaxError(f"config.data.{sampled[0]} (host-side sampling) is not supported for GAN tasks yet")


def intensity_range(config: ml_collections.ConfigDict, train_images: np.ndarray) -> tuple[float, float]:
    """`config.task.intensity_range`, or the training images' 0.5th and 99.5th percentiles."""
    given = tuple(config.task.intensity_range or ())
    if given:
        if len(given) != 2 or not float(given[1]) > float(given[0]):
            raise MedjaxError(f"config.task.intensity_range must be (lo, hi) with hi > lo, got {given}")
        return float(given[0]), float(given[1])
    lo, hi = np.percentile(train_images, [0.5, 99.5])
    if not hi > lo:
        raise MedjaxError(f"the training images are constant ({lo}); set config.task.intensity_range")
    return float(lo), float(hi)


def to_unit_range(images: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly to [-1, 1] and clip (float32)."""
    return np.clip((np.asarray(images, np.float32) - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)


def prepare_splits(config: ml_collections.ConfigDict, splits: dict, num_classes: int,
                   value_range: tuple[float, float]) -> dict:
    """Rescaled images, and pix2pix targets, per split (new arrays; the loaded data is not modified)."""
    target = config.task.target
    out = {}
    for name, arrays in splits.items():
        arrays = dict(arrays)
        arrays["image"] = to_unit_range(arrays["image"], *value_range)
        if config.task.name == "pix2pix":
            if target == "label_onehot":
                if "label" not in arrays or arrays["label"].ndim != arrays["image"].ndim - 1:
                    raise MedjaxError(f"config.task.target='label_onehot' needs a label map per image; split "
                                      f"{name!r} has {sorted(arrays)}")
                arrays["target"] = (np.eye(num_classes, dtype=np.float32)[arrays["label"]] * 2.0 - 1.0)
            elif target == "image":
                if "target" not in arrays:
                    raise MedjaxError(f"config.task.target='image' needs a 'target' array; split {name!r} has "
                                      f"{sorted(arrays)}")
                arrays["target"] = to_unit_range(arrays["target"], *value_range)
            else:
                raise MedjaxError(f"unknown config.task.target={target!r}; use 'label_onehot' or 'image'")
        if config.task.name != "gan" or not config.task.conditional:
            arrays.pop("label", None)  # unconditional: labels are not part of the batch
        out[name] = arrays
    return out


def setup(config: ml_collections.ConfigDict, workdir: str, devices=None) -> GANSetup:
    _check_unsupported(config)
    strategy = make_strategy(config.parallel.strategy, devices)
    data = load_splits(config.data)
    splits = {k: as_arrays(v) for k, v in data.splits.items()}  # rescaled in memory below
    if "train" not in splits:
        raise MedjaxError(f"dataset {config.data.name!r} has no 'train' split")
    num_classes = len(data.class_names)
    value_range = intensity_range(config, splits["train"]["image"])
    splits = prepare_splits(config, splits, num_classes, value_range)
    config = resolved(config.to_dict(), len(splits["train"]["image"]))
    example = {k: v[:1] for k, v in splits["train"].items()}
    task = make_gan_task(config, example, num_classes, strategy.axis_name)
    g_tx = make_optimizer(config.g_optimizer, config.num_train_steps)
    d_tx = make_optimizer(config.d_optimizer, config.num_train_steps)
    create = functools.partial(create_gan_state, task, g_tx, d_tx, config.seed, example)
    return GANSetup(config, workdir, strategy, task, splits, value_range, g_tx, d_tx, create)


def tissue_dice(pred: np.ndarray, label: np.ndarray, num_classes: int) -> dict[str, float]:
    """Dice per foreground class (1..) of label maps, pooled over all images (`metrics.dice_counts`), and their
    mean (`dice_mean`). A class absent from both maps scores 1 (`ignore_empty=False`)."""
    dice = dice_from_counts(*dice_counts(pred, label, num_classes), ignore_empty=False)
    out = {f"dice_{c}": float(dice[c]) for c in range(1, num_classes)}
    out["dice_mean"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def generate(task: GANTask, ema_params: Any, g_stats: Any, batch: dict, key: jax.Array) -> jax.Array:
    """The EMA generator's output for `batch` in eval mode (task `gan`: for latents drawn from `key`)."""
    z = latents(key, batch["image"].shape[0], task.latent_dim, None) if task.name == "gan" else None
    return apply(task.generator, ema_params, g_stats, *task.generator_inputs(batch, z), train=False)[0]


def evaluate_generator(s: GANSetup, state: GANState, split: str = "val", plot_path: str | None = None) -> dict:
    """PSNR / SSIM of the EMA generator on the first `config.eval.num_examples` of `split` (paired tasks), and a
    sample grid PNG at `plot_path` (every task). Runs on this process's copy of the (replicated) weights."""
    if split not in s.splits:
        raise MedjaxError(f"dataset {s.config.data.name!r} has no {split!r} split")
    n = int(schema.filled("eval", s.config.get("eval")).num_examples)
    arrays = {k: v[:n] for k, v in s.splits[split].items() if k in ("image", "label", "target")}
    ema, g_stats = replicated_to_host((state.ema_params, state.g_stats))
    key = jax.random.fold_in(rng.key(s.config.seed), 10**6)  # fixed latents: samples comparable across steps
    fake = np.asarray(jax.jit(functools.partial(generate, s.task))(ema, g_stats, arrays, key))
    metrics: dict[str, float] = {}
    task = s.task
    if task.name != "gan":
        real = task.real(arrays)
        metrics["psnr"] = float(np.mean(psnr(fake, real, DATA_RANGE)))
        if min(real.shape[1:-1]) >= 11:
            metrics["ssim"] = float(np.mean(ssim(fake, real, DATA_RANGE)))
        metrics["l1"] = float(np.mean(np.abs(fake - real)))
    if task.name == "pix2pix" and s.config.task.target == "label_onehot":
        metrics.update(tissue_dice(fake.argmax(-1), task.real(arrays).argmax(-1), fake.shape[-1]))
    if task.name == "super_resolution":
        base = np.asarray(bicubic_upsample(downsample(arrays["image"], task.scale), task.scale))
        metrics["bicubic_psnr"] = float(np.mean(psnr(base, arrays["image"], DATA_RANGE)))
        if min(base.shape[1:-1]) >= 11:
            metrics["bicubic_ssim"] = float(np.mean(ssim(base, arrays["image"], DATA_RANGE)))
    else:
        metrics["sample_mean"] = float(fake.mean())
        metrics["sample_std"] = float(fake.std())
    if plot_path:
        k = min(8, n)
        if task.name == "gan":
            rows, titles = [arrays["image"][:k], fake[:k]], ["real", "generated (EMA)"]
        elif task.name == "pix2pix":
            rows = [arrays["image"][:k], fake[:k, ..., -1:], task.real(arrays)[:k, ..., -1:]]
            titles = ["input", "generated (last channel)", "target (last channel)"]
        else:
            lr = np.asarray(bicubic_upsample(downsample(arrays["image"], task.scale), task.scale))
            rows, titles = [lr[:k], fake[:k], arrays["image"][:k]], ["bicubic", "generated (EMA)", "target"]
        save_image_grid_png(plot_path, rows, titles)
    return metrics


def sample(state: GANState, task: GANTask, num: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """`num` images from the EMA generator of a `gan` run (in [-1, 1]); `labels` for a conditional one."""
    if task.name != "gan":
        raise MedjaxError("sample() draws from unconditional/conditional `gan` runs; paired tasks use generate()")
    ema, g_stats = replicated_to_host((state.ema_params, state.g_stats))
    batch = {"image": np.zeros((num, 1), np.float32)}
    if task.conditional:
        if labels is None or len(labels) != num:
            raise MedjaxError(f"a conditional generator needs {num} labels")
        batch["label"] = np.asarray(labels, np.int32)
    return np.asarray(jax.jit(functools.partial(generate, task))(ema, g_stats, batch, rng.key(seed)))


__all__ = ["GANSetup", "evaluate_generator", "generate", "intensity_range", "prepare_splits", "sample",
           "setup", "to_unit_range"]
