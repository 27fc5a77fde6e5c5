"""Map a PyTorch state dict onto medjax variables (and back) through an explicit name table.

A layout is a list of `Rule`s. Each rule matches a torch MODULE name (the key without its last component) with a
regex and names the medjax module it becomes plus the kind of module, which fixes how each tensor converts:

    kind              torch tensor -> medjax leaf
    conv              weight (O, I, *k) -> params/<path>/kernel (*k, I, O); bias -> bias
    conv_transpose    weight (I, O, *k) -> params/<path>/kernel (*k, I, O), spatially flipped (torch's transposed
                      convolution is the gradient of a convolution; flax's `ConvTranspose` is not); bias -> bias
    linear            weight (O, I) -> params/<path>/kernel (I, O); bias -> bias
    batch_norm        weight -> params/<path>/scale, bias -> bias, running_mean -> batch_stats/<path>/mean,
                      running_var -> batch_stats/<path>/var; num_batches_tracked is dropped (flax keeps no count)
    norm              weight -> scale, bias -> bias (instance / group / layer norm, affine)
    prelu             weight (1,) or (C,) -> params/<path>/negative_slope

`import_weights` fills a target variable tree: every source tensor is either used, dropped by its kind
(num_batches_tracked), or reported unused; every target leaf is either filled or reported missing; a shape
mismatch names both keys. `strict=True` (the default) turns anything unused or missing into an error, unless it
matches a `skip` pattern (fnmatch on the medjax path, e.g. "params/fc/*" for "everything but the head").
`export_weights` runs the same table backwards onto the keys, shapes and dtypes of a reference state dict.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from medjax.errors import MedjaxError

KINDS = ("conv", "conv_transpose", "linear", "batch_norm", "norm", "prelu")
_LEAVES = {
    "conv": {"weight": ("params", "kernel"), "bias": ("params", "bias")},
    "conv_transpose": {"weight": ("params", "kernel"), "bias": ("params", "bias")},
    "linear": {"weight": ("params", "kernel"), "bias": ("params", "bias")},
    "batch_norm": {"weight": ("params", "scale"), "bias": ("params", "bias"),
                   "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")},
    "norm": {"weight": ("params", "scale"), "bias": ("params", "bias")},
    "prelu": {"weight": ("params", "negative_slope")},
}
_DROPPED = {"batch_norm": ("num_batches_tracked",)}


@dataclasses.dataclass(frozen=True)
class Rule:
    """torch module names matching `pattern` (full match) become `target` (a '/'-separated medjax module path;
    a callable gets the regex match, a string is expanded with `match.expand`, so `\\1` works)."""

    pattern: str
    target: str | Callable[[re.Match], str]
    kind: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown rule kind {self.kind!r}; known: {KINDS}")

    def apply(self, module: str) -> str | None:
        m = re.fullmatch(self.pattern, module)
        if m is None:
            return None
        return self.target(m) if callable(self.target) else m.expand(self.target)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A name table plus, where a torch model has tensors medjax folds away, the fold: `prepare(state) ->
    (state, folded keys)` runs before mapping, and torch keys matching `zero_on_export` (full match) are written
    as zeros by `export_weights` (the fold already moved their effect elsewhere)."""

    rules: Sequence[Rule]
    prepare: Callable[[dict], tuple[dict, list[str]]] | None = None
    zero_on_export: str | None = None

    def __iter__(self):
        return iter(self.rules)


def _leaf_key(module_path: str, collection: str, leaf: str) -> str:
    return f"{collection}/{module_path}/{leaf}"


def locate(key: str, layout: Layout) -> tuple[str, str] | None | str:
    """(medjax leaf path, kind) for torch `key`; "drop" for tensors with no medjax counterpart; None if no rule."""
    module, _, name = key.rpartition(".")
    for rule in layout:
        path = rule.apply(module)
        if path is None:
            continue
        if name in _DROPPED.get(rule.kind, ()):
            return "drop"
        if name not in _LEAVES[rule.kind]:
            return None
        collection, leaf = _LEAVES[rule.kind][name]
        return _leaf_key(path, collection, leaf), rule.kind
    return None


def to_medjax(value: np.ndarray, kind: str, name: str) -> np.ndarray:
    """One torch tensor in medjax's layout (see the table in the module docstring)."""
    w = np.asarray(value)
    if name != "weight" or kind in ("batch_norm", "norm"):
        return w
    if kind == "conv":
        return np.transpose(w, (*range(2, w.ndim), 1, 0))
    if kind == "conv_transpose":
        nd = w.ndim - 2
        return np.flip(np.transpose(w, (*range(2, w.ndim), 0, 1)), axis=tuple(range(nd)))
    if kind == "linear":
        return w.T
    if kind == "prelu":
        return w.reshape(()) if w.size == 1 else w
    return w


def to_torch(value: np.ndarray, kind: str, name: str, shape: Sequence[int]) -> np.ndarray:
    """The inverse of `to_medjax`, shaped like the reference tensor."""
    w = np.asarray(value)
    if name != "weight" or kind in ("batch_norm", "norm"):
        return w.reshape(shape)
    if kind == "conv":
        return np.transpose(w, (w.ndim - 1, w.ndim - 2, *range(w.ndim - 2)))
    if kind == "conv_transpose":
        nd = w.ndim - 2
        w = np.flip(w, axis=tuple(range(nd)))
        return np.transpose(w, (w.ndim - 2, w.ndim - 1, *range(nd)))
    if kind == "linear":
        return w.T
    return w.reshape(shape)


@dataclasses.dataclass
class ImportReport:
    """What happened to every tensor: the evidence that nothing was silently lost."""

    loaded: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (torch key, medjax path)
    dropped: list[str] = dataclasses.field(default_factory=list)  # torch keys with no counterpart by design
    folded: list[str] = dataclasses.field(default_factory=list)  # torch keys folded into another tensor
    unused: list[str] = dataclasses.field(default_factory=list)  # torch keys no rule maps (or mapped to nothing)
    missing: list[str] = dataclasses.field(default_factory=list)  # medjax leaves nothing filled
    skipped: list[str] = dataclasses.field(default_factory=list)  # medjax leaves left at init by a skip pattern

    def summary(self) -> str:
        return (f"{len(self.loaded)} tensors loaded, {len(self.folded)} folded, {len(self.dropped)} dropped by "
                f"design, {len(self.unused)} "
                f"unused, {len(self.missing)} medjax leaves missing, {len(self.skipped)} skipped")


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def import_weights(state: Mapping[str, np.ndarray], layout: Layout, target: Mapping[str, Any], *,
                   skip: Sequence[str] = (), strict: bool = True, source: str = "state dict"
                   ) -> tuple[dict, ImportReport]:
    """(`target` with the mapped tensors filled in, report). `target` is a variable tree ({"params": ...,
    "batch_stats": ...}) of arrays or ShapeDtypeStructs; leaves not filled keep their values (with strict=False or
    a skip pattern). Values come back as numpy arrays in the target leaves' dtypes."""
    flat = {"/".join(k): v for k, v in flatten_dict(dict(target)).items()}
    out: dict[str, Any] = dict(flat)
    report = ImportReport()
    if getattr(layout, "prepare", None) is not None:
        state, report.folded = layout.prepare(dict(state))
    filled: set[str] = set()
    for key in state:
        where = locate(key, layout)
        if where == "drop":
            report.dropped.append(key)
            continue
        if where is None or where[0] not in flat:
            report.unused.append(key)
            continue
        path, kind = where
        if _matches(path, skip):
            report.skipped.append(path)
            continue
        value = to_medjax(state[key], kind, key.rpartition(".")[2])
        want = tuple(flat[path].shape)
        if value.shape != want:
            raise MedjaxError(f"{source}: {key!r} of shape {tuple(np.shape(state[key]))} becomes {value.shape} but "
                              f"medjax {path!r} has shape {want}")
        if path in filled:
            raise MedjaxError(f"{source}: two tensors map to medjax {path!r} (the second is {key!r}): a layout bug")
        filled.add(path)
        out[path] = np.asarray(value, dtype=np.dtype(flat[path].dtype))
        report.loaded.append((key, path))
    report.missing = sorted(p for p in flat if p not in filled and not _matches(p, skip))
    report.skipped = sorted(set(report.skipped) | {p for p in flat if p not in filled and _matches(p, skip)})
    if strict and (report.unused or report.missing):
        problems = []
        if report.unused:
            problems.append(f"{len(report.unused)} tensor(s) of {source} map to nothing in this model, e.g. "
                            f"{report.unused[:5]}")
        if report.missing:
            problems.append(f"{len(report.missing)} medjax leaf/leaves get no tensor, e.g. {report.missing[:5]}")
        raise MedjaxError("; ".join(problems) + " (wrong architecture or layout? skip patterns load partially)")
    return unflatten_dict({tuple(k.split("/")): v for k, v in out.items()}), report


def export_weights(variables: Mapping[str, Any], layout: Layout,
                   like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A torch state dict with the keys, shapes and dtypes of `like` (e.g. `torch_model.state_dict()`), filled
    from medjax `variables` through `layout`. Tensors dropped on import (num_batches_tracked) keep `like`'s value."""
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(dict(variables)).items()}
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for key, ref in like.items():
        ref = np.asarray(ref)
        where = locate(key, layout)
        if where == "drop":
            out[key] = ref.copy()
            continue
        if getattr(layout, "zero_on_export", None) and re.fullmatch(layout.zero_on_export, key):
            out[key] = np.zeros_like(ref)
            continue
        if where is None or where[0] not in flat:
            raise MedjaxError(f"export: torch {key!r} has no medjax counterpart in this layout")
        path, kind = where
        value = to_torch(flat[path], kind, key.rpartition(".")[2], ref.shape)
        if value.shape != ref.shape:
            raise MedjaxError(f"export: medjax {path!r} becomes {value.shape} but torch {key!r} is {ref.shape}")
        out[key] = np.ascontiguousarray(value.astype(ref.dtype))
        used.add(path)
    unused = sorted(set(flat) - used)
    if unused:
        raise MedjaxError(f"export: {len(unused)} medjax leaves have no torch key in the reference, e.g. {unused[:5]}")
    return out
