"""PyTorch twins of medjax's own networks, for the benchmark rows whose model MONAI does not have.

A twin is `torch.nn.functional` code over a flat dict of tensors converted from the medjax variables
(`torch_weights`), so both frameworks start from the same weights and compute the same function; the bench checks
the first training step's loss on both sides before it times anything. Covered: `medjax.models.unet.UNet` (2D/3D,
batch / instance / group norm, transposed-convolution upsampling, deep supervision) and
`medjax.models.convlstm.ConvLSTMUNet` / `ConvLSTMRegressor` (unidirectional). torch is a dev extra: this module is
imported only by the benchmarks and their tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def _is_upconv(path: tuple) -> bool:
    """medjax's `UpConv` modules (`up{i}`, kernel == stride transposed convolutions)."""
    return len(path) >= 2 and path[-2].startswith("up")


def torch_weights(tree: Mapping, path: tuple = (), upconv: Callable[[tuple], bool] = _is_upconv) -> dict:
    """A flax parameter / statistics tree -> {'/'-joined path: float32 torch tensor in torch's layout}.

    Convolution kernels (k..., in, out) become (out, in, k...); transposed-convolution kernels (`upconv(path)`)
    are spatially flipped and become (in, out, k...), what `conv_transpose{2,3}d` wants; Dense kernels (in, out)
    become (out, in); everything else is copied."""
    import torch

    out = {}
    for key, value in tree.items():
        here = path + (key,)
        if isinstance(value, Mapping):
            out.update(torch_weights(value, here, upconv))
            continue
        a = np.asarray(value, np.float32)
        nd = a.ndim - 2
        if key == "kernel" and a.ndim >= 3 and upconv(here):
            a = a[(slice(None, None, -1),) * nd].transpose(nd, nd + 1, *range(nd))
        elif key == "kernel" and a.ndim >= 3:
            a = a.transpose(nd + 1, nd, *range(nd))
        elif key == "kernel" and a.ndim == 2:
            a = a.T
        out["/".join(here)] = torch.tensor(np.ascontiguousarray(a))
    return out


def _f():
    import torch.nn.functional as F

    return F


def conv(x, p: Mapping, name: str, stride: int = 1, padding: int | None = None):
    """medjax `layers.conv` (symmetric `k // 2` padding unless given) on NC... input."""
    w = p[f"{name}/kernel"]
    conv_fn = _f().conv2d if w.ndim == 4 else _f().conv3d
    return conv_fn(x, w, p.get(f"{name}/bias"), stride=stride, padding=w.shape[-1] // 2 if padding is None else padding)


def norm(x, p: Mapping, s: Mapping, name: str, kind: str, train: bool, num_groups: int = 8, eps: float = 1e-5):
    """medjax `layers.norm`: BatchNorm (torch momentum 0.1, running statistics in `s`), InstanceNorm or GroupNorm
    with an affine scale and bias."""
    F = _f()
    if kind == "batch":
        return F.batch_norm(x, s[f"{name}/mean"], s[f"{name}/var"], p[f"{name}/scale"], p[f"{name}/bias"],
                            training=train, momentum=0.1, eps=eps)
    if kind == "instance":
        return F.instance_norm(x, weight=p.get(f"{name}/scale"), bias=p.get(f"{name}/bias"), eps=eps)
    return F.group_norm(x, num_groups, p[f"{name}/scale"], p[f"{name}/bias"], eps=eps)


def conv_block(x, p, s, name: str, kind: str, train: bool, activation: str = "relu"):
    """`medjax.models.unet.ConvBlock`: two (3x3 conv without bias -> norm -> activation)."""
    F = _f()
    for k in (1, 2):
        x = norm(conv(x, p, f"{name}/conv{k}"), p, s, f"{name}/norm{k}", kind, train)
        x = F.relu(x) if activation == "relu" else F.leaky_relu(x, 0.1)
    return x


def upconv(x, p, name: str):
    w = p[f"{name}/kernel"]
    fn = _f().conv_transpose2d if w.ndim == 4 else _f().conv_transpose3d
    return fn(x, w, p.get(f"{name}/bias"), stride=w.shape[-1])


def max_pool2(x):
    return (_f().max_pool2d if x.ndim == 4 else _f().max_pool3d)(x, 2)


def pad_to(x, spatial):
    """Edge padding at the end of each spatial axis, as `medjax.models.layers.pad_to`."""
    widths = []
    for have, want in zip(reversed(x.shape[2:]), reversed(tuple(spatial))):
        widths += [0, want - have]
    if not any(widths):
        return x
    return _f().pad(x, widths, mode="replicate")


def unet(p, s, x, depth: int, kind: str = "batch", train: bool = True, deep_supervision: bool = False,
         activation: str = "relu"):
    """`medjax.models.unet.UNet` (`upsample="transpose"`) on NC... input: logits, or with deep supervision in
    training (main, aux2, ..., aux{depth-1}), finest first."""
    import torch

    skips = []
    for i in range(1, depth + 1):
        if i > 1:
            x = max_pool2(x)
        x = conv_block(x, p, s, f"enc{i}", kind, train, activation)
        skips.append(x)
    aux = []
    for i in range(depth - 1, 0, -1):
        skip = skips[i - 1]
        x = pad_to(upconv(x, p, f"up{i}"), skip.shape[2:])
        x = conv_block(torch.cat([skip, x], 1), p, s, f"dec{i}", kind, train, activation)
        if deep_supervision and i > 1:
            aux.append(conv(x, p, f"aux{i}"))
    logits = conv(x, p, "final_conv")
    if deep_supervision and train:
        return (logits, *reversed(aux))
    return logits


def convlstm_layer(p, x, name: str, forget_bias: float = 1.0):
    """One medjax `ConvLSTM` layer (`{name}/cell/gates`, gates in Flax's order i, g, f, o) over (N, T, C, ...)."""
    import torch

    w = p[f"{name}/cell/gates/kernel"]
    hidden = w.shape[0] // 4
    h = x.new_zeros((x.shape[0], hidden) + tuple(x.shape[3:]))
    c = torch.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        i, g, f, o = torch.split(conv(torch.cat([x[:, t], h], 1), p, f"{name}/cell/gates"), hidden, 1)
        c = torch.sigmoid(f + forget_bias) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 1)


def _fold(x):
    return x.reshape((x.shape[0] * x.shape[1],) + tuple(x.shape[2:]))


def _unfold(x, n: int):
    return x.reshape((n, x.shape[0] // n) + tuple(x.shape[1:]))


def convlstm_unet(p, s, x, depth: int, kind: str = "batch", train: bool = True):
    """`medjax.models.convlstm.ConvLSTMUNet` (no skip LSTMs, unidirectional): (N, T, C, ...) -> (N, T, K, ...)."""
    import torch

    n = x.shape[0]
    x = _fold(x)
    skips = []
    for i in range(1, depth + 1):
        if i > 1:
            x = max_pool2(x)
        x = conv_block(x, p, s, f"enc{i}", kind, train)
        if i < depth:
            skips.append(x)
    x = x + _fold(convlstm_layer(p, _unfold(x, n), "bottleneck_lstm/layer0"))
    for i in range(depth - 1, 0, -1):
        skip = skips[i - 1]
        x = pad_to(upconv(x, p, f"up{i}"), skip.shape[2:])
        x = conv_block(torch.cat([skip, x], 1), p, s, f"dec{i}", kind, train)
    return _unfold(conv(x, p, "final_conv"), n)


def convlstm_regressor(p, s, x, depth: int, kind: str = "batch", train: bool = True):
    """`medjax.models.convlstm.ConvLSTMRegressor` (unidirectional): (N, T, C, ...) -> (N, outputs)."""
    F = _f()
    n = x.shape[0]
    x = _fold(x)
    for i in range(depth):
        if i:
            x = max_pool2(x)
        x = conv_block(x, p, s, f"enc{i + 1}", kind, train)
    h = convlstm_layer(p, _unfold(x, n), "lstm/layer0")
    pooled = h.mean(dim=(1,) + tuple(range(3, h.ndim)))
    return F.linear(pooled, p["head/kernel"], p["head/bias"])


def resize_labels(labels, spatial):
    """`medjax.tasks.segmentation.resize_labels` (nearest, the pixel each strided level keeps) for (N, ...)."""
    import torch

    out = labels
    for axis, size in enumerate(spatial):
        idx = torch.arange(size, device=labels.device) * labels.shape[1 + axis] // size
        out = torch.index_select(out, 1 + axis, idx)
    return out


def dice_ce_loss(num_classes: int) -> Callable[[Any, Any], Any]:
    """MONAI's `DiceCELoss(softmax=True, to_onehot_y=True)`, what medjax's `dice_ce` loss equals, over
    (logits NC..., integer labels N...)."""
    from monai.losses import DiceCELoss

    fn = DiceCELoss(softmax=True, to_onehot_y=True)
    return lambda logits, labels: fn(logits, labels[:, None])


def deep_supervision(loss: Callable, outputs, labels):
    """medjax's deep-supervision sum: weights 1/2^i normalised, labels resized to each output."""
    weights = np.array([0.5**i for i in range(len(outputs))])
    weights = weights / weights.sum()
    total = 0.0
    for w, logits in zip(weights, outputs):
        lab = labels if tuple(logits.shape[2:]) == tuple(labels.shape[1:]) else resize_labels(labels, logits.shape[2:])
        total = total + float(w) * loss(logits.float(), lab)
    return total
