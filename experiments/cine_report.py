"""Train every variant of `cine_synthetic` and compare them per test patient, with bootstrap CIs.

    python -m experiments.cine_report --out runs/cine [--variants ef ef_3d ...] [--steps N] [--tiny]
    python -m experiments.cine_report --out runs/cine_noisy --variants segmentation segmentation_2d \
        segmentation_3d --set data.noise=0.4 --set data.speckle=0.5      # low-SNR frames

Each variant trains in `<out>/<variant>` (resuming if already there); its best checkpoint (validation EF MAE, or
Dice) predicts every test patient. Per patient: the absolute EF error against the generator's true EF (from the
regressors, and measured on the segmentations' cavity areas), and for segmentation the Dice pooled over frames,
the mean per-frame Dice and the temporal Dice change (the mean over consecutive frames of |Dice_t - Dice_{t-1}|,
averaged over the cavity and the myocardium), as `medjax.temporal_metrics` defines them. Means come with 95%
bootstrap intervals over patients; `vs` rows are paired differences against the ConvLSTM of the same kind
(a negative EF error or a positive Dice difference favours the baseline). Writes `<out>/results.json` and
`<out>/results.md`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from medjax.config import build_config

CONFIG = "cine_synthetic"  # medjax.configs.cine_synthetic
REFERENCE = {"ef": "ef", "segmentation": "segmentation"}  # the ConvLSTM each baseline is paired with


def _predict(config, workdir: str) -> tuple[np.ndarray, dict]:
    """The best checkpoint's predictions on every test patient, and the test split."""
    import jax

    from medjax.train import loop
    from medjax.train.parallel import replicated_to_host

    s = loop.setup(config, workdir)
    canonical, _, _ = loop.restore_checkpoint(s, workdir, "best")
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    predict = jax.jit(s.task.predict)
    test = s.splits["test"]
    bs = config.eval_batch_size
    preds = [np.asarray(predict(params, stats, test["image"][i:i + bs])) for i in range(0, len(test["image"]), bs)]
    return np.concatenate(preds), test


def per_patient(variant: str, pred: np.ndarray, test: dict, ef_exponent: float) -> dict[str, np.ndarray]:
    """Per-patient metric arrays (see the module docstring)."""
    from medjax.temporal_metrics import ejection_fraction, frame_dice, temporal_dice_change

    true_ef = test["target"][:, 0]
    if variant.startswith("ef"):
        return {"ef_abs_error": np.abs(pred[:, 0] - true_ef)}
    import jax
    import jax.numpy as jnp

    from medjax import metrics

    count = jax.jit(jax.vmap(jax.vmap(lambda p, l: jnp.stack(metrics.dice_counts(p[None], l[None], 3)))))
    counts = np.asarray(count(pred, test["label"]))  # (N, T, 3, C): medjax's Dice counts per frame
    dice = np.stack([metrics.dice_from_counts(*c) for c in counts.sum(1)])  # each patient's frames pooled
    per_frame = frame_dice(counts)  # the cavity and the muscle are in every frame: no NaN in classes 1, 2
    change = np.stack([temporal_dice_change(d[None])[1:].mean() for d in per_frame])
    measured = np.nan_to_num(ejection_fraction(counts[:, :, 1, 1], ef_exponent), nan=0.0)
    return {"dice_mean": dice[:, 1:].mean(-1), "frame_dice_mean": per_frame[:, :, 1:].mean((1, 2)),
            "temporal_dice_change": change, "ef_abs_error": np.abs(measured - true_ef)}


def bootstrap(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5%, 97.5%) of the mean over patients."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run(out: pathlib.Path, variants: list[str], steps: int | None, tiny: bool,
        settings: list[str] = ()) -> list[dict]:
    from medjax.train import loop

    rows, patients = [], {}
    for variant in variants:
        overrides = ([f"--config.num_train_steps={steps}"] if steps else []) + [f"--config.{kv}" for kv in settings]
        config = build_config(f"{CONFIG}:{variant}{',tiny' if tiny else ''}", overrides)
        workdir = out / variant
        t0 = time.perf_counter()
        loop.train(config, str(workdir))
        train_s = time.perf_counter() - t0
        pred, test = _predict(config, str(workdir))
        patients[variant] = per_patient(variant, pred, test, config.task.get("ef_exponent", 1.0))
        row = {"variant": variant, "settings": list(settings), "steps": config.num_train_steps,
               "train_s": round(train_s, 1),
               "model": config.model.to_dict(), "patients": len(test["image"])}
        row.update({k: bootstrap(v) for k, v in patients[variant].items()})
        ref = REFERENCE["ef" if variant.startswith("ef") else "segmentation"]
        if variant != ref and ref in patients:
            row["vs"] = {k: bootstrap(v - patients[ref][k]) for k, v in patients[variant].items()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _cell(v) -> str:
    return f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]" if v else "—"


def table(rows: list[dict]) -> str:
    keys = ("ef_abs_error", "dice_mean", "frame_dice_mean", "temporal_dice_change")
    lines = ["| variant | steps | train s | EF abs. error | Dice (pooled) | per-frame Dice | temporal Dice change |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['steps']} | {r['train_s']:.0f} | "
                     + " | ".join(_cell(r.get(k)) for k in keys) + " |")
        if "vs" in r:
            lines.append("| − its ConvLSTM (paired) | | | " + " | ".join(_cell(r["vs"].get(k)) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    from medjax.configs.cine_synthetic import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=None, help="override num_train_steps (default: the config's)")
    p.add_argument("--tiny", action="store_true", help="the tiny configs (a seconds-long smoke run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every variant, e.g. --set data.noise=0.4 (repeatable)")
    args = p.parse_args(argv)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args.out, args.variants, args.steps, args.tiny, args.set)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "results.md").write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
