"""`medjax bench --protocol NAME`: one experiment config run start to finish in medjax and in PyTorch, on the same
data, reporting the wall time to finish and the time to reach a target validation metric.

    medjax bench --protocol quickstart --out DIR [--quick] [--target 0.9]
    medjax bench --protocol medmnist_resnet18 --out DIR [--quick] [--target 0.9] [--set key=value ...]

* `quickstart`: `quickstart` (2D U-Net, batch 16 of 96x80 ICBM152 slices, 300 steps, validation every
  50) on the real ICBM152 template that ships in nilearn. Target: validation `dice_mean` (foreground).
* `medmnist_resnet18`: `medmnist_resnet18` (ResNet-18 with the small stem, batch 128 of 28x28, Adam
  1e-3 with x0.1 at 50% and 75%, validation every epoch, 100 epochs) on a MedMNIST file generated at BreastMNIST's
  exact layout and size (`breastmnist.npz`: 546 / 78 / 156 grey 28x28 uint8 images, 2 classes) from real anatomy:
  28x28 patches of the ICBM152 slices centred on grey matter (class 0) or white matter (class 1), each split from
  its own slab. medjax reads it through its MedMNIST source (array_record cache included). Target: validation AUC.

The medjax side is `medjax train` then `medjax evaluate` of the config (`medjax.train.loop`), its time-to-target
read from `metrics.jsonl` (`wall_s` of the first validation record at or above the target) and its loop costs from
`timing.json`. The torch side is the PyTorch loop a user writes for the same protocol: the same model (MONAI's
ResNet-18, or the U-Net twin over medjax's initial weights), the same data arrays in a reshuffled order every
epoch, the config's optimizer with the learning rate of `medjax.train.optim.make_schedule` at every step, the same
loss, validation at the same steps scored by the same task summary (`task.summarize`: one metric implementation),
the best-so-far weights saved (atomically) when validation improves, the latest every `checkpoint_every` steps,
and the test split scored with the best weights at the end. Both include their compile / warm-up time; `--quick`
runs fewer steps (quickstart 100, MedMNIST 10 epochs), never other shapes.

Writes DIR/protocol.json and DIR/protocol.md (and the medjax run's workdir under DIR/medjax).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import numpy as np

from medjax.bench import bench as B


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    config: str
    metric: str
    target: float
    torch_model: str  # "monai_resnet" | "twin"
    kind: str  # "classification" | "segmentation"
    quick: tuple[str, ...]  # overrides of --quick (fewer steps)
    overrides: tuple[str, ...] = ()
    in_channels: int = 1
    data: str = ""


PROTOCOLS = {p.name: p for p in (
    Protocol("quickstart", "quickstart", "dice_mean", 0.90, "twin", "segmentation", ("num_train_steps=100",),
             data="ICBM152 2009c T1 axial slices at 2 mm (nilearn), 84 / 21 / 21 slices, 4 classes"),
    Protocol("medmnist_resnet18", "medmnist_resnet18", "auc", 0.90, "monai_resnet", "classification",
             ("num_epochs=10",), overrides=("data.name=breastmnist",),
             data="BreastMNIST layout and size (546 / 78 / 156 28x28 grey images) generated from ICBM152 grey vs "
                  "white matter patches"),
)}


def write_breastmnist_like(root: pathlib.Path) -> pathlib.Path:
    """`root/breastmnist.npz` in the medmnist package's layout, from real anatomy (see the module docstring)."""
    from medjax.data.icbm152_patches import load_icbm152_patches

    path = root / "breastmnist.npz"
    if path.exists():
        return path
    sizes = {"train": 546, "val": 78, "test": 156}  # BreastMNIST's split sizes, half of each class
    patches = load_icbm152_patches(patch_size=28, **{f"{k}_per_class": v // 2 for k, v in sizes.items()}, seed=0)
    lo, hi = np.percentile(patches["train"]["image"], [0.5, 99.5])
    arrays = {}
    for split in sizes:
        image, label = patches[split]["image"][..., 0], patches[split]["label"]
        keep = label > 0  # classes 1 (grey matter) and 2 (white matter) of CSF / grey / white
        arrays[f"{split}_images"] = np.clip((image[keep] - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = (label[keep] - 1).astype(np.uint8)[:, None]
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "breastmnist.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def protocol_config(p: Protocol, quick: bool, data_root: pathlib.Path | None, extra: list[str] = ()):
    from medjax.config import build_config

    overrides = list(p.overrides) + ["progress=False"] + (list(p.quick) if quick else []) + list(extra)
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    return build_config(p.config, [f"--config.{o}" for o in overrides])


def time_to_target(records: list[dict], metric: str, target: float) -> dict:
    """The first validation record at or above `target`: its step and wall_s (None when never reached)."""
    for r in records:
        value = r.get(metric)
        if r.get("split") == "val" and isinstance(value, (int, float)) and value >= target:
            return {"step": r["step"], "wall_s": r["wall_s"], "value": value}
    return {"step": None, "wall_s": None, "value": None}


def run_medjax(config, workdir: pathlib.Path, p: Protocol, target: float) -> dict:
    from medjax.train import loop
    from medjax.train.logging import read_records

    t0 = time.perf_counter()
    loop.train(config, str(workdir))
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    test = loop.evaluate(config, str(workdir), which="best", split="test")
    records = read_records(str(workdir / "metrics.jsonl"))
    val = [r for r in records if r["split"] == "val"]
    timing = json.loads((workdir / "timing.json").read_text())
    return {"framework": "medjax", "train_wall_s": train_s, "test_eval_s": time.perf_counter() - t1,
            "total_wall_s": time.perf_counter() - t0, "time_to_target": time_to_target(records, p.metric, target),
            "best_val": max(r[p.metric] for r in val), "test": test[p.metric], "steps": timing["steps"],
            "timing": timing, "val_curve": [(r["step"], r["wall_s"], r[p.metric]) for r in val]}


class TorchRun:
    """The PyTorch loop of a protocol (see the module docstring)."""

    def __init__(self, p: Protocol, config, splits: dict, task, workdir: pathlib.Path):
        import torch

        self.p, self.config, self.splits, self.task, self.workdir = p, config, splits, task, workdir
        self.device = B.torch_device()
        torch.manual_seed(config.seed)
        if p.torch_model == "monai_resnet":
            case = B.Case(p.name, p.kind, p.config, p.data, int(splits["train"]["image"].shape[-1]),
                          config.task.num_classes, tuple(splits["train"]["image"].shape[1:-1]), p.torch_model)
            self.module = B._monai_model(case, config).to(self.device)
            self.params = list(self.module.parameters())
            self.forward = lambda x, train: self.module.train(train)(x)
        else:
            import jax

            from medjax.bench.twins import torch_weights

            example = splits["train"]["image"][:1]
            variables = jax.device_get(jax.jit(lambda: task.init_variables(jax.random.key(config.seed), example))())
            self.p_t = {k: v.to(self.device).requires_grad_() for k, v in torch_weights(variables["params"]).items()}
            self.s_t = {k: v.to(self.device) for k, v in torch_weights(variables.get("batch_stats", {})).items()}
            case = B.Case(p.name, p.kind, p.config, p.data, 1, config.task.num_classes, (), "twin")
            self.forward = B._twin_forward(case, config, self.p_t, self.s_t)
            self.params = list(self.p_t.values())
            self.module = None
        case = B.Case(p.name, p.kind, p.config, p.data, 1, config.task.num_classes, (), p.torch_model)
        self.loss_fn = B._torch_loss(case, config)

    def state(self) -> dict:
        if self.module is not None:
            return {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        return {**{f"p/{k}": v.detach().clone() for k, v in self.p_t.items()},
                **{f"s/{k}": v.clone() for k, v in self.s_t.items()}}

    def load(self, state: dict) -> None:
        import torch

        with torch.no_grad():
            if self.module is not None:
                self.module.load_state_dict(state)
                return
            for k, v in state.items():
                (self.p_t if k.startswith("p/") else self.s_t)[k[2:]].copy_(v)

    def save(self, name: str) -> None:
        import torch

        path = self.workdir / f"{name}.pt"
        torch.save(self.state(), f"{path}.tmp")
        os.replace(f"{path}.tmp", path)

    def outputs(self, split: str) -> dict[str, np.ndarray]:
        """What medjax's task.eval_outputs gives, from the torch model, for `task.summarize`."""
        import jax.numpy as jnp
        import torch

        from medjax import metrics

        arrays, bs = self.splits[split], self.config.get("eval_batch_size") or self.config.batch_size
        chunks = []
        with torch.no_grad():
            for i in range(0, len(arrays["image"]), bs):
                x = np.moveaxis(arrays["image"][i:i + bs], -1, 1)
                logits = self.forward(torch.from_numpy(np.ascontiguousarray(x)).to(self.device), False)
                logits = logits.float().cpu().numpy()
                labels = arrays["label"][i:i + bs]
                w = np.ones(len(labels), np.float32)
                if self.p.kind == "classification":
                    z = logits - logits.max(-1, keepdims=True)
                    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
                    chunks.append({"probs": np.exp(logp), "label": labels,
                                   "loss": -logp[np.arange(len(labels)), labels],
                                   "acc": (logits.argmax(-1) == labels).astype(np.float32), "weight": w})
                else:
                    pred = np.moveaxis(logits, 1, -1).argmax(-1)
                    k = self.config.task.num_classes
                    counts = np.stack([np.stack([np.asarray(c) for c in metrics.dice_counts(
                        jnp.asarray(pr[None]), jnp.asarray(lb[None]), k)]) for pr, lb in zip(pred, labels)])
                    chunks.append({"dice_counts": counts, "weight": w})
        return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}

    def run(self, target: float) -> dict:
        import torch

        from medjax.train.optim import make_schedule

        c, t_start = self.config, time.perf_counter()
        opt = B.torch_optimizer(c.optimizer, self.params)
        schedule = make_schedule(c.optimizer, c.num_train_steps)
        clip = c.optimizer.get("grad_clip_norm", 0.0)
        train = self.splits["train"]
        n, rng = len(train["image"]), np.random.default_rng(c.seed)
        order, pos = rng.permutation(n), 0
        images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(train["image"], -1, 1)))
        labels = torch.from_numpy(train["label"].astype(np.int64))
        records, best, timing = [], -np.inf, dict(eval_s=0.0, checkpoint_s=0.0)
        for step in range(1, c.num_train_steps + 1):
            if pos + c.batch_size > n:  # a new epoch: reshuffle (the remainder starts the next batch)
                order, pos = np.concatenate([order[pos:], rng.permutation(n)]), 0
            idx = torch.from_numpy(order[pos:pos + c.batch_size])
            pos += c.batch_size
            batch = {"image": images[idx].to(self.device), "label": labels[idx].to(self.device)}
            for group in opt.param_groups:
                group["lr"] = float(schedule(step - 1))
            opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.forward(batch["image"], True), batch)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            opt.step()
            last = step == c.num_train_steps
            if step % c.eval_every == 0 or last:
                t0 = time.perf_counter()
                summary = self.task.summarize(self.outputs("val"))
                t1 = time.perf_counter()
                records.append({"step": step, "split": "val", "wall_s": t1 - t_start, **summary})
                timing["eval_s"] += t1 - t0
                if summary[self.p.metric] > best:
                    best = summary[self.p.metric]
                    self.save("best")
                timing["checkpoint_s"] += time.perf_counter() - t1
            if step % c.checkpoint_every == 0 or last:
                t0 = time.perf_counter()
                self.save("latest")
                timing["checkpoint_s"] += time.perf_counter() - t0
        train_s = time.perf_counter() - t_start
        t1 = time.perf_counter()
        self.load(torch.load(self.workdir / "best.pt"))
        test = self.task.summarize(self.outputs("test"))
        val = [r for r in records]
        return {"framework": "torch_eager", "train_wall_s": train_s, "test_eval_s": time.perf_counter() - t1,
                "total_wall_s": time.perf_counter() - t_start,
                "time_to_target": time_to_target(records, self.p.metric, target), "best_val": float(best),
                "test": test[self.p.metric], "steps": c.num_train_steps, "timing": timing,
                "val_curve": [(r["step"], r["wall_s"], r[self.p.metric]) for r in val]}


def run(name: str, out: str | os.PathLike, quick: bool = False, target: float | None = None,
        overrides: list[str] = (), log=print) -> dict:
    """Both runs of protocol `name` into `out`; `overrides` are `key=value` config overrides for both (after
    --quick's), e.g. fewer steps for a test."""
    if name not in PROTOCOLS:
        raise B.BenchError(f"unknown --protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    B.check_extras()
    p = PROTOCOLS[name]
    target = p.target if target is None else float(target)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = None
    if name == "medmnist_resnet18":
        data_root = out / "data"
        write_breastmnist_like(data_root)
    config = protocol_config(p, quick, data_root, overrides)
    workdir = out / "medjax"
    if workdir.exists():
        raise B.BenchError(f"{workdir} exists: --protocol runs start from scratch; use a new --out")
    log(f"{name}: medjax ({p.config}, {p.data})")
    medjax_result = run_medjax(config, workdir, p, target)
    log(f"  medjax: {_describe(medjax_result, p)}")

    from medjax.data.sources import load_splits
    from medjax.data.stream import as_arrays
    from medjax.tasks import make_task
    from medjax.train.loop import resolve_config

    data = load_splits(config.data)
    resolved = resolve_config(config, data)
    splits = {k: as_arrays(v) for k, v in data.splits.items()}
    task = make_task(resolved, data.class_names)
    torch_dir = out / "torch"
    torch_dir.mkdir(exist_ok=True)
    log(f"{name}: torch eager")
    torch_result = TorchRun(p, resolved, splits, task, torch_dir).run(target)
    log(f"  torch: {_describe(torch_result, p)}")
    result = {"protocol": name, "config": p.config, "data": p.data, "quick": quick, "overrides": list(overrides),
              "metric": p.metric,
              "target": target, "machine": B.machine(), "steps": resolved.num_train_steps,
              "batch_size": resolved.batch_size, "eval_every": resolved.eval_every,
              "results": [medjax_result, torch_result],
              "ratios": {"total_wall_torch_over_medjax": torch_result["total_wall_s"] / medjax_result["total_wall_s"],
                         "time_to_target_torch_over_medjax": _ratio(torch_result, medjax_result)}}
    (out / "protocol.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    write_markdown(out / "protocol.md", result)
    log(f"wrote {out / 'protocol.json'} and {out / 'protocol.md'}")
    return result


def _ratio(torch_result: dict, medjax_result: dict) -> float | None:
    a, b = torch_result["time_to_target"]["wall_s"], medjax_result["time_to_target"]["wall_s"]
    return a / b if a is not None and b is not None else None


def _describe(r: dict, p: Protocol) -> str:
    ttt = r["time_to_target"]
    reached = f"target at step {ttt['step']} after {ttt['wall_s']:.1f} s" if ttt["step"] else "target not reached"
    return (f"{r['steps']} steps in {r['train_wall_s']:.1f} s ({reached}); best val {p.metric} {r['best_val']:.4f}, "
            f"test {r['test']:.4f}")


def write_markdown(path: pathlib.Path, result: dict) -> None:
    m = result["machine"]
    lines = [f"# `medjax bench --protocol {result['protocol']}`{' --quick' if result['quick'] else ''}", "",
             f"{result['config']} on {result['data']}: {result['steps']} steps of batch {result['batch_size']}, "
             f"validation every {result['eval_every']} steps. {m['processor']}, {m['cpu_count']} CPUs, JAX "
             f"{m['jax']} ({m['jax_backend']}), torch {m['torch']} ({m['torch_threads']} threads).", "",
             f"| framework | train wall s | time to val {result['metric']} >= {result['target']} | best val | "
             f"test {result['metric']} | eval s | checkpoint s |", "|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        ttt = r["time_to_target"]
        reached = f"{ttt['wall_s']:.1f} s (step {ttt['step']})" if ttt["step"] else "not reached"
        lines.append(f"| {r['framework']} | {r['train_wall_s']:.1f} | {reached} | {r['best_val']:.4f} | "
                     f"{r['test']:.4f} | {r['timing']['eval_s']:.1f} | {r['timing']['checkpoint_s']:.1f} |")
    q = result["ratios"]
    to_target = q["time_to_target_torch_over_medjax"]
    lines += ["", f"torch / medjax wall time: {q['total_wall_torch_over_medjax']:.2f}x; time to target: "
              f"{'—' if to_target is None else format(to_target, '.2f') + 'x'}"
              " (> 1: medjax is faster)."]
    path.write_text("\n".join(lines) + "\n")
