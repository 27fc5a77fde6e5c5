"""ABMIL: gated attention by hand, attention sums to 1 over the valid tiles and ignores padded ones exactly, the
slide logits are the attention-weighted tile logits, and ResNet weight tables reach the `encoder`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import rng
from medjax.errors import MedjaxError
from medjax.models import build_model
from medjax.models.abmil import GatedAttention, masked_softmax

TINY = dict(encoder="resnet", stage_sizes=(1,), stem="small", width=4, embed_dim=8, attention_dim=4)


@pytest.fixture(scope="module")
def tiny():
    model = build_model("abmil", num_classes=2, **TINY)
    x = jnp.asarray(np.random.default_rng(0).random((2, 4, 8, 8, 3)), jnp.float32)
    variables = jax.jit(lambda key: model.init(key, x, jnp.ones((2, 4)), train=False))(rng.key(0))
    return model, variables, jax.jit(lambda v, x, m: model.apply(v, x, m, train=False)), x


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("gated", [True, False])
def test_gated_attention_equations_by_hand(gated):
    """a_k = softmax_k(w^T (tanh(V h_k + b_V) * sigmoid(U h_k + b_U)) + b_w) over the valid k (Ilse et al.
    eq. 9; eq. 8 without the gate)."""
    h = np.random.default_rng(1).normal(size=(2, 3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 1]], np.float32)
    module = GatedAttention(attention_dim=4, gated=gated)
    params = jax.jit(module.init)(rng.key(2), h, mask)["params"]
    a = np.asarray(jax.jit(module.apply)({"params": params}, h, mask))
    p = jax.tree.map(np.asarray, params)
    hidden = np.tanh(h @ p["V"]["kernel"] + p["V"]["bias"])
    if gated:
        hidden = hidden * _sigmoid(h @ p["U"]["kernel"] + p["U"]["bias"])
    else:
        assert "U" not in p
    scores = (hidden @ p["w"]["kernel"] + p["w"]["bias"])[..., 0]
    e = np.exp(scores - scores.max(-1, keepdims=True)) * mask
    np.testing.assert_allclose(a, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert a[1, 1] == 0.0


def test_attention_sums_to_one_over_valid_tiles_and_ignores_padding_exactly(tiny):
    model, variables, apply, x = tiny
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)
    logits, attention, tile_logits = apply(variables, x, mask)
    assert logits.shape == (2, 2) and attention.shape == (2, 4) and tile_logits.shape == (2, 4, 2)
    np.testing.assert_allclose(np.asarray(attention).sum(-1), [1.0, 1.0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(attention)[0, 2:], [0.0, 0.0])
    # what a padded tile holds changes nothing (eval mode: BatchNorm uses its running statistics)
    other = x.at[0, 2:].set(7.0)
    again = apply(variables, other, mask)
    np.testing.assert_array_equal(again[0][0], logits[0])
    np.testing.assert_array_equal(again[1][0], attention[0])
    # the bag of its two valid tiles alone gives the same slide logits and attention
    alone = apply(variables, x[:1, :2], jnp.ones((1, 2)))
    np.testing.assert_allclose(alone[0][0], logits[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(alone[1][0], attention[0, :2], rtol=1e-6, atol=1e-7)
    # a linear classifier and weights summing to 1: slide logits = sum_k a_k * tile logits_k
    np.testing.assert_allclose(logits, jnp.einsum("nk,nkc->nc", attention, tile_logits), rtol=1e-5, atol=1e-6)
    assert float(masked_softmax(jnp.array([3.0, -2.0]), jnp.array([0.0, 1.0]))[1]) == 1.0


def test_parameter_names_and_encoder_choice(tiny):
    _, variables, _, _ = tiny
    params = variables["params"]
    assert sorted(params) == ["attention", "classifier", "encoder"]
    assert sorted(params["attention"]) == ["U", "V", "w"]
    assert params["encoder"]["head"]["kernel"].shape == (4, 8)  # the projection to embed_dim
    assert params["classifier"]["kernel"].shape == (8, 2)
    with pytest.raises(MedjaxError, match=r"abmil encoder 'densenet121' must be one of \['resnet', 'resnet18'"):
        build_model("abmil", num_classes=2, encoder="densenet121")
    r18 = build_model("abmil", num_classes=2)
    shapes = jax.eval_shape(lambda: r18.init(rng.key(0), jnp.zeros((1, 2, 32, 32, 3)), train=False))
    assert shapes["params"]["encoder"]["stage4_block2"]["conv2"]["kernel"].shape == (3, 3, 512, 512)


@pytest.mark.parametrize("layout", ["torchvision", "monai"])
def test_resnet_weight_tables_reach_the_encoder(layout):
    from medjax.transfer import get_layout
    from medjax.transfer.convert import locate

    table = get_layout("abmil", layout)
    assert locate("layer2.1.conv1.weight", table) == ("params/encoder/stage2_block2/conv1/kernel", "conv")
    assert locate("layer1.0.downsample.1.running_var", table) == (
        "batch_stats/encoder/stage1_block1/downsample_bn/var", "batch_norm")
    assert locate("fc.weight", table) == ("params/encoder/head/kernel", "linear")
    assert locate("conv1.weight", table) == ("params/encoder/stem_conv/kernel", "conv")
