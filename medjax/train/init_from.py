"""`config.init`: start a run from pretrained weights instead of a random initialisation.

Fields (keys and defaults in `medjax.schema.INIT`):

    from    path; "" (default) = random initialisation
    layout  "medjax" (default): `from` is
              - a medjax workdir: its best checkpoint (`<from>/best`), else its latest (`<from>/checkpoints`);
              - a directory written by `medjax import-weights` (`medjax.transfer.pretrained`);
              - an `.npz` / `.safetensors` file whose keys are '/'-joined medjax variable paths
                ("params/stem_conv/kernel", "batch_stats/stem_bn/mean").
            "torchvision" | "monai": `from` is a PyTorch weight file (`medjax.transfer.read_state_dict`) mapped
            onto this model by that layout's name table (`medjax.transfer.get_layout(config.model.name, layout)`).
    skip    fnmatch patterns on medjax paths ("head/*", "params/head/*") left at their fresh initialisation,
            e.g. the head when the number of classes differs; each must match something
    strict  (default True) every leaf outside `skip` must get a value and every source entry must be used
    adapt_input_channels  (default False) True: a convolution kernel that differs from this model's in its input
            channels only (the convolution reading the image: RGB weights, grey data) is adapted by
            `medjax.transfer.adapt.adapt_input_channels` (3 -> 1: the sum over the input channels; 1 -> 3: repeated
            and divided by 3; in general the sum over the input channels is kept) instead of failing
    inflate (default False) True: a 2D kernel (kh, kw, I, O) where this model has a 3D one (kd, kh, kw, I, O)
            is inflated (`medjax.transfer.adapt.inflate_kernel`, mode `inflate_mode`) instead of failing
    inflate_mode  "center" (default: the 2D kernel in the middle depth slice, zeros elsewhere: a volume of
            identical slices then gives exactly the 2D network's output) | "average" (I3D: repeated along depth
            and divided by kd; border slices see the depth padding); see `medjax.transfer.adapt`

Only `params` and `batch_stats` come from the source; the optimizer state is initialised fresh for them, the step
is 0 and the data order is the run's own. Only a run that starts from scratch reads `from`: a resumed run restores
its own checkpoint. Errors (missing path, unreadable file, shape mismatch, strict mismatches) are `MedjaxError`s
naming the file and the keys; a mismatch that `adapt_input_channels` or `inflate` would fix names that field.
Process 0 prints one line to stderr: what was loaded, skipped, missing, unused or adapted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax.traverse_util import flatten_dict

from medjax import schema
from medjax.errors import MedjaxError
from medjax.transfer import adapt
from medjax.transfer.convert import ImportReport

LAYOUTS = ("medjax", "torchvision", "monai")
MEDJAX_FILES = (".npz", ".safetensors")


def _skip_match(path: str, patterns: Sequence[str]) -> bool:
    """`path` is a full variable path ("params/head/kernel"); patterns may leave the collection out."""
    import fnmatch

    bare = path.split("/", 1)[1] if "/" in path else path
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(bare, p) for p in patterns)


def flat_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """{'/'-joined path: leaf} of a {"params", "batch_stats"} tree."""
    return {"/".join(k): v for k, v in flatten_dict(dict(variables)).items()}


def _checkpoint_state_dir(workdir: str) -> str | None:
    """`<workdir>/best/<step>/state` if a best checkpoint exists, else the latest `<workdir>/checkpoints/<step>/state`.
    (`best/` keeps one checkpoint; should an interrupted run have left two, the newer is used.)"""
    for sub in ("best", "checkpoints"):
        d = os.path.join(workdir, sub)
        if not os.path.isdir(d):
            continue
        steps = sorted(int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n, "state")))
        if steps:
            return os.path.join(d, str(steps[-1]), "state")
    return None


def read_medjax_source(path: str) -> tuple[dict[str, np.ndarray], str]:
    """({'/'-joined medjax path: array}, description) for a layout-"medjax" `config.init.from`."""
    from medjax.transfer.pretrained import is_pretrained_dir, load_pretrained, read_orbax_variables

    if os.path.isdir(path):
        if is_pretrained_dir(path):
            variables, _ = load_pretrained(path)
            return flat_variables(variables), f"{path} (imported weights)"
        state_dir = _checkpoint_state_dir(path)
        if state_dir is None:
            raise MedjaxError(f"config.init.from={path}: a directory that is neither a medjax workdir with "
                              f"checkpoints (best/ or checkpoints/) nor a `medjax import-weights` output")
        return flat_variables(read_orbax_variables(state_dir)), state_dir
    ext = os.path.splitext(path)[1].lower()
    if ext not in MEDJAX_FILES:
        raise MedjaxError(f"config.init.from={path}: layout 'medjax' reads a workdir, an import-weights directory "
                          f"or {'/'.join(MEDJAX_FILES)} files keyed by medjax paths; for a PyTorch file set "
                          f"config.init.layout=torchvision or monai")
    from medjax.transfer.io import read_state_dict

    state = read_state_dict(path)
    bad = [k for k in state if k.split("/", 1)[0] not in ("params", "batch_stats")]
    if bad:
        raise MedjaxError(f"{path}: keys must be medjax variable paths like 'params/stem_conv/kernel', got e.g. "
                          f"{bad[:3]} (for a PyTorch state dict set config.init.layout=torchvision or monai)")
    return state, path


def match_medjax(source: Mapping[str, np.ndarray], target: Mapping[str, Any], *, skip: Sequence[str] = (),
                 strict: bool = True, name: str = "source") -> tuple[dict[str, np.ndarray], ImportReport]:
    """Values for the `target` leaves ({path: array or ShapeDtypeStruct}) from `source` (same paths)."""
    report = ImportReport()
    values: dict[str, np.ndarray] = {}
    for key, value in source.items():
        if _skip_match(key, skip):
            continue
        if key not in target:
            report.unused.append(key)
            continue
        want = tuple(target[key].shape)
        if tuple(np.shape(value)) != want:
            raise MedjaxError(f"{name}: {key!r} has shape {tuple(np.shape(value))} but this model's {key!r} has "
                              f"shape {want} (a different model config? keep it fresh with config.init.skip)")
        values[key] = np.asarray(value, dtype=np.dtype(target[key].dtype))
        report.loaded.append((key, key))
    report.skipped = sorted(p for p in target if _skip_match(p, skip))
    report.missing = sorted(p for p in target if p not in values and p not in report.skipped)
    if strict and (report.unused or report.missing):
        _strict_error(name, report)
    return values, report


def _strict_error(name: str, report: ImportReport) -> None:
    problems = []
    if report.missing:
        problems.append(f"{len(report.missing)} leaf/leaves of this model get no value, e.g. {report.missing[:5]}")
    if report.unused:
        problems.append(f"{len(report.unused)} entries of the source are not in this model, e.g. {report.unused[:5]}")
    raise MedjaxError(f"config.init.from={name}: " + "; ".join(problems)
                      + " (keep leaves fresh with config.init.skip patterns, or set config.init.strict=False)")


def requested(config: ml_collections.ConfigDict) -> bool:
    """Whether `config.init.from` names a source."""
    return bool(str(schema.filled("init", config.get("init"))["from"] or ""))


def load_init(config: ml_collections.ConfigDict, abstract_variables: Mapping[str, Any], verbose: bool = True
              ) -> dict[str, np.ndarray] | None:
    """{'/'-joined variable path: array} for the leaves `config.init` fills, or None without `config.init.from`.
    `abstract_variables` is the fresh {"params", "batch_stats"} tree (ShapeDtypeStructs are enough)."""
    cfg = schema.filled("init", config.get("init"))
    path = str(cfg["from"] or "")
    if not path:
        return None
    layout = cfg.layout
    if layout not in LAYOUTS:
        raise MedjaxError(f"unknown config.init.layout={layout!r}; known: {list(LAYOUTS)}")
    skip = cfg.skip or ()
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    strict = bool(cfg.strict)
    if not os.path.exists(path):
        raise MedjaxError(f"config.init.from: {path} does not exist")
    target = flat_variables({k: v for k, v in abstract_variables.items() if k in ("params", "batch_stats")})
    for pattern in skip:
        if not any(_skip_match(p, (pattern,)) for p in target):
            raise MedjaxError(f"config.init.skip: pattern {pattern!r} matches nothing in this model (paths look "
                              f"like {', '.join(list(target)[:3])}, ...)")
    adapt_channels = bool(cfg.adapt_input_channels)
    inflate_mode = str(cfg.inflate_mode or "center")
    if inflate_mode not in adapt.INFLATE_MODES:
        raise MedjaxError(f"unknown config.init.inflate_mode={inflate_mode!r}; known: {list(adapt.INFLATE_MODES)}")
    inflate = inflate_mode if bool(cfg.inflate) else None
    target_shapes = {p: tuple(v.shape) for p, v in target.items()}
    if layout == "medjax":
        source, name = read_medjax_source(path)
        source_shapes = {k: tuple(np.shape(v)) for k, v in source.items()}
        _adaptation_hint(source_shapes, target_shapes, skip, adapt_channels, inflate, name)
        plan = {p: steps for p, steps in adapt.plan_adaptation(source_shapes, target_shapes,
                                                               input_channels=adapt_channels,
                                                               inflate=inflate).items()
                if not _skip_match(p, skip)}
        source = {k: (adapt.apply_adaptation(v, plan[k]) if k in plan else v) for k, v in source.items()}
        values, report = match_medjax(source, target, skip=skip, strict=strict, name=name)
    else:
        from medjax.transfer import get_layout, read_state_dict

        state = read_state_dict(path)
        torch_layout = get_layout(config.model.name, layout)
        _adaptation_hint(adapt.torch_shapes(state, torch_layout), target_shapes, skip, adapt_channels, inflate, path)
        prefixed = tuple(p for pattern in skip
                         for p in (pattern, f"params/{pattern}", f"batch_stats/{pattern}"))
        nested = {k: v for k, v in abstract_variables.items() if k in ("params", "batch_stats")}
        filled, report, plan = adapt.import_adapted(state, torch_layout, nested, input_channels=adapt_channels,
                                                    inflate=inflate, skip=prefixed, strict=strict, source=path)
        flat = flat_variables(filled)
        values = {p: np.asarray(flat[p]) for _, p in report.loaded}
    if verbose and jax.process_index() == 0:
        adapted = f"; adapted: {adapt.describe(plan)}" if plan else ""
        print(f"medjax: init from {path} (layout {layout}): {report.summary()}{adapted}", file=sys.stderr,
              flush=True)
    return values


def _adaptation_hint(source_shapes: Mapping[str, tuple], target_shapes: Mapping[str, tuple], skip: Sequence[str],
                     adapt_channels: bool, inflate: str | None, name: str) -> None:
    """A MedjaxError naming the config.init field to set when every shape mismatch is one an adaptation that is
    off would fix (otherwise the plain shape errors say what differs)."""
    mismatched = {p: (tuple(s), target_shapes[p]) for p, s in source_shapes.items()
                  if p in target_shapes and tuple(s) != target_shapes[p] and not _skip_match(p, skip)}
    if not mismatched:
        return
    try:
        full = adapt.plan_adaptation(source_shapes, target_shapes, input_channels=True, inflate="average")
    except MedjaxError:
        return
    if not set(mismatched) <= set(full):
        return
    needs = []
    kinds = {step[0] for p in mismatched for step in full[p]}
    if "channels" in kinds and not adapt_channels:
        needs.append("config.init.adapt_input_channels=True (the input channels differ)")
    if "inflate" in kinds and not inflate:
        needs.append("config.init.inflate=True (2D weights for a 3D model)")
    if needs:
        path = sorted(mismatched)[0]
        raise MedjaxError(f"config.init.from={name}: {path!r} has shape {mismatched[path][0]} but this model's has "
                          f"shape {mismatched[path][1]} ({len(mismatched)} such kernel(s)); set "
                          f"{' and '.join(needs)} to adapt the pretrained weights")
