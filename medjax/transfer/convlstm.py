"""PyTorch ConvLSTM weights -> medjax `ConvLSTM` parameters.

The common PyTorch ConvLSTM (ndrplz/ConvLSTM_pytorch and its many copies) has per layer one convolution
`cell_list.<layer>.conv` of [x, h] to 4 x hidden channels, gates in the order (i, f, o, g) and no forget bias.
medjax's `ConvLSTMCell` convolves the same [x, h] but orders the gates (i, g, f, o), Flax's order, and adds
`forget_bias` to f before the sigmoid. So the import reorders the four output-channel blocks of the kernel and
bias, subtracts `forget_bias` from the f block of the bias (so sigmoid(f + forget_bias) sees torch's f), and
moves the kernel from OI(D)HW to (D)HWIO. Other gate orders are given as `gate_order` (a permutation of "ifog").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from medjax.errors import MedjaxError

MEDJAX_ORDER = "igfo"
KEY = re.compile(r"^cell_list\.(\d+)\.conv\.(weight|bias)$")


def _reorder(a: np.ndarray, source_order: str, axis: int) -> np.ndarray:
    blocks = dict(zip(source_order, np.split(a, 4, axis=axis)))
    return np.concatenate([blocks[g] for g in MEDJAX_ORDER], axis=axis)


def import_torch_convlstm(state_dict: Mapping[str, np.ndarray], forget_bias: float = 1.0,
                          gate_order: str = "ifog") -> dict:
    """{"layer<i>": {"cell": {"gates": {"kernel", "bias"}}}} for `ConvLSTM(num_layers=L, forget_bias=...)`.

    Every `cell_list.<i>.conv.{weight,bias}` entry is used; anything else in `state_dict` is an error (nothing
    is silently dropped). A missing bias (torch `bias=False`) is an error too: medjax's cell always has one.
    """
    if sorted(gate_order) != sorted("ifog"):
        raise MedjaxError(f"gate_order must be a permutation of 'ifog', got {gate_order!r}")
    layers: dict[int, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        m = KEY.match(key)
        if not m:
            raise MedjaxError(f"unexpected entry {key!r} in the ConvLSTM weights (expected cell_list.<i>.conv."
                              f"weight|bias)")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(value, np.float32)
    if sorted(layers) != list(range(len(layers))) or not layers:
        raise MedjaxError(f"ConvLSTM weights must hold layers 0..L-1, got {sorted(layers)}")
    params = {}
    for i, entry in sorted(layers.items()):
        if set(entry) != {"weight", "bias"}:
            raise MedjaxError(f"layer {i} needs both conv.weight and conv.bias, got {sorted(entry)}")
        w, b = entry["weight"], entry["bias"]
        if w.ndim not in (4, 5) or w.shape[0] % 4 or b.shape != (w.shape[0],):
            raise MedjaxError(f"layer {i}: conv.weight {w.shape} / bias {b.shape} are not a ConvLSTM's "
                              f"(4 x hidden, input + hidden, k...) convolution")
        kernel = np.moveaxis(_reorder(w, gate_order, 0), (0, 1), (-1, -2))  # O I k.. -> k.. I O
        bias = _reorder(b, gate_order, 0).copy()
        hidden = b.shape[0] // 4
        f = MEDJAX_ORDER.index("f")
        bias[f * hidden:(f + 1) * hidden] -= forget_bias
        params[f"layer{i}"] = {"cell": {"gates": {"kernel": np.ascontiguousarray(kernel), "bias": bias}}}
    return params
