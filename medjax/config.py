"""Experiment configs: load a `get_config()` file and apply `--config.key=value` overrides.

Configs are `ml_collections.ConfigDict`s returned by `get_config(arg=None)`: a module shipped in `medjax.configs`,
named (`quickstart`, or `quickstart:tiny` to pass `arg="tiny"`), or a user's file (`path/to/mine.py[:arg]`, which
may import and extend a shipped one). Overrides follow the
ml_collections config-flag convention; an unknown key or a value of the wrong type is a `MedjaxError` that names
the key, so a typo can never silently run the default.

Two optional sections exist in every loaded config, filled with inactive defaults where the file leaves them out
(so `--config.init.from=...` and `--config.finetune.freeze=...` work with any experiment), see `optional_sections`:
`config.init` (start from pretrained weights, `medjax.train.init_from`), `config.finetune` (frozen groups,
per-group learning rates, frozen BatchNorm statistics, linear probing; `medjax.train.finetune`) and
`config.compute` (mixed precision, rematerialisation, gradient accumulation; `medjax.train.compute`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
from collections.abc import Iterable
from typing import Any

import ml_collections

from medjax.errors import MedjaxError
from medjax.train import compute


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
    optional_sections(config)
    config.lock()
    return config


def init_defaults() -> ml_collections.ConfigDict:
    """`config.init`: where the first step's weights come from (a resumed run ignores it).

    from     path; "" = random initialisation. With layout "medjax": a medjax workdir (its best checkpoint, else
             its latest), a directory written by `medjax import-weights`, or an .npz / .safetensors whose keys are
             '/'-joined medjax paths ("params/stem_conv/kernel", "batch_stats/stem_bn/mean"). With "torchvision"
             or "monai": a PyTorch weight file (.pt/.pth/.bin/.safetensors/.npz) mapped by that layout's table.
    layout   "medjax" | "torchvision" | "monai"
    skip     fnmatch patterns on medjax paths ("head/*" or "params/head/*") kept at their fresh initialisation,
             e.g. the head when the number of classes differs; a pattern that matches nothing is an error
    strict   every leaf of the model must get a value and every source entry must be used (outside `skip`)
    adapt_input_channels  a kernel differing from the model's in its input channels only (RGB weights, grey
             data) is adapted, keeping its sum over the input channels (3 -> 1: the sum), instead of failing
    inflate  2D kernels for a 3D model are inflated along depth (mode `inflate_mode`) instead of failing
    inflate_mode  "center" (default: middle slice, zeros elsewhere; keeps the 2D function exactly) | "average" (I3D)
    """
    c = ml_collections.ConfigDict()
    c["from"] = ""  # `from` is a Python keyword: read it as config.init["from"]
    c.layout = "medjax"
    c.skip = ()
    c.strict = True
    c.adapt_input_channels = False
    c.inflate = False
    c.inflate_mode = "center"
    return c


def finetune_defaults() -> ml_collections.ConfigDict:
    """`config.finetune`: the defaults train every parameter at the configured learning rate (today's behaviour,
    bit for bit). Fields (see `medjax.train.finetune` for the mechanics):

    freeze              fnmatch patterns on '/'-joined parameter paths without "params/" ("stem_*",
                        "stage1_*/*"): zero updates, no weight decay, no optimizer state
    groups              learning-rate multipliers, "pattern=factor" strings (("stem_*=0.1", "stage1_*=0.5")) or a
                        dict; the first matching group wins; learning rate = schedule(step) * factor
    freeze_batch_stats  BatchNorm normalises with its running statistics in training and never updates them
    linear_probe_steps  N > 0: steps 0..N-1 train only the `head` (BatchNorm statistics frozen), then everything
    head                patterns naming the head for the linear probe
    """
    c = ml_collections.ConfigDict()
    c.freeze = ()
    c.groups = ()
    c.freeze_batch_stats = False
    c.linear_probe_steps = 0
    c.head = ("head/*", "final_conv/*", "classifier/*")
    return c


OPTIONAL_SECTIONS = {"init": init_defaults, "finetune": finetune_defaults, "compute": compute.defaults}
# Top-level keys every config has. resume_mismatch_ok: resume a workdir whose stored config.json differs in a key
# that defines the model or data (`medjax.train.run_config`).
TOP_LEVEL_DEFAULTS = {"resume_mismatch_ok": False}


def check_training_length(config: ml_collections.ConfigDict | dict) -> None:
    """`num_epochs` and `num_train_steps` both set the length of training: exactly one may be positive."""
    epochs, steps = config.get("num_epochs", 0), config.get("num_train_steps", 0)
    if epochs > 0 and steps > 0:
        raise MedjaxError(
            f"config.num_train_steps={steps} and config.num_epochs={epochs} both set the length of training; "
            "set the other one to 0 (e.g. --config.num_epochs=0 --config.num_train_steps=60)")


def optional_sections(config: ml_collections.ConfigDict) -> None:
    """Add `config.init` / `config.finetune` / `config.compute` (and any field a file's own section leaves out) with
    their defaults."""
    with config.unlocked():
        for key, value in TOP_LEVEL_DEFAULTS.items():
            if key not in config:
                config[key] = value
        for name, defaults in OPTIONAL_SECTIONS.items():
            if name not in config:
                config[name] = defaults()
            elif isinstance(config[name], ml_collections.ConfigDict):
                section = config[name]
                with section.unlocked():
                    for key, value in defaults().items():
                        if key not in section:
                            section[key] = value


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
    check_training_length(config)
    return config
