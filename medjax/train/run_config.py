"""`WORKDIR/config.json`: the resolved config of every run, and the guard that keeps a resume on the same model
and data.

A checkpoint only means something with the model and data it was trained on. Resuming a workdir with a config
that differs in such a key would load the weights into another network (a shape error deep in Orbax) or,
worse, silently continue on other data (or, for DP-SGD, under another noise multiplier than its accountant
composes: `privacy` holds the resolved sigma). The keys that count are `RUN_DEFINING`; everything else (steps, learning
rate, intervals, evaluation) may change between a run and its resume.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from medjax.errors import MedjaxError

FILENAME = "config.json"
RUN_DEFINING = ("model", "generator", "discriminator", "data", "task", "batch_size", "seed", "ensemble", "privacy")


def _plain(config: ml_collections.ConfigDict | dict) -> dict:
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    return json.loads(json.dumps(d, default=str))  # tuples -> lists, as the file stores them


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def first_mismatch(stored: dict, current: dict) -> tuple[str, Any, Any] | None:
    """The first `RUN_DEFINING` key (dotted, sorted) whose value differs: (key, stored, current), or None."""
    a = {k: v for k, v in _flat(stored).items() if k.split(".")[0] in RUN_DEFINING}
    b = {k: v for k, v in _flat(current).items() if k.split(".")[0] in RUN_DEFINING}
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            return key, a.get(key, "<absent>"), b.get(key, "<absent>")
    return None


def _with_new_defaults(stored: dict) -> dict:
    """`stored` completed by the schema: a key added to medjax after the run was written counts at its default
    (a run trained before `task.surface_metrics` existed resumes as if it had the default), not as a difference.
    A stored config the schema no longer accepts is compared as it is."""
    from medjax import schema

    try:
        return _plain(schema.complete(ml_collections.ConfigDict(stored)))
    except (MedjaxError, TypeError, ValueError, KeyError):
        return stored


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Before resuming `workdir`: its stored config must agree with `config` on every run-defining key, unless
    `config.resume_mismatch_ok`. A workdir without config.json (written by an older medjax) is not checked."""
    path = os.path.join(workdir, FILENAME)
    if config.get("resume_mismatch_ok", False) or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise MedjaxError(f"{path}: cannot read the stored config of the run to resume ({e})") from e
    mismatch = first_mismatch(_with_new_defaults(stored), _plain(config))
    if mismatch is not None:
        key, before, now = mismatch
        raise MedjaxError(
            f"config.{key} is {now!r} but the run in {workdir} was trained with {before!r} ({path}): resuming "
            "would continue its checkpoints on another model or data. Use a new --workdir, or pass "
            "--config.resume_mismatch_ok=True to resume anyway")


def write(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Write the resolved `config` to `workdir/config.json` atomically; returns the path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, FILENAME)
    with open(f"{path}.tmp", "w") as f:
        json.dump(_plain(config), f, indent=2, sort_keys=True)
    os.replace(f"{path}.tmp", path)
    return path
