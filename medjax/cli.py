"""`medjax train | evaluate`: the command line.

    medjax train --config experiments/quickstart.py --workdir runs/quickstart [--config.key=value ...]
    medjax evaluate --config experiments/quickstart.py --workdir runs/quickstart

Errors a user can cause print one line `medjax: error: ...` and exit with status 2; a diverged run exits 3.
"""

from __future__ import annotations

import argparse
import json
import sys

from medjax.errors import MedjaxError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medjax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "train (or resume) a run"),
                            ("evaluate", "score the best checkpoint on the test split -> WORKDIR/eval.json")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="experiment file, optionally file.py:arg (e.g. :tiny)")
        p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, plots")
        p.add_argument("--num_cpu_devices", type=int, default=None, help="fake CPU devices (testing parallelism)")
        p.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process runs)")
        p.add_argument("--num_processes", type=int, default=None)
        p.add_argument("--process_id", type=int, default=None)
        if name == "evaluate":
            p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
            p.add_argument("--split", default="test")
    return parser


def run(argv: list[str]) -> int:
    args, overrides = _parser().parse_known_args(argv)
    from medjax.config import build_config

    config = build_config(args.config, overrides)  # validate before touching JAX backends
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax's INFO/WARNING chatter is not for CLI users
    from medjax.train import distributed

    distributed.configure_devices(args.num_cpu_devices)
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from medjax.train import loop

    if args.command == "train":
        loop.train(config, args.workdir)
    else:
        result = loop.evaluate(config, args.workdir, which=args.checkpoint, split=args.split)
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    from medjax.train.loop import TrainingDiverged

    try:
        return run(sys.argv[1:] if argv is None else argv)
    except TrainingDiverged as e:
        print(f"medjax: error: {e}", file=sys.stderr)
        return 3
    except MedjaxError as e:
        print(f"medjax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
