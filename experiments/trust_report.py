"""Can the models' predictions be trusted? Explanations, calibration, uncertainty and a subgroup audit with a known
bias, on real MRI (the ICBM152 template that ships with nilearn), all through the commands a user runs.

    python -m experiments.trust_report [--quick] [--out runs/trust]      # --tiny: seconds (the tests)

Models (`medjax/configs/trust_icbm152.py`): the small ResNet tissue-patch classifier (16 x 16 patches, CSF / grey /
white matter) and a small quickstart U-Net segmenter (4 mm slices), both with dropout.

1. Explanations (`medjax explain`): every method's maps (PNG) of the first test examples and their mean deletion
   and insertion AUC, against uniform random maps on the same examples (`medjax.explain.faithfulness`).
2. Calibration (`medjax evaluate --calibrate`): ECE, MCE, Brier, NLL before and after temperature scaling on val.
3. Uncertainty (`medjax evaluate --uncertainty`): MC-dropout and TTA (flip, rot90) on the single model against a
   5-member deep ensemble trained as one vmapped program (`config.ensemble.size=5`): accuracy / Dice, ECE of the
   mean prediction, mean entropy and mutual information, the referral curve by predictive entropy.
4. Subgroups (`medjax evaluate --subgroups site.csv`): a scanner-like shift (+3 z-units) on every second CSF
   training patch ("site B" only ever shows CSF: `trust_icbm152:biased`) against the same shift on every second
   training patch of every class (`trust_icbm152:control`); at test every second patch of every class is at site
   B. The report by site, with bootstrap intervals, must find the gap in the biased model and not in the control.

Writes `<out>/results.json` (every number, each with the commands that made it), `<out>/results.md` (the tables)
and the runs' figures under `<out>/<run>/explain` and `<out>/<run>/plots`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import time

import numpy as np

from medjax.config import build_config
from medjax.train import loop

METHODS = ("gradcam", "gradcampp", "saliency", "guided", "smoothgrad", "ig", "occlusion")
UNCERTAINTY = ("mc_dropout", "tta", "ensemble")
TTA = "--config.augment.transforms=flip,rot90"
REFERRAL_SHOWN = (0.0, 0.1, 0.2, 0.5)


@dataclasses.dataclass(frozen=True)
class Size:
    classifier_steps: int
    segmenter_steps: int
    num: int  # explained test examples (segmenter: at most 4)
    samples: int  # MC-dropout passes / TTA draws
    resamples: int  # bootstrap resamples of the subgroup intervals
    members: int = 5
    methods: tuple[str, ...] = METHODS
    uncertainty: tuple[str, ...] = UNCERTAINTY
    models: tuple[str, ...] = ("classifier", "segmenter")
    variants: tuple[str, ...] = ("biased", "control")


SIZES = {
    "full": Size(300, 200, 8, 10, 1000),
    "quick": Size(100, 60, 4, 5, 200),
    # the test's seconds: the classifier only, one method, MC-dropout only, the biased run only
    "tiny": Size(4, 4, 2, 2, 20, methods=("gradcam",), uncertainty=("mc_dropout",), models=("classifier",),
                 variants=("biased",)),
}


class Runner:
    """Runs configs by name with command-line overrides, as `medjax train / evaluate` would, and logs each command."""

    def __init__(self, out: pathlib.Path, size: str):
        self.out, self.size, self.suffix = out, size, ",tiny" if size == "tiny" else ""
        self.commands: list[str] = []

    def config(self, variant: str, overrides: list[str]):
        return build_config(f"trust_icbm152:{variant}{self.suffix}", overrides)

    def _log(self, verb: str, variant: str, run: str, overrides: list[str], flags: str = "") -> None:
        self.commands.append(" ".join([f"medjax {verb} --config trust_icbm152:{variant}{self.suffix}",
                                       f"--workdir {self.out / run}", *overrides, flags]).strip())

    def train(self, variant: str, run: str, overrides: list[str]) -> None:
        self._log("train", variant, run, overrides)
        loop.train(self.config(variant, overrides), str(self.out / run))

    def evaluate(self, variant: str, run: str, overrides: list[str], **flags) -> dict:
        self._log("evaluate", variant, run, overrides,
                  " ".join(f"--{k}" if v is True else f"--{k} {v}" for k, v in flags.items()))
        return loop.evaluate(self.config(variant, overrides), str(self.out / run), **flags)

    def explain(self, variant: str, run: str, overrides: list[str], method: str, num: int) -> dict:
        from medjax.explain.run import explain

        self._log("explain", variant, run, overrides, f"--method {method} --num {num}")
        return explain(self.config(variant, overrides), str(self.out / run), method, num=num)


def random_map_auc(config, workdir: str, num: int) -> dict:
    """Deletion / insertion AUC of uniform random maps on the examples `medjax explain --num` explains (same
    targets: the predicted class; segmentation: its predicted region)."""
    from medjax.explain import faithfulness
    from medjax.explain.run import choose_targets
    from medjax.train.parallel import replicated_to_host

    s = loop.setup(config, workdir)
    canonical, _, _ = loop.restore_checkpoint(s, workdir)
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    apply = functools.partial(s.task.model.apply, train=False)
    x = np.asarray(s.splits["test"]["image"][:num], np.float32)
    targets, region = choose_targets(np.asarray(apply(variables, x)), None)
    cfg = s.config.explain
    curves = faithfulness.deletion_insertion(apply, variables, x, faithfulness.random_maps(config.seed, x.shape[:-1]),
                                             targets, region, steps=cfg.faithfulness_steps, baseline=cfg.baseline,
                                             batch_size=cfg.batch_size or None)
    return {"mean_deletion_auc": float(np.mean(curves["deletion_auc"])),
            "mean_insertion_auc": float(np.mean(curves["insertion_auc"]))}


def explanations(r: Runner, variant: str, run: str, overrides: list[str], num: int, methods: tuple[str, ...]
                 ) -> dict:
    rows = {}
    for method in methods:
        t0 = time.perf_counter()
        entry = r.explain(variant, run, overrides, method, num)
        rows[method] = {"mean_deletion_auc": entry["mean_deletion_auc"],
                        "mean_insertion_auc": entry["mean_insertion_auc"],
                        "seconds": time.perf_counter() - t0}
    rows["random"] = random_map_auc(r.config(variant, overrides), str(r.out / run), num)
    rows["figures"] = [f"{run}/explain/{m}.png" for m in methods]
    return rows


CALIBRATION_KEYS = ("ece", "ece_mass", "mce", "brier", "nll")


def uncertainty_row(section: dict, score: str) -> dict:
    curve = {round(p["fraction"], 2): p[score] for p in section["referral"]["entropy"]}
    return {"metrics": section["metrics"], "calibration": section.get("calibration"),
            "mean_entropy": section["mean_entropy"], "mean_mutual_information": section["mean_mutual_information"],
            "referral_entropy": {str(f): curve[f] for f in REFERRAL_SHOWN},
            "plots": section["plots"]}


def model_report(r: Runner, variant: str, steps: int, size: Size, score: str) -> dict:
    """One model kind: a single dropout model (explained, calibrated, MC-dropout, TTA) and a 5-member ensemble."""
    base = [f"--config.num_train_steps={steps}"]
    num = size.num if variant == "classifier" else min(size.num, 4)
    single, ensemble = f"{variant}", f"{variant}_ensemble"
    t0 = time.perf_counter()
    r.train(variant, single, base)
    out: dict = {"train_s": time.perf_counter() - t0}
    calibrated = r.evaluate(variant, single, base, calibrate=True)
    out["calibration"] = {k: {"before": calibrated[k], "after": calibrated[f"{k}_calibrated"]}
                          for k in CALIBRATION_KEYS}
    out["calibration"]["temperature"] = calibrated["temperature"]
    out["test"] = {k: v for k, v in calibrated.items() if not isinstance(v, (dict, list))}
    out["explain"] = explanations(r, variant, single, base, num, size.methods)
    rows = {}
    if "mc_dropout" in size.uncertainty:
        rows["mc_dropout"] = r.evaluate(variant, single, base, uncertainty="mc_dropout", samples=size.samples)
    if "tta" in size.uncertainty:
        rows["tta"] = r.evaluate(variant, single, [*base, TTA], uncertainty="tta", samples=size.samples)
    if "ensemble" in size.uncertainty:
        members = [*base, f"--config.ensemble.size={size.members}"]
        t0 = time.perf_counter()
        r.train(variant, ensemble, members)
        out["ensemble_train_s"] = time.perf_counter() - t0
        rows["ensemble"] = r.evaluate(variant, ensemble, members, uncertainty="ensemble", calibrate=True)
    out["uncertainty"] = {m: uncertainty_row(rows[m]["uncertainty"], score) for m in size.uncertainty}
    if "ensemble" in rows and score == "dice":  # segmentation: voxel ECE is --calibrate's (of the mean prediction)
        out["uncertainty"]["ensemble"]["calibration"] = {k: rows["ensemble"][k] for k in CALIBRATION_KEYS}
    return out


def write_sites(r: Runner, variant: str, path: pathlib.Path) -> dict:
    """The metadata CSV of the test split: `case,site` (case = position in the split, site A or B)."""
    from medjax.data.icbm152_patches import CLASS_NAMES, site_b
    from medjax.data.sources import load_splits

    labels = load_splits(r.config(variant, []).data).splits["test"]["label"]
    at_b = site_b(labels, range(len(CLASS_NAMES)))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("case,site\n" + "".join(f"{i},{'B' if b else 'A'}\n" for i, b in enumerate(at_b)))
    tmp.replace(path)
    return {"A": int((~at_b).sum()), "B": int(at_b.sum())}


def subgroup_report(r: Runner, size: Size) -> dict:
    sites = r.out / "site.csv"
    out: dict = {"sites": write_sites(r, "biased", sites)}
    overrides = [f"--config.num_train_steps={size.classifier_steps}",
                 f"--config.trust.bootstrap_resamples={size.resamples}"]
    for variant in size.variants:
        r.train(variant, variant, overrides)
        result = r.evaluate(variant, variant, overrides, calibrate=True, subgroups=str(sites))
        site = result["subgroups"]["columns"]["site"]
        out[variant] = {"acc": result["acc"], "auc": result["auc"], "ece": result["ece"],
                        "groups": {g: {"n": v["n"], **{m: v["metrics"][m] for m in ("accuracy", "auc", "ece")}}
                                   for g, v in site["groups"].items()},
                        "gaps": {k: site["gaps"][k] for k in ("accuracy_difference", "auc_difference",
                                                              "ece_difference")},
                        "worst": site["worst"]["accuracy"]}
    return out


def run(out: pathlib.Path, size: str) -> dict:
    plan, r = SIZES[size], Runner(out, size)
    t0 = time.perf_counter()
    result: dict = {"size": size, **dataclasses.asdict(plan)}
    for model, steps, score in (("classifier", plan.classifier_steps, "acc"),
                                ("segmenter", plan.segmenter_steps, "dice")):
        if model in plan.models:
            result[model] = model_report(r, model, steps, plan, score)
    result["subgroups"] = subgroup_report(r, plan)
    result["wall_s"] = time.perf_counter() - t0
    result["commands"] = r.commands
    return result


def _ci(entry: dict) -> str:
    ci = entry.get("ci_bca") or entry.get("ci_percentile")
    return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def tables(result: dict) -> str:
    lines = []
    for kind, score in (("classifier", "acc"), ("segmenter", "dice_mean")):
        if kind not in result:
            continue
        rep = result[kind]
        lines += [f"### {kind}: deletion / insertion AUC (mean over the explained test examples)", "",
                  "| method | deletion AUC (lower is better) | insertion AUC (higher is better) |", "|---|---|---|"]
        for m in (*result["methods"], "random"):
            e = rep["explain"][m]
            lines.append(f"| {m} | {e['mean_deletion_auc']:.3f} | {e['mean_insertion_auc']:.3f} |")
        lines += ["", f"### {kind}: calibration on test (temperature {rep['calibration']['temperature']:.3f}, fit on "
                      "val)", "", "| | ECE | ECE (equal mass) | MCE | Brier | NLL |", "|---|---|---|---|---|---|"]
        for when in ("before", "after"):
            lines.append(f"| {when} | " + " | ".join(f"{rep['calibration'][k][when]:.3f}" for k in CALIBRATION_KEYS)
                         + " |")
        ref = " | ".join(f"{score.split('_')[0]} @ {int(f * 100)}% referred" for f in REFERRAL_SHOWN[1:])
        lines += ["", f"### {kind}: uncertainty", "",
                  f"| method | {score} | ECE | mean entropy | mean MI | {ref} |",
                  "|---" * (5 + len(REFERRAL_SHOWN[1:])) + "|"]
        for m in result["uncertainty"]:
            u = rep["uncertainty"][m]
            ece = u["calibration"]["ece"] if u["calibration"] else None
            lines.append(f"| {m} | {u['metrics'][score]:.3f} | " + ("-" if ece is None else f"{ece:.3f}") +
                         f" | {u['mean_entropy']:.3f} | {u['mean_mutual_information']:.3f} | " +
                         " | ".join(f"{u['referral_entropy'][str(f)]:.3f}" for f in REFERRAL_SHOWN[1:]) + " |")
        lines.append("")
    sub = result["subgroups"]
    lines += ["### subgroups by site (test; BCa 95% intervals)", "",
              "| training | site A accuracy | site B accuracy | accuracy gap (max - min) | site A ECE | site B ECE |",
              "|---|---|---|---|---|---|"]
    for variant in result["variants"]:
        g = sub[variant]["groups"]
        lines.append(f"| {variant} | {_ci(g['A']['accuracy'])} | {_ci(g['B']['accuracy'])} | "
                     f"{_ci(sub[variant]['gaps']['accuracy_difference'])} | {_ci(g['A']['ece'])} | "
                     f"{_ci(g['B']['ece'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/trust"))
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer steps and samples (a few minutes)")
    size.add_argument("--tiny", action="store_true", help="seconds-long run on tiny configs (tests)")
    args = p.parse_args(argv)
    import absl.logging

    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax's read-only restore chatter
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.out, "tiny" if args.tiny else "quick" if args.quick else "full")
    for name, text in (("results.json", json.dumps(result, indent=2) + "\n"), ("results.md", tables(result) + "\n")):
        (args.out / f"{name}.tmp").write_text(text)
        (args.out / f"{name}.tmp").replace(args.out / name)
    print(tables(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
