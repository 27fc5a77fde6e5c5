"""Adapt imported weights to a model that differs from the one they were trained for: pure functions on arrays.

Two adaptations, both exact in a stated sense:

* Input channels (`adapt_input_channels`, `to_grayscale`): the convolution that reads the image gets a different
  number of input channels. The rule keeps the kernel's SUM over the input-channel axis, so an image whose channels
  are all equal (a grey image replicated to RGB) gives the same output before and after:

      old -> 1            sum over the input channels (RGB -> grey: the grey image through the summed kernel
                          equals the grey image replicated to RGB through the RGB kernel)
      old -> new > old    new channel j copies old channel j % old, divided by how many copies of that old
                          channel there are (1 -> 3: repeat and divide by 3; 3 -> 6: repeat twice, halve)
      old -> 1 < new < old  new channel j is the sum of the old channels i with i % new == j

  Any count is accepted; only the sum over channels is preserved (what a grey image replicated on every channel
  sees), not what the individual old channels meant.

* 2D -> 3D inflation (`inflate_kernel`, `inflate_2d_to_3d`; I3D, Carreira & Zisserman 2017): a 2D kernel
  (kh, kw, I, O) becomes (kd, kh, kw, I, O).

      "center"    (the default) see below; "average" is I3D's original rule
      "average"   repeat along depth and divide by kd: on a volume whose depth slices are identical, every output
                  slice away from the depth border equals the 2D response (the border slices see the depth zero
                  padding, so they get (valid taps / kd) of it; through a deep network this border effect spreads)
      "center"    the 2D kernel at depth index kd // 2, zeros elsewhere: with medjax's symmetric kd // 2 padding
                  that tap reads the output's own slice, so on a volume of identical slices EVERY slice equals the
                  2D response, at any depth and with any depth stride; a whole ResNet (or DenseNet: pooling over
                  identical slices changes nothing) then gives the 2D logits up to float rounding (tested:
                  ResNet-18, max difference ~5e-6 on logits of size ~10)

  Both treat every kernel as a convolution's. A transposed convolution (a U-Net's upsampling) inflated either way
  does not keep its 2D response (with stride = kernel = 2, "average" halves it and "center" fills every other
  slice); re-initialise those leaves or fine-tune.

Kernels are medjax's (*k, I, O) unless an `axis` says otherwise; torch's (O, I, *k) weights take `axis=1`.
Nothing here modifies its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from medjax.errors import MedjaxError

INFLATE_MODES = ("average", "center")


# ---------------------------------------------------------------------------------------------- input channels


def adapt_input_channels(kernel: Any, in_channels: int, axis: int = -2) -> np.ndarray:
    """`kernel` with `in_channels` input channels (axis `axis`: -2 for medjax (*k, I, O), 1 for torch (O, I, *k)),
    by the sum-preserving rule in the module docstring. Same dtype; the same array values when the count is
    unchanged (a copy)."""
    w = np.asarray(kernel)
    if w.ndim < 3:
        raise MedjaxError(f"adapt_input_channels: expected a convolution kernel, got shape {w.shape}")
    if not isinstance(in_channels, (int, np.integer)) or isinstance(in_channels, bool) or in_channels < 1:
        raise MedjaxError(f"adapt_input_channels: in_channels must be a positive int, got {in_channels!r}")
    axis = axis % w.ndim
    old, new = w.shape[axis], int(in_channels)
    if new == old:
        return w.copy()
    if new < old:  # fold: new channel j sums the old channels i % new == j (new == 1: the plain sum)
        acc = np.result_type(w.dtype, np.float32)
        parts = [np.take(w, np.arange(j, old, new), axis=axis).astype(acc).sum(axis=axis, keepdims=True)
                 for j in range(new)]
        return np.concatenate(parts, axis=axis).astype(w.dtype)
    source = np.arange(new) % old  # spread: new channel j copies old channel j % old / (its number of copies)
    copies = np.bincount(source, minlength=old)[source]
    scale_shape = [1] * w.ndim
    scale_shape[axis] = new
    wide = np.take(w, source, axis=axis).astype(np.result_type(w.dtype, np.float32))
    return (wide / copies.reshape(scale_shape)).astype(w.dtype)


def _is_nested(tree: Mapping) -> bool:
    return any(isinstance(v, Mapping) for v in tree.values())


def _unflatten(flat: Mapping[str, Any], like: Mapping) -> dict:
    """'/'-paths back to a nested tree, keeping `like`'s empty collections (e.g. "batch_stats": {})."""
    out = unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    for key, value in like.items():
        if isinstance(value, Mapping) and not value and key not in out:
            out[key] = {}
    return out


def _find_kernel_key(flat: Mapping[str, Any], key: str, torch_layout: bool) -> str:
    candidates = ([key, f"{key}.weight"] if torch_layout else
                  [key, f"{key}/kernel", f"params/{key}", f"params/{key}/kernel"])
    for c in candidates:
        if c in flat and np.ndim(flat[c]) >= 3:
            return c
    convs = [k for k, v in flat.items() if np.ndim(v) >= 3][:5]
    raise MedjaxError(f"to_grayscale: no convolution kernel {key!r} (tried {candidates}); convolution kernels here "
                      f"include {convs}")


def to_grayscale(state_or_variables: Mapping[str, Any], key_or_path: str) -> dict:
    """A copy of `state_or_variables` whose RGB convolution `key_or_path` takes 1 input channel (its kernel summed
    over the input channels; the bias is unchanged).

    - medjax variables, nested ({"params": {"stem_conv": {"kernel": ...}}}) or flat ({"params/stem_conv/kernel":
      ...}): `key_or_path` is a '/'-path, "params/stem_conv/kernel", "params/stem_conv" or "stem_conv"; the
      kernel is (*k, 3, O) -> (*k, 1, O).
    - a torch state dict ({"conv1.weight": ...}): `key_or_path` is "conv1.weight" or "conv1"; the weight is
      (O, 3, *k) -> (O, 1, *k).
    Which one: a nested tree or a '/' in `key_or_path` (or a key of the flat mapping containing '/') is medjax's.
    """
    nested = _is_nested(state_or_variables)
    flat = ({"/".join(k): v for k, v in flatten_dict(dict(state_or_variables)).items()} if nested
            else dict(state_or_variables))
    torch_layout = not nested and "/" not in key_or_path and not any("/" in k for k in flat)
    key = _find_kernel_key(flat, key_or_path, torch_layout)
    axis = 1 if torch_layout else -2
    if np.shape(flat[key])[axis] != 3:
        raise MedjaxError(f"to_grayscale: {key!r} has shape {np.shape(flat[key])}, i.e. "
                          f"{np.shape(flat[key])[axis]} input channels, not 3 (RGB); adapt_input_channels takes any "
                          f"count")
    flat[key] = adapt_input_channels(flat[key], 1, axis=axis)
    return _unflatten(flat, state_or_variables) if nested else flat


# ---------------------------------------------------------------------------------------------- 2D -> 3D


def inflate_kernel(kernel: Any, depth: int, mode: str = "center") -> np.ndarray:
    """(kh, kw, I, O) -> (depth, kh, kw, I, O) by `mode` ("average" | "center", see the module docstring)."""
    w = np.asarray(kernel)
    if mode not in INFLATE_MODES:
        raise MedjaxError(f"unknown inflation mode {mode!r}; known: {list(INFLATE_MODES)}")
    if w.ndim != 4:
        raise MedjaxError(f"inflate_kernel: expected a 2D convolution kernel (kh, kw, I, O), got shape {w.shape}")
    if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or depth < 1:
        raise MedjaxError(f"inflate_kernel: depth must be a positive int, got {depth!r}")
    depth = int(depth)
    if mode == "average":
        wide = np.repeat(w[None].astype(np.result_type(w.dtype, np.float32)), depth, axis=0) / depth
        return wide.astype(w.dtype)
    out = np.zeros((depth, *w.shape), w.dtype)
    out[depth // 2] = w
    return out


def inflate_2d_to_3d(variables_2d: Mapping[str, Any], target_3d_variables: Mapping[str, Any] | None = None,
                     depth: int | None = None, mode: str = "center") -> dict:
    """A 2D model's variables for the same architecture in 3D: every convolution kernel (kh, kw, I, O) becomes
    (kd, kh, kw, I, O) by `inflate_kernel`; every other leaf (BatchNorm scale/bias/statistics, dense kernels,
    biases) is copied.

    `target_3d_variables` (nested or flat '/'-paths; arrays or ShapeDtypeStructs, e.g. from
    `jax.eval_shape(model3d.init, ...)`) gives kd per kernel and is checked: both trees must have the same paths,
    and every leaf the same shape apart from the new kernel depth, else a MedjaxError names the path. Without a
    target, kd = `depth`, or the kernel's height when `depth` is None (k x k -> k x k x k, as I3D), and every
    4-dimensional `kernel` leaf is taken for a 2D convolution's. Returns the structure `variables_2d` came in
    (nested or flat), numpy arrays in the 2D leaves' dtypes."""
    if mode not in INFLATE_MODES:
        raise MedjaxError(f"unknown inflation mode {mode!r}; known: {list(INFLATE_MODES)}")
    if target_3d_variables is not None and depth is not None:
        raise MedjaxError("inflate_2d_to_3d: pass a target tree (which gives every kernel's depth) or `depth`, "
                          "not both")
    nested = _is_nested(variables_2d)
    src = ({"/".join(k): v for k, v in flatten_dict(dict(variables_2d)).items()} if nested else dict(variables_2d))
    out: dict[str, np.ndarray] = {}
    if target_3d_variables is None:
        for path, value in src.items():
            value = np.asarray(value)
            if path.rsplit("/", 1)[-1] == "kernel" and value.ndim == 4:
                value = inflate_kernel(value, value.shape[0] if depth is None else depth, mode)
            out[path] = np.array(value)
    else:
        tgt = ({"/".join(k): v for k, v in flatten_dict(dict(target_3d_variables)).items()}
               if _is_nested(target_3d_variables) else dict(target_3d_variables))
        only_src, only_tgt = sorted(set(src) - set(tgt)), sorted(set(tgt) - set(src))
        if only_src or only_tgt:
            raise MedjaxError(f"inflate_2d_to_3d: the trees differ: only in the 2D variables {only_src[:5]}, only in "
                              f"the 3D target {only_tgt[:5]} (not the same architecture?)")
        for path, value in src.items():
            value = np.asarray(value)
            want = tuple(tgt[path].shape)
            if value.shape == want:
                out[path] = np.array(value)
            elif value.ndim == 4 and len(want) == 5 and want[1:] == value.shape:
                out[path] = inflate_kernel(value, want[0], mode)
            else:
                raise MedjaxError(f"inflate_2d_to_3d: {path!r} has shape {value.shape} in the 2D variables but "
                                  f"{want} in the 3D target (only a 2D kernel's new depth may differ)")
    return _unflatten(out, variables_2d) if nested else out


# ---------------------------------------------------------------------------------------------- loading


def _adaptation(src: tuple[int, ...], dst: tuple[int, ...], input_channels: bool, inflate: str | None
                ) -> list[tuple] | None:
    """The steps turning a kernel of shape `src` into `dst` with the enabled adaptations, or None."""
    steps, shape, dst = [], tuple(src), tuple(dst)
    inflating = bool(inflate) and len(shape) == 4 and len(dst) == 5
    spatial = dst[1:-2] if inflating else dst[:-2]
    if (input_channels and len(shape) >= 3 and shape[:-2] == spatial and shape[-1] == dst[-1]
            and shape[-2] != dst[-2]):  # first, on the smaller kernel
        steps.append(("channels", shape[-2], dst[-2]))
        shape = (*shape[:-2], dst[-2], dst[-1])
    if inflating:
        steps.append(("inflate", dst[0], inflate))
        shape = (dst[0], *shape)
    return steps if steps and shape == dst else None


def plan_adaptation(source_shapes: Mapping[str, tuple[int, ...]], target_shapes: Mapping[str, tuple[int, ...]], *,
                    input_channels: bool = False, inflate: str | None = None) -> dict[str, list[tuple]]:
    """{medjax path: steps} for the `params/.../kernel` leaves present in both whose shapes differ in a way the
    enabled adaptations fix (`input_channels`: the input-channel axis; `inflate`: a mode, a 2D kernel in a 3D
    model). Other mismatches are left for the caller's shape check. The input-channel change must be the same
    (old -> new) for every kernel it touches: it is for the convolution(s) reading the image, and a second kind
    of change means a different architecture, which is a MedjaxError naming the kernels."""
    if inflate is not None and inflate not in INFLATE_MODES:
        raise MedjaxError(f"unknown inflation mode {inflate!r}; known: {list(INFLATE_MODES)}")
    plan = {}
    for path, src in source_shapes.items():
        if path not in target_shapes or not path.startswith("params/") or not path.endswith("/kernel"):
            continue
        src, dst = tuple(src), tuple(target_shapes[path])
        if src == dst:
            continue
        steps = _adaptation(src, dst, input_channels, inflate)
        if steps is not None:
            plan[path] = steps
    changes = {step[1:] for steps in plan.values() for step in steps if step[0] == "channels"}
    if len(changes) > 1:
        where = {f"{a}->{b}": [p for p, s in plan.items() if ("channels", a, b) in s] for a, b in sorted(changes)}
        raise MedjaxError(f"input-channel adaptation is for the convolution(s) reading the image, but the kernels "
                          f"differ in several ways: {where} (a different architecture?)")
    return plan


def apply_adaptation(value: Any, steps: list[tuple]) -> np.ndarray:
    """`value` (a medjax kernel) through `steps` from `plan_adaptation`."""
    w = np.asarray(value)
    for step in steps:
        if step[0] == "inflate":
            w = inflate_kernel(w, step[1], step[2])
        else:
            w = adapt_input_channels(w, step[2], axis=-2)
    return w


def describe(plan: Mapping[str, list[tuple]]) -> str:
    """One phrase for a log line: what a plan adapted."""
    parts = []
    channels = sorted({(s[1], s[2], p) for p, steps in plan.items() for s in steps if s[0] == "channels"})
    if channels:
        parts.append(f"input channels {channels[0][0]}->{channels[0][1]} at "
                     f"{', '.join(c[2] for c in channels)}")
    inflated = [s for steps in plan.values() for s in steps if s[0] == "inflate"]
    if inflated:
        parts.append(f"{len(inflated)} kernel(s) inflated to 3D ({inflated[0][2]})")
    return "; ".join(parts)


def torch_shapes(state: Mapping[str, Any], layout: Any) -> dict[str, tuple[int, ...]]:
    """{medjax path: shape in medjax's layout} of the tensors of torch `state` that `layout` maps."""
    from medjax.transfer.convert import locate, to_medjax

    shapes = {}
    for key, value in state.items():
        where = locate(key, layout)
        if where in (None, "drop"):
            continue
        path, kind = where
        name = key.rpartition(".")[2]
        shapes[path] = tuple(to_medjax(np.empty(np.shape(value), np.int8), kind, name).shape)
    return shapes


def import_adapted(state: Mapping[str, Any], layout: Any, target: Mapping[str, Any], *,
                   input_channels: bool = False, inflate: str | None = None, **kwargs) -> tuple[dict, Any, dict]:
    """`medjax.transfer.import_weights` with the enabled adaptations: (variables, report, plan). The leaves the plan
    adapts are imported at the source's shapes, then adapted to the target's. `kwargs` go to `import_weights`."""
    import jax

    from medjax.transfer.convert import import_weights

    flat = {"/".join(k): v for k, v in flatten_dict(dict(target)).items()}
    shapes = torch_shapes(state, layout)
    plan = plan_adaptation(shapes, {p: tuple(v.shape) for p, v in flat.items()}, input_channels=input_channels,
                           inflate=inflate)
    if not plan:
        variables, report = import_weights(state, layout, target, **kwargs)
        return variables, report, plan
    relaxed = dict(flat)
    for path in plan:
        relaxed[path] = jax.ShapeDtypeStruct(shapes[path], flat[path].dtype)
    variables, report = import_weights(state, layout, _unflatten(relaxed, target), **kwargs)
    out = {"/".join(k): v for k, v in flatten_dict(variables).items()}
    loaded = {p for _, p in report.loaded}
    for path, steps in plan.items():
        out[path] = (np.asarray(apply_adaptation(out[path], steps), np.dtype(flat[path].dtype)) if path in loaded
                     else flat[path])  # skipped: keeps the target's own (fresh) leaf
    plan = {p: s for p, s in plan.items() if p in loaded}
    return _unflatten(out, target), report, plan
