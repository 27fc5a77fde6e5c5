"""`medjax train | evaluate | keys | import-weights | deid | bench`: the command line.

    medjax train --config quickstart --workdir runs/quickstart [--config.key=value ...]
    medjax evaluate --config quickstart --workdir runs/quickstart
    medjax explain --config quickstart --workdir runs/quickstart --method gradcam|gradcampp|saliency|smoothgrad|ig|
        guided|occlusion [--layer NAME] [--split test] [--num 8] [--target CLASS]
    medjax keys [SECTION] [--config quickstart]
    medjax import-weights --arch resnet18 --layout torchvision --in resnet18.pth --out weights/resnet18
        [--num_classes K] [--in_channels C] [--spatial_dims 2|3] [--inflate_mode average|center]
        [--model.key=value ...] [--overwrite]
    medjax deid IN_DIR OUT_DIR [--profile basic] [--keep-dates | --shift-dates SEED] [--map FILE]
        [--blank-burned-in COL0,ROW0,COL1,ROW1 ...] [--secret-file FILE]
    medjax bench [--quick | --smoke] [--cases NAME ...] [--precision float32|bfloat16] --out DIR
    medjax bench --protocol quickstart|medmnist_resnet18 [--quick] [--target X] [--set key=value] --out DIR

`import-weights` converts a PyTorch weight file into a medjax pretrained-weights directory (strict: every tensor
used, every leaf filled), which `--config.init.from=DIR --config.init.layout=medjax` then starts a run from.
`--in_channels` other than the file's adapts the first convolution (`medjax.transfer.adapt.adapt_input_channels`:
`--in_channels 1` with RGB weights sums it over the colour channels), and `--spatial_dims 3` with 2D weights
inflates every convolution kernel to 3D (`medjax.transfer.adapt.inflate_kernel`, mode `--inflate_mode`).

`deid` writes a de-identified copy of every DICOM file under IN_DIR to the same path under OUT_DIR (DICOM PS3.15
Annex E Basic Profile: `medjax.privacy.deid`) and OUT_DIR/deid_report.csv, one row per input file.
`explain` restores the best checkpoint and explains the first examples of a split with one method
(`medjax.explain`): WORKDIR/explain/METHOD.png, NIfTI heat maps for 3D inputs, and explain.json with each map's
deletion / insertion AUC (faithfulness).

`bench` times medjax against PyTorch (eager and torch.compile) on the same models and weights at the shapes the
experiment configs train on (`medjax.bench`; needs torch and monai: `pip install 'medjax[bench]'`) ->
DIR/bench.json, bench.md, bench.png; with `--protocol`, a whole experiment in both frameworks, wall time and time to
a target validation metric (`medjax/bench/protocol.py`) -> DIR/protocol.json, protocol.md.

Errors a user can cause print one line `medjax: error: ...` and exit with status 2; a diverged run exits 3; a
disk that fills while a checkpoint is written exits 4 (the partial save removed, the last checkpoint intact); when
a process of a multi-process run is lost, every other process prints which one and how to resume, and exits 5
(`medjax.train.supervisor`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from medjax.errors import MedjaxError

_OVERRIDES = """Any config key can be set after the options: --config.KEY=VALUE (dotted, e.g.
--config.optimizer.learning_rate=3e-4 --config.data.root=/data/Task04_Hippocampus); values are parsed as Python
literals, and a key the config does not have is an error."""

_EPILOGS = {
    "train": """examples:
  medjax train --config quickstart --workdir runs/quickstart
  medjax train --config quickstart:tiny --workdir runs/tiny --config.num_train_steps=20
  medjax train --config msd_unet3d --workdir runs/hippo --config.data.root=DIR --num_cpu_devices 4

Rerunning the same command resumes from the latest checkpoint.

""" + _OVERRIDES,
    "evaluate": """examples:
  medjax evaluate --config quickstart --workdir runs/quickstart
  medjax evaluate --config quickstart --workdir runs/quickstart --checkpoint latest --split val
  medjax evaluate --config quickstart --workdir runs/quickstart --calibrate --subgroups meta.csv
  medjax evaluate --config quickstart --workdir runs/quickstart --uncertainty tta --samples 8 \
      --config.augment.transforms=flip,rot90

""" + _OVERRIDES,
    "explain": """examples:
  medjax explain --config synthetic:classification --workdir runs/cls --method gradcam
  medjax explain --config medmnist_resnet18:3d --workdir runs/organ3d --method ig --num 4 --target 2
  medjax explain --config quickstart --workdir runs/quickstart --method occlusion --layer dec1 \\
      --config.explain.occlusion_window=16

--layer (gradcam, gradcampp) is a module path such as stage4_block2 or stage4_block2/conv2; default: the last
top-level feature map before the output. Method options (integration steps, noise draws, occlusion window, the
baseline, the evaluations in flight) are the config's explain section: medjax keys explain.

""" + _OVERRIDES,
    "import-weights": """examples:
  medjax import-weights --arch resnet18 --layout torchvision --in resnet18.pth --out weights/resnet18
  medjax import-weights --arch resnet18 --layout torchvision --in resnet18.pth --out weights/r18_1ch \\
      --in_channels 1 --num_classes 2
  then: medjax train ... --config.init.from=weights/resnet18 --config.init.layout=medjax

Model keys go after the options as --model.KEY=VALUE (e.g. --model.stem=small).""",
    "keys": """examples:
  medjax keys                          every section's keys, defaults and docs
  medjax keys optimizer                one section (task.segmentation, data.msd, ...)
  medjax keys --config quickstart      every key of a config with its value there

Each key can be set on train / evaluate as --config.KEY=VALUE.""",
    "deid": """examples:
  medjax deid /pacs/export /share/study1_deid
  medjax deid /pacs/export /share/study1_deid --shift-dates 5813 --map /secure/study1_map.csv
  medjax deid /pacs/us /share/us_deid --blank-burned-in 0,0,800,60 --secret-file /secure/key

DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile (Table E.1-1, 2026c): identifying
attributes removed, emptied or replaced, private tags, curves and overlays removed, UIDs replaced consistently,
one pseudonym per patient, PatientIdentityRemoved=YES. Pixel data is copied byte for byte; images flagged
BurnedInAnnotation=YES are refused unless --blank-burned-in names the regions that hold the text. Not removed:
text burned into unflagged images, faces in 3D renderings, file and folder names. IN_DIR is only read; OUT_DIR
must be new or empty. See docs/privacy.md.""",
    "bench": """examples:
  medjax bench --quick --out runs/bench
  medjax bench --quick --cases medmnist_r18_2d_1ch quickstart_unet --precision bfloat16 --out runs/bench_bf16
  medjax bench --protocol quickstart --out runs/protocol --target 0.9

Needs torch and monai: pip install 'medjax[bench]'.""",
}


def _subparser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                          epilog=_EPILOGS[name], formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser() -> argparse.ArgumentParser:
    from medjax import __version__

    parser = argparse.ArgumentParser(prog="medjax", description=__doc__.split("\n")[0],
                                     epilog="`medjax COMMAND --help` shows each command's options and examples.")
    parser.add_argument("--version", action="version", version=f"medjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "train (or resume) a run"),
                            ("evaluate", "score the best checkpoint on the test split -> WORKDIR/eval.json")):
        p = _subparser(sub, name, help_text)
        p.add_argument("--config", required=True, help="experiment file, optionally file.py:arg (e.g. :tiny)")
        p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, plots")
        p.add_argument("--num_cpu_devices", type=int, default=None, help="fake CPU devices (testing parallelism)")
        p.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process runs)")
        p.add_argument("--num_processes", type=int, default=None)
        p.add_argument("--process_id", type=int, default=None)
        if name == "evaluate":
            p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
            p.add_argument("--split", default="test")
            p.add_argument("--calibrate", action="store_true",
                           help="ECE, MCE, Brier, NLL before and after temperature scaling fit on val (docs/trust.md)")
            p.add_argument("--subgroups", default=None, metavar="CSV",
                           help="per-case metadata case,<columns>: metrics per group with bootstrap CIs")
            p.add_argument("--group-columns", dest="group_columns", default=None, metavar="A,B",
                           help="the --subgroups columns to analyse (default: all)")
            # uncertainty (medjax.train.uncertainty_eval)
            p.add_argument("--uncertainty", choices=("mc_dropout", "tta", "ensemble"), default=None,
                           help="also score S sampled predictions: MC-dropout passes, test-time augmentation draws "
                                "or the ensemble's members -> eval.json 'uncertainty' and plots/")
            p.add_argument("--samples", type=int, default=None,
                           help="MC-dropout passes / TTA draws per member (default 10; an ensemble: its size)")
            p.add_argument("--save-predictions", dest="save_predictions", action="store_true",
                           help="detection: each case's boxes -> WORKDIR/predictions/SPLIT/CASE.json")
    p = _subparser(sub, "explain", "explain a run's predictions on the first examples of a split -> "
                                   "WORKDIR/explain/")
    p.add_argument("--config", required=True, help="experiment file, optionally file.py:arg (e.g. :tiny)")
    p.add_argument("--workdir", required=True, help="the trained run's directory")
    from medjax.explain import METHOD_NAMES

    p.add_argument("--method", required=True, choices=METHOD_NAMES, help="the attribution method")
    p.add_argument("--layer", default=None, help="gradcam / gradcampp: the layer (module path) to explain")
    p.add_argument("--split", default="test")
    p.add_argument("--num", type=int, default=8, help="explain the first NUM examples of the split")
    p.add_argument("--target", type=int, default=None,
                   help="class to explain (default: the predicted class; segmentation: the largest predicted one)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument("--num_cpu_devices", type=int, default=None, help="fake CPU devices (testing parallelism)")
    p = _subparser(sub, "import-weights", "PyTorch weights -> a medjax pretrained-weights directory")
    p.add_argument("--arch", required=True, help="medjax model name (medjax.models.MODELS), e.g. resnet18")
    p.add_argument("--layout", required=True, choices=("torchvision", "monai"), help="the file's naming scheme")
    p.add_argument("--in", dest="src", required=True, help="weight file: .pt/.pth/.bin/.safetensors/.npz")
    p.add_argument("--out", required=True, help="directory to write (must not exist unless --overwrite)")
    p.add_argument("--num_classes", type=int, default=None, help="default: the head's output size in the file")
    p.add_argument("--in_channels", type=int, default=None,
                   help="default: the first convolution's input channels; another count adapts that convolution "
                        "(3 -> 1 sums it over the colour channels)")
    p.add_argument("--spatial_dims", type=int, choices=(2, 3), default=None,
                   help="default: from the first convolution's kernel rank; 3 with 2D weights inflates them")
    p.add_argument("--inflate_mode", choices=("average", "center"), default="center",
                   help="2D -> 3D: repeat along depth and divide (average, I3D) or the middle slice (center)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p = _subparser(sub, "keys", "list the config keys: their defaults, one-line docs and a config's values")
    p.add_argument("section", nargs="?", default=None, help="one section, e.g. optimizer, task.segmentation, data.msd")
    p.add_argument("--config", default=None, help="show this config's value of every key (a name or file.py[:arg])")
    p = _subparser(sub, "deid", "de-identify a folder of DICOM files -> OUT_DIR (+ OUT_DIR/deid_report.csv)")
    p.add_argument("in_dir", metavar="IN_DIR", help="folder of DICOM files, read recursively (never modified)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder outside IN_DIR; mirrors IN_DIR's tree")
    p.add_argument("--profile", choices=("basic",), default="basic",
                   help="PS3.15 Annex E confidentiality profile (the Basic Profile)")
    dates = p.add_mutually_exclusive_group()
    dates.add_argument("--keep-dates", action="store_true",
                       help="keep dates and times (Retain Longitudinal Temporal Information Full Dates Option)")
    dates.add_argument("--shift-dates", metavar="SEED", default=None,
                       help="move every date back by one offset per patient (1-3652 days) derived from SEED; times "
                            "kept (Modified Dates Option). Keep SEED secret: with it the offsets can be recomputed")
    p.add_argument("--map", default=None, metavar="FILE",
                   help="write original -> pseudonym Patient IDs (with date offsets) and UIDs to this CSV, for the "
                        "data controller; refused inside OUT_DIR or IN_DIR")
    p.add_argument("--blank-burned-in", dest="blank_regions", action="append", default=[],
                   metavar="COL0,ROW0,COL1,ROW1",
                   help="de-identify BurnedInAnnotation=YES images by zeroing this pixel rectangle (columns COL0 to "
                        "COL1-1, rows ROW0 to ROW1-1) in every frame; repeatable. Without it they are refused")
    p.add_argument("--secret-file", default=None, metavar="FILE",
                   help="bytes that key new UIDs and pseudonyms, so another run maps the same inputs the same way "
                        "(default: a random key, this run's mapping is its own); keep it outside OUT_DIR")
    p = _subparser(sub, "bench", "benchmark medjax against PyTorch baselines -> DIR/bench.{json,md,png}")
    p.add_argument("--quick", action="store_true",
                   help="fewer warm-up and timed steps (or protocol steps), same shapes")
    p.add_argument("--smoke", action="store_true", help="tiny shapes: seconds (tests; the numbers mean nothing)")
    p.add_argument("--cases", nargs="+", default=None, metavar="NAME", help="a subset of the cases")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before timing (default per mode)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default per mode)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: medjax's mixed-precision policy against torch.autocast(bfloat16)")
    p.add_argument("--protocol", default=None, metavar="NAME",
                   help="run a whole experiment in both frameworks instead: quickstart | medmnist_resnet18")
    p.add_argument("--target", type=float, default=None, help="--protocol: the validation metric to reach")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="--protocol: a config override for both frameworks (repeatable)")
    p.add_argument("--out", required=True, help="directory for bench outputs")
    return parser


def _model_overrides(extra: list[str]) -> dict:
    """`--model.key=value` / `--model.key value` pairs (values parsed as Python literals when they parse)."""
    from medjax.config import _parse_value

    kwargs, i = {}, 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--model.") or arg == "--model.":
            raise MedjaxError(f"unrecognized argument: {arg} (import-weights takes --model.key=value for the "
                              f"model's constructor arguments)")
        body = arg[len("--model."):]
        if "=" in body:
            key, value = body.split("=", 1)
        else:
            if i + 1 >= len(extra):
                raise MedjaxError(f"missing value for {arg}")
            key, value = body, extra[i + 1]
            i += 1
        parsed = _parse_value(value)
        kwargs[key] = tuple(parsed) if isinstance(parsed, list) else parsed
        i += 1
    return kwargs


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


HEAD_PATHS = ("params/head/kernel", "params/final_conv/kernel", "params/classifier/kernel")


def import_weights_command(args: argparse.Namespace, extra: list[str]) -> dict:
    """Build `--arch`, import `--in` strictly through `--layout`, write `--out`; returns the meta written."""
    import os

    import jax
    import jax.numpy as jnp

    from medjax.models import build_model
    from medjax.transfer import get_layout, read_state_dict
    from medjax.transfer.adapt import import_adapted
    from medjax.transfer.convert import locate, to_medjax
    from medjax.transfer.pretrained import save_pretrained

    model_kwargs = _model_overrides(extra)
    if os.path.exists(args.out) and not args.overwrite:
        raise MedjaxError(f"--out {args.out} already exists (pass --overwrite to replace it)")
    layout = get_layout(args.arch, args.layout)
    state = read_state_dict(args.src)
    num_classes, in_channels, spatial_dims = args.num_classes, args.in_channels, args.spatial_dims
    first_conv = None
    for key, value in state.items():  # file order: the stem comes first
        where = locate(key, layout)
        if where in (None, "drop") or key.rpartition(".")[2] != "weight":
            continue
        path, kind = where
        if kind == "conv" and first_conv is None:
            first_conv = (key, tuple(value.shape))
        if num_classes is None and path in HEAD_PATHS:
            num_classes = int(to_medjax(value, kind, "weight").shape[-1])
    if first_conv is None and (in_channels is None or spatial_dims is None):
        raise MedjaxError(f"{args.src}: no convolution found to infer the input from; pass --in_channels and "
                          f"--spatial_dims")
    if in_channels is None:
        in_channels = int(first_conv[1][1])
    if spatial_dims is None:
        spatial_dims = len(first_conv[1]) - 2
        if spatial_dims not in (2, 3):
            raise MedjaxError(f"{args.src}: first convolution {first_conv[0]!r} has shape {first_conv[1]}; pass "
                              f"--spatial_dims")
    if num_classes is None:
        raise MedjaxError(f"{args.src}: cannot tell the number of classes (no head tensor); pass --num_classes")
    file_dims = len(first_conv[1]) - 2 if first_conv else spatial_dims
    if file_dims == 3 and spatial_dims == 2:
        raise MedjaxError(f"{args.src}: first convolution {first_conv[0]!r} is 3D (shape {first_conv[1]}); 3D "
                          f"weights cannot become a 2D model")
    adapt_channels = first_conv is not None and in_channels != first_conv[1][1]
    inflate = args.inflate_mode if (file_dims == 2 and spatial_dims == 3) else None
    try:
        model = build_model(args.arch, num_classes=num_classes, **model_kwargs)
    except TypeError as e:
        raise MedjaxError(f"--model arguments for {args.arch!r}: {e}") from e
    x = jax.ShapeDtypeStruct((1, *(64,) * spatial_dims, in_channels), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    target = {k: v for k, v in abstract.items() if k in ("params", "batch_stats")}
    variables, report, plan = import_adapted(state, layout, target, input_channels=adapt_channels, inflate=inflate,
                                             strict=True, source=args.src)
    adapted = {}
    channel_steps = sorted({s[1:] for steps in plan.values() for s in steps if s[0] == "channels"})
    if channel_steps:
        adapted["input_channels"] = {"from": channel_steps[0][0], "to": channel_steps[0][1],
                                     "kernels": sorted(p for p, steps in plan.items()
                                                       if any(s[0] == "channels" for s in steps))}
    inflated = sorted(p for p, steps in plan.items() if any(s[0] == "inflate" for s in steps))
    if inflated:
        adapted["inflate"] = {"mode": inflate, "kernels": len(inflated)}
    meta = {
        "arch": args.arch, "layout": args.layout, "source": os.path.abspath(args.src), "sha256": _sha256(args.src),
        "num_classes": num_classes, "in_channels": in_channels, "spatial_dims": spatial_dims, "model": model_kwargs,
        "report": {k: len(getattr(report, k)) for k in ("loaded", "folded", "dropped", "unused", "missing",
                                                        "skipped")},
        "adapted": adapted,
    }
    save_pretrained(args.out, variables, meta, overwrite=args.overwrite)
    from medjax.transfer.adapt import describe

    note = f"; adapted: {describe(plan)}" if plan else ""
    print(f"medjax: imported {args.src} -> {args.out}: {report.summary()}{note}", file=sys.stderr)
    return meta


def deid_command(args: argparse.Namespace, extra: list[str]) -> int:
    """`medjax deid`: `medjax.privacy.deid.deidentify_tree` over IN_DIR; a summary line on stderr."""
    if extra:
        raise MedjaxError(f"unrecognized arguments for deid: {' '.join(extra)}")
    from medjax.privacy import deid

    regions = [deid.parse_region(r) for r in args.blank_regions]
    dates = "keep" if args.keep_dates else "shift" if args.shift_dates is not None else "remove"
    rows = deid.deidentify_tree(args.in_dir, args.out_dir, dates=dates, shift_seed=args.shift_dates,
                                map_path=args.map, blank_regions=regions, secret_file=args.secret_file)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("deidentified", "skipped", "refused", "failed")}
    print(f"medjax: deid: {counts['deidentified']} of {len(rows)} file(s) de-identified -> {args.out_dir} ("
          + ", ".join(f"{n} {k}" for k, n in counts.items() if k != "deidentified")
          + f"); report: {os.path.join(args.out_dir, deid.REPORT_NAME)}", file=sys.stderr)
    return 0


def bench_command(args: argparse.Namespace, extra: list[str]) -> int:
    """`medjax bench`: the harness is `medjax.bench` (torch and monai: the `bench` extra)."""
    if extra:
        raise MedjaxError(f"unrecognized arguments for bench: {' '.join(extra)}")
    if args.quick and args.smoke:
        raise MedjaxError("--quick and --smoke are exclusive")
    import importlib.util

    missing = [m for m in ("torch", "monai") if importlib.util.find_spec(m) is None]
    if missing:
        raise MedjaxError(f"medjax bench compares against PyTorch and needs {' and '.join(missing)}: "
                          "pip install 'medjax[bench]' (torch, monai)")
    import absl.logging

    from medjax.bench import bench

    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        bench.run_from_args(args)
    except bench.BenchError as e:
        raise MedjaxError(str(e)) from e
    return 0


def explain_command(args: argparse.Namespace, overrides: list[str]) -> int:
    """`medjax explain`: medjax.explain.run on the run's checkpoint; prints the method's explain.json entry."""
    from medjax.config import build_config

    config = build_config(args.config, overrides)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    from medjax.train import distributed

    distributed.configure_devices(args.num_cpu_devices)
    from medjax.explain.run import explain

    entry = explain(config, args.workdir, args.method, args.layer, args.split, args.num, args.target,
                    args.checkpoint)
    print(json.dumps(entry, indent=2, sort_keys=True))
    return 0


def keys_command(args: argparse.Namespace, overrides: list[str]) -> int:
    """`medjax keys`: the schema's table, or a loaded config's values of its keys."""
    from medjax import schema

    if args.config is None:
        if overrides:
            raise MedjaxError(f"unrecognized arguments for keys: {' '.join(overrides)} (overrides need --config)")
        print(schema.render_table(schema.table(args.section)))
        return 0
    from medjax.config import build_config

    print(schema.render_values(build_config(args.config, overrides), args.section))
    return 0


def run(argv: list[str]) -> int:
    args, overrides = _parser().parse_known_args(argv)
    if args.command == "bench":
        return bench_command(args, overrides)
    if args.command == "keys":
        return keys_command(args, overrides)
    if args.command == "deid":
        return deid_command(args, overrides)
    if args.command == "explain":
        return explain_command(args, overrides)
    if args.command == "import-weights":
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
        print(json.dumps(import_weights_command(args, overrides), indent=2, sort_keys=True))
        return 0
    from medjax.config import build_config

    config = build_config(args.config, overrides)  # validate before touching JAX backends
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax's INFO/WARNING chatter is not for CLI users
    from medjax.train import distributed, supervisor

    which = distributed.requested(args.coordinator_address, args.num_processes, args.process_id)
    if which is not None and not os.environ.get(supervisor.SUPERVISED_VAR):
        import shlex

        return supervisor.supervise([sys.executable, "-m", "medjax", *argv], *which, args.workdir,
                                    "medjax " + shlex.join(argv))
    distributed.configure_devices(args.num_cpu_devices)
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from medjax.train import loop  # one loop; the config's task family is picked by medjax.train.family

    if args.command == "train":
        loop.train(config, args.workdir)
    else:
        result = loop.evaluate(config, args.workdir, which=args.checkpoint, split=args.split,
                               calibrate=args.calibrate, subgroups=args.subgroups,
                               group_columns=args.group_columns.split(",") if args.group_columns else None,
                               uncertainty=args.uncertainty, samples=args.samples,
                               save_predictions=args.save_predictions)
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    from medjax import configure_cpu

    configure_cpu()  # before anything starts a JAX backend
    from medjax.train.checkpoint import CheckpointDiskFull
    from medjax.train.loop import TrainingDiverged

    try:
        return run(sys.argv[1:] if argv is None else argv)
    except TrainingDiverged as e:
        print(f"medjax: error: {e}", file=sys.stderr)
        return 3
    except CheckpointDiskFull as e:
        print(f"medjax: error: {e}", file=sys.stderr)
        return 4
    except MedjaxError as e:
        print(f"medjax: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from medjax.train import distributed, supervisor

        if supervisor.is_worker() and supervisor.collective_failed(e):  # a peer is gone: the supervisor reports
            return supervisor.await_verdict(e, distributed.lost_timeout_s() + 30)
        raise


if __name__ == "__main__":
    sys.exit(main())
