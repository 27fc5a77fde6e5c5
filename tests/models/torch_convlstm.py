"""The common PyTorch ConvLSTM (ndrplz/ConvLSTM_pytorch's layout), the reference for medjax's ConvLSTM weight import."""

from __future__ import annotations


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
