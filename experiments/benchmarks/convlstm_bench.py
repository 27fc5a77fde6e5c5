"""`medjax bench` ConvLSTM row: a per-frame segmentation training step of a stacked ConvLSTM against PyTorch.

The network is `num_layers` ConvLSTM layers of `hidden` channels (3x3 kernels) over T frames, then a 1x1
convolution to per-frame class logits, trained with Adam and softmax cross-entropy over every frame's pixels.
The torch side is the common PyTorch ConvLSTM (ndrplz/ConvLSTM_pytorch: one convolution of [x, h] per layer,
gates (i, f, o, g), no forget bias), eager or torch.compile'd; medjax's `ConvLSTM` (`nn.RNN`, unrolled) gets the
same initial weights through `medjax.transfer.convlstm.import_torch_convlstm`, so the first-step losses must agree
(1e-4 relative) before anything is timed. Shapes: `features = (hidden, num_layers)`, `frames` T, square frames.
"""

from __future__ import annotations

import numpy as np


def torch_convlstm_class():
    """The PyTorch ConvLSTM (a function so that torch is imported only when a benchmark or test runs)."""
    import torch

    class TorchConvLSTM(torch.nn.Module):
        """ndrplz/ConvLSTM_pytorch's layout: `cell_list.<i>.conv`, gates (i, f, o, g), no forget bias; input
        (N, T, C, *spatial), output the last layer's hidden states (N, T, hidden, *spatial)."""

        def __init__(self, input_dim: int, hidden: int, kernel: int, num_layers: int, conv=torch.nn.Conv2d):
            super().__init__()
            self.hidden = hidden
            self.cell_list = torch.nn.ModuleList()
            for i in range(num_layers):
                cell = torch.nn.Module()
                cell.conv = conv((input_dim if i == 0 else hidden) + hidden, 4 * hidden, kernel, padding=kernel // 2)
                self.cell_list.append(cell)

        def forward(self, x):
            for cell in self.cell_list:
                h = x.new_zeros((x.shape[0], self.hidden) + tuple(x.shape[3:]))
                c = torch.zeros_like(h)
                outs = []
                for t in range(x.shape[1]):
                    i, f, o, g = torch.split(cell.conv(torch.cat([x[:, t], h], 1)), self.hidden, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    outs.append(h)
                x = torch.stack(outs, 1)
            return x

    return TorchConvLSTM


def _torch_net(in_channels: int, hidden: int, num_layers: int, num_classes: int):
    import torch

    class Segmenter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch_convlstm_class()(in_channels, hidden, 3, num_layers)
            self.head = torch.nn.Conv2d(hidden, num_classes, 1)

        def forward(self, x):  # (N, T, C, H, W) -> logits (N, classes, T, H, W), as cross_entropy wants
            h = self.lstm(x)
            n, t = h.shape[:2]
            logits = self.head(h.reshape(n * t, *h.shape[2:]))
            return logits.reshape(n, t, *logits.shape[1:]).transpose(1, 2)

    return Segmenter()


def _medjax_net(hidden: int, num_layers: int, num_classes: int):
    import flax.linen as nn

    from medjax.models.convlstm import ConvLSTM

    class Segmenter(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):  # (N, T, H, W, C) -> (N, T, H, W, classes)
            h = ConvLSTM(hidden, num_layers=num_layers, name="lstm")(x)
            return nn.Conv(num_classes, (1, 1), name="head")(h)

    return Segmenter()


def run_convlstm_case(case, shape, warmup: int, repeats: int, frameworks, log=print, budget=None,
                      precision: str = "float32") -> list[dict]:
    """Records for the ConvLSTM case, in the format of `bench.run_model_case` (float32 only)."""
    import copy

    import torch

    from experiments.benchmarks import bench as helpers
    from medjax.transfer.convlstm import import_torch_convlstm

    budget = budget or helpers.CompileBudget()
    hidden, num_layers = shape.features
    torch.manual_seed(0)
    net = _torch_net(case.in_channels, hidden, num_layers, case.num_classes)
    nets = {"torch_eager": net, "torch_compile": copy.deepcopy(net)}
    sd = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
    lstm = import_torch_convlstm({k[len("lstm."):]: v for k, v in sd.items() if k.startswith("lstm.")},
                                 forget_bias=1.0)
    head = {"kernel": sd["head.weight"][:, :, 0, 0].T[None, None], "bias": sd["head.bias"]}
    variables = {"params": {"lstm": lstm, "head": head}}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((shape.batch, shape.frames, case.in_channels, shape.size, shape.size)).astype(np.float32)
    y = rng.integers(0, case.num_classes, (shape.batch, shape.frames, shape.size, shape.size)).astype(np.int64)
    xj = np.ascontiguousarray(np.moveaxis(x, 2, -1))
    common = {"case": case.name, "kind": case.kind, "arch": case.arch, "batch": shape.batch,
              "input_shape_nc": list(x.shape), "input_shape_medjax": list(xj.shape), "num_classes": case.num_classes,
              "features": list(shape.features), "frames": shape.frames, "warmup": warmup, "repeats": repeats,
              "optimizer": f"adam lr {helpers.LR}", "loss": "softmax cross-entropy per frame pixel",
              "precision": "float32"}
    if precision != "float32":
        common["precision_note"] = f"the ConvLSTM row runs in float32 (asked: {precision})"
    model = _medjax_net(hidden, num_layers, case.num_classes)

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            return helpers.time_medjax_train(model, variables, xj, y, warmup, repeats)
        return helpers._run_torch(nets[fw], backend, x, y, warmup, repeats)

    results = helpers.run_frameworks(case.name, shape.batch, common, frameworks, run, budget, log)
    helpers._check_losses(results)
    return [results[fw] for fw in frameworks]
