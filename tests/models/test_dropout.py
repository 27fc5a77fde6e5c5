"""Dropout in every registry model: rate 0 (the default) changes nothing (parameters, outputs); a rate > 0 drops
only when the caller passes a dropout rng, in training and at inference (MC-dropout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import rng
from medjax.errors import MedjaxError
from medjax.models import build_model
from medjax.tasks.base import apply_model, dropout_rate

TINY = {  # (constructor kwargs, input shape)
    "resnet": (dict(stage_sizes=(1, 1), block="basic", stem="small", width=4), (2, 8, 8, 1)),
    "densenet": (dict(growth_rate=4, block_config=(1, 1), num_init_features=4, stem="small"), (2, 8, 8, 1)),
    "unet": (dict(features=(4, 8)), (2, 8, 8, 1)),
    "basic_unet": (dict(features=(4, 4, 4, 4, 4, 4)), (2, 16, 16, 1)),
    "monai_unet": (dict(channels=(4, 8), strides=(2,), num_res_units=1), (2, 8, 8, 1)),
    "convlstm_unet": (dict(features=(4, 8)), (2, 3, 8, 8, 1)),
    "convlstm_regressor": (dict(features=(4,), lstm_features=4), (2, 3, 8, 8, 1)),
}


# dropout layers per model: the head; the bottleneck and every decoder block; every convolution's ADN
DROPOUT_SITES = {"resnet": 1, "densenet": 1, "convlstm_regressor": 1, "unet": 2, "convlstm_unet": 2,
                 "basic_unet": 18, "monai_unet": 3}  # monai: down0, bottom, up0 (its residual unit ends conv-only)


def _rate_field(name):
    return "dropout" if name == "monai_unet" else "dropout_rate"


def _draws(model, x, variables, key):
    """How many dropout masks a forward pass in eval mode draws: traced, not compiled."""
    forward = lambda p, s, x: apply_model(model, p, s, x, train=False, dropout_key=key)[0]  # noqa: E731
    jaxpr = jax.make_jaxpr(forward)(variables["params"], variables.get("batch_stats", {}), x)
    return str(jaxpr).count("name=_bernoulli")


@pytest.mark.parametrize("name", sorted(TINY))
def test_dropout_rate_zero_changes_nothing_and_a_rate_needs_a_key(name):
    """Same parameters at any rate (same checkpoints and imports); rate 0, or no key, draws nothing (the forward
    pass is the plain one); a rate with a key draws at every dropout site (MC-dropout: BatchNorm in eval mode)."""
    kwargs, shape = TINY[name]
    plain = build_model(name, num_classes=3, **kwargs)
    dropped = build_model(name, num_classes=3, **kwargs, **{_rate_field(name): 0.5})
    assert dropout_rate(plain) == 0.0 and dropout_rate(dropped) == 0.5
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    init = lambda model: jax.eval_shape(lambda x: model.init(rng.key(0), x, train=False), x)  # noqa: E731
    variables = init(plain)
    assert init(dropped) == variables
    key = rng.key(1)
    assert _draws(plain, x, variables, key) == 0 and _draws(dropped, x, variables, None) == 0
    assert _draws(dropped, x, variables, key) == DROPOUT_SITES[name]


@pytest.mark.parametrize("name", ["resnet", "unet"])
def test_mc_dropout_outputs(name):
    kwargs, shape = TINY[name]
    plain = build_model(name, num_classes=3, **kwargs)
    dropped = build_model(name, num_classes=3, **kwargs, dropout_rate=0.5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)

    @jax.jit
    def outputs(key):  # the plain model, rate 0.5 without a key, rate 0.5 with the key
        v = plain.init(rng.key(0), x, train=False)
        p, s = v["params"], v.get("batch_stats", {})
        run = lambda model, k=None: apply_model(model, p, s, x, train=False, dropout_key=k)[0]  # noqa: E731
        return run(plain), run(dropped), run(dropped, key)

    out, no_key, mc = outputs(rng.key(1))
    np.testing.assert_array_equal(no_key, out)
    assert mc.shape == out.shape and not np.allclose(mc, out)


def test_dropout_masks_scale_and_bad_rates():
    from medjax.models.layers import Dropout

    x = jnp.ones((4, 1000))
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, rngs={"dropout": jax.random.key(0)}), x)  # rate 0
    y = Dropout(0.25).apply({}, x, rngs={"dropout": jax.random.key(0)})
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)  # inverted dropout keeps the mean
    assert abs(kept.mean() - 0.75) < 0.02
    with pytest.raises(MedjaxError, match=r"unet dropout_rate must be a number in \[0, 1\)"):
        build_model("unet", num_classes=2, dropout_rate=1.0)
