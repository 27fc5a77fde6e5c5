"""Train and score every GAN variant of `gan_icbm152`; write a results table.

    python -m experiments.gan_icbm152_report --out runs/gan_icbm152 [--variants sr2 sr2_l1 ...] [--steps N]

Each variant trains in `<out>/<variant>` (resuming if already there), then its best checkpoint (by validation
PSNR, or Dice for pix2pix) is scored on the test slices. Writes `<out>/results.json` and `<out>/results.md`: for SR,
test PSNR / SSIM of the GAN, of the L1-only generator and of bicubic interpolation; for pix2pix, PSNR of the tissue
map and Dice of its argmax per tissue. On the 2-core CPU the six default runs take about 40 minutes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from medjax.config import build_config

CONFIG = "gan_icbm152"  # medjax.configs.gan_icbm152


def run(out: pathlib.Path, variants: list[str], steps: int | None) -> list[dict]:
    from medjax.train import loop

    rows = []
    for variant in variants:
        overrides = [f"--config.num_train_steps={steps}"] if steps else []
        config = build_config(f"{CONFIG}:{variant}", overrides)
        workdir = out / variant
        t0 = time.perf_counter()
        loop.train(config, str(workdir))
        result = loop.evaluate(config, str(workdir), which="best", split="test")
        result.update(variant=variant, train_s=time.perf_counter() - t0, steps=config.num_train_steps)
        print(json.dumps(result), flush=True)
        rows.append(result)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| variant | steps | test PSNR dB | test SSIM | bicubic PSNR / SSIM | Dice CSF / GM / WM (mean) | "
             "best step |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        bicubic = (f"{r['bicubic_psnr']:.2f} / {r['bicubic_ssim']:.4f}" if "bicubic_psnr" in r else "—")
        dice = (f"{r['dice_1']:.3f} / {r['dice_2']:.3f} / {r['dice_3']:.3f} ({r['dice_mean']:.3f})"
                if "dice_mean" in r else "—")
        lines.append(f"| {r['variant']} | {r['steps']} | {r['psnr']:.2f} | {r.get('ssim', float('nan')):.4f} | "
                     f"{bicubic} | {dice} | {r['step']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from medjax.configs.gan_icbm152 import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=None, help="override num_train_steps (default: the config's)")
    args = p.parse_args(argv)
    import absl.logging

    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts

    absl.logging.set_verbosity(absl.logging.ERROR)
    rows = run(args.out, args.variants, args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
