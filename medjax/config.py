"""Experiment configs: load a `get_config()` file and apply `--config.key=value` overrides.

Configs are `ml_collections.ConfigDict`s returned by `get_config(arg=None)` in a Python file
(`experiments/quickstart.py`, or `experiments/quickstart.py:tiny` to pass `arg="tiny"`). Overrides follow the
ml_collections config-flag convention; an unknown key or a value of the wrong type is a `MedjaxError` that names
the key, so a typo can never silently run the default.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Iterable

import ml_collections

from medjax.errors import MedjaxError


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load `path.py` or `path.py:arg` and return its `get_config(arg)` (unlocked keys stay locked)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise MedjaxError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"medjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a config file that does not import is the user's to fix
        raise MedjaxError(f"config file {path} failed to import: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise MedjaxError(f"config file {path} has no get_config() function")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise MedjaxError(f"get_config() in {path} must return an ml_collections.ConfigDict")
    config.lock()
    return config


def _parse_value(text: str) -> Any:
    """Python literal if it parses (`3`, `1e-3`, `(32, 64)`, `True`, `None`), else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set dotted `key` to the value parsed from `text`; unknown keys and type mismatches raise MedjaxError."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise MedjaxError(f"unknown config key: config.{'.'.join(parts[: i + 1])}")
        node = node[part]
    leaf = parts[-1]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise MedjaxError(f"unknown config key: config.{key}")
    value = _parse_value(text)
    current = node[leaf]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, (list, tuple)) and isinstance(value, str) and all(isinstance(v, str) for v in current):
        value = tuple(v.strip() for v in value.split(",") if v.strip())  # `--config.augment.transforms=flip,affine`
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        value = type(current)(value)
    if isinstance(current, str) and not isinstance(value, str):
        value = text
    try:
        with node.unlocked():
            node[leaf] = value
    except (TypeError, ValueError) as e:
        raise MedjaxError(f"config.{key}: cannot set {text!r} ({e})") from e


def parse_overrides(argv: Iterable[str]) -> list[tuple[str, str]]:
    """Split `--config.a.b=v` / `--config.a.b v` arguments into (key, value) pairs; anything else is an error."""
    args = list(argv)
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--config."):
            raise MedjaxError(f"unrecognized argument: {arg}")
        body = arg[len("--config."):]
        if "=" in body:
            key, value = body.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise MedjaxError(f"missing value for --config.{body}")
            key, value = body, args[i + 1]
            i += 1
        pairs.append((key, value))
        i += 1
    return pairs


def build_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Load a config file and apply command-line overrides."""
    config = load_config(spec)
    for key, value in parse_overrides(overrides):
        apply_override(config, key, value)
    return config
