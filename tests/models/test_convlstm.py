"""medjax.models.convlstm: the cell's equations, stacking, direction, unrolling, the sequence models, and parity
with a PyTorch ConvLSTM through medjax.transfer.convlstm."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from medjax.errors import MedjaxError
from medjax.models.convlstm import ConvLSTM, ConvLSTMCell, ConvLSTMRegressor, ConvLSTMUNet, TimeDistributed
from medjax.models.unet import UNet
from medjax.transfer.convlstm import import_torch_convlstm
from tests.models.torch_convlstm import torch_convlstm_class


def _seq(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


def _count(v):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))


def test_cell_with_a_1x1_kernel_is_the_lstm_equations_by_hand():
    cell = ConvLSTMCell(2, kernel_size=1, forget_bias=1.0, spatial_dims=2)
    x, c, h = _seq((1, 1, 1, 3), 0), _seq((1, 1, 1, 2), 1), _seq((1, 1, 1, 2), 2)
    v = cell.init(jax.random.key(0), (c, h), x)
    (c2, h2), out = cell.apply(v, (c, h), x)
    w, b = np.asarray(v["params"]["gates"]["kernel"])[0, 0], np.asarray(v["params"]["gates"]["bias"])
    z = np.concatenate([np.asarray(x)[0, 0, 0], np.asarray(h)[0, 0, 0]]) @ w + b
    i, g, f, o = np.split(z, 4)
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    c_ref = sig(f + 1.0) * np.asarray(c)[0, 0, 0] + sig(i) * np.tanh(g)
    np.testing.assert_allclose(np.asarray(c2)[0, 0, 0], c_ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(h2)[0, 0, 0], sig(o) * np.tanh(c_ref), rtol=1e-5)
    np.testing.assert_array_equal(out, h2)


def test_stacked_bidirectional_shapes_and_parameter_count():
    x = _seq((2, 3, 6, 6, 1))
    m = ConvLSTM(4, num_layers=2, bidirectional=True)
    out, v = m.init_with_output(jax.random.key(0), x)
    assert out.shape == (2, 3, 6, 6, 8)
    # layer 0: 3x3 conv of [x (1) + h (4)] -> 16, per direction; layer 1: [8 + 4] -> 16
    assert _count(v) == 2 * (9 * 5 * 16 + 16) + 2 * (9 * 12 * 16 + 16)


def test_unrolled_and_looped_runs_agree_and_3d_works():
    x = _seq((1, 4, 6, 6, 2))
    full, loop = ConvLSTM(3), ConvLSTM(3, unroll=1)
    v = jax.jit(full.init)(jax.random.key(1), x)  # jitted: op by op, every operation compiles on its own
    np.testing.assert_allclose(jax.jit(full.apply)(v, x), jax.jit(loop.apply)(v, x), rtol=1e-5, atol=1e-6)
    x3 = _seq((1, 3, 4, 4, 4, 1))
    assert jax.eval_shape(ConvLSTM(2).init_with_output, jax.random.key(0), x3)[0].shape == (1, 3, 4, 4, 4, 2)


def test_backward_direction_is_the_forward_cell_on_the_reversed_sequence():
    x = _seq((1, 4, 6, 6, 1))
    bi = ConvLSTM(2, bidirectional=True)
    v = bi.init(jax.random.key(2), x)
    out = bi.apply(v, x)
    one = ConvLSTM(2)
    backward = one.apply({"params": {"layer0": v["params"]["backward0"]}}, x[:, ::-1])[:, ::-1]
    forward = one.apply({"params": {"layer0": v["params"]["forward0"]}}, x)
    np.testing.assert_allclose(out, jnp.concatenate([forward, backward], -1), rtol=1e-5, atol=1e-6)


def test_time_distributed_applies_a_model_frame_by_frame():
    x = _seq((2, 3, 8, 8, 1))
    unet = UNet(2, features=(4, 8))
    td = TimeDistributed(unet)
    v = td.init(jax.random.key(0), x, train=False)
    out = td.apply(v, x, train=False)
    frame = unet.apply({"params": v["params"]["module"], "batch_stats": v["batch_stats"]["module"]}, x[:, 1],
                       train=False)
    np.testing.assert_allclose(out[:, 1], frame, rtol=1e-5, atol=1e-6)
    # `model.time_distributed=True` in a config wraps any registered model the same way.
    from medjax.tasks.base import model_from_config

    cfg = ml_collections.ConfigDict(dict(name="unet", features=(4, 8), time_distributed=True))
    wrapped = model_from_config(cfg, 2, None)
    assert isinstance(wrapped, TimeDistributed) and wrapped.module == unet
    np.testing.assert_allclose(wrapped.apply(v, x, train=False), out)


def test_sequence_models_shapes_and_errors():
    """Shapes only: traced abstractly (running them op by op would compile every operation)."""
    x = _seq((2, 3, 8, 8, 1))
    key = jax.random.key(0)
    u = ConvLSTMUNet(3, features=(4, 8, 16), skip_lstm=True)
    out, vu = jax.eval_shape(lambda x: u.init_with_output(key, x, train=False), x)
    assert out.shape == (2, 3, 8, 8, 3)
    assert {"bottleneck_lstm", "skip_lstm1", "skip_lstm2"} <= set(vu["params"])
    r = ConvLSTMRegressor(2, features=(4, 8), lstm_features=8, bidirectional=True)
    assert jax.eval_shape(lambda x: r.init_with_output(key, x, train=False), x)[0].shape == (2, 2)
    with pytest.raises(MedjaxError, match="expected a sequence"):
        jax.eval_shape(ConvLSTM(2).init, key, x[:, 0])


TorchConvLSTM = torch_convlstm_class()  # the common PyTorch ConvLSTM (ndrplz)


@pytest.mark.parametrize("nd", [2, 3])
def test_pytorch_convlstm_weights_give_the_same_outputs(nd):
    torch.manual_seed(0)
    net = TorchConvLSTM(2, 4, 3, num_layers=2, conv=torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d)
    x = torch.randn((2, 3, 2) + (5,) * nd)
    with torch.no_grad():
        ref = net(x).numpy()
    params = import_torch_convlstm({k: v.numpy() for k, v in net.state_dict().items()}, forget_bias=1.0)
    ours = ConvLSTM(4, num_layers=2, forget_bias=1.0).apply({"params": params}, jnp.asarray(np.moveaxis(
        x.numpy(), 2, -1)))
    np.testing.assert_allclose(np.asarray(ours), np.moveaxis(ref, 2, -1), rtol=1e-5, atol=2e-6)


def test_importer_names_what_it_cannot_use():
    with pytest.raises(MedjaxError, match="unexpected entry 'cell_list.0.norm.weight'"):
        import_torch_convlstm({"cell_list.0.norm.weight": np.zeros(4)})
    with pytest.raises(MedjaxError, match="needs both conv.weight and conv.bias"):
        import_torch_convlstm({"cell_list.0.conv.weight": np.zeros((8, 3, 3, 3))})
    with pytest.raises(MedjaxError, match="permutation of 'ifog'"):
        import_torch_convlstm({}, gate_order="iffo")
