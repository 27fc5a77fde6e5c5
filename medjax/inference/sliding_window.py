"""Sliding-window inference over large volumes as one XLA program, matching MONAI's semantics.

`sliding_window_inference(predict_fn, image, roi_size)` reproduces `monai.inferers.sliding_window_inference`
(MONAI 1.6) for channels-last inputs: the same window positions (scan interval `int(roi * (1 - overlap))`, at
least 1, or the roi itself where it equals the image; the last window in each dimension shifted back to end at
the border), the same symmetric constant padding when the image is smaller than the roi (cropped back at the
end), the same importance map (`compute_importance_map`: an un-normalised separable Gaussian with
sigma = sigma_scale * roi, clamped below at max(its minimum, 1e-3); ones for "constant"), the same window order
(windows of all images flattened, image-major, in chunks of `sw_batch_size`) and accumulation order, and the
final division by the summed weights. Tests pin it to MONAI within 1e-5.

How it runs: window starts are computed in Python from the static shapes and become small int32 tables. A
`lax.scan` over chunks of `sw_batch_size` windows gathers each chunk with `lax.dynamic_slice`, calls
`predict_fn` once per chunk (so the predictor is traced once) and adds weight * prediction into the output
buffer with `lax.dynamic_update_slice`, one window after another (windows overlap, so the order is the
same as MONAI's). A last chunk shorter than `sw_batch_size` is filled with repeats of a real window whose
contribution is multiplied by 0. The weight-count map, identical for every image, is accumulated once by a
`fori_loop` over the windows. The function is traceable: wrap it (with the predictor closed over or passed in
through `functools.partial`) in `jax.jit`; the roi size, overlap, mode and batch size are static.

Differences from MONAI, by design: inputs are (N, *spatial, C) and predictions (B, *roi, C_out); `padding_value`
is MONAI's `cval` with constant padding only; the predictor must return one array whose spatial shape equals the
roi (no multi-output or zoomed outputs); `mode` defaults to "gaussian" (MONAI's default is "constant");
accumulation and the result are in float32 (or wider, if the predictions are), whatever the input dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from medjax.errors import MedjaxError

MODES = ("gaussian", "constant")


def _per_dim(value, ndim: int, what: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != ndim:
            raise MedjaxError(f"{what} {tuple(value)} needs {ndim} values, one per spatial dimension")
        return tuple(value)
    return (value,) * ndim


def resolve_roi_size(roi_size: int | Sequence[int | None], image_size: Sequence[int]) -> tuple[int, ...]:
    """`roi_size` per dimension; None or non-positive entries take the image size (MONAI's `fall_back_tuple`)."""
    roi = _per_dim(roi_size, len(image_size), "roi_size")
    return tuple(int(n) if (r is None or int(r) <= 0) else int(r) for r, n in zip(roi, image_size))


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float | Sequence[float]) -> tuple:
    """MONAI's `_get_scan_interval`: `int(roi * (1 - overlap))` (at least 1), or the roi where it equals the image."""
    overlap = _per_dim(overlap, len(image_size), "overlap")
    out = []
    for n, r, o in zip(image_size, roi_size, overlap):
        if not 0.0 <= float(o) < 1.0:
            raise MedjaxError(f"overlap must be >= 0 and < 1, got {o}")
        out.append(int(r) if r == n else max(int(r * (1 - o)), 1))
    return tuple(out)


def window_starts(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float | Sequence[float]
) -> list[tuple[int, ...]]:
    """All window starts, in MONAI's order (`dense_patch_slices`: last dimension fastest).

    `image_size` is the (padded) size, at least `roi_size` in every dimension.
    """
    interval = scan_interval(image_size, roi_size, overlap)
    return list(itertools.product(*(starts_along(n, r, s) for n, r, s in zip(image_size, roi_size, interval))))


def starts_along(size: int, roi: int, interval: int) -> list[int]:
    """Window starts along one axis of length `size` (MONAI's `dense_patch_slices`): 0, interval, 2 interval, ...
    until a window of length `roi` reaches the end, the last one shifted back to end at the border."""
    roi = min(roi, size)
    num = int(math.ceil(float(size) / interval))
    count = next((d + 1 for d in range(num) if d * interval + roi >= size), 1)
    return [d * interval - max(d * interval + roi - size, 0) for d in range(count)]


def gaussian_importance_map(roi_size: Sequence[int], sigma_scale: float | Sequence[float] = 0.125) -> np.ndarray:
    """MONAI's Gaussian importance map (float32, shape `roi_size`), computed as MONAI does in float32.

    Separable, un-normalised (1 at the centre of odd sizes), sigma = sigma_scale * size per dimension, and clamped
    below at max(minimum, 1e-3) so window edges keep a small positive weight.
    """
    roi = tuple(int(r) for r in roi_size)
    scales = _per_dim(sigma_scale, len(roi), "sigma_scale")
    weights = None
    for n, sc in zip(roi, scales):
        sigma = n * sc
        x = np.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=np.float32)
        g = np.exp(x**2 / np.float32(-2 * sigma**2)).astype(np.float32)
        weights = g if weights is None else weights[..., None] * g
    weights = np.asarray(weights, np.float32)
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def importance_map(roi_size: Sequence[int], mode: str = "gaussian", sigma_scale=0.125) -> np.ndarray:
    """The per-window weights for `mode` ("gaussian" or "constant"), float32 of shape `roi_size`."""
    if mode == "constant":
        return np.ones(tuple(int(r) for r in roi_size), np.float32)
    if mode == "gaussian":
        return gaussian_importance_map(roi_size, sigma_scale)
    raise MedjaxError(f"unknown sliding-window mode {mode!r}; use one of {MODES}")


def sliding_window_inference(
    predict_fn: Callable[[jax.Array], jax.Array],
    image: jax.Array,
    roi_size: int | Sequence[int | None],
    *,
    overlap: float | Sequence[float] = 0.25,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    sw_batch_size: int = 4,
    padding_value: float = 0.0,
) -> jax.Array:
    """Predict `image` (N, *spatial, C) window by window; returns (N, *spatial, C_out).

    `predict_fn` maps a batch of windows (sw_batch_size, *roi, C) to predictions (sw_batch_size, *roi, C_out); it is
    traced once. Where the image is smaller than the roi it is padded symmetrically with `padding_value` and the
    result cropped back. See the module docstring for the exact (MONAI) semantics; jit the whole call for one
    program.
    """
    image = jnp.asarray(image)
    nd = image.ndim - 2
    if nd < 1:
        raise MedjaxError(f"image must be (N, *spatial, C), got shape {image.shape}")
    if isinstance(roi_size, (list, tuple)) and len(roi_size) != nd:
        raise MedjaxError(
            f"roi_size {tuple(roi_size)} is {len(roi_size)}D but image {image.shape} is {nd}D (N, *spatial, C)"
        )
    if mode not in MODES:
        raise MedjaxError(f"unknown sliding-window mode {mode!r}; use one of {MODES}")
    if int(sw_batch_size) < 1:
        raise MedjaxError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    sw = int(sw_batch_size)
    batch, *spatial, channels = image.shape
    roi = resolve_roi_size(roi_size, spatial)

    # Pad (symmetrically, as MONAI) where the image is smaller than the roi.
    pads = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for r, n in zip(roi, spatial)]
    if any(a or b for a, b in pads):
        image = jnp.pad(image, [(0, 0), *pads, (0, 0)], constant_values=jnp.asarray(padding_value, image.dtype))
    size = tuple(max(n, r) for n, r in zip(spatial, roi))

    starts = window_starts(size, roi, overlap)
    num_win = len(starts)
    total = batch * num_win
    chunks = -(-total // sw)
    padded_total = chunks * sw
    flat = np.arange(padded_total)
    valid = flat < total
    flat = np.where(valid, flat, 0)  # filler windows repeat window 0 and are weighted by 0
    starts_np = np.asarray(starts, np.int32).reshape(num_win, nd)
    tab_batch = (flat // num_win).astype(np.int32).reshape(chunks, sw)
    tab_start = starts_np[flat % num_win].reshape(chunks, sw, nd)
    tab_valid = valid.reshape(chunks, sw)

    def gather(b, s):
        return lax.dynamic_slice(image, (b, *s, 0), (1, *roi, channels))[0]

    window_struct = jax.ShapeDtypeStruct((sw, *roi, channels), image.dtype)
    out_struct = jax.eval_shape(predict_fn, window_struct)
    if not hasattr(out_struct, "shape") or tuple(out_struct.shape[:-1]) != (sw, *roi):
        got = getattr(out_struct, "shape", type(out_struct).__name__)
        raise MedjaxError(
            f"predict_fn must map windows {window_struct.shape} to (batch, *roi_size, C_out) = "
            f"({sw}, *{roi}, C_out); got {got}"
        )
    out_channels = out_struct.shape[-1]
    acc_dtype = jnp.promote_types(out_struct.dtype, jnp.float32)
    weights = jnp.asarray(importance_map(roi, mode, sigma_scale), acc_dtype)[..., None]  # (*roi, 1)

    def body(out, xs):
        b_idx, s_idx, ok = xs
        windows = jax.vmap(gather)(b_idx, s_idx)
        pred = predict_fn(windows).astype(acc_dtype) * weights
        pred = pred * ok.astype(acc_dtype).reshape((sw,) + (1,) * (nd + 1))

        def add(i, out):
            at = (b_idx[i], *s_idx[i], 0)
            cur = lax.dynamic_slice(out, at, (1, *roi, out_channels))
            return lax.dynamic_update_slice(out, cur + pred[i][None], at)

        return lax.fori_loop(0, sw, add, out), None

    out = jnp.zeros((batch, *size, out_channels), acc_dtype)
    out, _ = lax.scan(body, out, (jnp.asarray(tab_batch), jnp.asarray(tab_start), jnp.asarray(tab_valid)))

    def count_add(i, count):
        at = (0, *jnp.asarray(starts_np)[i], 0)
        cur = lax.dynamic_slice(count, at, (1, *roi, 1))
        return lax.dynamic_update_slice(count, cur + weights[None], at)

    count = lax.fori_loop(0, num_win, count_add, jnp.zeros((1, *size, 1), acc_dtype))
    out = out / count

    if any(a or b for a, b in pads):
        out = out[(slice(None), *(slice(a, a + n) for (a, _), n in zip(pads, spatial)), slice(None))]
    return out


def sliding_window_volume(
    predict_windows: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    roi_size: int | Sequence[int | None],
    *,
    overlap: float | Sequence[float] = 0.25,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    sw_batch_size: int = 4,
    padding_value: float = 0.0,
) -> np.ndarray:
    """`sliding_window_inference` for ONE volume `(*spatial, C)` of any size, blending on the host.

    Why a second form: the one-program version is compiled per image shape, and evaluation sets of real volumes
    (Decathlon tasks) have a different shape per case. Here only `predict_windows` runs on the device, always on
    `(sw_batch_size, *roi, C)` windows (so it compiles once for a whole dataset); window positions, padding,
    the importance map and the accumulation are the same as `sliding_window_inference` (and MONAI), done in
    float32 numpy. A last chunk shorter than `sw_batch_size` is filled with copies of its first window, whose
    predictions are dropped. Returns `(*spatial, C_out)` float32.
    """
    image = np.asarray(image)
    nd = image.ndim - 1
    if nd < 1:
        raise MedjaxError(f"image must be (*spatial, C), got shape {image.shape}")
    if isinstance(roi_size, (list, tuple)) and len(roi_size) != nd:
        raise MedjaxError(f"roi_size {tuple(roi_size)} is {len(roi_size)}D but image {image.shape} is {nd}D "
                          f"(*spatial, C)")
    if int(sw_batch_size) < 1:
        raise MedjaxError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    sw = int(sw_batch_size)
    spatial = image.shape[:-1]
    roi = resolve_roi_size(roi_size, spatial)
    weights = importance_map(roi, mode, sigma_scale)[..., None]
    pads = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for r, n in zip(roi, spatial)]
    if any(a or b for a, b in pads):
        image = np.pad(image, [*pads, (0, 0)], constant_values=padding_value)
    size = image.shape[:-1]
    starts = window_starts(size, roi, overlap)
    out = count = None
    for first in range(0, len(starts), sw):
        chunk = starts[first:first + sw]
        boxes = [tuple(slice(s, s + r) for s, r in zip(start, roi)) for start in chunk]
        windows = np.stack([image[b] for b in boxes] + [image[boxes[0]]] * (sw - len(boxes)))
        pred = np.asarray(predict_windows(windows))
        if pred.shape[:-1] != (sw, *roi):
            raise MedjaxError(f"predict_windows must map windows {windows.shape} to ({sw}, *{roi}, C_out); got "
                              f"{pred.shape}")
        if out is None:
            out = np.zeros((*size, pred.shape[-1]), np.promote_types(pred.dtype, np.float32))
            count = np.zeros((*size, 1), out.dtype)
        for box, p in zip(boxes, pred):
            out[box] += p * weights
            count[box] += weights
    out = out / count
    return out[tuple(slice(a, a + n) for (a, _), n in zip(pads, spatial))]
