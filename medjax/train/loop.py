"""The one training loop and the one evaluation entry point, for every task family.

train(): the config's family builds its setup (`medjax.train.family`: supervised tasks here, GANs in
`medjax.gan.loop`) -> resume from the latest checkpoint if any (else start from `config.init.from`'s weights, or
a random initialisation) -> jitted steps over the global batch -> periodic metrics, divergence checks, eval on
`val`, checkpoints (latest and best) -> curves. evaluate(): restore the best (or latest) checkpoint and score a
split into `<workdir>/eval.json`. What a family provides is `medjax.train.family.RunSetup`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from medjax import rng
from medjax.config import check_training_length
from medjax.data.augment import make_augment
from medjax.data.prefetch import DevicePrefetch
from medjax.data.sources import load_splits, train_input_shape, train_transform
from medjax.data.stream import TrainStream, as_source, eval_batches
from medjax.errors import MedjaxError
from medjax.inference.predictive import predictive_logits
from medjax.tasks import make_task, prepare_data
from medjax.tasks.base import keep_valid
from medjax.train import compute, ensemble, init_from, run_config, uncertainty_eval, volume_eval
from medjax.train import finetune as finetune_lib
from medjax.train.checkpoint import Checkpoints
from medjax.train.family import SetupBase
from medjax.train.logging import MetricLog
from medjax.train.optim import make_optimizer
from medjax.train.parallel import make_strategy, replicated_to_host
from medjax.train.state import TrainState, create_state
from medjax.train.steps import make_eval_step, make_train_step


class TrainingDiverged(MedjaxError):
    """A non-finite loss: the run stops and the last good checkpoint stays the latest."""


@dataclasses.dataclass
class Setup(SetupBase):
    """Everything built from a config, before any step runs."""

    config: ml_collections.ConfigDict
    workdir: str
    strategy: Any
    task: Any
    splits: dict
    tx: Any
    create: Any  # () -> TrainState, pure
    augment: Any = None  # (key, batch) -> batch inside the train step, or None
    window_step: Any = None  # the compiled sliding-window predictor, built on first use (volume_eval)
    finetune: Any = None  # medjax.train.finetune.Plan from config.finetune, None for plain training
    case_ids: dict = dataclasses.field(default_factory=dict)  # {split: case ids in example order} (Dataset.cases)
    members: int = 0  # K > 1: a deep ensemble whose state has a leading member axis (medjax.train.ensemble)
    privacy: Any = None  # medjax.privacy.dpsgd.Plan from config.privacy, None without DP-SGD
    _eval_step: Any = dataclasses.field(default=None, repr=False)  # compiled on first validation

    def train_step_fn(self):
        """The uncompiled step body for this setup (task, optimizer, augmentation, fine-tuning plan, DP-SGD's
        gradient), vmapped over the members of an ensemble."""
        dp_grads = self.privacy and self.privacy.grads(self.task, self.strategy.axis_name, self.finetune)
        step = make_train_step(self.task, self.tx, self.strategy.axis_name, self.augment, self.finetune,
                               accum_steps=compute.of(self.config).grad_accum_steps, dp_grads=dp_grads)
        return ensemble.train_step(step) if self.members else step

    def initial_state(self) -> TrainState:
        """The state of a run that starts now: `config.init.from`'s weights (see medjax.train.init_from) over a
        fresh initialisation, or just the fresh initialisation."""
        if not init_from.requested(self.config):
            return self.strategy.init_state(self.create)
        abstract = ensemble.member_shapes(jax.eval_shape(self.create), self.members)
        pretrained = init_from.load_init(self.config, {"params": abstract.params,
                                                       "batch_stats": abstract.batch_stats}, verbose=self.is_main)
        return self.strategy.init_state(lambda values: self.create(pretrained=values), pretrained)

    # --- medjax.train.family.RunSetup ---
    def start(self) -> None:
        """Nothing to record before the first step."""

    def train_stream(self) -> Any:
        return make_train_stream(self)

    def validate(self, state: TrainState, canonical: TrainState, step: int) -> dict[str, float]:
        if self._eval_step is None:
            self._eval_step = self.strategy.compile_eval_step(make_eval_step(self.task, self.members))
        return evaluate_split(self, state, "val", self._eval_step)

    def non_finite(self, host: list[tuple[int, dict]]) -> str | None:
        for step, metrics in host:
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                return f"non-finite loss ({loss}) at step {step}"
        return None

    def check_record(self, step: int, record: dict[str, float]) -> str | None:
        return None

    def final_step(self) -> int:
        """The last step within DP-SGD's budget (`config.privacy.target_epsilon`), else num_train_steps."""
        return self.privacy.final_step if self.privacy else super().final_step()

    def host_record(self, step: int) -> dict[str, float]:
        """DP-SGD: `epsilon`, spent after `step` steps at config.privacy.delta."""
        return {"epsilon": self.privacy.epsilon(step)} if self.privacy else {}

    def postfix(self, record: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.4f}", "img_s": f"{record['img_per_s']:.1f}"}

    def evaluate_checkpoint(self, canonical: TrainState, step: int, split: str,
                            save_predictions: bool = False) -> dict[str, Any]:
        """Metrics of `split` under `canonical`; process 0 also writes a preview PNG and, for tasks scored per
        case (segmentation: Dice, and surface metrics unless `task.surface_metrics=False`; detection: boxes),
        eval_cases.json; with `save_predictions` (detection), one JSON of boxes per case (`_save_detections`)."""
        state = self.strategy.from_canonical(canonical)
        surface = bool(getattr(self.task, "surface_metrics", False))
        if hasattr(self.task, "detect"):
            summary, cases = evaluate_detections(self, state, split)
            if self.is_main:
                _save_detections(self, split, int(step), cases, save_predictions)
        elif volume_eval.uses_windows(self.config):
            preview = os.path.join(self.workdir, "plots", f"{split}_predictions.png")
            summary, cases = volume_eval.evaluate_volumes(self, state, split, preview if self.is_main else None,
                                                          surface=surface)
        elif hasattr(self.task, "case_records"):
            summary, cases = evaluate_cases(self, state, split)
        else:
            summary, cases = evaluate_split(self, state, split), None
        if self.is_main:
            if cases is not None:
                _write_json(os.path.join(self.workdir, "eval_cases.json"),
                            {"split": split, "step": int(step), "cases": cases})
            if not volume_eval.uses_windows(self.config) and not hasattr(self.task, "detect"):
                _save_examples(self, canonical, split)
        return summary


def _validate_labels(splits: dict, config: ml_collections.ConfigDict) -> None:
    """Labels outside 0..num_classes-1 would silently corrupt one-hot losses: name the split instead.
    (Cached sources are checked by their readers while the cache is built.)"""
    if config.task.name not in ("classification", "segmentation"):
        return  # regression targets are continuous
    n = config.task.num_classes
    for name, arrays in splits.items():
        if not isinstance(arrays, dict):
            continue
        if "label" not in arrays:
            raise MedjaxError(f"split {name!r} of dataset {config.data.name!r} has no labels, which "
                              f"config.task.name={config.task.name!r} needs (it holds {sorted(arrays)})")
        labels = arrays["label"]
        if labels.size and (labels.min() < 0 or labels.max() >= n):
            raise MedjaxError(f"split {name!r} has labels in [{labels.min()}, {labels.max()}] but "
                              f"config.task.num_classes={n}")


def setup(config: ml_collections.ConfigDict, workdir: str, devices=None) -> Any:
    """The setup of `config`'s task family (`medjax.train.family`): strategy, data, task, optimizer; `devices`
    restricts the mesh (default: every device)."""
    from medjax.train import family

    return family.setup(config, workdir, devices)


def supervised_setup(config: ml_collections.ConfigDict, workdir: str, devices=None) -> Setup:
    """The supervised family (segmentation, classification, regression, mil, detection): strategy, data, task,
    optimizer."""
    strategy = make_strategy(config.parallel.strategy, devices)
    data = prepare_data(config, load_splits(config.data))
    splits = data.splits
    if "train" not in splits:
        raise MedjaxError(f"dataset {config.data.name!r} has no 'train' split")
    config = resolve_config(config, data)
    compute.check(compute.of(config), config.batch_size, strategy.num_devices)
    task = make_task(config, data.class_names, strategy.axis_name)
    _validate_labels(splits, config)
    example = _first_train_image(splits["train"], config)
    init_variables = lambda key: task.init_variables(key, example)  # noqa: E731
    plan = None
    if finetune_lib.is_active(config.finetune):
        params = jax.eval_shape(init_variables, rng.key(config.seed))["params"]
        plan = finetune_lib.make_plan(config.finetune, params)
    if plan is None or not plan.splits_optimizer:
        tx = make_optimizer(config.optimizer, config.num_train_steps)
    else:
        tx = finetune_lib.make_finetune_optimizer(config.optimizer, plan, config.num_train_steps)
    members = ensemble.members(config)
    create = ensemble.creator(functools.partial(create_state, init_variables, tx), config.seed, members)
    bags = getattr(task, "bag_inputs", False)  # images (N, K, *spatial, C): each instance is augmented alone
    augment = make_augment(config.augment, spatial_shape=example.shape[2 if bags else 1:-1],
                           channels=example.shape[-1], bags=bags)
    privacy = None
    if config.privacy.enabled:
        from medjax.privacy import dpsgd

        batch_stats = jax.eval_shape(init_variables, rng.key(config.seed)).get("batch_stats", {})
        privacy = dpsgd.make_plan(config, data.num_examples("train"), strategy.num_devices, batch_stats)
        config = dpsgd.resolved(config, privacy)
    return Setup(config, workdir, strategy, task, splits, tx, create, augment, finetune=plan, members=members,
                 case_ids={name: data.cases(name) for name in splits}, privacy=privacy)


def resolve_config(config: ml_collections.ConfigDict, data) -> ml_collections.ConfigDict:
    """Fill what a config leaves to the data, on a copy: `task.num_classes=0` -> the number of classes,
    `task.multi_label='auto'` -> the dataset's, `num_epochs>0` -> `num_train_steps`, and `eval_every` /
    `checkpoint_every` <= 0 -> once per epoch."""
    d = config.to_dict()  # a plain dict: resolved values may change a field's type ('auto' -> bool)
    if d["task"].get("num_classes") == 0:  # tasks with classes
        d["task"]["num_classes"] = len(data.class_names)
    if d["task"].get("multi_label") == "auto":
        d["task"]["multi_label"] = data.multi_label
    return resolved(d, data.num_examples("train"))


def resolved(d: dict, num_train: int) -> ml_collections.ConfigDict:
    """The plain-dict config `d` with its schedule resolved for `num_train` training examples, locked."""
    resolve_schedule(d, num_train)
    config = ml_collections.ConfigDict(d)
    config.lock()
    return config


def resolve_schedule(d: dict, num_train: int) -> None:
    """In the plain-dict config `d`: `num_epochs>0` -> `num_train_steps`, and `eval_every` / `checkpoint_every`
    / `log_every` <= 0 -> once per epoch of `num_train` examples."""
    steps_per_epoch = max(1, math.ceil(num_train / d["batch_size"]))
    check_training_length(d)
    if d["num_epochs"] > 0:
        d["num_train_steps"] = int(d["num_epochs"] * steps_per_epoch)
    for key in ("eval_every", "checkpoint_every", "log_every"):
        if d[key] <= 0:
            d[key] = steps_per_epoch


def _first_train_image(train: Any, config: ml_collections.ConfigDict) -> np.ndarray:
    """A batch of one input shaped as the model sees it in training (a clip, a patch: `train_input_shape`), of the
    first training image's dtype: what initialises the model. Zeros: initialisation depends on shapes only, and
    building the training transform here would make `evaluate` depend on training-only settings."""
    image = np.asarray(as_source(train, "train split")[0]["image"])
    return np.zeros((1, *train_input_shape(config.data, image.shape)), image.dtype)


def make_train_stream(s: Setup) -> Any:
    """The training stream of any split (in memory or cached), with the host transform and grain's threads."""
    config = s.config
    bs = s.privacy.mechanism.padded_batch_size if s.privacy else config.batch_size  # DP: fixed-shape Poisson
    return TrainStream(s.splits["train"], bs, s.strategy.local_rows(bs), seed=config.seed,
                       transform=train_transform(config.data), num_threads=config.data.num_threads,
                       prefetch=config.data.prefetch, members=s.members, select=s.privacy and s.privacy.select)


def evaluate_split(s: Setup, state: TrainState, split: str, eval_step=None) -> dict[str, float]:
    """Score every example of `split` (padded batches, nothing dropped) with the task's summary."""
    if split not in s.splits:
        raise MedjaxError(f"dataset {s.config.data.name!r} has no {split!r} split")
    if hasattr(s.task, "detect") and volume_eval.uses_windows(s.config):
        return s.task.summarize(volume_eval.detection_outputs(s, state, split))
    if volume_eval.uses_windows(s.config):
        return volume_eval.evaluate_volumes(s, state, split)[0]
    eval_step = eval_step or s.strategy.compile_eval_step(make_eval_step(s.task, s.members))
    return s.task.summarize(split_outputs(s, state, split, eval_step))


def evaluate_cases(s: Setup, state: TrainState, split: str) -> tuple[dict[str, float], list[dict]]:
    """`evaluate_split` plus one record per example (`task.case_records`, with the case id and the example's
    position `index`): the task's `per_case` outputs (for segmentation the predictions) are turned into per-case
    numbers on the host batch by batch (`task.case_outputs`), so no split's worth of predictions is ever held.
    Only `evaluate` pays for this."""
    if split not in s.splits:
        raise MedjaxError(f"dataset {s.config.data.name!r} has no {split!r} split")
    task = s.task
    source = as_source(s.splits[split], f"split {split!r}")

    step = make_eval_step(task, s.members, per_case=True)
    outputs = split_outputs(s, state, split, s.strategy.compile_eval_step(step),
                            lambda out: task.case_outputs(out, source))
    ids = s.case_ids[split]
    records = [{"case": ids[i], "index": i, **r} for i, r in enumerate(task.case_records(outputs))]
    return task.summarize(outputs), records


def detection_outputs(s: Setup, state: TrainState, split: str) -> dict[str, np.ndarray]:
    """A detection task's eval outputs, one row per case of `split` (padded detections and reference boxes),
    from whole images (the eval step) or sliding windows (`volume_eval.detection_outputs`)."""
    if split not in s.splits:
        raise MedjaxError(f"dataset {s.config.data.name!r} has no {split!r} split")
    if volume_eval.uses_windows(s.config):
        return volume_eval.detection_outputs(s, state, split)
    step = s.strategy.compile_eval_step(make_eval_step(s.task, s.members))
    return keep_valid(split_outputs(s, state, split, step))


def evaluate_detections(s: Setup, state: TrainState, split: str) -> tuple[dict[str, float], list[dict]]:
    """A detection task's summary of `split` and one record per case (`task.case_records`: its reference boxes
    and kept detections, with the case id and position `index`)."""
    outputs = detection_outputs(s, state, split)
    ids = s.case_ids[split]
    records = [{"case": ids[i], "index": i, **r} for i, r in enumerate(s.task.case_records(outputs))]
    return s.task.summarize(outputs), records


def split_outputs(s: Setup, state: TrainState, split: str, eval_step, on_host=None) -> dict[str, np.ndarray]:
    """The eval step's per-example outputs over every example of `split`, each host batch passed through
    `on_host` (if given) before it is kept."""
    source = as_source(s.splits[split], f"split {split!r}")
    # A split smaller than the eval batch is one batch of its own size (rounded up to the devices), not padded
    # to eval_batch_size: MedMNIST's 78 validation images would otherwise cost 256 images' compute every epoch.
    n, devices = len(source), s.strategy.num_devices
    bs = min(s.config.eval_batch_size or s.config.batch_size, -(-n // devices) * devices)
    rows = s.strategy.local_rows(bs)
    chunks = []
    for batch in eval_batches(source, bs, rows):
        out = s.strategy.outputs_to_host(eval_step(state, s.strategy.put_batch(batch, bs)))
        chunks.append(on_host(out) if on_host else out)
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def resume_or_start(s: Any, ckpts: Checkpoints, stream: Any, fresh: Any) -> tuple[int, Any]:
    """(start step, state): the latest checkpoint's (with the data stream put back to its position), or step 0
    and `fresh()` when there is none. Works for any setup with `config`, `workdir`, `is_main`, `strategy` and
    `abstract_state()`. A resume must keep the stored config's model and data (`run_config.check_resume`); the
    resolved config is then written to `<workdir>/config.json` (process 0)."""
    start = ckpts.latest_step()
    if start is not None:
        run_config.check_resume(s.config, s.workdir)
    if s.is_main:
        run_config.write(s.config, s.workdir)
    if start is None:
        return 0, fresh()
    canonical, data_state, start, _ = ckpts.restore(s.abstract_state())
    stream.set_state(data_state)
    return start, s.strategy.from_canonical(canonical)


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict[str, float]:
    """Train to `config.num_train_steps` (or the setup's earlier `final_step()`: a DP-SGD run stops, with a
    checkpoint, when its privacy budget is spent), resuming from `<workdir>/checkpoints` if a checkpoint is there.
    Returns the last validation metrics.

    Where the time of this call went is written to `<workdir>/timing.json` (process 0; a resumed run accounts for
    the steps it ran, a call with nothing left to train leaves the file alone): `setup_s` (data, model, first
    checkpoint lookup), `first_step_s` (the first step, compilation included), `train_s` (the other steps),
    `eval_s` and `checkpoint_s` (validation and saving, as the loop waits for them; async writes overlap the
    next steps), `finish_s` (waiting for the last writes, curves) and `total_s`. Every metrics record carries
    `wall_s`, seconds since this call started, and every validation record its `eval_s`."""
    t_start = time.perf_counter()
    timing = dict.fromkeys(("setup_s", "first_step_s", "train_s", "eval_s", "checkpoint_s", "finish_s"), 0.0)
    s = setup(config, workdir, devices)
    config = s.config  # resolved against the data
    strategy, bs = s.strategy, config.batch_size
    s.start()
    stream = s.train_stream()
    ckpts = s.checkpoints()
    start, state = resume_or_start(s, ckpts, stream, s.initial_state)
    log = MetricLog(workdir, enabled=s.is_main, resume_step=start)
    train_step = strategy.compile_train_step(s.train_step_fn())
    has_val = "val" in s.splits
    timing["setup_s"] = time.perf_counter() - t_start

    pending: list[tuple[int, Any]] = []
    last_flush = time.perf_counter()
    last_saved = start
    final = s.final_step()  # num_train_steps, or earlier when a budget runs out (DP-SGD)
    progress = _progress(final, config.progress, start, s.is_main)
    eval_metrics: dict[str, float] = {}

    def diverged(why: str) -> TrainingDiverged:
        ckpts.wait()
        where = f"step {last_saved}" if last_saved else "none (no checkpoint was written)"
        return TrainingDiverged(f"{why}; stopped. The last good checkpoint is {where} in "
                                f"{os.path.join(workdir, 'checkpoints')}")

    def flush(step: int) -> None:
        nonlocal pending, last_flush
        host = [(st, strategy.metrics_to_host(m)) for st, m in pending]
        why = s.non_finite(host)
        if why is not None:
            raise diverged(why)
        now = time.perf_counter()
        # "finite" is a GAN step's flag for non_finite(), already checked: not a curve to log
        record = {k: float(np.mean([m[k] for _, m in host])) for k in host[0][1] if k != "finite"}
        record["img_per_s"] = len(host) * bs / max(now - last_flush, 1e-9)
        record["wall_s"] = now - t_start
        record.update(s.host_record(step))
        log.write(step, "train", record)
        progress.set_postfix(**s.postfix(record))
        why = s.check_record(step, record)
        if why is not None:
            raise diverged(why)
        pending, last_flush = [], now

    loop_start = time.perf_counter()
    try:
        batches = DevicePrefetch(stream, strategy, stream.global_batch_size)
        for step in range(start + 1, final + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = train_step(state, next(batches))
            if step == start + 1:  # the compile (and first run) apart from the steady state
                jax.block_until_ready(metrics)
                timing["first_step_s"] = time.perf_counter() - loop_start
            pending.append((step, metrics))
            progress.update(1)
            last = step == final
            do_eval = has_val and (step % config.eval_every == 0 or last)
            do_ckpt = step % config.checkpoint_every == 0 or last
            if step % config.log_every == 0 or do_eval or do_ckpt or last:
                flush(step)
            canonical = strategy.to_canonical(state) if (do_eval or do_ckpt) else None
            if do_eval:
                t0 = time.perf_counter()
                eval_metrics = s.validate(state, canonical, step)
                t1 = time.perf_counter()
                log.write(step, "val", dict(eval_metrics, eval_s=t1 - t0, wall_s=t1 - t_start))
                ckpts.save_best(step, canonical, batches.get_state(), eval_metrics)
                timing["eval_s"] += t1 - t0
                timing["checkpoint_s"] += time.perf_counter() - t1
            if do_ckpt:
                t0 = time.perf_counter()
                ckpts.save(step, canonical, batches.get_state())
                timing["checkpoint_s"] += time.perf_counter() - t0
                last_saved = step
            if do_eval or do_ckpt:
                last_flush = time.perf_counter()  # img/s measures training, not eval or saving
    finally:
        loop_end = time.perf_counter()
        progress.close()
        ckpts.wait()
        ckpts.close()
        log.plot()
        log.close()
        end = time.perf_counter()
        timing["train_s"] = max(0.0, loop_end - loop_start - timing["first_step_s"] - timing["eval_s"]
                                - timing["checkpoint_s"])
        timing.update(finish_s=end - loop_end, total_s=end - t_start, steps=max(0, final - start))
        if s.is_main and timing["steps"] > 0:  # a rerun of a finished run keeps the run's own account
            _write_json(os.path.join(workdir, "timing.json"), timing)
    return eval_metrics


def _progress(total: int, progress: bool, start: int, enabled: bool):
    """A tqdm bar to step `total` on process 0 if `progress`; plain tqdm when disabled, so notebooks without
    ipywidgets get no warning."""
    show = enabled and progress
    if show:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=not show, desc="train")


def restore_checkpoint(s: Any, workdir: str, which: str = "best") -> tuple[Any, int, str]:
    """(canonical state, step, "best" | "latest") of a run's checkpoint, read-only, for any setup that has
    `checkpoints()` and `abstract_state()` (supervised or GAN). `best` falls back to the latest checkpoint."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise MedjaxError(f"no checkpoints in {workdir}: run `medjax train` with this --workdir first")
    ckpts = s.checkpoints(read_only=True)
    try:
        canonical, _, step, used = ckpts.restore(s.abstract_state(), which=which)
    finally:
        ckpts.close()
    return canonical, step, used


def evaluate(config: ml_collections.ConfigDict, workdir: str, which: str = "best", split: str = "test",
             calibrate: bool = False, subgroups: str | None = None,
             group_columns: Sequence[str] | None = None, uncertainty: str | None = None,
             samples: int | None = None, save_predictions: bool = False) -> dict:
    """Score the best (falling back to latest) checkpoint on `split`; writes `<workdir>/eval.json` (flat).
    `calibrate` adds calibration before and after temperature scaling fit on `val`, `subgroups` (a metadata CSV
    `case,<columns>`, optionally only `group_columns`) per-group metrics with bootstrap intervals
    (`medjax.train.trust_eval`); `uncertainty` (mc_dropout | tta | ensemble, `samples` per member) an
    `uncertainty` section (`medjax.train.uncertainty_eval`). A detection run also draws predicted and reference
    boxes on a few cases (`plots/<split>_detections.png`) and, with `save_predictions`, writes each case's boxes
    to `predictions/<split>/<case>.json`."""
    from medjax.train import trust_eval

    s = setup(config, workdir)
    trust = trust_eval.request(s, split, calibrate, subgroups, group_columns)
    if uncertainty is not None:
        uncertainty_eval.check(s, uncertainty, samples)  # before any checkpoint is read
    if save_predictions and not hasattr(getattr(s, "task", None), "detect"):
        raise MedjaxError(f"--save-predictions writes detection boxes; config.task.name={config.task.name!r} is not "
                          "a detection task")
    canonical, step, used = restore_checkpoint(s, workdir, which)
    extra = {"save_predictions": True} if save_predictions else {}
    result = {"split": split, "step": int(step), "checkpoint": used, **s.host_record(int(step)),
              **s.evaluate_checkpoint(canonical, int(step), split, **extra)}
    if trust is not None:
        result.update(trust_eval.report(s, canonical, int(step), used, split, trust))
    if uncertainty is not None:
        result["uncertainty"] = uncertainty_eval.evaluate(s, s.strategy.from_canonical(canonical), split,
                                                          uncertainty, samples)
    if s.is_main:
        _write_json(os.path.join(workdir, "eval.json"), result)
    return result


def _write_json(path: str, value: Any) -> None:
    """Atomically: a reader never sees half a file."""
    with open(f"{path}.tmp", "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    os.replace(f"{path}.tmp", path)


def _save_detections(s: Setup, split: str, step: int, records: list[dict], save_predictions: bool,
                     count: int = 4) -> None:
    """`plots/<split>_detections.png`: reference and predicted boxes on `count` cases spread over the split
    (`viz.save_detections_png`); with `save_predictions`, `predictions/<split>/<case>.json` per case: its
    detections as MONAI's detection datalists write boxes (voxel corners along the image's array axes,
    class names) with their scores."""
    from medjax import viz

    source = as_source(s.splits[split], f"split {split!r}")
    picks = np.unique(np.linspace(0, len(records) - 1, min(count, len(records))).astype(int))
    panels = [(str(records[i]["case"]), np.asarray(source[i]["image"]), records[i]) for i in picks]
    viz.save_detections_png(os.path.join(s.workdir, "plots", f"{split}_detections.png"), panels)
    if save_predictions:
        folder = os.path.join(s.workdir, "predictions", split)
        os.makedirs(folder, exist_ok=True)
        for r in records:
            name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(r["case"]))
            _write_json(os.path.join(folder, f"{name}.json"),
                        {"case": r["case"], "split": split, "step": step, "coordinates": "voxel",
                         "box_format": "corner", **r["detections"]})


def _save_examples(s: Setup, canonical: TrainState, split: str, count: int = 4) -> None:
    """A PNG of predictions on the first examples of `split`, for tasks that can draw them."""
    if not hasattr(s.task, "save_examples"):
        return
    num_examples = len(s.splits[split]["image"])
    idx = np.linspace(0, num_examples - 1, min(count, num_examples)).astype(int)
    images, labels = s.splits[split]["image"][idx], s.splits[split]["label"][idx]
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    if s.members:  # the argmax of the members' mean prediction (tasks that draw examples predict class maps)
        predict = lambda p, st, x: jax.numpy.argmax(predictive_logits(s.task, p, st, x, s.members), -1)  # noqa: E731
    else:
        predict = s.task.predict
    preds = np.asarray(jax.jit(predict)(params, stats, images))
    s.task.save_examples(os.path.join(s.workdir, "plots", f"{split}_predictions.png"), images, labels, preds)
