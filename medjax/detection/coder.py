"""Box regression targets: boxes as weighted deltas from their anchors and back, 2D and 3D.

The R-CNN parameterisation used by torchvision's and MONAI's `BoxCoder` (numbers identical to
`monai.apps.detection.utils.box_coder.BoxCoder.encode_single` / `decode_single`; tested): with an anchor's
centre c_a and size s_a and a box's centre c and size s, the deltas are

    (w_c * (c - c_a) / s_a  per axis,  w_s * log(s / s_a)  per axis)

ordered (dx, dy, [dz,] dw, dh, [dd]) with `weights` (w_c per axis, then w_s per axis; default all 1, MONAI's
RetinaNet). Decoding inverts this, the size deltas clipped above at `log(1000 / 16)` first (torchvision's
`bbox_xform_clip`) so an untrained head cannot overflow `exp`. Both broadcast over leading dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp

from medjax.detection.boxes import spatial_dims, to_center_size
from medjax.errors import MedjaxError

BOX_XFORM_CLIP = math.log(1000.0 / 16)


def _weights(weights: Sequence[float] | None, d: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    w = jnp.ones(2 * d, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    if w.shape != (2 * d,):
        raise MedjaxError(f"{d}D box coding needs {2 * d} weights (centre then size, per axis), got {weights}")
    return w[:d], w[d:]


def encode_boxes(boxes: jnp.ndarray, anchors: jnp.ndarray, weights: Sequence[float] | None = None) -> jnp.ndarray:
    """Deltas (..., 2d) that turn `anchors` into `boxes` (both (..., 2d), corner format, non-empty)."""
    d = spatial_dims(boxes)
    wc, ws = _weights(weights, d)
    a, b = to_center_size(anchors), to_center_size(boxes)
    return jnp.concatenate([wc * (b[..., :d] - a[..., :d]) / a[..., d:], ws * jnp.log(b[..., d:] / a[..., d:])],
                           axis=-1)


def decode_boxes(deltas: jnp.ndarray, anchors: jnp.ndarray, weights: Sequence[float] | None = None,
                 clip: float = BOX_XFORM_CLIP) -> jnp.ndarray:
    """Boxes (..., 2d) from deltas (..., 2d) relative to `anchors` (..., 2d): the inverse of `encode_boxes`."""
    d = spatial_dims(anchors)
    wc, ws = _weights(weights, d)
    a = to_center_size(anchors)
    centre = deltas[..., :d] / wc * a[..., d:] + a[..., :d]
    size = jnp.exp(jnp.minimum(deltas[..., d:] / ws, clip)) * a[..., d:]
    return jnp.concatenate([centre - 0.5 * size, centre + 0.5 * size], axis=-1)
