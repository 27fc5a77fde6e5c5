"""Experiment configs: load a `get_config()` file and apply `--config.key=value` overrides.

Configs are `ml_collections.ConfigDict`s returned by `get_config(arg=None)`: a module shipped in `medjax.configs`,
named (`quickstart`, or `quickstart:tiny` to pass `arg="tiny"`), or a user's file (`path/to/mine.py[:arg]`, which
may import and extend a shipped one). Overrides follow the
ml_collections config-flag convention; an unknown key or a value of the wrong type is a `MedjaxError` that names
the key, so a typo can never silently run the default.

Every loaded config is completed by `medjax.schema.complete` before the overrides: each section's keys at their
one default, so every documented key can be set from the command line (`medjax keys` lists them).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
from collections.abc import Iterable
from typing import Any

import ml_collections

from medjax import schema
from medjax.errors import MedjaxError


def _import_config_module(spec: str):
    """(module, description) for `spec`'s path part: a shipped config name (`medjax.configs`) or a .py file."""
    path, _, _ = spec.partition(":")
    if not path.endswith(".py") and os.sep not in path and "/" not in path:
        from medjax import configs

        if path not in configs.names():
            raise MedjaxError(f"unknown config {path!r}: not a .py file, and the shipped configs are "
                              f"{', '.join(configs.names())}")
        return importlib.import_module(f"medjax.configs.{path}"), f"medjax.configs.{path}"
    if not os.path.isfile(path):
        raise MedjaxError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"medjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a config file that does not import is the user's to fix
        raise MedjaxError(f"config file {path} failed to import: {type(e).__name__}: {e}") from e
    return module, f"config file {path}"


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load `NAME[:arg]` (a config shipped in `medjax.configs`, e.g. `quickstart:tiny`) or `path.py[:arg]` and
    return its `get_config(arg)` with every default section merged in, locked (unknown keys stay errors)."""
    module, where = _import_config_module(spec)
    arg = spec.partition(":")[2]
    if not hasattr(module, "get_config"):
        raise MedjaxError(f"{where} has no get_config() function")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:  # an unknown variant
        raise MedjaxError(f"{where}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise MedjaxError(f"get_config() in {where} must return an ml_collections.ConfigDict")
    return schema.complete(config)


def check_training_length(config: ml_collections.ConfigDict | dict) -> None:
    """`num_epochs` and `num_train_steps` both set the length of training: exactly one may be positive."""
    epochs, steps = config.get("num_epochs", 0), config.get("num_train_steps", 0)
    if epochs > 0 and steps > 0:
        raise MedjaxError(
            f"config.num_train_steps={steps} and config.num_epochs={epochs} both set the length of training; "
            "set the other one to 0 (e.g. --config.num_epochs=0 --config.num_train_steps=60)")


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
    """Set dotted `key` to the value parsed from `text`; unknown keys and type mismatches raise MedjaxError. A
    network section (`model`, `generator`, `discriminator`) holds the constructor's arguments, so a key it does
    not list yet is added (e.g. `--config.model.dropout_rate=0.1`): the constructor rejects a wrong one, naming it."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise MedjaxError(f"unknown config key: config.{'.'.join(parts[: i + 1])}")
        node = node[part]
    leaf = parts[-1]
    network = len(parts) == 2 and parts[0] in ("model", "generator", "discriminator")
    if not isinstance(node, ml_collections.ConfigDict) or (leaf not in node and not network):
        raise MedjaxError(f"unknown config key: config.{key}")
    value = _parse_value(text)
    current = node.get(leaf)
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
    check_training_length(config)
    return config
