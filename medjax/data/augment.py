"""On-device data augmentation: pure JAX, jit-able, channels-last, one implementation for 2D and 3D.

Every transform acts on ONE example: `fn(key, image, label=None, **params) -> (image, label)` with `image`
(H, W, C) or (D, H, W, C) float32 and `label` an integer map of the spatial shape (or None). Geometric transforms
move image and label together (linear sampling for the image, nearest for the label; outside the input the
image takes each channel's minimum, the label background 0); intensity transforms touch only the image. Each is
applied with probability `p`, decided
per example by a `jnp.where` on a random draw (no Python control flow on traced values); `p <= 0` is skipped
statically and `p >= 1` always applies.

`make_augment(cfg)` composes the transforms named in `cfg.transforms`, in that order, into
`augment(step_key, batch) -> batch`: example `i` of the batch gets the key `fold_in(step_key, batch["index"][i])`
and the composed per-example transform is vmapped, so an example's augmentation depends only on the step key
and its global index, never on the batch size or on how the batch is sharded across devices and processes.
Consecutive geometric transforms (`affine`, `elastic`) with the same `order` are fused into one sampling grid,
so the image is interpolated once.

Config (every sub-config and every field is optional; unknown names raise `MedjaxError`)::

    c.augment = augment.default_config(("flip", "affine", "gamma"))  # all sub-configs at their defaults, or
    c.augment = ml_collections.ConfigDict()
    c.augment.transforms = ("flip", "affine", "gamma")     # order of application; () or None -> identity
    c.augment.flip = dict(p=0.5)                           # fields you leave out keep the defaults below

    flip                p=0.5 (independently per axis)  axes=None (all spatial axes)
    rot90               p=0.5  axes=None (the last two spatial axes; that plane must be square)  k=(1, 2, 3)
                        (k quarter turns, drawn uniformly from `k`, like np.rot90(x, k, axes))
    affine              p=0.2  rotate=(-15.0, 15.0) (degrees; 2D one angle, 3D three Euler angles about axes
                        0, 1, 2)  scale=(0.85, 1.15) (>1 enlarges the content)  isotropic=True (one factor for
                        all axes)  shear=(0.0, 0.0) (upper-triangular shear factors)  translate=(0.0, 0.0)
                        (voxels; +t moves content to higher indices, like np.roll)  order=1 (image interpolation:
                        1 linear, 0 nearest)
    elastic             p=0.2  grid=5 (control points per axis, spanning the image; int or per axis)
                        magnitude=(0.0, 3.0) (std, in voxels, of the control-point displacements; drawn per
                        example)  order=1
    gamma               p=0.3  gamma=(0.7, 1.5) (log-uniform); per channel x -> min + r * ((x - min) / r)**gamma,
                        r = max - min of that channel of the example
    contrast_brightness p=0.15  contrast=(0.75, 1.25) (scales deviations from the channel mean)
                        brightness=(0.75, 1.25) (multiplies)  preserve_range=True (clip the contrast change to
                        the channel's original [min, max])
    noise               p=0.1  std=(0.0, 0.1) (additive Gaussian noise, std in intensity units, drawn per example)
    blur                p=0.2  sigma=(0.5, 1.0) (voxels, isotropic, drawn per example)  truncate=3.0 (kernel
                        radius = ceil(truncate * max sigma)); separable, symmetric padding (preserves the mean)
    bias_field          p=0.2  order=3 (polynomial degree)  magnitude=(0.0, 0.5): the image is multiplied by
                        exp(f), f a random polynomial in coordinates scaled to [-1, 1] (no constant term),
                        normalised so that max |f| over the image equals a magnitude drawn per example; one
                        field per example, shared by its channels
    hed                 p=0.5  scale=(0.95, 1.05)  shift=(-0.05, 0.05): stain jitter of RGB pathology images in
                        [0, 1] (Tellez et al. 2018): colour deconvolution into haematoxylin, eosin and DAB
                        densities (scikit-image's rgb2hed matrix and scaling), each density d -> d * a + b with a
                        from `scale` and b from `shift` drawn per stain, back to RGB (hed2rgb, clipped to [0, 1]);
                        3 channels only. Unlike rgb2hed, negative densities (colours outside the stains' cone) are
                        not clamped to 0, so a = 1, b = 0 gives the image back. Tellez's "light" setting is 0.05
                        for both ranges, "strong" 0.2

Boxes (detection batches with "boxes" (N, G, 2d), "box_valid" (N, G) and "box_labels" (N, G), corner format in
voxel units, `medjax.detection.boxes`): the geometric transforms move them with the image, from the same random
draw. Each transform's map of box coordinates is affine (`flip`: x -> n - x; `rot90`: the quarter turn of
`np.rot90`; `affine`: the inverse of its sampling map, with box coordinates = voxel index + 1/2), applied to all
2^d corners of every box, whose enclosing axis-aligned box is the new box: exact for flips and quarter turns, the
box around the rotated box for rotations. Boxes are then clipped to the image and dropped (valid False, label -1,
zeros) when thinner than one voxel. `elastic` cannot move boxes exactly and is refused with them.

Bags (multiple-instance learning, `make_augment(..., bags=True)`): the batch's image is (N, K, *spatial, C), K
instances (tiles) per example; every instance is augmented as an example of its own, with the key
`fold_in(fold_in(step_key, index[i]), k)`.

Ranges: a number r means [-r, r] (for `scale`, [1 - r, 1 + r]); a pair (lo, hi) is that range (lo == hi fixes
the value); for per-axis / per-angle fields (`rotate`, `translate`, `shear`, `scale` with isotropic=False) a
tuple with one number-or-pair per axis gives each its own range, e.g. translate=((2, 2), (-3, -3)) shifts a 2D
image by exactly (2, -3). (A flat pair of numbers is always one range for every axis.)

Randomness: each example draws all its random numbers in ONE threefry call (uniforms; normals by the inverse
error function), from a threefry key made of its key's data (for medjax's `rbg` keys the first half, which is the
threefry key the same seed / fold_in chain would give). Two reasons, both checked on jax 0.10.2 CPU: (1) JAX's
vmap rule for `rng_bit_generator` (which makes the `rbg` implementation's bits) draws every example's bits from
the FIRST key of the batch, so vmapped rbg draws depend on the batch composition (a batch of 4 and its halves
give different numbers) and would break per-example determinism; (2) each threefry hash in the graph costs ~0.1 s of
XLA compile time, so one draw per example
(instead of one per parameter) keeps the full pipeline's compile short. A transform called on its own draws
differently from the same transform inside `make_augment` (same distribution, different numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.scipy.ndimage import map_coordinates

from medjax.errors import MedjaxError
from medjax.rng import threefry

Label = jax.Array | None

_F32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST

DEFAULTS: dict[str, dict[str, Any]] = {
    "flip": dict(p=0.5, axes=None),
    "rot90": dict(p=0.5, axes=None, k=(1, 2, 3)),
    "affine": dict(p=0.2, rotate=(-15.0, 15.0), scale=(0.85, 1.15), isotropic=True, shear=(0.0, 0.0),
                   translate=(0.0, 0.0), order=1),
    "elastic": dict(p=0.2, grid=5, magnitude=(0.0, 3.0), order=1),
    "gamma": dict(p=0.3, gamma=(0.7, 1.5)),
    "contrast_brightness": dict(p=0.15, contrast=(0.75, 1.25), brightness=(0.75, 1.25), preserve_range=True),
    "noise": dict(p=0.1, std=(0.0, 0.1)),
    "blur": dict(p=0.2, sigma=(0.5, 1.0), truncate=3.0),
    "bias_field": dict(p=0.2, order=3, magnitude=(0.0, 0.5)),
    "hed": dict(p=0.5, scale=(0.95, 1.05), shift=(-0.05, 0.05)),
}
TRANSFORMS = tuple(DEFAULTS)
GEOMETRIC = ("affine", "elastic")


# ----------------------------------------------------------------------------------------------- helpers


class _Plan(NamedTuple):
    """One transform, specialised to an image shape: how many uniforms it draws and what it does with them.

    Pointwise transforms set `run(u, image, label) -> (image, label)`; geometric ones set
    `warp(u) -> (applied, map)` where `map` takes points (nd, ...) in OUTPUT voxel coordinates to the input
    coordinates they sample, and `order` (the image's interpolation order)."""

    n: int
    run: Callable[[jax.Array, jax.Array, Label], tuple[jax.Array, Label]] | None = None
    warp: Callable[[jax.Array], tuple[jax.Array, Callable[[jax.Array], jax.Array]]] | None = None
    order: int = 1
    box_map: Callable[[jax.Array], jax.Array] | None = None  # u -> (nd+1, nd+1) affine of box coordinates


def _rank(shape: Sequence[int], what: str) -> int:
    nd = len(shape) - 1
    if nd not in (2, 3):
        raise MedjaxError(f"augment {what}: expected one example (H, W, C) or (D, H, W, C), got shape {tuple(shape)}")
    return nd


def _uniforms(key: jax.Array, n: int) -> jax.Array:
    return jax.random.uniform(threefry(key), (max(n, 1),), _F32)  # threefry: see the module docstring


def _normal(u: jax.Array) -> jax.Array:
    """Standard normals from uniforms in [0, 1) (what jax.random.normal does with its uniforms)."""
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(lo + (1.0 - lo) * u)


def _coin(u: jax.Array, p: float) -> jax.Array:
    return jnp.asarray(True) if p >= 1 else u < p


def _lerp(u: jax.Array, r: np.ndarray) -> jax.Array:
    """Uniforms `u` in [0, 1) mapped into ranges `r` (..., 2); lo == hi gives lo exactly."""
    r = np.asarray(r, np.float32)
    return r[..., 0] + (r[..., 1] - r[..., 0]) * u


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _range(value: Any, what: str, center: float = 0.0) -> tuple[float, float]:
    if _is_number(value):
        return (center - abs(float(value)), center + abs(float(value)))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise MedjaxError(f"augment {what}: range {tuple(value)} has lo > hi")
        return lo, hi
    raise MedjaxError(f"augment {what}: expected a number r (meaning [{center} - r, {center} + r]) or a pair "
                      f"(lo, hi), got {value!r}")


def _ranges(value: Any, n: int, what: str, center: float = 0.0) -> np.ndarray:
    """(n, 2) ranges: one range for all n, or one per item (see the module docstring)."""
    if _is_number(value) or (isinstance(value, (list, tuple)) and len(value) == 2
                             and all(_is_number(v) for v in value)):
        return np.array([_range(value, what, center)] * n, np.float32).reshape(n, 2)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise MedjaxError(f"augment {what}: expected one range for all or {n} ranges (one per axis/angle), "
                              f"got {len(value)}: {value!r}")
        return np.array([_range(v, f"{what}[{i}]", center) for i, v in enumerate(value)], np.float32).reshape(n, 2)
    raise MedjaxError(f"augment {what}: expected a number, a (lo, hi) pair or {n} of them, got {value!r}")


def _axes(axes: Any, nd: int, what: str) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(nd))
    if _is_int(axes):
        axes = (axes,)
    if not isinstance(axes, (list, tuple)):
        raise MedjaxError(f"augment {what}: expected spatial axes, got {axes!r}")
    out = []
    for a in axes:
        if not _is_int(a) or not -nd <= a < nd:
            raise MedjaxError(f"augment {what}: {axes!r} must name spatial axes in [0, {nd}) (negatives allowed)")
        out.append(int(a) % nd)
    if len(set(out)) != len(out):
        raise MedjaxError(f"augment {what}: repeated axis in {axes!r}")
    return tuple(out)


def _check_p(p: Any, what: str) -> float:
    if not _is_number(p) or not 0 <= p <= 1:
        raise MedjaxError(f"augment {what}.p: expected a probability in [0, 1], got {p!r}")
    return float(p)


def _check_nonneg(r: Sequence[float], value: Any, what: str, strict: bool = False) -> None:
    if (min(r) <= 0) if strict else (min(r) < 0):
        raise MedjaxError(f"augment {what}: must be {'>' if strict else '>='} 0, got {value!r}")


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """Small matrix product as exact elementwise float32 (no reduced-precision matmul units on TPU)."""
    return jnp.sum(a[:, :, None] * b[None, :, :], axis=1)


def _channel_stats(image: jax.Array):
    axes = tuple(range(image.ndim - 1))
    return image.min(axes, keepdims=True), image.max(axes, keepdims=True), image.mean(axes, keepdims=True)


def _box_affine(matrix: jax.Array, shift: jax.Array) -> jax.Array:
    """The (nd+1, nd+1) homogeneous affine of box coordinates x -> matrix @ x + shift."""
    nd = matrix.shape[0]
    top = jnp.concatenate([matrix.astype(_F32), shift.astype(_F32)[:, None]], axis=1)
    return jnp.concatenate([top, jnp.eye(nd + 1, dtype=_F32)[nd:]], axis=0)


# ----------------------------------------------------------------------------------------------- plans
# `_plan_<name>(image_shape, **params) -> _Plan | None` validates the parameters against the shape (statically)
# and returns None when the transform is statically off (p <= 0).


def _plan_flip(shape, *, p, axes):
    nd = _rank(shape, "flip")
    p = _check_p(p, "flip")
    axes = _axes(axes, nd, "flip.axes")
    if p <= 0 or not axes:
        return None

    def run(u, image, label):
        for i, a in enumerate(axes):
            do = u[i] < p
            image = jnp.where(do, jnp.flip(image, a), image)
            if label is not None:
                label = jnp.where(do, jnp.flip(label, a), label)
        return image, label

    def box_map(u):  # x -> n - x along each flipped axis
        flipped = jnp.zeros(nd, bool)
        for i, a in enumerate(axes):
            flipped = flipped.at[a].set(u[i] < p)
        scale = jnp.where(flipped, -1.0, 1.0)
        shift = jnp.where(flipped, jnp.asarray(shape[:-1], _F32), 0.0)
        return _box_affine(jnp.diag(scale), shift)

    return _Plan(len(axes), run=run, box_map=box_map)


def _plan_rot90(shape, *, p, axes, k):
    nd = _rank(shape, "rot90")
    p = _check_p(p, "rot90")
    plane = _axes((nd - 2, nd - 1) if axes is None else axes, nd, "rot90.axes")
    if len(plane) != 2:
        raise MedjaxError(f"augment rot90.axes: expected two spatial axes (a plane), got {axes!r}")
    a, b = shape[plane[0]], shape[plane[1]]
    if a != b:
        raise MedjaxError(f"augment rot90: the plane of spatial axes {plane} of spatial shape {tuple(shape[:-1])} "
                          f"is not square ({a} != {b}); 90-degree rotations need a square plane (set "
                          f"rot90.axes to a square plane or drop rot90)")
    ks = tuple(k) if isinstance(k, (list, tuple)) else (k,)
    if not ks or not all(_is_int(v) for v in ks):
        raise MedjaxError(f"augment rot90.k: expected a non-empty tuple of integers, got {k!r}")
    if p <= 0:
        return None

    def selected(u):
        choice = jnp.minimum(jnp.floor(u[1] * len(ks)).astype(jnp.int32), len(ks) - 1)
        return jnp.where(_coin(u[0], p), choice + 1, 0)  # 0: unchanged

    def run(u, image, label):
        sel = selected(u)

        def pick(x):
            out = x
            for i, kk in enumerate(ks, start=1):
                out = jnp.where(sel == i, jnp.rot90(x, int(kk), axes=plane), out)
            return out

        return pick(image), (None if label is None else pick(label))

    def box_map(u):  # np.rot90's quarter turns in the plane (i, j) of side n, on box coordinates
        i, j = plane
        sel = selected(u)
        out = _box_affine(jnp.eye(nd, dtype=_F32), jnp.zeros(nd, _F32))
        for idx, kk in enumerate(ks, start=1):
            m, t = np.eye(nd, dtype=np.float32), np.zeros(nd, np.float32)
            for _ in range(int(kk) % 4):  # one turn: out_i = n - in_j, out_j = in_i
                turn = np.eye(nd, dtype=np.float32)
                turn[i, i] = turn[j, j] = 0.0
                turn[i, j], turn[j, i] = -1.0, 1.0
                shift = np.zeros(nd, np.float32)
                shift[i] = a
                m, t = turn @ m, turn @ t + shift
            out = jnp.where(sel == idx, _box_affine(jnp.asarray(m), jnp.asarray(t)), out)
        return out

    return _Plan(2, run=run, box_map=box_map)


def _check_order(order: Any, what: str) -> int:
    if order not in (0, 1) or isinstance(order, bool):
        raise MedjaxError(f"augment {what}.order: image interpolation order must be 0 (nearest) or 1 (linear), "
                          f"got {order!r}")
    return int(order)


def _plan_affine(shape, *, p, rotate, scale, isotropic, shear, translate, order):
    nd = _rank(shape, "affine")
    p = _check_p(p, "affine")
    order = _check_order(order, "affine")
    spatial = shape[:-1]
    n_ang, n_shear, n_scale = (1 if nd == 2 else 3), nd * (nd - 1) // 2, (1 if isotropic else nd)
    rot_r = np.deg2rad(_ranges(rotate, n_ang, "affine.rotate"))
    scale_r = _ranges(scale, n_scale, "affine.scale", center=1.0)
    _check_nonneg(scale_r.ravel(), scale, "affine.scale", strict=True)
    shear_r = _ranges(shear, n_shear, "affine.shear")
    trans_r = _ranges(translate, nd, "affine.translate")
    if p <= 0:
        return None
    o = np.cumsum([1, n_ang, n_scale, n_shear, nd])
    center = (np.asarray(spatial, np.float32) - 1) / 2
    planes = [(0, 1)] if nd == 2 else [(1, 2), (0, 2), (0, 1)]  # 3D: about axis 0, 1, 2
    iu = np.triu_indices(nd, 1)

    def warp(u):
        angles = _lerp(u[o[0]:o[1]], rot_r)
        s = jnp.broadcast_to(_lerp(u[o[1]:o[2]], scale_r), (nd,))
        sh = _lerp(u[o[2]:o[3]], shear_r)
        t = _lerp(u[o[3]:o[4]], trans_r)
        eye = jnp.eye(nd, dtype=_F32)
        rot = eye
        for ang, (i, j) in zip(angles, planes):
            c, sn = jnp.cos(ang), jnp.sin(ang)
            rot = _matmul(rot, eye.at[i, i].set(c).at[j, j].set(c).at[i, j].set(-sn).at[j, i].set(sn))
        nil = jnp.zeros((nd, nd), _F32).at[iu].set(sh)  # forward shear I + N, N strictly upper triangular
        shear_inv = eye - nil + _matmul(nil, nil)  # (I + N)^-1 = I - N + N^2 (N^3 = 0 for nd <= 3)
        # forward: y = R (I + N) S (x - c) + c + t;  sampling: x = S^-1 (I + N)^-1 R^T (y - c - t) + c
        inv = _matmul(_matmul(jnp.diag(1.0 / s), shear_inv), rot.T)
        applied = _coin(u[0], p)
        inv = jnp.where(applied, inv, eye)
        t = jnp.where(applied, t, 0.0)

        def fn(points):
            bshape = (nd,) + (1,) * (points.ndim - 1)
            q = points - (center + t).reshape(bshape)
            out = [sum(inv[i, j] * q[j] for j in range(nd)) for i in range(nd)]
            return jnp.stack(out) + center.reshape(bshape)

        return applied, fn

    def box_map(u):  # the inverse of the sampling map x = A y + b, in box coordinates (voxel index + 1/2)
        _, fn = warp(u)
        b = fn(jnp.zeros((nd, 1), _F32))[:, 0]
        a_inv = jnp.linalg.inv(fn(jnp.eye(nd, dtype=_F32)) - b[:, None])
        return _box_affine(a_inv, 0.5 - a_inv @ (0.5 + b))

    return _Plan(int(o[-1]), warp=warp, order=order, box_map=box_map)


def _plan_elastic(shape, *, p, grid, magnitude, order):
    nd = _rank(shape, "elastic")
    p = _check_p(p, "elastic")
    order = _check_order(order, "elastic")
    spatial = shape[:-1]
    g = (grid,) * nd if _is_int(grid) else tuple(grid) if isinstance(grid, (list, tuple)) else ()
    if len(g) != nd or not all(_is_int(v) and v >= 2 for v in g):
        raise MedjaxError(f"augment elastic.grid: expected an integer >= 2 or {nd} of them, got {grid!r}")
    g = tuple(1 if n == 1 else min(int(v), n) for v, n in zip(g, spatial))
    mag = _range(magnitude, "elastic.magnitude")
    _check_nonneg(mag, magnitude, "elastic.magnitude")
    if p <= 0:
        return None
    moving = np.array([n > 1 for n in spatial], np.float32).reshape((nd,) + (1,) * nd)  # size-1 axes stay
    step = [(gi - 1) / (n - 1) if n > 1 else 0.0 for gi, n in zip(g, spatial)]
    n_field = nd * math.prod(g)

    def warp(u):
        applied = _coin(u[0], p)
        amp = jnp.where(applied, _lerp(u[1], np.asarray(mag)), 0.0)
        coarse = _normal(u[2:]).reshape(nd, *g) * amp * moving

        def fn(points):
            cp = [points[j] * step[j] for j in range(nd)]
            disp = [map_coordinates(coarse[i], cp, order=1, mode="nearest") for i in range(nd)]
            return points + jnp.stack(disp)

        return applied, fn

    return _Plan(2 + n_field, warp=warp, order=order)


def _warp(plans: Sequence[tuple[_Plan, jax.Array]], image: jax.Array, label: Label) -> tuple[jax.Array, Label]:
    """Resample image (plans' order) and label (nearest) through the chained maps of `plans`, one grid."""
    spatial = image.shape[:-1]
    maps, applied = [], jnp.asarray(False)
    for plan, u in plans:
        a, fn = plan.warp(u)
        maps.append(fn)
        applied = applied | a
    coords = jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=_F32) for n in spatial], indexing="ij"))
    for fn in reversed(maps):  # output -> input: the last stage's map first
        coords = fn(coords)
    cl = [coords[j] for j in range(len(spatial))]
    order = plans[0][0].order
    # Outside the input, each channel is filled with its own minimum (the background of z-scored MR and of CT),
    # not 0, which after normalisation is mid-grey tissue: sample (x - min) with 0 fill, then add min back.
    sample = lambda ch: map_coordinates(ch - ch.min(), cl, order=order, mode="constant", cval=0.0) + ch.min()  # noqa: E731
    image = jnp.where(applied, jax.vmap(sample, in_axes=-1, out_axes=-1)(image), image)
    if label is not None:
        warped = map_coordinates(label, cl, order=0, mode="constant", cval=0).astype(label.dtype)
        label = jnp.where(applied, warped, label)
    return image, label


def _plan_gamma(shape, *, p, gamma):
    _rank(shape, "gamma")
    p = _check_p(p, "gamma")
    r = _range(gamma, "gamma.gamma", center=1.0)
    _check_nonneg(r, gamma, "gamma.gamma", strict=True)
    if p <= 0:
        return None
    log_r = np.log(np.asarray(r, np.float64)).astype(np.float32)

    def run(u, image, label):
        g = jnp.exp(_lerp(u[1], log_r))
        mn, mx, _ = _channel_stats(image)
        rng = jnp.where(mx > mn, mx - mn, 1.0)
        out = jnp.power(jnp.clip((image - mn) / rng, 0.0, 1.0), g) * rng + mn
        return jnp.where(_coin(u[0], p), out, image), label

    return _Plan(2, run=run)


def _plan_contrast_brightness(shape, *, p, contrast, brightness, preserve_range):
    _rank(shape, "contrast_brightness")
    p = _check_p(p, "contrast_brightness")
    ranges = np.array([_range(contrast, "contrast_brightness.contrast", 1.0),
                       _range(brightness, "contrast_brightness.brightness", 1.0)], np.float32)
    if p <= 0:
        return None

    def run(u, image, label):
        c, b = _lerp(u[1:3], ranges)
        mn, mx, mean = _channel_stats(image)
        out = (image - mean) * c + mean
        if preserve_range:
            out = jnp.clip(out, mn, mx)
        return jnp.where(_coin(u[0], p), out * b, image), label

    return _Plan(3, run=run)


def _plan_noise(shape, *, p, std):
    _rank(shape, "noise")
    p = _check_p(p, "noise")
    std_r = np.asarray(_range(std, "noise.std"), np.float32)
    _check_nonneg(std_r, std, "noise.std")
    if p <= 0:
        return None
    size = math.prod(shape)

    def run(u, image, label):
        s = _lerp(u[1], std_r)
        return jnp.where(_coin(u[0], p), image + s * _normal(u[2:]).reshape(image.shape), image), label

    return _Plan(2 + size, run=run)


def _plan_blur(shape, *, p, sigma, truncate):
    _rank(shape, "blur")  # validates the rank
    p = _check_p(p, "blur")
    sig = np.asarray(_range(sigma, "blur.sigma"), np.float32)
    _check_nonneg(sig, sigma, "blur.sigma")
    if not _is_number(truncate) or truncate <= 0:
        raise MedjaxError(f"augment blur.truncate: expected a number > 0, got {truncate!r}")
    if p <= 0:
        return None
    radii = [min(int(math.ceil(truncate * float(sig[1]) - 1e-6)), n - 1) for n in shape[:-1]]

    def run(u, image, label):
        s = jnp.maximum(_lerp(u[1], sig), 1e-6)
        out = image
        for axis, radius in enumerate(radii):
            if radius <= 0:
                continue
            n = image.shape[axis]
            w = jnp.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float32) / s) ** 2)
            w = w / jnp.sum(w)
            pad = [(0, 0)] * image.ndim
            pad[axis] = (radius, radius)
            xp = jnp.pad(out, pad, mode="symmetric")
            out = sum(w[i] * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i in range(2 * radius + 1))
        return jnp.where(_coin(u[0], p), out, image), label

    return _Plan(2, run=run)


def _plan_bias_field(shape, *, p, order, magnitude):
    nd = _rank(shape, "bias_field")
    p = _check_p(p, "bias_field")
    mag = np.asarray(_range(magnitude, "bias_field.magnitude"), np.float32)
    _check_nonneg(mag, magnitude, "bias_field.magnitude")
    if not _is_int(order) or order < 1:
        raise MedjaxError(f"augment bias_field.order: expected an integer >= 1, got {order!r}")
    if p <= 0:
        return None
    degrees = np.indices((order + 1,) * nd).sum(0)
    mask = ((degrees >= 1) & (degrees <= order)).astype(np.float32)  # no constant term
    powers = []
    for n in shape[:-1]:
        x = np.linspace(-1.0, 1.0, n, dtype=np.float64) if n > 1 else np.zeros(1)
        powers.append(np.stack([x**e for e in range(order + 1)]).astype(np.float32))
    letters = "abc"[:nd]
    spec = f"{letters},{','.join(a + b for a, b in zip(letters, 'xyz'))}->{'xyz'[:nd]}"

    def run(u, image, label):
        coefs = (2.0 * u[2:].reshape(mask.shape) - 1.0) * mask
        f = jnp.einsum(spec, coefs, *powers, precision=_HIGHEST)
        f = f * (_lerp(u[1], mag) / jnp.maximum(jnp.max(jnp.abs(f)), 1e-6))
        return jnp.where(_coin(u[0], p), image * jnp.exp(f)[..., None], image), label

    return _Plan(2 + mask.size, run=run)


def _plan_hed(shape, *, p, scale, shift):
    from medjax.data.stain import HED_FROM_RGB, LOG_ADJUST, RGB_FROM_HED

    _rank(shape, "hed")
    p = _check_p(p, "hed")
    ranges = np.array([_range(scale, "hed.scale", 1.0)] * 3 + [_range(shift, "hed.shift")] * 3, np.float32)
    if p <= 0:
        return None
    if shape[-1] != 3:
        raise MedjaxError(f"augment hed: stain jitter needs RGB images (3 channels, values in [0, 1]), got "
                          f"{shape[-1]} channel(s)")
    to_hed, to_rgb = HED_FROM_RGB.astype(np.float32), RGB_FROM_HED.astype(np.float32)

    def mix(x, m):  # x (..., 3) @ m (3, 3) as exact elementwise float32 (see _matmul)
        return sum(x[..., i:i + 1] * m[i] for i in range(3))

    def run(u, image, label):
        ab = _lerp(u[1:7], ranges)
        hed = mix(jnp.log(jnp.maximum(image, 1e-6)) / LOG_ADJUST, to_hed)  # skimage's rgb2hed without its clamp
        out = jnp.clip(jnp.exp(mix((hed * ab[:3] + ab[3:]) * LOG_ADJUST, to_rgb)), 0.0, 1.0)  # skimage's hed2rgb
        return jnp.where(_coin(u[0], p), out, image), label

    return _Plan(7, run=run)


_PLANS = {
    "flip": _plan_flip, "rot90": _plan_rot90, "affine": _plan_affine, "elastic": _plan_elastic,
    "gamma": _plan_gamma, "contrast_brightness": _plan_contrast_brightness, "noise": _plan_noise,
    "blur": _plan_blur, "bias_field": _plan_bias_field, "hed": _plan_hed,
}
assert tuple(_PLANS) == TRANSFORMS


def _apply_plans(plans: Sequence[_Plan], key: jax.Array, image: jax.Array,
                 label: Label) -> tuple[jax.Array, Label]:
    """Run plans in order with one draw of uniforms; consecutive geometric plans with the same order share one
    sampling grid."""
    if not plans:
        return image, label
    u_all = _uniforms(key, sum(pl.n for pl in plans))
    offsets = np.cumsum([0] + [pl.n for pl in plans])
    pending: list[tuple[_Plan, jax.Array]] = []
    for pl, o in zip(plans, offsets):
        u = u_all[o:o + pl.n]
        if pending and (pl.warp is None or pl.order != pending[0][0].order):
            image, label = _warp(pending, image, label)
            pending = []
        if pl.warp is not None:
            pending.append((pl, u))
        else:
            image, label = pl.run(u, image, label)
    if pending:
        image, label = _warp(pending, image, label)
    return image, label


def _move_boxes(plans: Sequence[_Plan], key: jax.Array, spatial: Sequence[int], boxes: jax.Array, valid: jax.Array,
                labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One example's boxes (G, 2d) through the geometric plans (the draw of `_apply_plans` with the same key),
    clipped to the image; boxes thinner than a voxel become invalid padding (see the module docstring)."""
    from medjax.detection.boxes import clip_boxes, nonempty, voxel_to_world

    u_all = _uniforms(key, sum(pl.n for pl in plans))
    offsets = np.cumsum([0] + [pl.n for pl in plans])
    boxes = boxes.astype(_F32)
    for pl, o in zip(plans, offsets):
        if pl.box_map is not None:
            boxes = voxel_to_world(boxes, pl.box_map(u_all[o:o + pl.n]))
    boxes = clip_boxes(boxes, spatial)
    valid = valid & nonempty(boxes)
    return jnp.where(valid[:, None], boxes, 0.0), valid, jnp.where(valid, labels, -1).astype(labels.dtype)


def _single(name: str, key: jax.Array, image: jax.Array, label: Label, params: dict) -> tuple[jax.Array, Label]:
    image = jnp.asarray(image, _F32)
    if label is not None and tuple(label.shape) != tuple(image.shape[:-1]):
        raise MedjaxError(f"augment {name}: label shape {tuple(label.shape)} is not the image's spatial shape "
                          f"{tuple(image.shape[:-1])}")
    plan = _PLANS[name](tuple(image.shape), **params)
    return _apply_plans([plan] if plan is not None else [], key, image, label)


# -------------------------------------------------------------------------------------- public transforms


def flip(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.5,
         axes: Sequence[int] | None = None) -> tuple[jax.Array, Label]:
    """Flip each spatial axis in `axes` (default all) independently with probability `p`."""
    return _single("flip", key, image, label, dict(p=p, axes=axes))


def rot90(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.5,
          axes: Sequence[int] | None = None, k: Sequence[int] = (1, 2, 3)) -> tuple[jax.Array, Label]:
    """With probability `p`, k quarter turns (k uniform from `k`) in the plane of two spatial `axes` (default the
    last two), exactly `np.rot90(x, k, axes)`; the plane must be square (MedjaxError otherwise)."""
    return _single("rot90", key, image, label, dict(p=p, axes=axes, k=k))


def affine(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.2,
           rotate: Any = (-15.0, 15.0), scale: Any = (0.85, 1.15), isotropic: bool = True,
           shear: Any = (0.0, 0.0), translate: Any = (0.0, 0.0), order: int = 1) -> tuple[jax.Array, Label]:
    """With probability `p`, a random rotation (degrees), scaling, shear and translation (voxels) about the
    image centre in one sampling grid; the channel minimum / label 0 outside. Ranges as in the module docstring."""
    return _single("affine", key, image, label, dict(p=p, rotate=rotate, scale=scale, isotropic=isotropic,
                                                     shear=shear, translate=translate, order=order))


def elastic(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.2, grid: Any = 5,
            magnitude: Any = (0.0, 3.0), order: int = 1) -> tuple[jax.Array, Label]:
    """With probability `p`, a smooth random displacement: N(0, m^2) displacements (m voxels, drawn from
    `magnitude`) on a coarse `grid` of control points spanning the image, linearly interpolated."""
    return _single("elastic", key, image, label, dict(p=p, grid=grid, magnitude=magnitude, order=order))


def gamma(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.3,
          gamma: Any = (0.7, 1.5)) -> tuple[jax.Array, Label]:
    """With probability `p`, per channel: rescale to [0, 1], raise to gamma (log-uniform in `gamma`), map back."""
    return _single("gamma", key, image, label, dict(p=p, gamma=gamma))


def contrast_brightness(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.15,
                        contrast: Any = (0.75, 1.25), brightness: Any = (0.75, 1.25),
                        preserve_range: bool = True) -> tuple[jax.Array, Label]:
    """With probability `p`: x -> ((x - mean) * c + mean) * b per channel (c from `contrast`, b from
    `brightness`); with `preserve_range` the contrast change is clipped to the channel's [min, max]."""
    return _single("contrast_brightness", key, image, label,
                   dict(p=p, contrast=contrast, brightness=brightness, preserve_range=preserve_range))


def noise(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.1,
          std: Any = (0.0, 0.1)) -> tuple[jax.Array, Label]:
    """With probability `p`, add N(0, s^2) noise, s drawn uniformly from `std` (intensity units)."""
    return _single("noise", key, image, label, dict(p=p, std=std))


def blur(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.2, sigma: Any = (0.5, 1.0),
         truncate: float = 3.0) -> tuple[jax.Array, Label]:
    """With probability `p`, separable Gaussian blur, sigma (voxels) drawn from `sigma`, kernel radius
    ceil(truncate * max sigma); symmetric padding (scipy.ndimage's 'reflect'), so the mean is preserved."""
    return _single("blur", key, image, label, dict(p=p, sigma=sigma, truncate=truncate))


def bias_field(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.2, order: int = 3,
               magnitude: Any = (0.0, 0.5)) -> tuple[jax.Array, Label]:
    """With probability `p`, multiply by exp(f): f a polynomial of degree <= `order` (no constant term) in
    coordinates scaled to [-1, 1] with random coefficients, scaled so that max |f| is drawn from `magnitude`."""
    return _single("bias_field", key, image, label, dict(p=p, order=order, magnitude=magnitude))


def hed(key: jax.Array, image: jax.Array, label: Label = None, *, p: float = 0.5, scale: Any = (0.95, 1.05),
        shift: Any = (-0.05, 0.05)) -> tuple[jax.Array, Label]:
    """With probability `p`, HED stain jitter of an RGB image in [0, 1]: haematoxylin, eosin and DAB densities
    (skimage's rgb2hed, unclamped) d -> d * a + b per stain (a from `scale`, b from `shift`), back to RGB
    (hed2rgb)."""
    return _single("hed", key, image, label, dict(p=p, scale=scale, shift=shift))


# ------------------------------------------------------------------------------------------ composition


def default_config(transforms: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """A config with every sub-config at its defaults, so `--config.augment.<name>.<field>=...` overrides work.

    The sub-configs are not type-safe: a range field accepts a number, a (lo, hi) pair or per-axis pairs."""
    c = ml_collections.ConfigDict()
    c.transforms = tuple(transforms)
    for name, fields in DEFAULTS.items():
        c[name] = ml_collections.ConfigDict(dict(fields), type_safe=False)
    return c


def _as_dict(node: Any, what: str) -> dict:
    if node is None:
        return {}
    if isinstance(node, ml_collections.ConfigDict):
        return node.to_dict()
    if isinstance(node, Mapping):
        return dict(node)
    raise MedjaxError(f"{what}: expected a ConfigDict/dict of settings, got {node!r}")


def make_augment(cfg: ml_collections.ConfigDict | Mapping | None, *, prefix: str = "augment",
                 spatial_shape: Sequence[int] | None = None, channels: int = 1,
                 bags: bool = False) -> Callable[[jax.Array, dict], dict]:
    """`augment(step_key, batch) -> batch` applying `cfg.transforms` per example (see the module docstring).

    `batch` holds "image" (N, *spatial, C), "index" (N,) global example indices, and optionally "label": a
    segmentation map (N, *spatial) is transformed with the image; any other label (classification) and every
    other key pass through, except a per-voxel "mask" (N, *spatial) (e.g. a field-of-view mask), which follows
    the geometric transforms as a label does (nearest, 0 outside the input) so it stays aligned with the image.
    The image comes back float32. Unknown transform names, unknown fields and bad values raise MedjaxError
    naming `config.<prefix>...`; shape-dependent checks (rot90's square plane, per-axis range counts, hed's three
    channels) run at the first trace, or now if `spatial_shape` (and `channels`) is given. `bags=True`: the
    images are bags (N, K, *spatial, C) of K instances each (see the module docstring).
    """
    d = _as_dict(cfg, f"config.{prefix}")
    for k in d:
        if k != "transforms" and k not in DEFAULTS:
            raise MedjaxError(f"unknown config key config.{prefix}.{k}; valid: {['transforms', *TRANSFORMS]}")
    names = d.get("transforms") or ()
    if isinstance(names, str):
        names = (names,)
    stages: list[tuple[str, dict]] = []
    for name in names:
        if name not in DEFAULTS:
            raise MedjaxError(f"unknown augmentation {name!r} in config.{prefix}.transforms; valid: "
                              f"{list(TRANSFORMS)}")
        given = _as_dict(d.get(name), f"config.{prefix}.{name}")
        unknown = sorted(set(given) - set(DEFAULTS[name]))
        if unknown:
            raise MedjaxError(f"unknown config key config.{prefix}.{name}.{unknown[0]}; valid for {name}: "
                              f"{sorted(DEFAULTS[name])}")
        params = {**DEFAULTS[name], **given}
        _check_p(params["p"], name)
        stages.append((name, params))

    def plans_for(shape: tuple[int, ...]) -> list[_Plan]:
        try:
            plans = [_PLANS[name](shape, **params) for name, params in stages]
        except MedjaxError as e:
            raise MedjaxError(f"config.{prefix}: {e}") from None
        return [pl for pl in plans if pl is not None]

    if spatial_shape is not None:
        plans_for((*map(int, spatial_shape), int(channels)))
    if not any(params["p"] > 0 for _, params in stages):
        return lambda step_key, batch: batch

    def augment(step_key: jax.Array, batch: dict) -> dict:
        if "image" not in batch or "index" not in batch:
            raise MedjaxError(f"config.{prefix}: augmentation needs batch['image'] and batch['index'] (global "
                              f"example indices), got keys {sorted(batch)}")
        image = jnp.asarray(batch["image"], _F32)
        index = jnp.asarray(batch["index"], jnp.int32)
        if bags:
            return dict(batch, image=_augment_bags(plans_for(tuple(image.shape[2:])), step_key, image, index))
        plans = plans_for(tuple(image.shape[1:]))
        label = batch.get("label")
        is_map = label is not None and tuple(label.shape) == tuple(image.shape[:-1])
        if label is not None and not is_map and label.ndim > 2:
            raise MedjaxError(f"config.{prefix}: batch['label'] of shape {tuple(label.shape)} is neither a "
                              f"segmentation map {tuple(image.shape[:-1])} nor a classification label (N,) / "
                              f"(N, K); it would not follow the geometric transforms")
        if index.shape != image.shape[:1]:
            raise MedjaxError(f"config.{prefix}: batch['index'] has shape {index.shape}, expected "
                              f"({image.shape[0]},)")
        keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(index)
        out = dict(batch)
        if is_map:
            out["image"], out["label"] = jax.vmap(lambda k, x, y: _apply_plans(plans, k, x, y))(keys, image, label)
        else:
            out["image"] = jax.vmap(lambda k, x: _apply_plans(plans, k, x, None)[0])(keys, image)
        if "boxes" in batch:
            if any(pl.warp is not None and pl.box_map is None for pl in plans):
                raise MedjaxError(f"config.{prefix}: elastic deformation cannot move boxes exactly; drop 'elastic' "
                                  f"from config.{prefix}.transforms for detection")
            spatial = tuple(image.shape[1:-1])
            out["boxes"], out["box_valid"], out["box_labels"] = jax.vmap(
                lambda k, b, v, lab: _move_boxes(plans, k, spatial, b, v, lab))(
                keys, batch["boxes"], batch["box_valid"], batch["box_labels"])
        mask = batch.get("mask")
        if mask is not None and tuple(mask.shape) != tuple(image.shape[:-1]):
            raise MedjaxError(f"config.{prefix}: batch['mask'] of shape {tuple(mask.shape)} is not a per-voxel map "
                              f"{tuple(image.shape[:-1])}; it would not follow the geometric transforms")
        if mask is not None:
            # The same keys draw the same geometry; the image computed alongside is unused and compiled away.
            out["mask"] = jax.vmap(lambda k, x, m: _apply_plans(plans, k, x, m)[1])(keys, image, mask)
        return out

    return augment


def _augment_bags(plans: Sequence[_Plan], step_key: jax.Array, image: jax.Array, index: jax.Array) -> jax.Array:
    """Bags (N, K, *spatial, C): instance k of example i is augmented with `fold_in(fold_in(step_key, i), k)`."""
    if index.shape != image.shape[:1]:
        raise MedjaxError(f"augment: batch['index'] has shape {index.shape}, expected ({image.shape[0]},)")
    k = image.shape[1]
    keys = jax.vmap(lambda i: jax.vmap(lambda j: jax.random.fold_in(jax.random.fold_in(step_key, i), j))(
        jnp.arange(k)))(index)
    one = lambda key, x: _apply_plans(plans, key, x, None)[0]  # noqa: E731
    return jax.vmap(jax.vmap(one))(keys, image)


__all__ = ["DEFAULTS", "TRANSFORMS", "make_augment", "default_config", "flip", "rot90", "affine", "elastic",
           "gamma", "contrast_brightness", "noise", "blur", "bias_field", "hed"]
